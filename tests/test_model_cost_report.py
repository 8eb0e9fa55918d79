"""`make cost-report`: a model's GPU node-hours a day from Container Insights, at its likely instance's price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from commands.model_cost_report import ModelDay, main, markdown, report
from settings import load_stage_settings, parse_stage_settings
from settings.sizing import candidates, on_demand_prices
from tests.aws_stubs import StubbedClients
from tests.conftest import stage_data

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
