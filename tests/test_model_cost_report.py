"""`make cost-report`: a model's GPU node-hours a day from Container Insights, at its likely instance's price."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from commands.model_cost_report import (
    CLIENT_TOKENS_OF_DAY,
    ModelDay,
    client_days,
    main,
    markdown,
    report,
    workspace_query,
)
from settings import load_stage_settings, parse_stage_settings
from settings.sizing import candidates, on_demand_prices
from tests.aws_stubs import StubbedClients
from tests.conftest import stage_data
from tests.stand_ins import QuietHandler, serving

NOW = datetime(2026, 12, 5, 7, 30, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 5, tzinfo=UTC)


def hourly(start: datetime, values: list[float]) -> dict[str, object]:
    return {
        "MetricDataResults": [
            {
                "Id": "replicas",
                "Label": "replicas_desired",
                "Timestamps": [start + timedelta(hours=i) for i in range(len(values))],
                "Values": values,
                "StatusCode": "Complete",
            }
        ]
    }


def test_a_day_costs_its_replica_hours_and_warm_spares_at_the_likely_instances_price() -> None:
    data = stage_data("prod")
    data["models"][0]["warm_spares"] = 1
    settings = parse_stage_settings("prod", data)
    day_before, yesterday = MIDNIGHT - timedelta(days=2), MIDNIGHT - timedelta(days=1)
    with StubbedClients(["cloudwatch"]) as stubs:
        stubs.stubbers["cloudwatch"].add_response(
            "get_metric_data",
            # 2 replicas all day the day before; yesterday 2, then 4 for 6 hours (autoscaled), back to 2.
            hourly(day_before, [2.0] * 24 + [2.0] * 12 + [4.0] * 6 + [2.0] * 6),
            {
                "MetricDataQueries": [
                    {
                        "Id": "replicas",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": "ContainerInsights",
                                "MetricName": "replicas_desired",
                                "Dimensions": [
                                    {"Name": "ClusterName", "Value": "gpu-inference-prod"},
                                    {"Name": "Namespace", "Value": "gpt-oss-20b"},
                                    {"Name": "PodName", "Value": "gpt-oss-20b"},
                                ],
                            },
                            "Period": 3600,
                            "Stat": "Average",
                        },
                    }
                ],
                "StartTime": day_before,
                "EndTime": MIDNIGHT,
            },
        )
        rows = report(stubs.client("cloudwatch"), settings, 2, NOW)
    _, prices = on_demand_prices("us-west-2")
    price = prices[candidates(settings, settings.models[0])[0].type]
    assert [(row.day, row.node_hours) for row in rows] == [
        (day_before.date(), 48 + 24),  # its replicas, and the warm spare's node all day
        (yesterday.date(), 48 + 12 + 24),  # 12 more replica-hours while autoscaled to 4
    ]
    assert rows[1].usd == pytest.approx((48 + 12 + 24) * price)
    text = markdown(settings, rows)
    assert f"| {yesterday.date().isoformat()} | gpt-oss-20b | 84.0 | g6.xlarge | ${84 * price:,.2f} |" in text


def test_the_command_reads_cloudwatch_in_the_stages_region(capsys: pytest.CaptureFixture[str]) -> None:
    asked = []
    with StubbedClients(["cloudwatch"]) as stubs:
        stubs.stubbers["cloudwatch"].add_response("get_metric_data", {"MetricDataResults": []})

        def factory(service: str) -> object:
            asked.append(service)
            return stubs.client(service)

        assert main(["--stage", "dev", "--days", "1"], factory) == 0
    assert asked == ["cloudwatch"]
    assert "| gpt-oss-20b | 0.0 | g6.xlarge | $0.00 |" in capsys.readouterr().out
    assert load_stage_settings("dev").region == "us-west-2"


def test_a_model_without_a_price_says_so_rather_than_costing_nothing() -> None:
    settings = load_stage_settings("dev")
    rows = [ModelDay("gpt-oss-20b", MIDNIGHT.date(), 24.0, "g6.xlarge", None)]
    assert "- gpt-oss-20b: no price in the catalog" in markdown(settings, rows)


# --- with the inference gateway: each model's day split among its clients by their tokens ---


def tokens_query(answers: dict[str, dict[tuple[str, str], float]]) -> Any:
    """A workspace that answers the day's tokens by (client, model as requested), per day (ISO date of the day)."""

    def query(promql: str, at: datetime) -> list[dict[str, Any]]:
        assert promql == CLIENT_TOKENS_OF_DAY
        day = (at - timedelta(days=1)).date().isoformat()
        return [
            {"metric": {"client_id": client, "gen_ai_request_model": model}, "value": [at.timestamp(), str(count)]}
            for (client, model), count in answers.get(day, {}).items()
        ]

    return query


def test_a_models_day_is_split_among_its_clients_by_their_tokens() -> None:
    data = stage_data("prod")
    data["models"][0]["adapters"] = [{"name": "support-bot", "s3_prefix": "adapters/support", "rank": 8}]
    settings = parse_stage_settings("prod", data)
    yesterday = (MIDNIGHT - timedelta(days=1)).date()
    rows = [ModelDay("gpt-oss-20b", yesterday, 48.0, "g6.xlarge", 100.0)]
    query = tokens_query(
        {
            yesterday.isoformat(): {
                ("platform", "openai/gpt-oss-20b"): 2_000_000,
                ("platform", "support-bot"): 1_000_000,  # its adapter's tokens are the model's
                ("smoke-test", "openai/gpt-oss-20b"): 1_000_000,
                ("platform", "some/other-model"): 5_000_000,  # not this stage's: left out
            }
        }
    )
    split = client_days(settings, rows, query)
    assert [(c.client, c.model, c.tokens, c.usd) for c in split] == [
        ("platform", "gpt-oss-20b", 3_000_000, pytest.approx(75.0)),
        ("smoke-test", "gpt-oss-20b", 1_000_000, pytest.approx(25.0)),
    ]
    text = markdown(settings, rows, split)
    assert f"| {yesterday.isoformat()} | platform | gpt-oss-20b | 3,000,000 | $75.00 |" in text


def test_a_day_without_gateway_traffic_has_no_client_rows() -> None:
    rows = [ModelDay("gpt-oss-20b", MIDNIGHT.date(), 48.0, "g6.xlarge", 100.0)]
    assert client_days(load_stage_settings("prod"), rows, tokens_query({})) == []


def workspace(id: str, alias: str, created: datetime) -> dict[str, Any]:
    arn = f"arn:aws:aps:us-west-2:123456789012:workspace/{id}"
    return {"workspaceId": id, "alias": alias, "arn": arn, "createdAt": created, "status": {"statusCode": "ACTIVE"}}


def test_the_workspace_is_found_by_its_alias_and_asked_with_sigv4(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    class Workspace(QuietHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers["Authorization"]))
            self.answer(200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Workspace)
    monkeypatch.setattr(
        "stacks.metrics.workspace_query_url",
        lambda region, id: f"http://127.0.0.1:{server.server_port}/workspaces/{id}",
    )
    settings = load_stage_settings("prod")
    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-west-2"
    )
    with StubbedClients(["amp"]) as stubs:
        stubs.stubbers["amp"].add_response(
            "list_workspaces",
            {
                "workspaces": [
                    workspace("ws-old", "gpu-inference-prod", NOW - timedelta(days=30)),  # a torn-down stage's
                    workspace("ws-1", "gpu-inference-prod", NOW),
                    workspace("ws-2", "gpu-inference-prod2", NOW),  # another stage's, found by the prefix
                ]
            },
            {"alias": "gpu-inference-prod"},
        )

        class Session:
            def client(self, service: str) -> Any:
                return stubs.client(service)

            def get_credentials(self) -> Any:
                return session.get_credentials()

        query = workspace_query(Session(), settings)
        with serving(server):
            assert query(CLIENT_TOKENS_OF_DAY, MIDNIGHT) == []
    ((path, authorization),) = seen
    assert path.startswith("/workspaces/ws-1/api/v1/query?query=sum%20by%20%28client_id")
    assert path.endswith(f"&time={MIDNIGHT.timestamp():.0f}")
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/us-west-2/aps/aws4_request" in authorization


def test_with_a_gateway_the_command_adds_the_split_among_clients(capsys: pytest.CaptureFixture[str]) -> None:
    with StubbedClients(["cloudwatch"]) as stubs:
        stubs.stubbers["cloudwatch"].add_response("get_metric_data", {"MetricDataResults": []})
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        query = tokens_query({yesterday: {("platform", "openai/gpt-oss-20b"): 10.0}})
        assert main(["--stage", "prod", "--days", "1"], stubs.client, lambda session, settings: query) == 0
    out = capsys.readouterr().out
    assert "## Split among the gateway's clients by their tokens" in out
    assert f"| {yesterday} | platform | gpt-oss-20b | 10 |" in out
