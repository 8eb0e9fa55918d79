"""What each model of a running stage cost a day in GPU nodes: `make cost-report STAGE=prod DAYS=7`.

Each replica holds a GPU node of its own (charts/gpu_placement.py: one a node), so a model's GPU node-hours are its
replica-hours: Container Insights' `replicas_desired` of the model's Deployment (dimensions ClusterName, Namespace,
PodName; the same metric the dashboards draw, stacks/observability.py), averaged over each hour and summed over each
UTC day, plus its warm spares' nodes around the clock. Priced at the on-demand price of the instance the model most
likely lands on (the cheapest that runs it in its first pool, as `make sizing` names it): spot capacity costs less,
a fallback pool may cost more, and a rollout's surge node is not counted. The method is an estimate to read beside
the AWS bill (Cost Explorer by the `stage` tag), not a replacement for it.

With the inference gateway, each model's day is split among the clients that called it in proportion to their
tokens, input and output alike, from the gateway's counts in the stage's Prometheus workspace (`increase` of
gen_ai_client_token_usage_sum over the day, by client_id and model: docs/gateway.md, "Usage"). A prompt token costs a
GPU less than a generated one, so the split favours clients with long prompts; the GPU hours no client used (idle
replicas) are shared the same way, as the capacity they are held for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from commands import stage_settings_or_exit
from settings import DEFAULT_STAGE, StageSettings, names
from settings.sizing import candidates, on_demand_prices

HOUR = 3600
# A day's tokens through the gateway, by client and model as requested (stacks/metrics.py, GATEWAY_JOB).
# Input and output only: cached input is a part of input, which Envoy AI Gateway counts apart as well.
CLIENT_TOKENS_OF_DAY = (
    "sum by (client_id, gen_ai_request_model) "
    '(increase(gen_ai_client_token_usage_sum{job="gateway", gen_ai_token_type=~"input|output"}[1d]))'
)
# A Prometheus instant query: PromQL and the time it is evaluated at, to the result's vector.
Query = Callable[[str, datetime], list[dict[str, Any]]]


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


@dataclass(frozen=True)
class ClientDay:
    client: str
    model: str
    day: date
    tokens: float
    usd: float | None


def client_days(settings: StageSettings, rows: list[ModelDay], query: Query) -> list[ClientDay]:
    """Each model's cost of each day split among its clients by their tokens that day, its adapters' included."""
    names_of = {
        served: model.name for model in settings.models for served in (model.model, *(a.name for a in model.adapters))
    }
    by_day: dict[date, list[dict[str, Any]]] = {}
    split = []
    for row in rows:
        if row.day not in by_day:
            day_end = datetime.combine(row.day, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
            by_day[row.day] = query(CLIENT_TOKENS_OF_DAY, day_end)
        tokens: dict[str, float] = defaultdict(float)
        for result in by_day[row.day]:
            if names_of.get(result["metric"].get("gen_ai_request_model", "")) == row.model:
                tokens[result["metric"].get("client_id", "(no client)")] += float(result["value"][1])
        total = sum(tokens.values())
        for client, count in sorted(tokens.items()):
            usd = None if row.usd is None or not total else row.usd * count / total
            split.append(ClientDay(client, row.model, row.day, count, usd))
    return split


def workspace_query(session: Any, settings: StageSettings) -> Query:
    """Instant queries of the stage's Prometheus workspace (its alias is the cluster's name), signed with SigV4 as
    Amazon Managed Service for Prometheus requires (service `aps`)."""
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from stacks.metrics import workspace_query_url

    amp = session.client("amp")
    # ListWorkspaces matches aliases by prefix, and a torn-down stage's workspace is kept (retained): the newest
    # active one of exactly this alias is the stage's.
    found = [
        workspace
        for workspace in amp.list_workspaces(alias=settings.cluster.name)["workspaces"]
        if workspace.get("alias") == settings.cluster.name and workspace["status"]["statusCode"] == "ACTIVE"
    ]
    if not found:
        raise SystemExit(f"no active Prometheus workspace named {settings.cluster.name} in {settings.region}")
    workspace = max(found, key=lambda each: each["createdAt"])
    base = workspace_query_url(settings.region, workspace["workspaceId"])

    def query(promql: str, at: datetime) -> list[dict[str, Any]]:
        # Spaces as %20, never +: SigV4 signs the query as sent, and the service decodes + as a space.
        query_string = urlencode({"query": promql, "time": f"{at.timestamp():.0f}"}, quote_via=quote)
        url = f"{base}/api/v1/query?{query_string}"
        request = AWSRequest(method="GET", url=url)
        SigV4Auth(session.get_credentials(), "aps", settings.region).add_auth(request)
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(request.headers)), timeout=60) as answer:
            return list(json.loads(answer.read())["data"]["result"])

    return query


def markdown(settings: StageSettings, rows: list[ModelDay], clients: list[ClientDay] | None = None) -> str:
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
    if clients is not None:
        lines += ["", "## Split among the gateway's clients by their tokens", ""]
        lines += ["| day (UTC) | client | model | tokens | cost |", "|---|---|---|---:|---:|"]
        for each in clients:
            cost = "no price in the catalog" if each.usd is None else f"${each.usd:,.2f}"
            lines.append(f"| {each.day.isoformat()} | {each.client} | {each.model} | {each.tokens:,.0f} | {cost} |")
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    client_factory: Callable[[str], Any] | None = None,
    query_factory: Callable[[Any, StageSettings], Query] = workspace_query,
) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.model_cost_report", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    parser.add_argument("--days", type=int, default=7, help="the last whole UTC days to report (default 7)")
    args = parser.parse_args(argv)
    settings = stage_settings_or_exit(args.stage)
    import boto3

    session = boto3.session.Session(region_name=settings.region)
    rows = report((client_factory or session.client)("cloudwatch"), settings, args.days, datetime.now(UTC))
    # The split reads the gateway's counts from the stage's Prometheus workspace.
    query = query_factory(session, settings) if settings.routed and settings.metrics.enabled else None
    print(markdown(settings, rows, client_days(settings, rows, query) if query else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
