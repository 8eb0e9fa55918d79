"""`make cost`: each component's month at the stage's region's prices, and nothing priced from another region."""

from __future__ import annotations

from typing import Any

import pytest

from commands.monthly_cost import report
from settings import load_stage_settings, parse_stage_settings
from settings.cost import HOURS_A_MONTH, INTERFACE_ENDPOINTS, WEB_ACL_RULES, estimate, service_prices
from settings.sizing import candidates, on_demand_prices
from tests.conftest import Assembly, gateway_data, resources, stage_data
from tests.test_exposure import exposed, web_acl


def in_us_east_1(data: dict[str, Any]) -> dict[str, Any]:
    data["region"] = "us-east-1"
    data["availability_zones"] = ["us-east-1a", "us-east-1b", "us-east-1c"]
    return data


def line(result: Any, component: str) -> Any:
    (found,) = [item for item in result.lines if item.component.startswith(component)]
    return found


def test_the_gpu_nodes_cost_their_catalog_price_for_the_expected_replicas_and_the_most() -> None:
    settings = load_stage_settings("prod")
    (model,) = settings.models
    _, prices = on_demand_prices(settings.region)
    hourly = prices[candidates(settings, model)[0].type]
    result = estimate(settings)
    assert line(result, "gpt-oss-20b: 2 ").monthly == pytest.approx(hourly * HOURS_A_MONTH * 2)
    assert result.most is not None
    assert result.most - result.total == pytest.approx(hourly * HOURS_A_MONTH * (4 - 2))  # autoscaled to its 4


def test_every_priced_line_is_its_quantity_at_its_price_and_the_total_their_sum() -> None:
    settings = parse_stage_settings("dev", in_us_east_1(stage_data("dev")))
    result = estimate(settings)
    prices = service_prices("us-east-1")
    assert line(result, "EKS control plane").monthly == pytest.approx(HOURS_A_MONTH * prices["eks_cluster_hour"].usd)
    nat = line(result, "NAT gateways")
    assert nat.quantity == settings.network.nat_gateways * HOURS_A_MONTH
    assert nat.monthly == pytest.approx(nat.quantity * prices["nat_gateway_hour"].usd)
    assert line(result, "interface endpoints").quantity == INTERFACE_ENDPOINTS * 3 * HOURS_A_MONTH
    assert line(result, "FSx for Lustre").quantity == settings.model_store.storage_capacity_gib  # billed per GiB
    assert result.total == pytest.approx(sum(item.monthly for item in result.lines if item.monthly is not None))
    assert set(result.unpriced) == {item.component for item in result.lines if item.price is None}


def test_no_region_is_priced_at_another_regions_prices() -> None:
    west, east = estimate(load_stage_settings("dev")), estimate(parse_stage_settings("dev", in_us_east_1(stage_data())))
    # The table holds us-east-1's control plane and NAT gateway prices, not us-west-2's: those stay out of dev's total.
    assert line(east, "EKS control plane").price is not None
    assert line(west, "EKS control plane").price is None
    assert "EKS control plane" in west.unpriced
    text = report("dev", west)
    assert "not counted, no us-west-2 price in the tables: " in text
    assert "| EKS control plane | 730 cluster-hours | not in the table | | |" in text


def test_an_exposed_model_adds_its_load_balancer_web_acl_and_rules_the_waf_priced_alike_everywhere() -> None:
    result = estimate(parse_stage_settings("prod", exposed()))
    assert line(result, "web ACLs").monthly == pytest.approx(5.0)
    assert line(result, "web ACL rules").monthly == pytest.approx(WEB_ACL_RULES * 1.0)
    assert line(result, "load balancers").price is None  # us-east-1's ALB price is not us-west-2's
    assert [what for what, _ in result.usage_rates][:3] == [
        "data through the NAT gateways",
        "load balancer capacity units",
        "requests through the web ACLs",
    ]


def test_the_counts_the_estimate_takes_are_the_stacks(dev: Assembly) -> None:
    endpoints = [
        r
        for r in resources(dev.template("Network"), "AWS::EC2::VPCEndpoint")
        if r["Properties"].get("VpcEndpointType") == "Interface"
    ]
    assert len(endpoints) == INTERFACE_ENDPOINTS
    assert len(web_acl()["Rules"]) == WEB_ACL_RULES


def test_every_price_in_the_table_names_its_source_and_date() -> None:
    for region in ("us-east-1", "us-west-2"):
        for key, price in service_prices(region).items():
            assert price.usd > 0, key
            assert price.source.strip(), key
            assert price.date.strip(), key


def test_the_gateways_load_balancer_is_priced_like_an_exposed_models() -> None:
    with_endpoint = estimate(parse_stage_settings("prod", gateway_data("prod")))
    without = gateway_data("prod")
    del without["gateway"]["endpoint"]
    names = [line.component for line in with_endpoint.lines]
    assert {"load balancers", "web ACLs", "web ACL rules"} <= set(names)
    assert "load balancers" not in [line.component for line in estimate(parse_stage_settings("prod", without)).lines]


def test_a_stage_with_a_gateway_pays_for_its_quota_store_at_valkeys_minimum_storage() -> None:
    data = in_us_east_1(gateway_data("prod"))
    del data["gateway"]["endpoint"]  # its certificate is us-west-2's
    result = estimate(parse_stage_settings("prod", data))
    store = line(result, "inference gateway's quota store")
    assert store.quantity == pytest.approx(0.1 * HOURS_A_MONTH)  # 100 MB metered, every hour
    assert store.monthly == pytest.approx(73 * 0.084)  # $6.13 at us-east-1's dated price
    assert (
        "the quota store's requests",
        service_prices("us-east-1")["elasticache_serverless_valkey_million_ecpu"],
    ) in (result.usage_rates)
    # Turned off for its removal, the gateway keeps its store until the settings drop it (stacks/serving.py).
    data["gateway"]["enabled"] = False
    assert line(estimate(parse_stage_settings("prod", data)), "inference gateway's quota store").price is not None
    del data["gateway"]
    without = estimate(parse_stage_settings("prod", data))
    assert not [item for item in without.lines if item.component.startswith("inference gateway")]
    assert "the quota store's requests" not in dict(without.usage_rates)
