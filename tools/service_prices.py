"""`make prices`: settings/catalog/service_prices.yaml from AWS's price list, for every region the catalog knows.

For each price `make cost` uses (settings/cost.py), the AWS Price List Query API (GetProducts, through the pricing
endpoint in us-east-1; any AWS credentials may call it) is asked for the offer's products in the region, by their
exact attributes; the one whose usage type matches the price's is kept (exactly one must: more or none is an error
naming the price, never a guess), and its on-demand price, at the tier asked, is written with the product's SKU,
usage type and the price list's publication date. The selectors follow infracost's (infracost/infracost
internal/resources/aws at 95ba4f49a7abf5567b04f751a115543281a4ab18: eks_cluster.go, nat_gateway.go,
vpc_endpoint.go, lb.go, wafv2_web_acl.go, cloudwatch_dashboard.go, cloudwatch_log_group.go,
s3_storage_class_helpers.go) and, for EKS Auto Mode's fee, vantage-sh/ec2instances.info
(scraper/aws/ec2/eks_auto_mode.go at 4ef36cd2c9867c1076206dcb691412ae2de7e8dd). FSx for Lustre's and Managed
Prometheus's selectors are read from the price list's attribute names without such a source: where their product
is not found, the price stays out of the table and the run says so.

    make prices    # AWS credentials of any account
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from settings.cost import PRICES_FILE
from settings.schema import LUSTRE_THROUGHPUTS_PER_TIB
from settings.sizing import catalog
from settings.yaml_files import load_yaml

REGIONS_FILE = Path(__file__).resolve().parent.parent / "settings" / "catalog" / "regions.yaml"
# A usage type carries its region's prefix (USW2-, EUC1-, EU-), or none in us-east-1.
PREFIX = r"^([A-Z]{2,4}[0-9]?-)?"


@dataclass(frozen=True)
class Selector:
    """How to find one price: the offer, its products' exact attributes, the usage type, the tier and the scale."""

    key: str
    offer: str
    attributes: tuple[tuple[str, str], ...]
    usage_type: str | None  # a regular expression, anchored; None: the attributes alone pick the product
    unit: str
    per_region: bool = True  # False: a global product, which names no region
    scale: float = 1.0  # the table's unit in the offer's (a million requests: 1e6 requests)
    tier: str | None = "0"  # the price dimension's beginRange; None: the first that is not free

    def filters(self, region: str) -> list[dict[str, str]]:
        where = [("regionCode", region)] if self.per_region else []
        return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (*where, *self.attributes)]


def usage(suffix: str) -> str:
    return PREFIX + re.escape(suffix) + "$"


WAF = (("productFamily", "Web Application Firewall"),)
ALB = (("productFamily", "Load Balancer-Application"), ("locationType", "AWS Region"))
VALKEY_SERVERLESS = (("productFamily", "ElastiCache Serverless"), ("cacheEngine", "Valkey"))
# The prices that name neither an instance type nor a throughput tier.
FIXED = (
    Selector(
        "eks_cluster_hour",
        "AmazonEKS",
        (("productFamily", "Compute"),),
        usage("AmazonEKS-Hours:perCluster"),
        "cluster-hour",
    ),
    Selector(
        "nat_gateway_hour", "AmazonEC2", (("productFamily", "NAT Gateway"),), usage("NatGateway-Hours"), "gateway-hour"
    ),
    Selector(
        "nat_gateway_gb", "AmazonEC2", (("productFamily", "NAT Gateway"),), usage("NatGateway-Bytes"), "GB processed"
    ),
    Selector(
        "interface_endpoint_hour",
        "AmazonVPC",
        (("productFamily", "VpcEndpoint"),),
        usage("VpcEndpoint-Hours"),
        "endpoint-zone-hour",
    ),
    Selector("alb_hour", "AWSELB", ALB, usage("LoadBalancerUsage"), "load balancer-hour"),
    Selector("alb_lcu_hour", "AWSELB", ALB, usage("LCUUsage"), "LCU-hour"),
    Selector("waf_web_acl_month", "awswaf", WAF, usage("WebACLV2"), "web ACL-month"),
    Selector("waf_rule_month", "awswaf", WAF, usage("RuleV2"), "rule-month"),
    Selector("waf_million_requests", "awswaf", WAF, usage("RequestV2-Tier1"), "million requests", scale=1e6),
    Selector(
        "dashboard_month",
        "AmazonCloudWatch",
        (("productFamily", "Dashboard"), ("usagetype", "DashboardsUsageHour")),
        None,
        "dashboard-month",
        per_region=False,
    ),
    Selector(
        "logs_ingest_gb",
        "AmazonCloudWatch",
        (("productFamily", "Data Payload"),),
        usage("DataProcessing-Bytes"),
        "GB ingested",
    ),
    Selector(
        "s3_standard_gb_month", "AmazonS3", (("volumeType", "Standard"),), usage("TimedStorage-ByteHrs"), "GB-month"
    ),
    # ElastiCache Serverless for Valkey: the product family and usage types as ElastiCache's Cost and Usage Report
    # names them (ServerlessStorage; ServerlessUsage for the processing units), the engine as the offer's cacheEngine
    # attribute, title-cased as for its cache nodes (infracost/infracost internal/resources/aws/elasticache_cluster.go).
    # Not checked against the price list here: a selector that finds no product, or several, is reported and left
    # out, never guessed.
    Selector(
        "elasticache_serverless_valkey_gb_hour",
        "AmazonElastiCache",
        VALKEY_SERVERLESS,
        usage("ElastiCache:ServerlessStorage"),
        "GB-hour of data stored (ElastiCache Serverless for Valkey)",
    ),
    Selector(
        "elasticache_serverless_valkey_million_ecpu",
        "AmazonElastiCache",
        VALKEY_SERVERLESS,
        usage("ElastiCache:ServerlessUsage"),
        "million ElastiCache Processing Units (ElastiCache Serverless for Valkey)",
        scale=1e6,
    ),
    Selector(
        "amp_million_samples",
        "AmazonPrometheus",
        (),
        usage("AMP:MetricSampleCount"),
        "million samples ingested (first paid tier)",
        scale=1e6,
        tier=None,
    ),
)


def selectors(instance_types: list[str]) -> list[Selector]:
    """Every price the table holds for a region: the fixed ones, Auto Mode's fee per instance type, Lustre's per
    throughput tier."""
    return [
        *FIXED,
        *(
            Selector(
                f"auto_mode:{name}",
                "AmazonEKS",
                (("eksproducttype", "AutoMode"), ("instancetype", name)),
                None,
                "instance-hour",
            )
            for name in instance_types
        ),
        *(
            Selector(
                f"lustre_persistent_2_{tier}_gb_month",
                "AmazonFSx",
                (("fileSystemType", "Lustre"), ("storageType", "SSD"), ("throughputCapacity", str(tier))),
                usage(f"Storage.SSD.{tier}"),
                "GB-month",
            )
            for tier in LUSTRE_THROUGHPUTS_PER_TIB
        ),
    ]


class MissingPriceError(Exception):
    """No product, or more than one, matches a selector."""


def products(pricing: Any, selector: Selector, region: str) -> list[dict[str, Any]]:
    """The offer's products in the region with the selector's attributes, and usage type."""
    found, token = [], None
    while True:
        page = pricing.get_products(
            ServiceCode=selector.offer,
            Filters=selector.filters(region),
            FormatVersion="aws_v1",
            MaxResults=100,
            **({"NextToken": token} if token else {}),
        )
        found += [json.loads(item) for item in page["PriceList"]]
        token = page.get("NextToken")
        if not token:
            break
    if selector.usage_type is None:
        return found
    return [item for item in found if re.match(selector.usage_type, item["product"]["attributes"].get("usagetype", ""))]


def price_of(item: dict[str, Any], selector: Selector) -> float:
    """The product's on-demand price at the selector's tier, in the table's unit."""
    terms = list(item.get("terms", {}).get("OnDemand", {}).values())
    if len(terms) != 1:
        raise MissingPriceError(f"{selector.key}: {len(terms)} on-demand terms, not one")
    (term,) = terms
    dimensions = sorted(term["priceDimensions"].values(), key=lambda d: float(d.get("beginRange", "0")))
    if selector.tier is None:
        chosen = next((d for d in dimensions if float(d["pricePerUnit"]["USD"]) > 0), None)
    else:
        chosen = next((d for d in dimensions if float(d.get("beginRange", "0")) == float(selector.tier)), None)
    if chosen is None:
        raise MissingPriceError(f"{selector.key}: no price dimension at tier {selector.tier or 'first paid'}")
    return float(chosen["pricePerUnit"]["USD"]) * selector.scale


def region_prices(pricing: Any, region: str, instance_types: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The region's prices for the table, and what was not found (each line says why)."""
    prices, missing = {}, []
    for selector in selectors(instance_types):
        matched = products(pricing, selector, region)
        if len(matched) != 1:
            missing.append(f"{region} {selector.key}: {len(matched)} products match, not one")
            continue
        (item,) = matched
        try:
            usd = price_of(item, selector)
        except MissingPriceError as problem:
            missing.append(f"{region} {problem}")
            continue
        sku, usage_type = item["product"]["sku"], item["product"]["attributes"].get("usagetype")
        prices[selector.key] = {
            "usd": round(usd, 10),
            "unit": selector.unit,
            "source": f"AWS Price List, {selector.offer} SKU {sku} ({usage_type})",
            "date": str(item.get("publicationDate", ""))[:10],
        }
    return prices, missing


HEADER = """# Unit prices in USD of what a stage runs besides its GPU instances (those are in on_demand_prices.yaml), by
# region, each with its source and date. Written by `make prices` (tools/service_prices.py) from the AWS Price List;
# do not edit: run it again. Keys: settings/cost.py.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", action="append", help="only these regions (default: every one of regions.yaml)")
    args = parser.parse_args(argv)
    import boto3

    pricing = boto3.client("pricing", region_name="us-east-1")
    regions = args.region or sorted(load_yaml(REGIONS_FILE.read_text())["regions"])
    instance_types = sorted(instance.type for instance in catalog())
    # Regions not asked for keep their prices; a run over every region replaces what dated pages gave by hand.
    table: dict[str, Any] = {} if args.region is None else dict(load_yaml(PRICES_FILE.read_text())["prices"])
    missing: list[str] = []
    for region in regions:
        table[region], absent = region_prices(pricing, region, instance_types)
        missing += absent
    PRICES_FILE.write_text(HEADER + yaml.safe_dump({"prices": table}, sort_keys=True, width=120))
    print(f"wrote {sum(len(p) for p in table.values())} prices for {len(regions)} regions to {PRICES_FILE}")
    for line in missing:
        print(f"not found: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
