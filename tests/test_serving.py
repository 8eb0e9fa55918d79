"""The serving stacks (the stage's, stacks/serving.py, and each model's, stacks/model_serving.py): the charts applied
to the cluster, wired to what the other stacks created."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import cdk8s

from charts import DeployedResources, stage_charts
from commands.plan import MANIFEST_TYPE, unfold_manifest
from settings import names, parse_stage_settings
from tests.conftest import (
    KEYED_MODEL,
    Assembly,
    Scenario,
    find,
    keyed_prod_data,
    render_charts,
    stored_check,
)

# A JSON string holding a reference (${...}) or a placeholder (<...>): known only once deployed.
DEPLOYED_VALUE = re.compile(r'"(?:[^"\\]|\\.)*(?:\$\{|<)(?:[^"\\]|\\.)*"')


def applied_manifests(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == MANIFEST_TYPE
    }


def serving_templates(assembly: Assembly) -> dict[str, dict[str, Any]]:
    """The stage's serving stack and each model's, by short name."""
    return {
        name: assembly.template(name)
        for name in assembly.stacks()
        if name == "Serving" or name.startswith(names.model_stack_id(""))
    }


def applied_objects(assembly: Assembly) -> list[dict[str, Any]]:
    return [
        obj
        for template in serving_templates(assembly).values()
        for manifest in applied_manifests(template).values()
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
    manifests = [m for template in serving_templates(dev).values() for m in applied_manifests(template).values()]
    assert len(manifests) > len(render_charts("dev")) - 1  # every chart (the ConfigMap-only list included)
    for manifest in manifests:
        assert manifest["ClusterName"]["Fn::ImportValue"].startswith("dev-Cluster:ExportsOutputRefCluster")
        token = manifest["ServiceToken"]["Fn::ImportValue"]
        assert token.startswith("dev-Cluster:")
        assert "KubectlProvider" in token


def test_node_class_uses_the_clusters_node_role_subnets_and_security_group(dev: Assembly) -> None:
    spec = applied(dev, "NodeClass")["spec"]
    assert re.fullmatch(r"\$\{dev-Cluster:ExportsOutputRefNodeRole\w+\}", spec["role"])
    assert len(spec["subnetSelectorTerms"]) == 3
    assert all("dev-Network:ExportsOutputRefVpcPrivateSubnet" in term["id"] for term in spec["subnetSelectorTerms"])
    (security_group,) = spec["securityGroupSelectorTerms"]
    assert re.fullmatch(
        r"\$\{dev-Cluster:ExportsOutputFnGetAttCluster\w+ClusterSecurityGroupId\w+\}", security_group["id"]
    )


def test_node_role_is_the_one_auto_mode_gave_an_access_entry(dev: Assembly) -> None:
    # EKS creates the access entry of the compute config's node role with the cluster itself.
    cluster = next(r for r in dev.template("Cluster")["Resources"].values() if r["Type"] == "AWS::EKS::Cluster")
    node_role_logical_id = cluster["Properties"]["ComputeConfig"]["NodeRoleArn"]["Fn::GetAtt"][0]
    assert node_role_logical_id.startswith("NodeRole")
    role_output = applied(dev, "NodeClass")["spec"]["role"]
    assert f"ExportsOutputRef{node_role_logical_id}" in role_output


def test_model_volume_points_at_the_model_stores_file_system(dev: Assembly) -> None:
    csi = applied(dev, "PersistentVolume")["spec"]["csi"]
    assert csi["driver"] == "fsx.csi.aws.com"
    assert re.fullmatch(r"\$\{dev-ModelStore:ExportsOutputRefFileSystem\w+\}", csi["volumeHandle"])
    assert "dev-ModelStore:ExportsOutputRefFileSystem" in csi["volumeAttributes"]["dnsname"]
    assert "dev-ModelStore:ExportsOutputFnGetAttFileSystem" in csi["volumeAttributes"]["mountname"]


def test_vllm_image_is_pulled_through_the_accounts_cache(dev: Assembly) -> None:
    container = applied(dev, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == (
        "${AWS::AccountId}.dkr.ecr.us-west-2.amazonaws.com/ecr-public/dev/"
        "deep-learning-containers/vllm:0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"
    )


def lustre_rules(assembly: Assembly) -> list[dict[str, Any]]:
    """Every security group rule of the serving stack, with the group it is on and the peer it names."""
    rules = []
    for resource in assembly.template("Serving")["Resources"].values():
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
            peer = properties.get("SourceSecurityGroupId") or properties.get("DestinationSecurityGroupId")
            rules.append(
                {
                    "direction": "in" if kind.endswith("Ingress") else "out",
                    "on": "file system" if "FileSystemSecurityGroup" in json.dumps(properties["GroupId"]) else "nodes",
                    "peer": "nodes" if "ClusterSecurityGroupId" in json.dumps(peer) else "file system",
                    "ports": (properties["IpProtocol"], properties["FromPort"], properties["ToPort"]),
                }
            )
    return rules


def test_lustre_flows_both_ways_between_the_nodes_and_the_file_system_on_its_ports_only(dev: Assembly) -> None:
    # Clients connect to the servers and the servers connect back (callbacks, recovery): both
    # sides admit and reach each other on TCP 988 and 1018-1023 (FSx for Lustre User Guide).
    rules = lustre_rules(dev)
    expected = [
        {"direction": direction, "on": side, "peer": peer, "ports": ports}
        for side, peer in (("file system", "nodes"), ("nodes", "file system"))
        for direction in ("in", "out")
        for ports in (("tcp", 988, 988), ("tcp", 1018, 1023))
    ]
    assert sorted(rules, key=json.dumps) == sorted(expected, key=json.dumps)


def test_the_file_systems_rules_keep_their_logical_ids(dev: Assembly) -> None:
    # EC2 refuses a duplicate rule, so a renamed rule would fail to create beside its old twin.
    resources = dev.template("Serving")["Resources"]
    for logical_id in ("LustreFromNodes0", "LustreFromNodes1", "LustreToNodes0", "LustreToNodes1"):
        assert "FileSystemSecurityGroup" in json.dumps(resources[logical_id]["Properties"]["GroupId"])


def test_serving_holds_strong_references_to_what_a_replacement_would_change(dev: Assembly) -> None:
    # A weak reference (Fn::GetStackOutput) leaves this template unchanged when the cluster or the
    # file system is replaced, so the next deploy would skip it with stale ids. Imports make
    # CloudFormation refuse the replacement while this stack uses the value.
    serving = json.dumps(serving_templates(dev))
    assert "Fn::GetStackOutput" not in serving
    imported = set(re.findall(r'"Fn::ImportValue": "(dev-\w+):', serving))
    assert imported == {"dev-Cluster", "dev-ModelStore", "dev-Network"}
    # A model's stack holds its own: the file system it mounts, the cluster it is applied to.
    model = json.dumps(dev.model_template())
    assert {"dev-Cluster", "dev-ModelStore"} <= set(re.findall(r'"Fn::ImportValue": "(dev-\w+):', model))
    exported = {
        output["Export"]["Name"]
        for stack in ("Cluster", "ModelStore", "Network")
        for output in dev.template(stack).get("Outputs", {}).values()
        if "Export" in output
    }
    assert set(re.findall(r'"Fn::ImportValue": "([^"]+)"', serving)) <= exported
    for name in ("FileSystem", "ClusterSecurityGroupId", "NodeRole"):
        assert any(name in export for export in exported), name


def test_only_the_serving_stack_uses_strong_references(dev: Assembly) -> None:
    for stack in ("Cluster", "ModelStore", "Registry", "Network"):
        assert "Fn::ImportValue" not in json.dumps(dev.template(stack)), stack


def test_models_and_node_pools_stay_out_of_the_cluster_template(dev: Assembly) -> None:
    # So a new model or new vLLM flags change only the serving stack.
    cluster = json.dumps(dev.template("Cluster"))
    for value in ("gpt-oss", "vllm", "gpu-node-pool", "karpenter.sh"):
        assert value not in cluster
    assert MANIFEST_TYPE not in cluster


def test_stage_prints_the_port_forward_weights_and_test_request_for_each_model(dev: Assembly) -> None:
    outputs = dev.model_template()["Outputs"]
    assert outputs["GptOss20bPortForwardCommand"]["Value"] == (
        "kubectl -n gpt-oss-20b port-forward service/gptoss-service 8000:8000"
    )
    job = find(render_charts("dev")["Model-gpt-oss-20b"], "Job")["metadata"]["name"]
    assert outputs["GptOss20bWeightsCommand"]["Value"] == (
        f"kubectl -n gpt-oss-20b get job {job} && kubectl -n gpt-oss-20b logs -f job/{job}"
    )
    curl = outputs["GptOss20bTestRequestCommand"]["Value"]
    assert curl.startswith("curl -s http://localhost:8000/v1/chat/completions ")
    body = json.loads(curl.split("-d '", 1)[1].split("' |", 1)[0])
    assert body == {
        "model": "openai/gpt-oss-20b",
        "messages": [{"role": "user", "content": "What is machine learning?"}],
        "temperature": 0.7,
        "reasoning_effort": "low",
        "max_tokens": 512,
    }
    # gpt-oss may answer in its reasoning alone when the token budget runs out: print either, after why it stopped.
    assert curl.endswith(
        "| jq -r '.choices[0] | .finish_reason, (.message | .content // .reasoning_content // .reasoning)'"
    )


def test_smoke_test_runs_in_the_vpc_with_the_clusters_security_group(dev: Assembly) -> None:
    serving = dev.template("Serving")
    (project,) = [r["Properties"] for r in serving["Resources"].values() if r["Type"] == "AWS::CodeBuild::Project"]
    assert project["Name"] == "gpu-inference-dev-smoke-test"
    vpc = project["VpcConfig"]
    assert all("PrivateSubnet" in json.dumps(subnet) for subnet in vpc["Subnets"])
    assert len(vpc["Subnets"]) == 3
    (group,) = vpc["SecurityGroupIds"]
    assert "ClusterSecurityGroupId" in json.dumps(group)
    assert project["Source"]["Type"] == "S3"  # workloads/smoke_test.py, shipped as an asset
    commands = json.loads(project["Source"]["BuildSpec"])["phases"]["build"]["commands"]
    assert commands == [
        "aws eks update-kubeconfig --region us-west-2 --name gpu-inference-dev",
        # Every check the models' stacks stored, or $MODEL's: the project names no model.
        'python3 smoke_test.py --checks-from "$CHECKS" --only "$MODEL"',
    ]
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables == {"CHECKS": "/gpu-inference-dev/smoke-test"}  # MODEL: given by a build that checks one
    assert "gpt-oss-20b" not in json.dumps(project)
    # It waits twice the import (609 s, in whole minutes) and the rollout's progress deadline (960 s):
    # a first start on an empty stage, or a slow one, is not a failure.
    # It first asks a replica which vLLM it serves: the release the stage's image pins.
    assert stored_check(dev.model_template())[:13] == [
        *("--namespace", "gpt-oss-20b", "--service", "gptoss-service", "--deployment", "gpt-oss-20b"),
        *("--model", "openai/gpt-oss-20b", "--rollout-timeout", "3240", "--vllm-version", "0.31.0", "--import-job"),
    ]
    # Its own limit is a backstop; the pipeline and each model's command start it with the waits of theirs.
    assert project["TimeoutInMinutes"] == 8 * 60
    output = dev.model_template()["Outputs"]["GptOss20bSmokeTestCommand"]["Value"]
    assert output == (
        "aws codebuild start-build --region us-west-2 --project-name gpu-inference-dev-smoke-test "
        "--environment-variables-override name=MODEL,value=gpt-oss-20b --timeout-in-minutes-override 64"
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


def test_a_models_pods_are_created_after_their_pod_identity_associations(keyed_model_serving: Scenario) -> None:
    # EKS Pod Identity gives credentials only to pods created after the association: the import Job's
    # pod and the replicas (which read their API keys as their service account) come after theirs.
    serving = keyed_model_serving.template["Resources"]
    associations = {
        logical_id: resource["Properties"]["ServiceAccount"]
        for logical_id, resource in serving.items()
        if resource["Type"] == "AWS::EKS::PodIdentityAssociation" and resource["Properties"]["Namespace"] == KEYED_MODEL
    }
    assert sorted(associations.values()) == ["vllm-server", "weights-import"]
    (model_manifest,) = [
        resource
        for logical_id, resource in serving.items()
        if resource["Type"] == MANIFEST_TYPE and "Modelkeyed" in logical_id
    ]
    assert set(associations) <= set(model_manifest["DependsOn"])


def test_what_only_an_optional_feature_uses_is_read_weakly_with_its_export_kept(prod: Assembly) -> None:
    # Turning metrics (or exposure) off must deploy at once: an imported export of the Cluster (or Network) stack,
    # which deploys first, could not be deleted while this stack imports it (aws-cdk-lib README, "The deadly
    # embrace"). Read with Fn::GetStackOutput, the value leaves the export unimported; kept, the export lets a
    # stage deployed with the import move over (ReferenceStrength.BOTH).
    serving = json.dumps(serving_templates(prod))
    assert "Prometheus" not in "".join(re.findall(r'"Fn::ImportValue": "([^"]+)"', serving))
    weak = set(re.findall(r'"OutputName": "([^"]+)"', serving))
    assert {name for name in weak if "PrometheusWorkspace" in name} == {
        name for name in weak if name.startswith("PublishOutputFnGetAttPrometheusWorkspace")
    }
    assert any("WorkspaceId" in name for name in weak)
    cluster_exports = [o["Export"]["Name"] for o in prod.template("Cluster")["Outputs"].values() if "Export" in o]
    assert any("PrometheusWorkspace" in name and "WorkspaceId" in name for name in cluster_exports)
    # What a replacement would change stays strong.
    assert "prod-ModelStore:ExportsOutputRefFileSystem" in serving


def test_the_serving_stack_names_no_model(dev: Assembly, prod: Assembly) -> None:
    # A model's check, alarms and dashboard are in its own stack: adding or removing one leaves Serving as it is,
    # but for what the models share (test_only_the_pools_limits_follow_the_models).
    for assembly in (dev, prod):
        serving = json.dumps(assembly.template("Serving"))
        assert not re.search(r"gpt-oss|gptoss|GptOss", serving)


def test_only_the_pools_limits_follow_the_models() -> None:
    def shared(data: dict[str, Any]) -> dict[str, Any]:
        settings = parse_stage_settings("prod", data)
        charts = stage_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
        return {chart_id: chart.to_json() for chart_id, chart in charts.items()}

    one = keyed_prod_data()
    two = copy.deepcopy(one)
    second = {**two["models"][0], "name": "gpt-oss-20b-b", "service_name": "gptoss-b", "revision": "a" * 40}
    two["models"].append(second)
    before, after = shared(one), shared(two)
    changed = {chart for chart in before if before[chart] != after[chart]}
    assert changed == {"GpuNodePool-gpu-node-pool", "GpuNodePool-gpu-fallback-g5"}
    for chart in changed:
        (old,) = [o for o in before[chart] if o["kind"] == "NodePool"]
        (new,) = [o for o in after[chart] if o["kind"] == "NodePool"]
        assert {**old["spec"], "limits": None} == {**new["spec"], "limits": None}
    # Limits fixed in the settings: a model added changes nothing the stage shares.
    for data in (one, two):
        for pool in data["gpu_node_pools"]:
            pool["limits"] = {"cpu": 400, "memory": "1600Gi", "gpu": 16}
    assert shared(one) == shared(two)
