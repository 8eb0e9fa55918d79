"""A running stage's second deploy: whatever the stage stops declaring is removed, by CloudFormation's deletion of a
resource, where kubectl's prune would leave it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from commands.plan import PRUNED_KINDS, unfold_manifest
from tests.conftest import Assembly, charts_of, keyed_prod_data

CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/0a1b2c3d-0000-4000-8000-000000000000"


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def exposed(data: dict[str, Any]) -> dict[str, Any]:
    data["models"][0]["exposure"] = {"hostname": "llm.internal.example.com", "certificate_arn": CERTIFICATE}
    return data


def without_autoscaling(data: dict[str, Any]) -> dict[str, Any]:
    del data["models"][0]["autoscaling"]
    return data


def without_api_keys(data: dict[str, Any]) -> dict[str, Any]:
    del data["models"][0]["api_keys_secret"]
    return data


def without_the_fallback_pool(data: dict[str, Any]) -> dict[str, Any]:
    data["gpu_node_pools"] = data["gpu_node_pools"][:1]
    return data


def with_warm_spares(data: dict[str, Any]) -> dict[str, Any]:
    data["models"][0]["warm_spares"] = 1
    return data


def with_a_shared_compile_cache(data: dict[str, Any]) -> dict[str, Any]:
    data["models"][0]["compile_cache"] = True
    del data["models"][0]["api_keys_secret"]  # the cache's own service account, then
    return data


TURNED_OFF = {
    "autoscaling off": (lambda data: data, without_autoscaling),
    "warm spares off": (with_warm_spares, lambda data: data),
    "compile cache off": (with_a_shared_compile_cache, without_api_keys),
    "API keys off": (lambda data: data, without_api_keys),
    "exposure off": (exposed, lambda data: data),
    "a pool removed": (lambda data: data, without_the_fallback_pool),
}


@pytest.mark.parametrize("change", sorted(TURNED_OFF))
def test_what_a_stage_stops_declaring_goes_with_a_resource_of_its_own(change: str) -> None:
    before_of, after_of = TURNED_OFF[change]
    before = charts_of(before_of(copy.deepcopy(keyed_prod_data())))
    after = charts_of(after_of(copy.deepcopy(keyed_prod_data())))
    remaining = {identity(obj) for objects in after.values() for obj in objects}
    gone = [
        (chart_id, obj) for chart_id, objects in before.items() for obj in objects if identity(obj) not in remaining
    ]
    assert gone, "the change removes something"
    for chart_id, obj in gone:
        # Pruned by the chart's own apply, or deleted with its chart's resource, which the stage no longer has.
        assert obj["kind"] in PRUNED_KINDS or chart_id not in after, (change, chart_id, identity(obj))


def test_the_chart_that_held_every_pool_lives_on_and_holds_none(prod: Assembly) -> None:
    # Its resource deleted, CloudFormation would have the kubectl handler delete everything it last applied: every
    # pool, which each pool's own chart now holds. Under its old logical id it is updated instead, to a ConfigMap.
    serving = prod.template("Serving")["Resources"]
    (legacy,) = [
        resource for logical_id, resource in serving.items() if logical_id.startswith("ClusterGpuNodePoolF6E7F62E")
    ]
    assert [obj["kind"] for obj in unfold_manifest(legacy["Properties"]["Manifest"])] == ["ConfigMap"]
    pools = [r for logical_id, r in serving.items() if logical_id.startswith("GpuNodePoolgpu")]
    assert len(pools) == 2
    # The pools' own charts are applied over the objects the old one created.
    assert all(pool["Properties"]["Overwrite"] is True for pool in pools)
