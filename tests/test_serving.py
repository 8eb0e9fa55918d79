"""ServingStack: the charts applied to the cluster, apart from the cluster's own template."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Assembly, render_charts

MANIFEST_TYPE = "Custom::AWSCDK-EKS-KubernetesResource"


def applied_manifests(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == MANIFEST_TYPE
    }


def without_prune_labels(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects as the chart rendered them, before the kubectl handler's prune label was added."""
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for key in [key for key in labels if key.startswith("aws.cdk.eks/prune-")]:
            del labels[key]
        if not labels:
            obj["metadata"].pop("labels", None)
    return objects


def test_every_chart_is_applied_exactly_as_rendered(dev: Assembly) -> None:
    applied = [
        without_prune_labels(json.loads(m["Manifest"])) for m in applied_manifests(dev.template("Serving")).values()
    ]
    rendered = list(render_charts("dev").values())
    assert sorted(map(json.dumps, applied)) == sorted(map(json.dumps, rendered))


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


def test_serving_depends_on_the_cluster_stack(dev: Assembly) -> None:
    cluster_artifact = next(k for k, a in dev.manifest["artifacts"].items() if a.get("displayName") == "dev/Cluster")
    assert cluster_artifact in dev.stacks()["Serving"]["dependencies"]


def test_models_and_node_pools_stay_out_of_the_cluster_template(dev: Assembly) -> None:
    # So a new model or new vLLM flags change only the serving stack.
    cluster = json.dumps(dev.template("Cluster"))
    for value in ("gpt-oss", "vllm", "gpu-node-pool", "karpenter.sh"):
        assert value not in cluster
    assert MANIFEST_TYPE not in cluster


def test_stage_prints_the_port_forward_and_test_request_for_each_model(dev: Assembly) -> None:
    outputs = dev.template("Serving")["Outputs"]
    assert outputs["GptOss20bPortForwardCommand"]["Value"] == (
        "kubectl -n gpt-oss-20b port-forward service/gptoss-service 8000:8000"
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
