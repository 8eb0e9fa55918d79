"""What a stage costs a month at its settings, per component, at its region's prices (`make cost`).

Each component's monthly quantity comes from the settings (instance-hours, GB-months, resource-months); its unit price
from settings/catalog/on_demand_prices.yaml (GPU instances) or settings/catalog/service_prices.yaml (the rest), both by
region and each price with its source and date. A component without a price for the stage's region is listed, with
its quantity, and left out of the total, which then says so: no region's price stands in for another's. What depends
on traffic (data through the NAT gateways, load balancer capacity units, requests through the web ACL, samples into
Prometheus, log volume) is listed as a rate, not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from settings.schema import StageSettings
from settings.sizing import candidates, on_demand_prices, on_demand_source
from settings.yaml_files import load_yaml

PRICES_FILE = Path(__file__).parent / "catalog" / "service_prices.yaml"
# A month of a resource that runs all the time, as AWS's pricing pages and calculator count it (24 * 365 / 12).
HOURS_A_MONTH = 730
# Interface endpoints of every stage's VPC (stacks/network.py: ECR's API and Docker registry, STS), each in every zone.
INTERFACE_ENDPOINTS = 3
# Rules of an exposed model's web ACL (stacks/web_acl.py: the Known Bad Inputs group, which counts as one, and the two
# rate limits).
WEB_ACL_RULES = 3
# The data ElastiCache Serverless for Valkey meters at the least, whatever the cache holds: 100 MB
# (https://www.usage.ai/blogs/aws/database-savings-plans/elasticache/serverless/, "100 MB minimum storage floor versus
# 1 GB for Redis OSS"). The gateway's quota counters hold a few kilobytes, so its cache is billed at this floor.
VALKEY_SERVERLESS_MINIMUM_GB = 0.1


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str
    date: str


@dataclass(frozen=True)
class Line:
    """One component of a stage's monthly bill: how much of it a month, and at what price, if the table has one."""

    component: str
    quantity: float
    unit: str
    price: Price | None

    @property
    def monthly(self) -> float | None:
        return None if self.price is None else self.quantity * self.price.usd


@dataclass(frozen=True)
class Estimate:
    region: str
    lines: tuple[Line, ...]
    # What traffic decides: each component's rate (price None: not in the table for the region).
    usage_rates: tuple[tuple[str, Price | None], ...]
    # The same with every autoscaled model at its most replicas (None: no model autoscales).
    most: float | None

    @property
    def total(self) -> float:
        """The sum of the priced lines."""
        return sum(line.monthly for line in self.lines if line.monthly is not None)

    @property
    def unpriced(self) -> tuple[str, ...]:
        return tuple(line.component for line in self.lines if line.price is None)


@cache
def service_prices(region: str) -> dict[str, Price]:
    """The table's prices for the region, and those it gives for every region."""
    data = load_yaml(PRICES_FILE.read_text())["prices"]
    merged = {**data.get("all_regions", {}), **data.get(region, {})}
    return {key: Price(**entry) for key, entry in merged.items()}


def priced_total(lines: list[Line]) -> float:
    return sum(line.monthly for line in lines if line.monthly is not None)


def estimate(settings: StageSettings) -> Estimate:
    """The stage's monthly estimate at its region's prices."""
    prices = service_prices(settings.region)
    platform = platform_lines(settings, prices)
    most = None
    if any(model.autoscaling is not None for model in settings.models):
        most = priced_total([*gpu_lines(settings, at_most=True), *platform])
    return Estimate(settings.region, (*gpu_lines(settings), *platform), usage_rates(settings, prices), most)


def gpu_lines(settings: StageSettings, *, at_most: bool = False) -> list[Line]:
    """Each model's replicas on the cheapest instance that runs it (its minimum, or with `at_most` its autoscaling
    maximum), and EKS Auto Mode's fee for managing those instances."""
    priced_region, instance_prices = on_demand_prices(settings.region)
    fees = service_prices(settings.region)
    lines = []
    for model in settings.models:
        instance = candidates(settings, model)[0].type
        replicas = model.autoscaling.max_replicas if at_most and model.autoscaling else model.replicas
        # The warm spares hold a node each, whatever the replicas (charts/warm_spares.py).
        replicas += model.warm_spares
        hours = replicas * HOURS_A_MONTH
        hourly = instance_prices.get(instance) if priced_region == settings.region else None
        ec2 = Price(hourly, "instance-hour", on_demand_source(), "2026") if hourly else None
        spares = f" ({model.warm_spares} warm spare)" if model.warm_spares else ""
        lines.append(Line(f"{model.name}: {replicas} {instance}{spares}", hours, "instance-hours", ec2))
        lines.append(
            Line(
                f"{model.name}: EKS Auto Mode fee, {instance}",
                hours,
                "instance-hours",
                fees.get(f"auto_mode:{instance}"),
            )
        )
    return lines


def platform_lines(settings: StageSettings, prices: dict[str, Price]) -> list[Line]:
    """What the stage runs whatever its traffic: the control plane, NAT gateways, endpoints, the file system and the
    bucket's weights, and, as the settings turn them on, load balancers, web ACLs, dashboards and alarms."""
    zones = len(settings.availability_zones)
    store = settings.model_store
    # A load balancer with its web ACL per exposed model, and the gateway's when it has an endpoint.
    exposed = [model.name for model in settings.models if model.exposure is not None]
    exposed += ["gateway"] if settings.routed and settings.routed.endpoint else []
    lines = [
        Line("EKS control plane", HOURS_A_MONTH, "cluster-hours", prices.get("eks_cluster_hour")),
        Line(
            f"NAT gateways ({settings.network.nat_gateways})",
            settings.network.nat_gateways * HOURS_A_MONTH,
            "gateway-hours",
            prices.get("nat_gateway_hour"),
        ),
        Line(
            f"interface endpoints ({INTERFACE_ENDPOINTS} in {zones} zones)",
            INTERFACE_ENDPOINTS * zones * HOURS_A_MONTH,
            "endpoint-zone-hours",
            prices.get("interface_endpoint_hour"),
        ),
        Line(
            f"FSx for Lustre, {store.storage_capacity_gib} GiB at {store.throughput_per_tib} MB/s per TiB",
            # Billed on the capacity provisioned, which FSx counts in GiB: its "GB-month" is that figure.
            store.storage_capacity_gib,
            "GB-months",
            prices.get(f"lustre_persistent_2_{store.throughput_per_tib}_gb_month"),
        ),
        Line(
            "S3: the models' weights",
            sum(model.weights_gb for model in settings.models),
            "GB-months",
            prices.get("s3_standard_gb_month"),
        ),
    ]
    if exposed:
        lines += [
            Line("load balancers", len(exposed) * HOURS_A_MONTH, "load-balancer-hours", prices.get("alb_hour")),
            Line("web ACLs", len(exposed), "web-ACL-months", prices.get("waf_web_acl_month")),
            Line("web ACL rules", len(exposed) * WEB_ACL_RULES, "rule-months", prices.get("waf_rule_month")),
        ]
    if settings.gateway is not None:
        # The inference gateway's quota store (stacks/inference_gateway.py), whenever the settings have a gateway.
        lines.append(
            Line(
                "inference gateway's quota store (ElastiCache Serverless for Valkey, at its 100 MB minimum)",
                VALKEY_SERVERLESS_MINIMUM_GB * HOURS_A_MONTH,
                "GB-hours",
                prices.get("elasticache_serverless_valkey_gb_hour"),
            )
        )
    if settings.observability.enabled:
        # The stage's dashboard and one a model; each model's alarms (stacks/observability.py).
        lines.append(
            Line("CloudWatch dashboards", 1 + len(settings.models), "dashboard-months", prices.get("dashboard_month"))
        )
    return lines


def usage_rates(settings: StageSettings, prices: dict[str, Price]) -> tuple[tuple[str, Price | None], ...]:
    """The rates of what traffic decides, for the components the stage has."""
    rates = [("data through the NAT gateways", prices.get("nat_gateway_gb"))]
    if settings.exposed:
        rates += [
            ("load balancer capacity units", prices.get("alb_lcu_hour")),
            ("requests through the web ACLs", prices.get("waf_million_requests")),
        ]
    if settings.gateway is not None:
        # Each request the gateway counts reads and writes a few counters: a few ECPUs (1 ECPU a kilobyte).
        rates.append(("the quota store's requests", prices.get("elasticache_serverless_valkey_million_ecpu")))
    if settings.metrics.enabled:
        rates.append(("samples into the Prometheus workspace", prices.get("amp_million_samples")))
    if settings.observability.enabled:
        rates.append(("logs into CloudWatch", prices.get("logs_ingest_gb")))
    return tuple(rates)
