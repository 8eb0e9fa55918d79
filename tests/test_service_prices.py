"""`make prices` against the Price List Query API's own shapes (botocore's Stubber): one product per price, or none."""

from __future__ import annotations

import json
from typing import Any

import pytest

from settings import cost, parse_stage_settings
from settings.sizing import catalog
from tests.aws_stubs import StubbedClients
from tests.test_exposure import exposed
from tools.service_prices import region_prices, selectors

REGION = "us-west-2"


def item(sku: str, usage_type: str, dimensions: list[tuple[str, str]], **attributes: str) -> str:
    """One GetProducts PriceList entry: the product and its on-demand term, priced by (beginRange, USD) tiers."""
    return json.dumps(
        {
            "product": {"sku": sku, "productFamily": "x", "attributes": {"usagetype": usage_type, **attributes}},
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.{i}": {"beginRange": begin, "unit": "Hrs", "pricePerUnit": {"USD": usd}}
                            for i, (begin, usd) in enumerate(dimensions)
                        }
                    }
                }
            },
            "publicationDate": "2026-11-20T18:30:00Z",
        }
    )


def answer(key: str) -> list[str]:
    """What the price list holds for each selector in us-west-2, as the test sees it."""
    return {
        "eks_cluster_hour": [
            item("EKS1", "USW2-AmazonEKS-Hours:perCluster", [("0", "0.1000000000")]),
            item("EKS2", "USW2-AmazonEKS-Hours:extendedSupport", [("0", "0.6000000000")]),  # not this price
        ],
        "auto_mode:g6.xlarge": [item("AM1", "USW2-EKS:AutoMode-g6.xlarge", [("0", "0.0965760000")])],
        # A product without an on-demand term: reported, and the run goes on.
        "nat_gateway_gb": [
            json.dumps({**json.loads(item("NAT2", "USW2-NatGateway-Bytes", [("0", "0.045")])), "terms": {}})
        ],
        "nat_gateway_hour": [item("NAT1", "USW2-NatGateway-Hours", [("0", "0.045")])],
        "waf_million_requests": [item("WAF3", "USW2-RequestV2-Tier1", [("0", "0.0000006000")])],
        # Two products for one price: refused, not guessed.
        "alb_hour": [item("ALB1", "USW2-LoadBalancerUsage", [("0", "0.0225")])] * 2,
        "amp_million_samples": [
            item(
                "AMP1",
                "USW2-AMP:MetricSampleCount",
                [("0", "0"), ("40000000", "0.00000009"), ("2000000000", "0.000000035")],
            )
        ],
    }.get(key, [])


def test_each_price_is_the_one_product_of_its_usage_type_at_its_tier_with_its_source() -> None:
    with StubbedClients(["pricing"]) as stubs:
        for selector in selectors(["g6.xlarge"]):
            stubs.stubbers["pricing"].add_response(
                "get_products",
                {"PriceList": answer(selector.key), "FormatVersion": "aws_v1"},
                {
                    "ServiceCode": selector.offer,
                    "Filters": selector.filters(REGION),
                    "FormatVersion": "aws_v1",
                    "MaxResults": 100,
                },
            )
        prices, missing = region_prices(stubs.client("pricing"), REGION, ["g6.xlarge"])
        stubs.stubbers["pricing"].assert_no_pending_responses()
    assert prices["eks_cluster_hour"] == {
        "usd": 0.1,
        "unit": "cluster-hour",
        "source": "AWS Price List, AmazonEKS SKU EKS1 (USW2-AmazonEKS-Hours:perCluster)",
        "date": "2026-11-20",
    }
    assert prices["auto_mode:g6.xlarge"]["usd"] == pytest.approx(0.096576)
    assert prices["waf_million_requests"]["usd"] == pytest.approx(0.6)  # per request in the list, per million here
    assert prices["amp_million_samples"]["usd"] == pytest.approx(0.09)  # the first tier that is not the free one
    assert "alb_hour" not in prices
    assert f"{REGION} alb_hour: 2 products match, not one" in missing
    assert f"{REGION} dashboard_month: 0 products match, not one" in missing
    assert f"{REGION} nat_gateway_gb: 0 on-demand terms, not one" in missing


def test_a_global_product_is_asked_for_without_a_region_and_the_others_with_theirs() -> None:
    by_key: dict[str, Any] = {selector.key: selector for selector in selectors([])}
    assert by_key["dashboard_month"].filters(REGION) == [
        {"Type": "TERM_MATCH", "Field": "productFamily", "Value": "Dashboard"},
        {"Type": "TERM_MATCH", "Field": "usagetype", "Value": "DashboardsUsageHour"},
    ]
    assert by_key["nat_gateway_hour"].filters(REGION)[0] == {
        "Type": "TERM_MATCH",
        "Field": "regionCode",
        "Value": REGION,
    }


class Asked(dict[str, Any]):
    """A price table that remembers every key asked of it."""

    def __init__(self, asked: set[str]) -> None:
        super().__init__()
        self.asked = asked

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default


def test_every_price_make_cost_asks_for_is_one_make_prices_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: set[str] = set()
    monkeypatch.setattr(cost, "service_prices", lambda region: Asked(asked))
    data = exposed()  # prod, with metrics, observability and a load balancer: every component
    data["model_store"] = {**data.get("model_store", {}), "throughput_per_tib": 500}
    cost.estimate(parse_stage_settings("prod", data))
    written = {selector.key for selector in selectors(sorted(instance.type for instance in catalog()))}
    assert "lustre_persistent_2_500_gb_month" in asked
    assert asked <= written, asked - written
