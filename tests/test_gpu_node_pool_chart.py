"""GpuNodePoolChart: the walkthrough's NodePool, plus a disruption policy that spares serving nodes."""

from __future__ import annotations

import re
from typing import Any

import cdk8s
import pytest

from charts import DeployedResources, build_charts
from settings import parse_stage_settings
from tests.conftest import find, find_all, gpu_pool_objects, render_charts, stage_data
from tests.scanners import karpenter_problems


def node_pool(stage: str = "dev") -> dict[str, Any]:
    """The stage's first (preferred) GPU NodePool."""
    return find_all(gpu_pool_objects(render_charts(stage)), "NodePool")[0]


def rendered_pool_chart(data: dict[str, Any], stage: str = "dev") -> list[dict[str, Any]]:
    settings = parse_stage_settings(stage, data)
    return gpu_pool_objects(
        {
            key: chart.to_json()
            for key, chart in build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings)).items()
        }
    )


def test_node_pool_is_the_walkthroughs() -> None:
    pool = node_pool()
    assert pool["apiVersion"] == "karpenter.sh/v1"
    assert pool["metadata"] == {"name": "gpu-node-pool"}  # cluster-scoped: no namespace
    template = pool["spec"]["template"]
    assert template["metadata"]["labels"] == {"type": "karpenter", "NodeGroupType": "gpu-node-pool"}
    # Each pool has a NodeClass of its own, of its name: disks and reservations are per pool.
    assert template["spec"]["nodeClassRef"] == {
        "group": "eks.amazonaws.com",
        "kind": "NodeClass",
        "name": "gpu-node-pool",
    }
    assert pool["spec"]["weight"] == 100  # the first pool in the order of preference
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}]
    assert template["spec"]["requirements"] == [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": ["g"]},
        {"key": "eks.amazonaws.com/instance-generation", "operator": "Gt", "values": ["4"]},
        # Whole GPUs with memory for gpt-oss-20b's weights and runtime (settings/sizing.py).
        {"key": "eks.amazonaws.com/instance-gpu-memory", "operator": "Gt", "values": ["18946"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        # Pinned to the file system's zone: Lustre is single-AZ.
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-west-2a"]},
    ]
    # Derived: two nodes (a replica and a rollout surge) of the largest instance that can run it,
    # g6e.16xlarge (64 vCPUs, 512 GiB, one L40S).
    assert pool["spec"]["limits"] == {"cpu": 128, "memory": "1024Gi", "nvidia.com/gpu": 2}


def test_gpu_node_class_gives_nodes_a_big_fast_disk() -> None:
    node_class = find(gpu_pool_objects(render_charts("dev")), "NodeClass")
    assert node_class["apiVersion"] == "eks.amazonaws.com/v1"
    assert node_class["metadata"] == {"name": "gpu-node-pool"}
    assert "capacityReservationSelectorTerms" not in node_class["spec"]  # open reservations stay usable
    spec = node_class["spec"]
    assert spec["ephemeralStorage"] == {"size": "200Gi", "iops": 10000, "throughput": 1000}
    assert spec["role"] == "<cluster node role name>"
    assert spec["securityGroupSelectorTerms"] == [{"id": "<cluster security group id>"}]
    assert [term["id"] for term in spec["subnetSelectorTerms"]] == [
        f"<private subnet in us-west-2{zone}>" for zone in "abc"
    ]


def test_gpu_nodes_can_spread_over_every_zone() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["zones"] = "all_zones"
    keys = [r["key"] for r in find(rendered_pool_chart(data), "NodePool")["spec"]["template"]["spec"]["requirements"]]
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
    # Autoscaling's most replicas (4) and a rollout surge, of the largest candidate (g6e.16xlarge).
    assert spec["limits"] == {"cpu": 320, "memory": "2560Gi", "nvidia.com/gpu": 5}


def test_instance_families_and_no_generation_bound_render_as_requirements() -> None:
    data = stage_data()
    data["gpu_node_pools"][0].update(instance_categories=[], instance_families=["g6e", "g6"])
    data["gpu_node_pools"][0]["instance_generation_greater_than"] = None
    rendered = find(rendered_pool_chart(data), "NodePool")
    keys = {r["key"]: r for r in rendered["spec"]["template"]["spec"]["requirements"]}
    assert keys["eks.amazonaws.com/instance-family"] == {
        "key": "eks.amazonaws.com/instance-family",
        "operator": "In",
        "values": ["g6e", "g6"],
    }
    assert "eks.amazonaws.com/instance-category" not in keys
    assert "eks.amazonaws.com/instance-generation" not in keys


# GPU instances of category g, generation > 4, as Karpenter describes them (per-GPU memory in MiB,
# from EC2's GpuInfo; g6f and gr6f get fractions of one L4, reported as 0 GPUs): aws/karpenter-provider-aws
# website/content/en/preview/reference/instance-types.md at 1d927085 (November 2026).
G_INSTANCES = {
    "g5.xlarge": 22888,
    "g5.2xlarge": 22888,
    "g5.12xlarge": 22888,
    "g6.xlarge": 22888,
    "g6.2xlarge": 22888,
    "g6.12xlarge": 22888,
    "g6e.xlarge": 45776,
    "g6e.2xlarge": 45776,
    "g6e.12xlarge": 45776,
    "g6f.large": 2861,
    "g6f.xlarge": 2861,
    "g6f.2xlarge": 5722,
    "g6f.4xlarge": 11444,
    "gr6f.4xlarge": 11444,
}
FRACTIONAL_GPU_FAMILIES = ("g6f", "gr6f")


def instance_labels(instance_type: str) -> dict[str, str]:
    family = instance_type.split(".")[0]
    parts = re.match(r"([a-z]+)([0-9]+)", family)
    assert parts, family
    category, generation = parts.groups()
    return {
        "karpenter.sh/capacity-type": "on-demand",
        # Karpenter's instance type scheme: category letters, then the generation's digits.
        "eks.amazonaws.com/instance-category": category,
        "eks.amazonaws.com/instance-family": family,
        "eks.amazonaws.com/instance-generation": generation,
        "eks.amazonaws.com/instance-gpu-memory": str(G_INSTANCES[instance_type]),
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": "us-west-2a",
    }


def satisfies(labels: dict[str, str], requirement: dict[str, Any]) -> bool:
    """Karpenter's (and the scheduler's) reading of one requirement against a node's labels."""
    value, operator, values = labels.get(requirement["key"]), requirement["operator"], requirement.get("values", [])
    return {
        "In": lambda: value in values,
        "NotIn": lambda: value not in values,
        "Exists": lambda: value is not None,
        "DoesNotExist": lambda: value is None,
        "Gt": lambda: value is not None and int(value) > int(values[0]),
        "Lt": lambda: value is not None and int(value) < int(values[0]),
    }[operator]()


def candidates(stage: str) -> set[str]:
    """The catalog's instances that both a pool and the model's pod accept."""
    pools = [
        pool["spec"]["template"]["spec"]["requirements"]
        for pool in find_all(gpu_pool_objects(render_charts(stage)), "NodePool")
    ]
    deployment = find(render_charts(stage)["Model-gpt-oss-20b"], "Deployment")
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    return {
        instance
        for instance in G_INSTANCES
        for pool in pools
        if all(satisfies(instance_labels(instance), r) for r in [*pool, *term["matchExpressions"]])
    }


def test_instance_labels_are_read_as_karpenter_names_them() -> None:
    assert instance_labels("g6e.xlarge")["eks.amazonaws.com/instance-category"] == "g"
    assert instance_labels("gr6f.4xlarge")["eks.amazonaws.com/instance-category"] == "gr"
    assert instance_labels("g6f.large")["eks.amazonaws.com/instance-generation"] == "6"


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_no_fractional_gpu_instance_can_be_chosen_for_gpt_oss_20b(stage: str) -> None:
    chosen = candidates(stage)
    assert not {instance for instance in chosen if instance.startswith(FRACTIONAL_GPU_FAMILIES)}
    # Every whole-GPU instance of the walkthrough's families still qualifies.
    assert {"g5.xlarge", "g6.xlarge", "g6e.xlarge", "g6.12xlarge"} <= chosen


def test_without_the_gpu_memory_requirement_fractional_gpus_would_qualify() -> None:
    # The requirement is what keeps them out: the walkthrough's category and generation alone admit them.
    walkthrough = [r for r in node_pool()["spec"]["template"]["spec"]["requirements"] if "gpu-memory" not in r["key"]]
    assert all(satisfies(instance_labels("g6f.4xlarge"), r) for r in walkthrough)


# --- several pools, in order of preference ---


def test_production_falls_back_from_l4_and_l40s_to_a10g_on_demand() -> None:
    rendered = gpu_pool_objects(render_charts("prod"))
    pools = find_all(rendered, "NodePool")
    assert [(p["metadata"]["name"], p["spec"]["weight"]) for p in pools] == [
        ("gpu-node-pool", 100),
        ("gpu-fallback-g5", 90),
    ]
    families = [
        next(r["values"] for r in p["spec"]["template"]["spec"]["requirements"] if r["key"].endswith("instance-family"))
        for p in pools
    ]
    assert families == [["g6", "g6e"], ["g5"]]
    # Each pool alone holds the most replicas (4) and a surge: when the first has no capacity, the second takes all.
    assert [p["spec"]["limits"]["nvidia.com/gpu"] for p in pools] == [5, 5]
    # g5.16xlarge (64 vCPUs, 256 GiB) is the largest A10G instance with one GPU.
    assert pools[1]["spec"]["limits"] == {"cpu": 320, "memory": "1280Gi", "nvidia.com/gpu": 5}
    assert [c["metadata"]["name"] for c in find_all(rendered, "NodeClass")] == ["gpu-node-pool", "gpu-fallback-g5"]
    assert all(p["spec"]["disruption"]["budgets"][1]["nodes"] == "0" for p in pools)  # each keeps the window


def test_weights_follow_the_order_of_the_settings() -> None:
    data = stage_data()
    data["gpu_node_pools"] = [
        {"name": "spot-g6e", "instance_families": ["g6e"], "capacity_types": ["spot"]},
        {"name": "on-demand-g6e", "instance_families": ["g6e"], "capacity_types": ["on-demand"]},
        {"name": "on-demand-g5", "instance_families": ["g5"], "capacity_types": ["on-demand"]},
    ]
    pools = find_all(rendered_pool_chart(data), "NodePool")
    assert [(p["metadata"]["name"], p["spec"]["weight"]) for p in pools] == [
        ("spot-g6e", 100),
        ("on-demand-g6e", 90),
        ("on-demand-g5", 80),
    ]
    capacity = [p["spec"]["template"]["spec"]["requirements"][0]["values"] for p in pools]
    assert capacity == [["spot"], ["on-demand"], ["on-demand"]]


def test_a_pool_with_reservations_selects_them_and_launches_reserved_capacity() -> None:
    data = stage_data()
    data["cluster"]["open_reservations_unused"] = True
    data["gpu_node_pools"].insert(
        0,
        {
            "name": "reserved-g6e",
            "instance_families": ["g6e"],
            "capacity_types": ["reserved"],
            "capacity_reservations": ["cr-0123456789abcdef0", "cr-0fedcba9876543210"],
        },
    )
    rendered = rendered_pool_chart(data)
    reserved_class, open_class = find_all(rendered, "NodeClass")
    assert reserved_class["spec"]["capacityReservationSelectorTerms"] == [
        {"id": "cr-0123456789abcdef0"},
        {"id": "cr-0fedcba9876543210"},
    ]
    assert "capacityReservationSelectorTerms" not in open_class["spec"]
    reserved, fallback = find_all(rendered, "NodePool")
    assert reserved["spec"]["template"]["spec"]["requirements"][0]["values"] == ["reserved"]
    assert reserved["spec"]["template"]["spec"]["nodeClassRef"]["name"] == "reserved-g6e"
    assert (reserved["spec"]["weight"], fallback["spec"]["weight"]) == (100, 90)
    assert karpenter_problems([reserved, fallback]) == []


def test_a_pool_of_faster_networks_requires_their_baseline_bandwidth() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["min_network_mbps"] = 10000
    pool = find(rendered_pool_chart(data), "NodePool")
    (requirement,) = [
        r
        for r in pool["spec"]["template"]["spec"]["requirements"]
        if r["key"] == "eks.amazonaws.com/instance-network-bandwidth"
    ]
    # Karpenter's Gt is strict: 9999 admits 10,000 Mbps (a g6.4xlarge), not 5,000 (a g6.2xlarge).
    assert requirement == {"key": "eks.amazonaws.com/instance-network-bandwidth", "operator": "Gt", "values": ["9999"]}
    assert satisfies({"eks.amazonaws.com/instance-network-bandwidth": "10000"}, requirement)
    assert not satisfies({"eks.amazonaws.com/instance-network-bandwidth": "5000"}, requirement)
    assert karpenter_problems([pool]) == []
