"""ServingStack: the charts applied to the cluster, wired to what the other stacks created."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.conftest import Assembly, find, render_charts, unfold_manifest

MANIFEST_TYPE = "Custom::AWSCDK-EKS-KubernetesResource"
# A JSON string holding a reference (${...}) or a placeholder (<...>): known only once deployed.
DEPLOYED_VALUE = re.compile(r'"(?:[^"\\]|\\.)*(?:\$\{|<)(?:[^"\\]|\\.)*"')


def applied_manifests(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == MANIFEST_TYPE
    }


def applied_objects(assembly: Assembly) -> list[dict[str, Any]]:
    return [
        obj
        for manifest in applied_manifests(assembly.template("Serving")).values()
        for obj in unfold_manifest(manifest["Manifest"])
    ]


def applied(assembly: Assembly, kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        obj
        for obj in applied_objects(assembly)
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    return found


def comparable(objects: list[dict[str, Any]]) -> list[str]:
    """Objects as JSON without prune labels, deployed values (references, placeholders) blanked."""
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for key in [key for key in labels if key.startswith("aws.cdk.eks/prune-")]:
            del labels[key]
        if not labels:
            obj["metadata"].pop("labels", None)
    return sorted(DEPLOYED_VALUE.sub('"<deployed>"', json.dumps(obj, sort_keys=True)) for obj in objects)


def test_every_chart_is_applied_as_rendered(dev: Assembly) -> None:
    rendered = [obj for objects in render_charts("dev").values() for obj in objects]
    assert comparable(applied_objects(dev)) == comparable(rendered)


def test_manifests_go_through_the_cluster_stacks_kubectl_handler(dev: Assembly) -> None:
    for manifest in applied_manifests(dev.template("Serving")).values():
        cluster_name = manifest["ClusterName"]["Fn::GetStackOutput"]
        assert (cluster_name["StackName"], cluster_name["OutputName"][:23]) == (
            "dev-Cluster",
            "PublishOutputRefCluster",
        )
        token = manifest["ServiceToken"]["Fn::GetStackOutput"]
        assert token["StackName"] == "dev-Cluster"
        assert "KubectlProvider" in token["OutputName"]


def test_node_class_uses_the_clusters_node_role_subnets_and_security_group(dev: Assembly) -> None:
    spec = applied(dev, "NodeClass")["spec"]
    assert re.fullmatch(r"\$\{dev-Cluster:PublishOutputRefNodeRole\w+\}", spec["role"])
    assert len(spec["subnetSelectorTerms"]) == 3
    assert all("dev-Network:PublishOutputRefVpcPrivateSubnet" in term["id"] for term in spec["subnetSelectorTerms"])
    (security_group,) = spec["securityGroupSelectorTerms"]
    assert re.fullmatch(
        r"\$\{dev-Cluster:PublishOutputFnGetAttCluster\w+ClusterSecurityGroupId\w+\}", security_group["id"]
    )


def test_node_role_is_the_one_auto_mode_gave_an_access_entry(dev: Assembly) -> None:
    # EKS creates the access entry of the compute config's node role with the cluster itself.
    cluster = next(r for r in dev.template("Cluster")["Resources"].values() if r["Type"] == "AWS::EKS::Cluster")
    node_role_logical_id = cluster["Properties"]["ComputeConfig"]["NodeRoleArn"]["Fn::GetAtt"][0]
    assert node_role_logical_id.startswith("NodeRole")
    role_output = applied(dev, "NodeClass")["spec"]["role"]
    assert f"PublishOutputRef{node_role_logical_id}" in role_output


def test_model_volume_points_at_the_model_stores_file_system(dev: Assembly) -> None:
    csi = applied(dev, "PersistentVolume")["spec"]["csi"]
    assert csi["driver"] == "fsx.csi.aws.com"
    assert re.fullmatch(r"\$\{dev-ModelStore:PublishOutputRefFileSystem\w+\}", csi["volumeHandle"])
    assert "dev-ModelStore:PublishOutputRefFileSystem" in csi["volumeAttributes"]["dnsname"]
    assert "dev-ModelStore:PublishOutputFnGetAttFileSystem" in csi["volumeAttributes"]["mountname"]


def test_vllm_image_is_pulled_through_the_accounts_cache(dev: Assembly) -> None:
    container = applied(dev, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == (
        "${AWS::AccountId}.dkr.ecr.us-west-2.amazonaws.com/ecr-public/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2-soci"
    )


@pytest.mark.parametrize("port", [(988, 988), (1018, 1023)])
def test_file_system_admits_the_cluster_nodes_on_the_lustre_ports_only(dev: Assembly, port: tuple[int, int]) -> None:
    template = Template.from_json(dev.template("Serving"))
    for kind, peer in (
        ("AWS::EC2::SecurityGroupIngress", "SourceSecurityGroupId"),
        ("AWS::EC2::SecurityGroupEgress", "DestinationSecurityGroupId"),
    ):
        resources = [r["Properties"] for r in dev.template("Serving")["Resources"].values() if r["Type"] == kind]
        assert [(r["FromPort"], r["ToPort"]) for r in resources] == [(988, 988), (1018, 1023)]
        rule = next(r for r in resources if (r["FromPort"], r["ToPort"]) == port)
        assert rule["IpProtocol"] == "tcp"
        assert "dev-Cluster" in json.dumps(rule[peer])
        assert "ClusterSecurityGroupId" in json.dumps(rule[peer])
        assert "dev-ModelStore" in json.dumps(rule["GroupId"])
    template.resource_count_is("AWS::EC2::SecurityGroupIngress", 2)


def test_models_and_node_pools_stay_out_of_the_cluster_template(dev: Assembly) -> None:
    # So a new model or new vLLM flags change only the serving stack.
    cluster = json.dumps(dev.template("Cluster"))
    for value in ("gpt-oss", "vllm", "gpu-node-pool", "karpenter.sh"):
        assert value not in cluster
    assert MANIFEST_TYPE not in cluster


def test_stage_prints_the_port_forward_preload_and_test_request_for_each_model(dev: Assembly) -> None:
    outputs = dev.template("Serving")["Outputs"]
    assert outputs["GptOss20bPortForwardCommand"]["Value"] == (
        "kubectl -n gpt-oss-20b port-forward service/gptoss-service 8000:8000"
    )
    assert outputs["GptOss20bPreloadCommand"]["Value"].startswith(
        "kubectl -n gpt-oss-20b create job preload-gpt-oss-20b-$(date +%s) --from=cronjob/preload-gpt-oss-20b"
    )
    curl = outputs["GptOss20bTestRequestCommand"]["Value"]
    assert curl.startswith("curl -s http://localhost:8000/v1/chat/completions ")
    body = json.loads(curl.split("-d '", 1)[1].split("' |", 1)[0])
    assert body == {
        "model": "openai/gpt-oss-20b",
        "messages": [{"role": "user", "content": "What is machine learning?"}],
        "temperature": 0.7,
        "max_tokens": 100,
    }
    assert curl.endswith("| jq -r '.choices[0].message.content'")


def test_preload_job_reads_the_models_directory_in_the_file_systems_zone() -> None:
    cron_job = find(render_charts("dev")["Model-gpt-oss-20b"], "CronJob")
    assert cron_job["spec"]["suspend"] is True
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-west-2a"]}
    ]
    (container,) = pod["containers"]
    assert {"name": "MODEL", "value": "gpt-oss-20b"} in container["env"]
    assert container["volumeMounts"] == [
        {"name": "weights", "mountPath": "/models", "subPath": "models", "readOnly": True}
    ]


def test_smoke_test_runs_in_the_vpc_with_the_clusters_security_group(dev: Assembly) -> None:
    serving = dev.template("Serving")
    (project,) = [r["Properties"] for r in serving["Resources"].values() if r["Type"] == "AWS::CodeBuild::Project"]
    assert project["Name"] == "gpu-inference-dev-smoke-test"
    vpc = project["VpcConfig"]
    assert all("PrivateSubnet" in json.dumps(subnet) for subnet in vpc["Subnets"])
    assert len(vpc["Subnets"]) == 3
    (group,) = vpc["SecurityGroupIds"]
    assert "ClusterSecurityGroupId" in json.dumps(group)
    assert project["Source"]["Type"] == "S3"  # scripts/smoke_test.py, shipped as an asset
    commands = json.loads(project["Source"]["BuildSpec"])["phases"]["build"]["commands"]
    assert commands[0] == "aws eks update-kubeconfig --region us-west-2 --name gpu-inference-dev"
    assert commands[1] == (
        "python3 smoke_test.py --namespace gpt-oss-20b --service gptoss-service --deployment gpt-oss-20b "
        "--model openai/gpt-oss-20b --rollout-timeout 660"
    )


def test_smoke_test_role_is_admitted_to_the_cluster_with_no_access_policy(dev: Assembly) -> None:
    serving = dev.template("Serving")
    (entry,) = [r["Properties"] for r in serving["Resources"].values() if r["Type"] == "AWS::EKS::AccessEntry"]
    assert entry["KubernetesGroups"] == ["smoke-testers"]
    assert entry["Type"] == "STANDARD"
    assert "AccessPolicies" not in entry  # only the namespaced RBAC rules of the charts apply
    role_id = entry["PrincipalArn"]["Fn::GetAtt"][0]
    trust = serving["Resources"][role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust[0]["Principal"] == {"Service": "codebuild.amazonaws.com"}
