"""What each model of a running stage cost a day in GPU nodes: `make cost-report STAGE=prod DAYS=7`.

Each replica holds a GPU node of its own (charts/gpu_placement.py: one a node), so a model's GPU node-hours are its
replica-hours: Container Insights' `replicas_desired` of the model's Deployment (dimensions ClusterName, Namespace,
PodName; the same metric the dashboards draw, stacks/observability.py), averaged over each hour and summed over each
UTC day, plus its warm spares' nodes around the clock. Priced at the on-demand price of the instance the model most
likely lands on (the cheapest that runs it in its first pool, as `make sizing` names it): spot capacity costs less,
a fallback pool may cost more, and a rollout's surge node is not counted. The method is an estimate to read beside
the AWS bill (Cost Explorer by the `stage` tag), not a replacement for it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from commands import stage_settings_or_exit
from settings import DEFAULT_STAGE, StageSettings, names
from settings.sizing import candidates, on_demand_prices

HOUR = 3600


@dataclass(frozen=True)
class ModelDay:
    model: str
    day: date
    node_hours: float
    instance: str
    usd: float | None  # None: the catalog has no price for the instance in the region


def replica_hours(
    cloudwatch: Any, settings: StageSettings, model_name: str, start: datetime, end: datetime
) -> dict[date, float]:
    """The model's replica-hours per UTC day: the hourly average of `replicas_desired`, summed."""
    query = {
        "Id": "replicas",
        "MetricStat": {
            "Metric": {
                "Namespace": "ContainerInsights",
                "MetricName": "replicas_desired",
                "Dimensions": [
                    {"Name": "ClusterName", "Value": settings.cluster.name},
                    {"Name": "Namespace", "Value": names.namespace(model_name)},
                    {"Name": "PodName", "Value": model_name},
                ],
            },
            "Period": HOUR,
            "Stat": "Average",
        },
    }
    by_day: dict[date, float] = defaultdict(float)
    token = None
    while True:
        page = cloudwatch.get_metric_data(
            MetricDataQueries=[query], StartTime=start, EndTime=end, **({"NextToken": token} if token else {})
        )
        for result in page["MetricDataResults"]:
            for at, value in zip(result["Timestamps"], result["Values"], strict=True):
                by_day[at.astimezone(UTC).date()] += value
        token = page.get("NextToken")
        if not token:
            return dict(by_day)


def report(cloudwatch: Any, settings: StageSettings, days: int, now: datetime) -> list[ModelDay]:
    """Each model's GPU node-hours and their cost, for each of the last `days` whole UTC days."""
    end = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    priced_region, prices = on_demand_prices(settings.region)
    rows = []
    for model in settings.models:
        instance = candidates(settings, model)[0].type
        hourly = prices.get(instance) if priced_region == settings.region else None
        measured = replica_hours(cloudwatch, settings, model.name, start, end)
        for offset in range(days):
            day = (start + timedelta(days=offset)).date()
            hours = measured.get(day, 0.0) + model.warm_spares * 24
            rows.append(ModelDay(model.name, day, hours, instance, None if hourly is None else hours * hourly))
    return rows


def markdown(settings: StageSettings, rows: list[ModelDay]) -> str:
    lines = [
        f"# GPU node cost per model and day, stage {settings.name} ({settings.region}, on-demand list prices)",
        "",
        "| day (UTC) | model | GPU node-hours | instance | cost |",
        "|---|---|---:|---|---:|",
    ]
    for row in rows:
        cost = "no price in the catalog" if row.usd is None else f"${row.usd:,.2f}"
        lines.append(f"| {row.day.isoformat()} | {row.model} | {row.node_hours:,.1f} | {row.instance} | {cost} |")
    totals: dict[str, float | None] = {}
    for row in rows:
        before = totals.get(row.model, 0.0)
        totals[row.model] = None if before is None or row.usd is None else before + row.usd
    lines += [""]
    lines += [
        f"- {model}: " + ("no price in the catalog" if usd is None else f"${usd:,.2f} over the period")
        for model, usd in totals.items()
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, client_factory: Callable[[str], Any] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.model_cost_report", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    parser.add_argument("--days", type=int, default=7, help="the last whole UTC days to report (default 7)")
    args = parser.parse_args(argv)
    settings = stage_settings_or_exit(args.stage)
    if client_factory is None:
        import boto3

        client_factory = boto3.session.Session(region_name=settings.region).client
    print(markdown(settings, report(client_factory("cloudwatch"), settings, args.days, datetime.now(UTC))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
