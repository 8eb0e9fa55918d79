"""Warm spares: placeholder pods of a model's shape that any replica preempts, priced and counted in the pools."""

from __future__ import annotations

from typing import Any

import cdk8s
import pytest

from charts import DeployedResources, build_charts
from settings import parse_stage_settings
from settings.cost import HOURS_A_MONTH, estimate
from settings.sizing import pool_limits
from tests.conftest import find, stage_data
from tests.scanners import kubernetes_problems
from tests.test_settings import rejected


def with_spares(spares: int) -> dict[str, Any]:
    data = stage_data("prod")
    data["models"][0]["warm_spares"] = spares
    return data


def charts_of(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    settings = parse_stage_settings("prod", data)
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    return {chart_id: chart.to_json() for chart_id, chart in charts.items()}


@pytest.fixture(scope="module")
def charts() -> dict[str, list[dict[str, Any]]]:
    return charts_of(with_spares(2))


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def test_a_spare_is_a_replicas_shape_at_a_priority_every_replica_preempts(charts: dict[str, Any]) -> None:
    objects = charts["WarmSpares-gpt-oss-20b"]
    priority = find(objects, "PriorityClass")
    assert (priority["value"], priority["preemptionPolicy"], priority["globalDefault"]) == (-10, "Never", False)
    assert "namespace" not in priority["metadata"]  # cluster-scoped
    spares = find(objects, "Deployment")
    assert spares["spec"]["replicas"] == 2
    placeholder, replica = pod_of(spares), pod_of(find(charts["Model-gpt-oss-20b"], "Deployment"))
    assert placeholder["priorityClassName"] == priority["metadata"]["name"]
    assert "priorityClassName" not in replica  # priority 0: above the placeholders'
    (holder,) = placeholder["containers"]
    server = replica["containers"][0]
    # The node a placeholder gets is one a replica would get, and it pulls the replicas' image.
    assert holder["image"] == server["image"]
    assert holder["resources"]["requests"] == {
        key: value for key, value in server["resources"]["requests"].items() if key in holder["resources"]["requests"]
    }
    assert holder["resources"]["limits"]["nvidia.com/gpu"] == server["resources"]["limits"]["nvidia.com/gpu"]
    assert placeholder["tolerations"] == replica["tolerations"]
    node_affinity = placeholder["affinity"]["nodeAffinity"]
    assert node_affinity == replica["affinity"]["nodeAffinity"]
    assert holder["command"] == ["sleep", "infinity"]
    # A changed placeholder replaces the old one rather than surging one more GPU node.
    assert spares["spec"]["strategy"] == {"type": "Recreate"}
    # Never beside a replica, whose one-a-node spread would then forbid preempting it.
    (apart,) = [
        term
        for term in placeholder["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        if term["labelSelector"]["matchLabels"] == {"app": "vllm-gpt-oss-20b"}
    ]
    assert apart["topologyKey"] == "kubernetes.io/hostname"
    assert placeholder["terminationGracePeriodSeconds"] == 0  # preempted, gone at once
    assert holder["securityContext"] == server["securityContext"]
    for obj in objects:
        assert kubernetes_problems(obj, "1.36") == []


def test_no_spare_no_placeholder_and_the_pools_hold_a_node_for_each_spare() -> None:
    assert "WarmSpares-gpt-oss-20b" not in charts_of(stage_data("prod"))
    none, two = parse_stage_settings("prod", stage_data("prod")), parse_stage_settings("prod", with_spares(2))
    for pool_without, pool_with in zip(none.gpu_node_pools, two.gpu_node_pools, strict=True):
        assert pool_limits(two, pool_with)["nvidia.com/gpu"] == pool_limits(none, pool_without)["nvidia.com/gpu"] + 2


def test_a_spare_costs_a_node_around_the_clock() -> None:
    result = estimate(parse_stage_settings("prod", with_spares(1)))
    (gpus,) = [line for line in result.lines if line.component.startswith("gpt-oss-20b: 3 ")]
    assert gpus.quantity == 3 * HOURS_A_MONTH  # 2 replicas and the spare
    assert "(1 warm spare)" in gpus.component


def test_a_negative_count_of_spares_is_refused() -> None:
    assert "models[0].warm_spares: Input should be greater than or equal to 0" in rejected(with_spares(-1), "prod")


def test_with_a_shared_compile_cache_a_spare_holds_room_for_its_sidecar_too() -> None:
    data = with_spares(1)
    data["models"][0]["compile_cache"] = True
    charts = charts_of(data)
    holder = pod_of(find(charts["WarmSpares-gpt-oss-20b"], "Deployment"))["containers"][0]
    server = pod_of(find(charts["Model-gpt-oss-20b"], "Deployment"))["containers"][0]
    assert int(holder["resources"]["requests"]["cpu"].removesuffix("m")) == (
        int(server["resources"]["requests"]["cpu"].removesuffix("m")) + 100
    )
