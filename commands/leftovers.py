"""What a destroyed stage left behind: every resource still tagged with it, and fail if there is any.

    python -m commands.leftovers --stage S --cluster-name C --region R

Run it after `make destroy STAGE=S` of a throwaway stage, with credentials for the stage's account.
Every stack of a stage tags its resources `stage=<S>` (stacks/stage.py); EKS Auto Mode tags what it
creates itself (instances, volumes, network interfaces, load balancers) `eks:eks-cluster-name=<C>`
instead. Each check below takes a boto3 client and the stage name and returns what it finds as
`Leftover`s; `find_leftovers` runs them all and drops duplicates. A KMS key scheduled for deletion
within the minimum window (7 days) is on its way out and is not a leftover.

The Resource Groups Tagging API can go on listing a resource for a while after its deletion, so
for the types a check of its own looks up live (EC2, load balancers, log groups, FSx, S3, KMS),
that check decides, not the tagging API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from settings import names

STAGE_TAG = "stage"
# The tag EKS Auto Mode puts on the instances, volumes, network interfaces and load balancers it
# creates: the cluster role's AmazonEKSComputePolicy (and its load balancing and block storage
# policies) allow those creations only with aws:RequestTag/eks:eks-cluster-name.
CLUSTER_TAG = "eks:eks-cluster-name"
# The default `registry.cache_prefix`: the pull-through cache creates <prefix>/<stage>/<path>.
DEFAULT_CACHE_PREFIX = "ecr-public"
# The shortest pending window KMS allows, the one a throwaway stage's destroy schedules.
KMS_MINIMUM_WINDOW = timedelta(days=7)
# Resource types whose entries from the tagging API are replaced by a live look-up.
LOOKED_UP_LIVE = frozenset(
    {
        "ec2:instance",
        "ec2:network-interface",
        "ec2:security-group",
        "ec2:volume",
        "elasticloadbalancing:loadbalancer",
        "fsx:file-system",
        "kms:key",
        "logs:log-group",
        "s3:bucket",
    }
)

Client = Any  # a boto3 client (botocore.client.BaseClient); the generated types are not installed
ClientFactory = Callable[[str], Client]


@dataclass(frozen=True)
class Leftover:
    """A resource of the stage that is still there. `kind` is `<service>:<resource type>` as in ARNs."""

    kind: str
    id: str
    detail: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the resource whether `id` is its ARN or its short id or name."""
        return self.kind, arn_parts(self.id)[1] if self.id.startswith("arn:") else self.id


def arn_parts(arn: str) -> tuple[str, str]:
    """(`<service>:<resource type>`, resource id) of an ARN.

    `arn:aws:ec2:r:a:volume/vol-1` gives ("ec2:volume", "vol-1"), `arn:aws:s3:::b` ("s3:bucket", "b"),
    `arn:aws:logs:r:a:log-group:/aws/x:*` ("logs:log-group", "/aws/x").
    """
    _, _, service, _, _, resource = arn.split(":", 5)
    cut = min((index for index in (resource.find("/"), resource.find(":")) if index >= 0), default=-1)
    if cut < 0:
        return (f"{service}:bucket", resource) if service == "s3" else (service, resource)
    resource_type, resource_id = resource[:cut], resource[cut + 1 :]
    if service == "logs":
        resource_id = resource_id.removesuffix(":*")
    return f"{service}:{resource_type}", resource_id


def _tags(tags: Iterable[dict[str, str]] | None) -> dict[str, str]:
    """A list of tags as a dict: {"Key", "Value"} (EC2, ELB, FSx) or {"TagKey", "TagValue"} (KMS)."""
    return {tag.get("Key", tag.get("TagKey", "")): tag.get("Value", tag.get("TagValue", "")) for tag in tags or ()}


def _pages(client: Client, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
    yield from client.get_paginator(operation).paginate(**params)


def _unique(leftovers: Iterable[Leftover]) -> list[Leftover]:
    """The leftovers without repeats, the first of each kept, in order."""
    seen: dict[tuple[str, str], Leftover] = {}
    for leftover in leftovers:
        seen.setdefault(leftover.key, leftover)
    return list(seen.values())


# --- Resource Groups Tagging API -------------------------------------------------------------------


def tagged_resources(tagging: Client, stage: str) -> list[Leftover]:
    """Every resource the tagging API lists as tagged stage=<stage>, by ARN."""
    found = []
    for page in _pages(tagging, "get_resources", TagFilters=[{"Key": STAGE_TAG, "Values": [stage]}]):
        for resource in page.get("ResourceTagMappingList", []):
            arn = resource["ResourceARN"]
            found.append(Leftover(arn_parts(arn)[0], arn, "tagged stage=" + stage))
    return found


# --- EC2 and load balancers --------------------------------------------------------------------------


def _ec2_tagged(
    ec2: Client, operation: str, stage: str, cluster_name: str, extra_filters: Sequence[dict[str, Any]] = ()
) -> Iterator[tuple[dict[str, Any], str]]:
    """(page, matching tag) of an EC2 describe call, once filtered on each of the two tags."""
    for key, value in ((STAGE_TAG, stage), (CLUSTER_TAG, cluster_name)):
        filters = [{"Name": f"tag:{key}", "Values": [value]}, *extra_filters]
        for page in _pages(ec2, operation, Filters=filters):
            yield page, f"tagged {key}={value}"


def network_interfaces(ec2: Client, stage: str, *, cluster_name: str) -> list[Leftover]:
    """Network interfaces tagged with the stage or by Auto Mode with the cluster."""
    return _unique(
        Leftover("ec2:network-interface", eni["NetworkInterfaceId"], f"{eni.get('Status', '?')}, {tagged}")
        for page, tagged in _ec2_tagged(ec2, "describe_network_interfaces", stage, cluster_name)
        for eni in page.get("NetworkInterfaces", [])
    )


def volumes(ec2: Client, stage: str, *, cluster_name: str) -> list[Leftover]:
    """EBS volumes tagged with the stage or by Auto Mode with the cluster."""
    return _unique(
        Leftover(
            "ec2:volume", volume["VolumeId"], f"{volume.get('State', '?')}, {volume.get('Size', '?')} GiB, {tagged}"
        )
        for page, tagged in _ec2_tagged(ec2, "describe_volumes", stage, cluster_name)
        for volume in page.get("Volumes", [])
    )


def instances(ec2: Client, stage: str, *, cluster_name: str) -> list[Leftover]:
    """Instances not terminated (nor terminating) tagged with the stage or by Auto Mode with the cluster."""
    alive = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    return _unique(
        Leftover(
            "ec2:instance",
            instance["InstanceId"],
            f"{instance.get('State', {}).get('Name', '?')}, {instance.get('InstanceType', '?')}, {tagged}",
        )
        for page, tagged in _ec2_tagged(ec2, "describe_instances", stage, cluster_name, alive)
        for reservation in page.get("Reservations", [])
        for instance in reservation.get("Instances", [])
    )


def security_groups(ec2: Client, stage: str, *, cluster_name: str) -> list[Leftover]:
    """Security groups tagged with the stage or by Auto Mode with the cluster (its load balancers' groups)."""
    return _unique(
        Leftover("ec2:security-group", group["GroupId"], f"{group.get('GroupName', '?')}, {tagged}")
        for page, tagged in _ec2_tagged(ec2, "describe_security_groups", stage, cluster_name)
        for group in page.get("SecurityGroups", [])
    )


def load_balancers(elbv2: Client, stage: str, *, cluster_name: str) -> list[Leftover]:
    """Application and network load balancers tagged with the stage or by Auto Mode with the cluster."""
    balancers = {
        balancer["LoadBalancerArn"]: balancer
        for page in _pages(elbv2, "describe_load_balancers")
        for balancer in page.get("LoadBalancers", [])
    }
    arns = list(balancers)
    found = []
    for start in range(0, len(arns), 20):  # DescribeTags takes at most 20 ARNs
        response = elbv2.describe_tags(ResourceArns=arns[start : start + 20])
        for description in response.get("TagDescriptions", []):
            tags = _tags(description.get("Tags"))
            for key, value in ((STAGE_TAG, stage), (CLUSTER_TAG, cluster_name)):
                if tags.get(key) == value:
                    balancer = balancers[description["ResourceArn"]]
                    detail = (
                        f"{balancer.get('Type', '?')} {balancer.get('LoadBalancerName', '?')}, tagged {key}={value}"
                    )
                    found.append(Leftover("elasticloadbalancing:loadbalancer", description["ResourceArn"], detail))
                    break
    return found


# --- Log groups, ECR, S3, FSx, KMS ---------------------------------------------------------------------


def cluster_log_group_prefixes(cluster_name: str) -> tuple[str, ...]:
    """Where AWS services put the log groups they name after a cluster: EKS and Container Insights."""
    return (names.eks_log_group_prefix(cluster_name), names.container_insights_log_group_prefix(cluster_name))


def log_groups(logs: Client, stage: str, *, cluster_name: str, tagged_names: Iterable[str] = ()) -> list[Leftover]:
    """The groups AWS services name after the cluster (EKS's `/aws/eks/<cluster>/...`, Container Insights'
    `/aws/containerinsights/<cluster>/...`), and those of `tagged_names` that still exist.

    `tagged_names`: the log groups tagged stage=<stage>, from the tagging API. A group under the
    cluster's prefixes that carries another stage's tag belongs to that stage and is left out.
    """
    found = []
    for prefix in cluster_log_group_prefixes(cluster_name):
        for page in _pages(logs, "describe_log_groups", logGroupNamePrefix=prefix):
            for group in page.get("logGroups", []):
                owner = logs.list_tags_for_resource(resourceArn=group["logGroupArn"]).get("tags", {}).get(STAGE_TAG)
                if owner in (None, stage):
                    found.append(
                        Leftover("logs:log-group", group["logGroupName"], f"named after cluster {cluster_name}")
                    )
    for name in tagged_names:
        for page in _pages(logs, "describe_log_groups", logGroupNamePrefix=name):
            if any(group["logGroupName"] == name for group in page.get("logGroups", [])):
                found.append(Leftover("logs:log-group", name, f"tagged {STAGE_TAG}={stage}"))
                break
    return _unique(found)


def ecr_repositories(ecr: Client, stage: str, *, cache_prefix: str = DEFAULT_CACHE_PREFIX) -> list[Leftover]:
    """The repositories the stage's pull-through cache created under `<cache_prefix>/<stage>/`, and those of its
    Docker Hub and registry.k8s.io rules (names.DOCKER_HUB_CACHE_PREFIX, KUBERNETES_CACHE_PREFIX)."""
    others = (names.DOCKER_HUB_CACHE_PREFIX, names.KUBERNETES_CACHE_PREFIX)
    prefixes = [f"{each}/{stage}/" for each in (cache_prefix, *others)]
    return [
        Leftover("ecr:repository", repository["repositoryName"], f"pull-through cache repository under {prefix}")
        for page in _pages(ecr, "describe_repositories")
        for repository in page.get("repositories", [])
        for prefix in prefixes
        if repository["repositoryName"].startswith(prefix)
    ]


def s3_buckets(s3: Client, stage: str, *, bucket_names: Iterable[str]) -> list[Leftover]:
    """Those of `bucket_names` (tagged stage=<stage>, from the tagging API) that still exist."""
    found = []
    for name in bucket_names:
        try:
            s3.head_bucket(Bucket=name)
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                continue  # deleted
            detail = f"exists, not readable ({error.response.get('Error', {}).get('Code', '?')})"
        else:
            detail = "exists"
        found.append(Leftover("s3:bucket", name, f"{detail}, tagged {STAGE_TAG}={stage}"))
    return found


def fsx_file_systems(fsx: Client, stage: str) -> list[Leftover]:
    """FSx file systems tagged stage=<stage>, whatever their lifecycle (a DELETING one is not gone yet)."""
    return [
        Leftover(
            "fsx:file-system",
            system["FileSystemId"],
            f"{system.get('FileSystemType', '?')} {system.get('Lifecycle', '?')}, tagged {STAGE_TAG}={stage}",
        )
        for page in _pages(fsx, "describe_file_systems")
        for system in page.get("FileSystems", [])
        if _tags(system.get("Tags")).get(STAGE_TAG) == stage
    ]


def tagged_key_arns(kms: Client, stage: str) -> list[str]:
    """The ARNs of the account's KMS keys tagged stage=<stage>, found with ListKeys and ListResourceTags."""
    found = []
    for page in _pages(kms, "list_keys"):
        for key in page.get("Keys", []):
            try:
                tags = {
                    name: value
                    for tag_page in _pages(kms, "list_resource_tags", KeyId=key["KeyId"])
                    for name, value in _tags(tag_page.get("Tags")).items()
                }
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("AccessDeniedException", "NotFoundException"):
                    continue  # not ours to read, or deleted meanwhile
                raise
            if tags.get(STAGE_TAG) == stage:
                found.append(key["KeyArn"])
    return found


def kms_keys(
    kms: Client, stage: str, *, key_ids: Iterable[str] | None = None, now: datetime | None = None
) -> list[Leftover]:
    """KMS keys tagged stage=<stage> that are not due for deletion within the minimum window (7 days).

    `key_ids`: the keys to check (ids or ARNs); by default those `tagged_key_arns` finds.
    A key pending deletion later than now + 7 days, or not pending deletion at all, is a leftover.
    """
    deadline = (now or datetime.now(UTC)) + KMS_MINIMUM_WINDOW
    found = []
    for key_id in tagged_key_arns(kms, stage) if key_ids is None else key_ids:
        try:
            metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NotFoundException":
                continue
            raise
        state, deletion = metadata.get("KeyState", "?"), metadata.get("DeletionDate")
        if state == "PendingDeletion" and deletion is not None and deletion <= deadline:
            continue
        detail = f"{state}, deleted on {deletion:%Y-%m-%d %H:%M} UTC" if deletion else state
        found.append(Leftover("kms:key", metadata["Arn"], f"{detail}, tagged {STAGE_TAG}={stage}"))
    return found


# --- All of it -----------------------------------------------------------------------------------


def find_leftovers(
    client: ClientFactory,
    stage: str,
    *,
    cluster_name: str,
    cache_prefix: str = DEFAULT_CACHE_PREFIX,
    now: datetime | None = None,
) -> list[Leftover]:
    """Everything of the stage still there, each resource once. `client(service)` gives a boto3 client."""
    tagged = tagged_resources(client("resourcegroupstaggingapi"), stage)

    def ids_of(kind: str) -> list[str]:
        return [arn_parts(leftover.id)[1] for leftover in tagged if leftover.kind == kind]

    ec2, kms = client("ec2"), client("kms")
    key_arns = [leftover.id for leftover in tagged if leftover.kind == "kms:key"]
    key_arns += [arn for arn in tagged_key_arns(kms, stage) if arn not in key_arns]
    found = [
        *load_balancers(client("elbv2"), stage, cluster_name=cluster_name),
        *instances(ec2, stage, cluster_name=cluster_name),
        *network_interfaces(ec2, stage, cluster_name=cluster_name),
        *volumes(ec2, stage, cluster_name=cluster_name),
        *security_groups(ec2, stage, cluster_name=cluster_name),
        *fsx_file_systems(client("fsx"), stage),
        *s3_buckets(client("s3"), stage, bucket_names=ids_of("s3:bucket")),
        *ecr_repositories(client("ecr"), stage, cache_prefix=cache_prefix),
        *log_groups(client("logs"), stage, cluster_name=cluster_name, tagged_names=ids_of("logs:log-group")),
        *kms_keys(kms, stage, key_ids=key_arns, now=now),
        *(leftover for leftover in tagged if leftover.kind not in LOOKED_UP_LIVE),
    ]
    return _unique(found)


def remove_command(leftover: Leftover, region: str) -> str | None:
    """The AWS CLI command that deletes the leftover, where there is an obvious one."""
    kind, name = leftover.kind, leftover.key[1]
    commands = {
        "ec2:instance": f"aws ec2 terminate-instances --instance-ids {name}",
        "ec2:network-interface": f"aws ec2 delete-network-interface --network-interface-id {name}",
        "ec2:volume": f"aws ec2 delete-volume --volume-id {name}",
        "ec2:security-group": f"aws ec2 delete-security-group --group-id {name}",
        "elasticloadbalancing:loadbalancer": f"aws elbv2 delete-load-balancer --load-balancer-arn {leftover.id}",
        "fsx:file-system": f"aws fsx delete-file-system --file-system-id {name}",
        "s3:bucket": f"aws s3 rb s3://{name} --force",
        "ecr:repository": f"aws ecr delete-repository --repository-name {name} --force",
        "logs:log-group": f"aws logs delete-log-group --log-group-name {name}",
        "kms:key": f"aws kms schedule-key-deletion --key-id {leftover.id} --pending-window-in-days 7",
        "aps:workspace": f"aws amp delete-workspace --workspace-id {name}",
        "cloudformation:stack": f"aws cloudformation delete-stack --stack-name {name.split('/')[0]}",
    }
    command = commands.get(kind)
    return f"{command} --region {region}" if command else None


def boto3_clients(region: str) -> ClientFactory:
    """Real clients, in the stage's region, from the environment's credentials."""
    return boto3.session.Session(region_name=region).client


def main(argv: Sequence[str] | None = None, client_factory: ClientFactory | None = None) -> int:
    """Print the stage's leftovers, one a line; 1 if there is any, 0 if none, 2 if AWS could not be asked."""
    parser = argparse.ArgumentParser(prog="python -m commands.leftovers", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, help="the destroyed stage: its stacks tagged stage=<name>")
    parser.add_argument("--cluster-name", required=True, help="its EKS cluster's name (Auto Mode's tags)")
    parser.add_argument("--region", required=True, help="the stage's region")
    parser.add_argument("--cache-prefix", default=DEFAULT_CACHE_PREFIX, help="registry.cache_prefix of the stage")
    args = parser.parse_args(argv)
    client_factory = client_factory or boto3_clients(args.region)
    try:
        leftovers = find_leftovers(
            client_factory, args.stage, cluster_name=args.cluster_name, cache_prefix=args.cache_prefix
        )
    except (BotoCoreError, ClientError) as error:
        print(f"could not list the leftovers of stage {args.stage}: {error}", file=sys.stderr)
        return 2
    for leftover in leftovers:
        command = remove_command(leftover, args.region)
        print(f"{leftover.kind} {leftover.id}: {leftover.detail}" + (f"  # remove: {command}" if command else ""))
    if leftovers:
        print(f"{len(leftovers)} resource(s) of stage {args.stage} are left", file=sys.stderr)
        return 1
    print(f"nothing tagged stage={args.stage} is left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
