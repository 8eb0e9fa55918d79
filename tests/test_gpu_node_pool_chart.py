"""GpuNodePoolChart: the walkthrough's NodePool, plus a disruption policy that spares serving nodes."""

from __future__ import annotations

from typing import Any

import cdk8s

from charts import DeployedResources, build_charts
from settings import parse_stage_settings
from tests.conftest import find, render_charts, stage_data


def node_pool(stage: str = "dev") -> dict[str, Any]:
    return find(render_charts(stage)["GpuNodePool"], "NodePool")


def test_node_pool_is_the_walkthroughs() -> None:
    pool = node_pool()
    assert pool["apiVersion"] == "karpenter.sh/v1"
    assert pool["metadata"] == {"name": "gpu-node-pool"}  # cluster-scoped: no namespace
    template = pool["spec"]["template"]
    assert template["metadata"]["labels"] == {"type": "karpenter", "NodeGroupType": "gpu-node-pool"}
    assert template["spec"]["nodeClassRef"] == {"group": "eks.amazonaws.com", "kind": "NodeClass", "name": "gpu"}
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}]
    assert template["spec"]["requirements"] == [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": ["g"]},
        {"key": "eks.amazonaws.com/instance-generation", "operator": "Gt", "values": ["4"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        # Pinned to the file system's zone: Lustre is single-AZ.
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-west-2a"]},
    ]
    assert pool["spec"]["limits"] == {"cpu": 100, "memory": "100Gi"}


def test_gpu_node_class_gives_nodes_a_big_fast_disk() -> None:
    node_class = find(render_charts("dev")["GpuNodePool"], "NodeClass")
    assert node_class["apiVersion"] == "eks.amazonaws.com/v1"
    assert node_class["metadata"] == {"name": "gpu"}
    spec = node_class["spec"]
    assert spec["ephemeralStorage"] == {"size": "200Gi", "iops": 10000, "throughput": 1000}
    assert spec["role"] == "<cluster node role name>"
    assert spec["securityGroupSelectorTerms"] == [{"id": "<cluster security group id>"}]
    assert [term["id"] for term in spec["subnetSelectorTerms"]] == [
        f"<private subnet in us-west-2{zone}>" for zone in "abc"
    ]


def test_gpu_nodes_can_spread_over_every_zone() -> None:
    data = stage_data()
    data["gpu_node_pool"]["zones"] = "all_zones"
    settings = parse_stage_settings("dev", data)
    rendered = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))["GpuNodePool"].to_json()
    keys = [r["key"] for r in find(rendered, "NodePool")["spec"]["template"]["spec"]["requirements"]]
    assert "topology.kubernetes.io/zone" not in keys


def test_empty_nodes_only_are_consolidated_within_a_budget() -> None:
    disruption = node_pool()["spec"]["disruption"]
    assert disruption == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m", "budgets": [{"nodes": "1"}]}


def test_production_pool_is_on_demand_with_a_gpu_limit() -> None:
    spec = node_pool("prod")["spec"]
    assert spec["template"]["spec"]["requirements"][0] == {
        "key": "karpenter.sh/capacity-type",
        "operator": "In",
        "values": ["on-demand"],
    }
    assert spec["limits"] == {"cpu": 100, "memory": "100Gi", "nvidia.com/gpu": 8}


def test_instance_families_and_no_generation_bound_render_as_requirements() -> None:
    data = stage_data()
    data["gpu_node_pool"].update(instance_categories=[], instance_families=["g6e", "g6"])
    data["gpu_node_pool"]["instance_generation_greater_than"] = None
    settings = parse_stage_settings("dev", data)
    rendered = find(
        build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))["GpuNodePool"].to_json(),
        "NodePool",
    )
    keys = {r["key"]: r for r in rendered["spec"]["template"]["spec"]["requirements"]}
    assert keys["eks.amazonaws.com/instance-family"] == {
        "key": "eks.amazonaws.com/instance-family",
        "operator": "In",
        "values": ["g6e", "g6"],
    }
    assert "eks.amazonaws.com/instance-category" not in keys
    assert "eks.amazonaws.com/instance-generation" not in keys
