"""commands/leftovers.py against stubbed AWS: real boto3 clients, botocore's Stubber, no network.

Stubber checks every request against the expected parameters and both against the service models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from commands.leftovers import (
    Leftover,
    arn_parts,
    cluster_log_group_prefixes,
    ecr_repositories,
    find_leftovers,
    kms_keys,
    load_balancers,
    log_groups,
    main,
    network_interfaces,
    remove_command,
    s3_buckets,
    volumes,
)
from tests.aws_stubs import StubbedClients

REGION = "eu-west-1"
ACCOUNT = "123456789012"
STAGE = "throwaway"
CLUSTER = "throwaway-gpu"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SERVICES = ("resourcegroupstaggingapi", "ec2", "elbv2", "logs", "ecr", "s3", "fsx", "kms")

LB_ARN = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/net/k8s-default-vllm-1a2b3c/0123456789abcdef"
OTHER_LB_ARN = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/someone-else/fedcba9876543210"


def key_arn(key_id: str) -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"


class Stubs(StubbedClients):
    """The services commands/leftovers.py asks."""

    def __init__(self) -> None:
        super().__init__(SERVICES)


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    with Stubs() as stubs:
        yield stubs
        stubs.assert_no_pending_responses()


def tag_filter(key: str, value: str) -> dict[str, Any]:
    return {"Name": f"tag:{key}", "Values": [value]}


ALIVE = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}


def queue_ec2(
    stubs: Stubs,
    method: str,
    result_key: str,
    *,
    by_stage: list[dict[str, Any]] | None = None,
    by_cluster: list[dict[str, Any]] | None = None,
) -> None:
    """The two describe calls of one EC2 check: filtered on the stage tag, then on Auto Mode's tag."""
    extra = [ALIVE] if method == "describe_instances" else []
    for key, value, items in (("stage", STAGE, by_stage), ("eks:eks-cluster-name", CLUSTER, by_cluster)):
        stubs.add("ec2", method, {result_key: items or []}, {"Filters": [tag_filter(key, value), *extra]})


def queue_clean_account(stubs: Stubs, *, tagged_arns: Sequence[str] = (), key_arns: Sequence[str] = ()) -> None:
    """The calls of `find_leftovers` in order, each answering that nothing (else) is there."""
    stubs.add(
        "resourcegroupstaggingapi",
        "get_resources",
        {
            "ResourceTagMappingList": [
                {"ResourceARN": arn, "Tags": [{"Key": "stage", "Value": STAGE}]} for arn in tagged_arns
            ]
        },
        {"TagFilters": [{"Key": "stage", "Values": [STAGE]}]},
    )
    stubs.add("kms", "list_keys", {"Keys": [{"KeyId": arn_parts(arn)[1], "KeyArn": arn} for arn in key_arns]}, {})
    for arn in key_arns:
        stubs.add(
            "kms",
            "list_resource_tags",
            {"Tags": [{"TagKey": "stage", "TagValue": STAGE}]},
            {"KeyId": arn_parts(arn)[1]},
        )
    stubs.add("elbv2", "describe_load_balancers", {"LoadBalancers": []}, {})
    queue_ec2(stubs, "describe_instances", "Reservations")
    queue_ec2(stubs, "describe_network_interfaces", "NetworkInterfaces")
    queue_ec2(stubs, "describe_volumes", "Volumes")
    queue_ec2(stubs, "describe_security_groups", "SecurityGroups")
    stubs.add("fsx", "describe_file_systems", {"FileSystems": []}, {})
    stubs.add("ecr", "describe_repositories", {"repositories": []}, {})
    no_cluster_log_groups(stubs)


def no_cluster_log_groups(stubs: Stubs) -> None:
    for prefix in cluster_log_group_prefixes(CLUSTER):
        stubs.add("logs", "describe_log_groups", {"logGroups": []}, {"logGroupNamePrefix": prefix})


def pending_key(key_id: str, state: str, deletion: datetime | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"KeyId": key_id, "Arn": key_arn(key_id), "KeyState": state, "KeyManager": "CUSTOMER"}
    if deletion is not None:
        metadata["DeletionDate"] = deletion
    return {"KeyMetadata": metadata}


# --- (a) a clean account -----------------------------------------------------------------------------


def test_clean_account_has_no_leftovers(stubs: Stubs) -> None:
    queue_clean_account(stubs)
    assert find_leftovers(stubs.client, STAGE, cluster_name=CLUSTER, now=NOW) == []


# --- (b) what Auto Mode leaves, tagged with the cluster -------------------------------------------------


def test_load_balancer_tagged_by_auto_mode_is_a_leftover(stubs: Stubs) -> None:
    balancer = {"LoadBalancerName": "k8s-default-vllm-1a2b3c", "Type": "network"}
    stubs.add(
        "elbv2",
        "describe_load_balancers",
        {
            "LoadBalancers": [
                {**balancer, "LoadBalancerArn": LB_ARN},
                {"LoadBalancerArn": OTHER_LB_ARN, "LoadBalancerName": "someone-else", "Type": "application"},
            ]
        },
        {},
    )
    stubs.add(
        "elbv2",
        "describe_tags",
        {
            "TagDescriptions": [
                {"ResourceArn": LB_ARN, "Tags": [{"Key": "eks:eks-cluster-name", "Value": CLUSTER}]},
                {"ResourceArn": OTHER_LB_ARN, "Tags": [{"Key": "stage", "Value": "prod"}]},
            ]
        },
        {"ResourceArns": [LB_ARN, OTHER_LB_ARN]},
    )
    (leftover,) = load_balancers(stubs.clients["elbv2"], STAGE, cluster_name=CLUSTER)
    assert leftover.kind == "elasticloadbalancing:loadbalancer"
    assert leftover.id == LB_ARN
    assert "eks:eks-cluster-name" in leftover.detail


def test_network_interface_and_volume_tagged_by_auto_mode_are_leftovers(stubs: Stubs) -> None:
    cluster_tag = [{"Key": "eks:eks-cluster-name", "Value": CLUSTER}]
    queue_ec2(
        stubs,
        "describe_network_interfaces",
        "NetworkInterfaces",
        by_cluster=[{"NetworkInterfaceId": "eni-0a1b2c3d4e5f60718", "Status": "available", "TagSet": cluster_tag}],
    )
    volume = {"VolumeId": "vol-0a1b2c3d4e5f60718", "State": "available", "Size": 100, "Tags": cluster_tag}
    # Tagged with both: found by both calls, listed once.
    queue_ec2(stubs, "describe_volumes", "Volumes", by_stage=[volume], by_cluster=[volume])
    ec2 = stubs.clients["ec2"]
    assert network_interfaces(ec2, STAGE, cluster_name=CLUSTER) == [
        Leftover("ec2:network-interface", "eni-0a1b2c3d4e5f60718", "available, tagged eks:eks-cluster-name=" + CLUSTER)
    ]
    assert volumes(ec2, STAGE, cluster_name=CLUSTER) == [
        Leftover("ec2:volume", "vol-0a1b2c3d4e5f60718", "available, 100 GiB, tagged stage=" + STAGE)
    ]


def test_auto_mode_leftovers_through_find_leftovers_once_each(stubs: Stubs) -> None:
    volume_arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/vol-0a1b2c3d4e5f60718"
    # The tagging API lists the volume too; the live EC2 look-up decides, and lists it once.
    stubs.add(
        "resourcegroupstaggingapi",
        "get_resources",
        {"ResourceTagMappingList": [{"ResourceARN": volume_arn}]},
        {"TagFilters": [{"Key": "stage", "Values": [STAGE]}]},
    )
    stubs.add("kms", "list_keys", {"Keys": []}, {})
    stubs.add("elbv2", "describe_load_balancers", {"LoadBalancers": [{"LoadBalancerArn": LB_ARN}]}, {})
    stubs.add(
        "elbv2",
        "describe_tags",
        {"TagDescriptions": [{"ResourceArn": LB_ARN, "Tags": [{"Key": "eks:eks-cluster-name", "Value": CLUSTER}]}]},
        {"ResourceArns": [LB_ARN]},
    )
    queue_ec2(stubs, "describe_instances", "Reservations")
    queue_ec2(stubs, "describe_network_interfaces", "NetworkInterfaces", by_cluster=[{"NetworkInterfaceId": "eni-1"}])
    volume = {"VolumeId": "vol-0a1b2c3d4e5f60718", "State": "available", "Size": 100}
    queue_ec2(stubs, "describe_volumes", "Volumes", by_stage=[volume], by_cluster=[volume])
    queue_ec2(stubs, "describe_security_groups", "SecurityGroups")
    stubs.add("fsx", "describe_file_systems", {"FileSystems": []}, {})
    stubs.add("ecr", "describe_repositories", {"repositories": []}, {})
    no_cluster_log_groups(stubs)
    found = find_leftovers(stubs.client, STAGE, cluster_name=CLUSTER, now=NOW)
    assert [(leftover.kind, leftover.id) for leftover in found] == [
        ("elasticloadbalancing:loadbalancer", LB_ARN),
        ("ec2:network-interface", "eni-1"),
        ("ec2:volume", "vol-0a1b2c3d4e5f60718"),
    ]


# --- (c) KMS keys: pending deletion within the minimum window is not a leftover -------------------------


def test_kms_key_pending_deletion_within_seven_days_is_not_a_leftover(stubs: Stubs) -> None:
    soon = "11111111-1111-1111-1111-111111111111"
    late = "22222222-2222-2222-2222-222222222222"
    enabled = "33333333-3333-3333-3333-333333333333"
    stubs.add("kms", "describe_key", pending_key(soon, "PendingDeletion", NOW + timedelta(days=7)), {"KeyId": soon})
    stubs.add("kms", "describe_key", pending_key(late, "PendingDeletion", NOW + timedelta(days=30)), {"KeyId": late})
    stubs.add("kms", "describe_key", pending_key(enabled, "Enabled", None), {"KeyId": enabled})
    found = kms_keys(stubs.clients["kms"], STAGE, key_ids=[soon, late, enabled], now=NOW)
    assert [leftover.id for leftover in found] == [key_arn(late), key_arn(enabled)]
    assert found[0].detail.startswith("PendingDeletion, deleted on 2025-07-01")
    assert found[1].detail.startswith("Enabled")


def test_kms_keys_found_by_their_tags(stubs: Stubs) -> None:
    ours, theirs = "44444444-4444-4444-4444-444444444444", "55555555-5555-5555-5555-555555555555"
    stubs.add(
        "kms",
        "list_keys",
        {"Keys": [{"KeyId": ours, "KeyArn": key_arn(ours)}, {"KeyId": theirs, "KeyArn": key_arn(theirs)}]},
        {},
    )
    stubs.add("kms", "list_resource_tags", {"Tags": [{"TagKey": "stage", "TagValue": STAGE}]}, {"KeyId": ours})
    stubs.add("kms", "list_resource_tags", {"Tags": [{"TagKey": "stage", "TagValue": "prod"}]}, {"KeyId": theirs})
    stubs.add("kms", "describe_key", pending_key(ours, "Enabled", None), {"KeyId": key_arn(ours)})
    assert [leftover.id for leftover in kms_keys(stubs.clients["kms"], STAGE, now=NOW)] == [key_arn(ours)]


def test_kms_key_from_tagging_api_and_from_its_tags_is_listed_once(stubs: Stubs) -> None:
    key_id = "66666666-6666-6666-6666-666666666666"
    queue_clean_account(stubs, tagged_arns=[key_arn(key_id)], key_arns=[key_arn(key_id)])
    stubs.add("kms", "describe_key", pending_key(key_id, "PendingDeletion", NOW + timedelta(days=30)))
    found = find_leftovers(stubs.client, STAGE, cluster_name=CLUSTER, now=NOW)
    assert [(leftover.kind, leftover.id) for leftover in found] == [("kms:key", key_arn(key_id))]


# --- (d) ECR repositories of the stage's pull-through cache ---------------------------------------------


def repository(name: str) -> dict[str, Any]:
    return {
        "repositoryName": name,
        "repositoryArn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}",
        "registryId": ACCOUNT,
    }


def test_ecr_repositories_under_the_stage_prefix_only(stubs: Stubs) -> None:
    stubs.add(
        "ecr",
        "describe_repositories",
        {"repositories": [repository(f"ecr-public/{STAGE}/vllm/vllm-openai")], "nextToken": "page-2"},
        {},
    )
    stubs.add(
        "ecr",
        "describe_repositories",
        {
            "repositories": [
                repository("ecr-public/prod/vllm/vllm-openai"),
                repository(f"ecr-public/{STAGE}2/vllm/vllm-openai"),
                repository(f"ecr-public/{STAGE}/eks-distro/kubernetes/pause"),
                # Its Docker Hub and registry.k8s.io rules' (the gateway's images).
                repository(f"docker-hub/{STAGE}/envoyproxy/envoy"),
                repository(f"k8s/{STAGE}/gateway-api-inference-extension/epp"),
                repository("k8s/prod/gateway-api-inference-extension/epp"),
            ]
        },
        {"nextToken": "page-2"},
    )
    found = ecr_repositories(stubs.clients["ecr"], STAGE)
    assert [leftover.id for leftover in found] == [
        f"ecr-public/{STAGE}/vllm/vllm-openai",
        f"ecr-public/{STAGE}/eks-distro/kubernetes/pause",
        f"docker-hub/{STAGE}/envoyproxy/envoy",
        f"k8s/{STAGE}/gateway-api-inference-extension/epp",
    ]


# --- S3 and log groups ---------------------------------------------------------------------------------


def test_s3_bucket_still_there_is_a_leftover_a_deleted_one_is_not(stubs: Stubs) -> None:
    stubs.add("s3", "head_bucket", {}, {"Bucket": "throwaway-models"})
    stubs.stubbers["s3"].add_client_error(
        "head_bucket", service_error_code="404", http_status_code=404, expected_params={"Bucket": "throwaway-logs"}
    )
    found = s3_buckets(stubs.clients["s3"], STAGE, bucket_names=["throwaway-models", "throwaway-logs"])
    assert found == [Leftover("s3:bucket", "throwaway-models", "exists, tagged stage=" + STAGE)]


def test_log_groups_of_the_cluster_and_tagged_ones_still_there(stubs: Stubs) -> None:
    def group(name: str) -> dict[str, Any]:
        return {"logGroupName": name, "logGroupArn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}"}

    control_plane, reused = f"/aws/eks/{CLUSTER}/cluster", f"/aws/eks/{CLUSTER}/other-stage"
    stubs.add(
        "logs",
        "describe_log_groups",
        {"logGroups": [group(control_plane), group(reused)]},
        {"logGroupNamePrefix": f"/aws/eks/{CLUSTER}/"},
    )
    stubs.add("logs", "list_tags_for_resource", {"tags": {}}, {"resourceArn": group(control_plane)["logGroupArn"]})
    stubs.add(
        "logs", "list_tags_for_resource", {"tags": {"stage": "prod"}}, {"resourceArn": group(reused)["logGroupArn"]}
    )
    # Container Insights' group, which the CloudWatch agent writes and a stage with observability keeps.
    insights = f"/aws/containerinsights/{CLUSTER}/performance"
    stubs.add(
        "logs",
        "describe_log_groups",
        {"logGroups": [group(insights)]},
        {"logGroupNamePrefix": f"/aws/containerinsights/{CLUSTER}/"},
    )
    stubs.add("logs", "list_tags_for_resource", {"tags": {}}, {"resourceArn": group(insights)["logGroupArn"]})
    flow_logs, deleted = "throwaway-Network-FlowLogs", "throwaway-Gone"
    stubs.add("logs", "describe_log_groups", {"logGroups": [group(flow_logs)]}, {"logGroupNamePrefix": flow_logs})
    stubs.add("logs", "describe_log_groups", {"logGroups": [group(deleted + "-x")]}, {"logGroupNamePrefix": deleted})
    found = log_groups(stubs.clients["logs"], STAGE, cluster_name=CLUSTER, tagged_names=[flow_logs, deleted])
    assert [leftover.id for leftover in found] == [control_plane, insights, flow_logs]


def test_a_retained_metrics_workspace_is_listed_with_how_to_delete_it() -> None:
    arn = f"arn:aws:aps:{REGION}:{ACCOUNT}:workspace/ws-0123abcd-4567-89ef-0123-456789abcdef"
    (kind, workspace_id) = arn_parts(arn)
    assert (kind, workspace_id) == ("aps:workspace", "ws-0123abcd-4567-89ef-0123-456789abcdef")
    assert remove_command(Leftover(kind, arn, "tagged stage=dev"), REGION) == (
        f"aws amp delete-workspace --workspace-id {workspace_id} --region {REGION}"
    )


def test_arn_parts() -> None:
    assert arn_parts(f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/vol-1") == ("ec2:volume", "vol-1")
    assert arn_parts("arn:aws:s3:::bucket") == ("s3:bucket", "bucket")
    assert arn_parts(f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/x:*") == ("logs:log-group", "/aws/x")
    assert arn_parts(LB_ARN) == ("elasticloadbalancing:loadbalancer", "net/k8s-default-vllm-1a2b3c/0123456789abcdef")


# --- (e) the command line --------------------------------------------------------------------------------

ARGV = ["--stage", STAGE, "--cluster-name", CLUSTER, "--region", REGION]


def test_cli_lists_a_leftover_and_fails(stubs: Stubs, capsys: pytest.CaptureFixture[str]) -> None:
    stack = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STAGE}-Cluster/0a1b2c3d-0000-0000-0000-000000000000"
    queue_clean_account(stubs, tagged_arns=[stack])
    assert main(ARGV, client_factory=stubs.client) == 1
    out = capsys.readouterr().out
    assert out == (
        f"cloudformation:stack {stack}: tagged stage={STAGE}"
        f"  # remove: aws cloudformation delete-stack --stack-name {STAGE}-Cluster --region {REGION}\n"
    )


def test_cli_for_a_clean_account_succeeds(stubs: Stubs, capsys: pytest.CaptureFixture[str]) -> None:
    queue_clean_account(stubs)
    assert main(ARGV, client_factory=stubs.client) == 0
    assert capsys.readouterr().out == f"nothing tagged stage={STAGE} is left\n"
