"""GpuNodePoolChart: the walkthrough's NodePool, plus a disruption policy that spares serving nodes."""

from __future__ import annotations

from typing import Any

import cdk8s

from charts.gpu_node_pool import GpuNodePoolChart
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
    assert template["spec"]["nodeClassRef"] == {"group": "eks.amazonaws.com", "kind": "NodeClass", "name": "default"}
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}]
    assert template["spec"]["requirements"] == [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": ["g"]},
        {"key": "eks.amazonaws.com/instance-generation", "operator": "Gt", "values": ["4"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
    ]
    assert pool["spec"]["limits"] == {"cpu": 100, "memory": "100Gi"}


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
    pool = parse_stage_settings("dev", data).gpu_node_pool
    rendered = GpuNodePoolChart(cdk8s.App(), "pool", pool=pool).to_json()[0]
    keys = {r["key"]: r for r in rendered["spec"]["template"]["spec"]["requirements"]}
    assert keys["eks.amazonaws.com/instance-family"] == {
        "key": "eks.amazonaws.com/instance-family",
        "operator": "In",
        "values": ["g6e", "g6"],
    }
    assert "eks.amazonaws.com/instance-category" not in keys
    assert "eks.amazonaws.com/instance-generation" not in keys
