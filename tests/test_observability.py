"""CloudWatch for a stage: the Observability add-on, the Prometheus data source, the dashboard and the alarms."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import aws_cdk as cdk
import promql_parser
import pytest
from aws_cdk.assertions import Template

from app import project_app
from settings import SettingsError, parse_stage_settings
from settings.schema import StageSettings
from stacks.metrics import SCRAPE_JOBS, recorded
from stacks.observability import ModelAlarms
from stacks.prometheus_data_source import handler as data_source
from tests.conftest import Assembly, chart_values, resources, stage_data
from tests.scanners import cloudformation_problems
from tests.stand_ins import QuietHandler, serving
from tests.test_autoscaling import metric_names

TOPIC = "arn:aws:sns:us-west-2:123456789012:gpu-inference-alerts"
START, PERIOD = 1_764_300_000, 60


class FakeWorkspace(ThreadingHTTPServer):
    """AMP's query API: answers /workspaces/ws-1/api/v1/query_range with `answer`, and records each request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), WorkspaceHandler)
        self.status, self.answer = 200, {"status": "success", "data": {"resultType": "matrix", "result": []}}
        self.requests: list[tuple[str, dict[str, str], dict[str, list[str]]]] = []


class WorkspaceHandler(QuietHandler):
    server: FakeWorkspace

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.server.requests.append((self.path, dict(self.headers), form))
        self.answer(self.server.status, json.dumps(self.server.answer).encode())


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorkspace]:
    with serving(FakeWorkspace()) as server:
        monkeypatch.setenv("PROMETHEUS_QUERY_URL", f"http://127.0.0.1:{server.server_port}/workspaces/ws-1")
        monkeypatch.setenv("AWS_REGION", "us-west-2")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.setenv("AWS_SESSION_TOKEN", "session")
        yield server


def get_metric_data(*arguments: Any, period: int = PERIOD) -> dict[str, Any]:
    request = {"StartTime": START, "EndTime": START + 5 * period, "Period": period, "Arguments": list(arguments)}
    return data_source.handler({"EventType": "GetMetricData", "GetMetricDataRequest": request}, None)


def matrix(*series: tuple[dict[str, str], list[tuple[int, str]]]) -> dict[str, Any]:
    result = [{"metric": labels, "values": [[stamp, value] for stamp, value in values]} for labels, values in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


# --- the data source function, against a stand-in workspace ---


def test_a_query_is_a_signed_range_query_on_cloudwatchs_grid(workspace: FakeWorkspace) -> None:
    workspace.answer = matrix(
        ({"namespace": "gpt-oss-20b"}, [(START, "1.5"), (START + 60, "NaN"), (START + 120, "2")]),
        ({"namespace": "llama"}, [(START, "0")]),
    )
    answer = get_metric_data("namespace:vllm_num_requests_waiting:sum", period=300)
    (path, headers, form) = workspace.requests[0]
    assert path == "/workspaces/ws-1/api/v1/query_range"
    # Evaluated at StartTime + k * Period, where CloudWatch keeps points.
    assert form == {
        "query": ["namespace:vllm_num_requests_waiting:sum"],
        "start": [str(START)],
        "end": [str(START + 1500)],
        "step": ["300"],
    }
    assert re.match(
        r"AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/\d{8}/us-west-2/aps/aws4_request", headers["Authorization"]
    )
    assert headers["X-Amz-Security-Token"] == "session"
    # One series per result, labelled by its model; NaN (a ratio over no requests) left out.
    assert answer == {
        "MetricDataResults": [
            {
                "StatusCode": "Complete",
                "Label": "gpt-oss-20b",
                "Timestamps": [START, START + 120],
                "Values": [1.5, 2.0],
            },
            {"StatusCode": "Complete", "Label": "llama", "Timestamps": [START], "Values": [0.0]},
        ]
    }


def test_nothing_matched_is_one_empty_series_which_an_alarm_reads_as_missing(workspace: FakeWorkspace) -> None:
    assert get_metric_data("sum(up)") == {
        "MetricDataResults": [{"StatusCode": "Complete", "Label": "", "Timestamps": [], "Values": []}]
    }


def test_a_series_without_a_namespace_is_labelled_by_its_labels(workspace: FakeWorkspace) -> None:
    workspace.answer = matrix(({"__name__": "up", "job": "vllm", "pod": "p-1"}, [(START, "1")]))
    assert get_metric_data("up")["MetricDataResults"][0]["Label"] == "job=vllm,pod=p-1"


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (400, "parse error: unclosed left parenthesis", "Validation"),
        (422, "execution: query processing would load too many samples", "Validation"),
        (503, "service unavailable", "PrometheusError"),
    ],
)
def test_a_query_prometheus_refuses_is_an_error_with_its_reason(
    workspace: FakeWorkspace, status: int, reason: str, code: str
) -> None:
    workspace.status = status
    workspace.answer = {"status": "error", "errorType": "bad_data", "error": reason}
    answer = get_metric_data("sum(up")
    assert answer["Error"]["Code"] == code
    assert reason in answer["Error"]["Value"]


@pytest.mark.parametrize("arguments", [(), ("",), (3,), ("up", "up")])
def test_anything_but_one_query_is_refused_before_asking(workspace: FakeWorkspace, arguments: tuple[Any, ...]) -> None:
    assert get_metric_data(*arguments)["Error"]["Code"] == "Validation"
    assert workspace.requests == []


def test_an_unreachable_workspace_is_an_error_not_a_crash(
    workspace: FakeWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_QUERY_URL", "http://127.0.0.1:1/workspaces/ws-1")
    assert get_metric_data("up")["Error"]["Code"] == "PrometheusUnreachable"


def test_the_console_learns_what_to_ask() -> None:
    described = data_source.handler({"EventType": "DescribeGetMetricData"}, None)
    assert described["ArgumentDefaults"] == [{"Value": data_source.EXAMPLE_QUERY}]
    assert data_source.EXAMPLE_QUERY in recorded(StageSettings.model_fields["metrics"].default)


# --- what the stages get ---


def test_the_add_on_collects_container_metrics_and_logs_without_application_signals(prod: Assembly) -> None:
    template = prod.template("Cluster")
    (addon,) = [a for a in resources(template, "AWS::EKS::Addon") if "cloudwatch" in json.dumps(a)]
    properties = addon["Properties"]
    assert properties["AddonName"] == "amazon-cloudwatch-observability"
    assert json.loads(properties["ConfigurationValues"]) == {
        "containerInsights": {"enabled": True},
        "containerLogs": {"enabled": True},  # prod: production, container_logs unset
        # Off: it would inject its auto-instrumentation into vLLM's pods (every workload behind a Service).
        "applicationSignals": {"enabled": False},
        "manager": {"applicationSignals": {"autoMonitor": {"monitorAllServices": False}}},
        "dcgmExporter": {"enabled": False},
        "neuronMonitor": {"enabled": False},
    }
    (association,) = properties["PodIdentityAssociations"]
    assert association["ServiceAccount"] == "cloudwatch-agent"
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    role = template["Resources"][role_id]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    (policy,) = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources(template, "AWS::IAM::Policy")
        if p["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    assert [statement["Action"] for statement in policy] == [
        ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
        ["ec2:DescribeTags", "ec2:DescribeVolumes"],
    ]
    groups = [
        f"/aws/containerinsights/gpu-inference-prod/{g}" for g in ("performance", "application", "dataplane", "host")
    ]
    for group in groups:
        assert group in json.dumps(policy[0]["Resource"])
        # Each log group exists first, with the cluster's retention, instead of one that never expires.
        (retention,) = [
            key
            for key, r in template["Resources"].items()
            if r["Type"] == "Custom::LogRetention" and r["Properties"]["LogGroupName"] == group
        ]
        assert template["Resources"][retention]["Properties"]["RetentionInDays"] == 365  # prod's log_retention_days
        assert retention in addon["DependsOn"]


@pytest.mark.parametrize(
    ("observability", "container_logs", "groups"),
    [(False, None, []), (False, True, ["application", "dataplane", "host"])],
)
def test_container_logs_are_off_in_dev_unless_asked_and_need_no_dashboard(
    observability: bool, container_logs: bool | None, groups: list[str]
) -> None:
    data = stage_data("dev")
    data["observability"] = {"enabled": observability, **({"container_logs": container_logs} if container_logs else {})}
    settings = parse_stage_settings("dev", data)
    assert settings.container_logs is bool(container_logs)
    assert settings.cloudwatch_log_groups == tuple(f"/aws/containerinsights/gpu-inference-dev/{g}" for g in groups)


def test_the_add_on_configuration_is_in_terms_its_chart_takes(prod: Assembly) -> None:
    """Each key the configuration sets is the chart's, of the same type; and the agent runs on the GPU nodes."""
    values = chart_values("amazon-cloudwatch-observability")
    (addon,) = [
        a["Properties"]
        for a in resources(prod.template("Cluster"), "AWS::EKS::Addon")
        if a["Properties"]["AddonName"] == "amazon-cloudwatch-observability"
    ]
    for component, settings in json.loads(addon["ConfigurationValues"]).items():
        for key, value in settings.items():
            assert type(values[component][key]) is type(value), (component, key)
    # Every component but the operator tolerates every taint, the GPU nodes' among them.
    assert values["tolerations"] == [{"operator": "Exists"}]
    assert "tolerations" not in values["agent"]


def test_dev_has_no_cloudwatch_observability_unless_it_asks(dev: Assembly) -> None:
    assert "amazon-cloudwatch-observability" not in json.dumps(dev.template("Cluster"))
    serving = dev.template("Serving")
    assert not resources(serving, "AWS::CloudWatch::Dashboard")
    assert not resources(serving, "AWS::CloudWatch::Alarm")


def test_the_data_source_reads_one_workspace_and_answers_cloudwatch_of_its_account(prod: Assembly) -> None:
    template = prod.template("Serving")
    (function,) = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function")
        if f["Properties"].get("FunctionName") == "gpu-inference-prod-prometheus"
    ]
    assert function["Runtime"] == "python3.14"
    assert function["Handler"] == "handler.handler"
    assert function["Timeout"] == 10
    assert "PROMETHEUS_QUERY_URL" in function["Environment"]["Variables"]
    assert {"Key": "cloudwatch:datasource", "Value": "custom"} in function["Tags"]
    (permission,) = resources(template, "AWS::Lambda::Permission")
    assert permission["Properties"]["Principal"] == "lambda.datasource.cloudwatch.amazonaws.com"
    assert permission["Properties"]["SourceAccount"] == {"Ref": "AWS::AccountId"}
    role_id = function["Role"]["Fn::GetAtt"][0]
    statements = [
        statement
        for p in resources(template, "AWS::IAM::Policy")
        if p["Properties"]["Roles"] == [{"Ref": role_id}]
        for statement in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    actions = {
        action for s in statements for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {"aps:QueryMetrics", "logs:CreateLogStream", "logs:PutLogEvents"}


def lambda_queries(expression: str) -> list[str]:
    """The PromQL of each LAMBDA() call in a metric math expression."""
    return re.findall(r'LAMBDA\(\\?"gpu-inference-prod-prometheus\\?", \\?"(.*?)\\?"\)', expression)


def test_each_model_has_an_alarm_per_alert_and_on_missing_replicas_and_metrics(prod: Assembly) -> None:
    alarms = {
        a["Properties"]["AlarmName"]: a["Properties"]
        for a in resources(prod.model_template(), "AWS::CloudWatch::Alarm")
    }
    assert not resources(prod.template("Serving"), "AWS::CloudWatch::Alarm")  # each model's are in its stack
    prefix = "gpu-inference-prod-gpt-oss-20b-"
    assert set(alarms) == {
        prefix + name
        for name in (
            "VllmTimeToFirstTokenSlow",
            "VllmQueueBacklog",
            "VllmServerErrors",
            "VllmKvCacheFull",
            "VllmReplicaStalled",
            "VllmReplicasMissing",
            "VllmMetricsMissing",
            "VllmGpusIdle",  # prod autoscales gpt-oss-20b
        )
    }
    ttft = alarms[prefix + "VllmTimeToFirstTokenSlow"]
    (query,) = lambda_queries(ttft["Metrics"][0]["Expression"])
    assert query == "namespace:vllm_time_to_first_token_seconds:p95{namespace='gpt-oss-20b'}"
    assert (ttft["Threshold"], ttft["ComparisonOperator"], ttft["EvaluationPeriods"]) == (5, "GreaterThanThreshold", 5)
    assert ttft["TreatMissingData"] == "notBreaching"
    replicas = alarms[prefix + "VllmReplicasMissing"]
    (ready,) = replicas["Metrics"]
    assert ready["MetricStat"]["Metric"]["MetricName"] == "replicas_ready"
    assert ready["MetricStat"]["Stat"] == "Minimum"
    assert replicas["Threshold"] == 2  # prod's minimum
    assert replicas["ComparisonOperator"] == "LessThanThreshold"
    assert replicas["EvaluationPeriods"] == 21  # the rollout's progress deadline, 1260 s
    assert replicas["TreatMissingData"] == "breaching"
    assert {d["Name"]: d["Value"] for d in ready["MetricStat"]["Metric"]["Dimensions"]} == {
        "ClusterName": "gpu-inference-prod",
        "Namespace": "gpt-oss-20b",
        "PodName": "gpt-oss-20b",
    }
    # The fewer of the replicas scraped by vLLM's job and by the GPU reader's, a job with no target counting 0.
    (watchdog,) = lambda_queries(alarms[prefix + "VllmMetricsMissing"]["Metrics"][0]["Expression"])
    parsed: Any = promql_parser.parse(watchdog)
    assert (type(parsed).__name__, str(parsed.op), str(parsed.expr.op)) == ("AggregateExpr", "min", "or")
    counts = [parsed.expr.lhs, parsed.expr.rhs]
    assert [(call.func.name, [str(a) for a in call.args]) for call in counts] == [
        (
            "label_replace",
            [f'sum(up{{job="{job}",namespace="gpt-oss-20b"}}) or  vector(0)', '"job"', f'"{job}"', '""', '""'],
        )
        for job in SCRAPE_JOBS
    ]
    idle = alarms[prefix + "VllmGpusIdle"]
    assert (idle["Threshold"], idle["ComparisonOperator"]) == (0.1, "LessThanThreshold")
    assert idle["EvaluationPeriods"] == 12 + 15  # prod's scale-down cooldown (664 s, in whole minutes), then 15 more
    assert idle["TreatMissingData"] == "notBreaching"  # no answer: no more than the minimum replicas
    # prod names no topic: the alarms show in the console and send nothing.
    assert all("AlarmActions" not in alarm for alarm in alarms.values())
    for alarm in alarms.values():
        assert cloudformation_problems("AWS::CloudWatch::Alarm", alarm) == []


def dashboard_body(template: dict[str, Any]) -> dict[str, Any]:
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard")
    parts = dashboard["Properties"]["DashboardBody"]
    parts = parts["Fn::Join"][1] if isinstance(parts, dict) else [parts]
    return {
        "name": dashboard["Properties"]["DashboardName"],
        **json.loads("".join(part if isinstance(part, str) else "us-west-2" for part in parts)),
    }


def test_every_query_parses_and_reads_recorded_signals_or_the_scrape_itself(prod: Assembly) -> None:
    model = prod.model_template()
    expressions = [
        metric["Expression"]
        for alarm in resources(model, "AWS::CloudWatch::Alarm")
        for metric in alarm["Properties"]["Metrics"]
        if "Expression" in metric
    ]
    bodies = [json.dumps(dashboard_body(template)) for template in (prod.template("Serving"), model)]
    queries = [query for expression in [*expressions, *bodies] for query in lambda_queries(expression)]
    # Seven alarms read the workspace, seven lines of each dashboard, and the stage's gateway panel.
    assert len(queries) == 7 + 7 + 7 + 1
    read = set()
    for query in queries:
        read |= metric_names(query.replace("\\\\", "").replace("\\", ""))
    assert read <= set(recorded(StageSettings.model_fields["metrics"].default)) | {"up"}


SIGNALS = [
    "GPU utilization: mean of the model's GPUs",
    "GPU memory: in use, and KV cache in use (fullest GPU, fullest replica)",
    "Requests waiting",
    "Time to first token, p95",
    "Tokens generated per second",
    "Share of responses that are 5xx",
]


def test_the_stages_dashboard_shows_its_gpus_and_a_line_per_model_whichever_models_it_serves(prod: Assembly) -> None:
    body = dashboard_body(prod.template("Serving"))
    assert body["name"] == "gpu-inference-prod-serving"
    assert [widget["properties"]["title"] for widget in body["widgets"]] == [
        "GPUs: in the cluster, held by pods",
        *SIGNALS,
        "Tokens per second by client, model and kind",  # prod's gateway
    ]
    (tokens,) = body["widgets"][-1]["properties"]["metrics"]
    assert lambda_queries(tokens[0]["expression"]) == ["client_model_type:gen_ai_client_token_usage:rate"]
    memory = body["widgets"][2]["properties"]["metrics"]
    # No model is named: each query reads every model's series, labelled by the data source with its model.
    assert [line[0]["label"] for line in memory] == ["${LABEL} memory in use", "${LABEL} KV cache in use"]
    assert [lambda_queries(line[0]["expression"]) for line in memory] == [
        ["namespace:gpu_memory_used:max_ratio"],
        ["namespace:vllm_kv_cache_usage_perc:max"],
    ]
    assert "gpt-oss-20b" not in json.dumps(body)
    # Each node reports its GPUs under the ClusterName dimension too: the cluster's count is their sum.
    gpu_metrics = body["widgets"][0]["properties"]["metrics"]
    assert [(metric[1], metric[-1]["stat"]) for metric in gpu_metrics] == [
        ("node_gpu_limit", "Sum"),
        ("node_gpu_usage_total", "Sum"),
    ]


def test_a_models_dashboard_shows_its_replicas_its_signals_and_its_alarms(prod: Assembly) -> None:
    body = dashboard_body(prod.model_template())
    assert body["name"] == "gpu-inference-prod-model-gpt-oss-20b"
    titles = [widget["properties"]["title"] for widget in body["widgets"]]
    assert titles == ["Replicas: ready and desired", *SIGNALS, "Alarms"]
    assert len(body["widgets"][-1]["properties"]["alarms"]) == 8
    memory = body["widgets"][2]["properties"]["metrics"]
    assert [line[0]["label"] for line in memory] == ["gpt-oss-20b memory in use", "gpt-oss-20b KV cache in use"]
    assert [lambda_queries(line[0]["expression"]) for line in memory] == [
        ["namespace:gpu_memory_used:max_ratio{namespace='gpt-oss-20b'}"],
        ["namespace:vllm_kv_cache_usage_perc:max{namespace='gpt-oss-20b'}"],
    ]


def model_alarms(data: dict[str, Any]) -> dict[str, Any]:
    """A template of the alarms of prod changed to `data`, built in this process."""
    settings = parse_stage_settings("prod", data)
    stack = cdk.Stack(project_app(), "Alarms", env=cdk.Environment(region=settings.region))
    ModelAlarms(stack, "Alarms", settings=settings, model=settings.models[0])
    return Template.from_stack(stack).to_json()


@pytest.fixture(scope="module")
def alarms_with_a_topic() -> dict[str, Any]:
    """The alarms of a stage that names a topic (a scenario no stage file has)."""
    data = stage_data("prod")
    data["metrics"]["alert_topic_arn"] = TOPIC
    return model_alarms(data)


def test_alarms_and_their_recovery_go_to_the_stages_topic(alarms_with_a_topic: dict[str, Any]) -> None:
    alarms = resources(alarms_with_a_topic, "AWS::CloudWatch::Alarm")
    assert len(alarms) == 8
    assert all(a["Properties"]["AlarmActions"] == [TOPIC] == a["Properties"]["OKActions"] for a in alarms)


def test_the_idle_gpus_alarm_answers_only_above_the_minimum_replicas(prod: Assembly) -> None:
    (alarm,) = [
        a["Properties"]
        for a in resources(prod.model_template(), "AWS::CloudWatch::Alarm")
        if a["Properties"]["AlarmName"].endswith("-VllmGpusIdle")
    ]
    (query,) = lambda_queries(alarm["Metrics"][0]["Expression"])
    # As Prometheus parses it: the model's GPU utilization, kept only while more than its 2 replicas answer.
    parsed: Any = promql_parser.parse(query)
    assert (str(parsed.op), parsed.modifier.matching.labels) == ("and", ["namespace"])
    assert metric_names(str(parsed.lhs)) == {"namespace:gpu_utilization:avg"}
    more_than_minimum = parsed.rhs.expr
    assert (str(more_than_minimum.op), str(more_than_minimum.rhs)) == (">", "2")
    assert str(more_than_minimum.lhs) == 'count by (namespace)(up{job="vllm",namespace="gpt-oss-20b"} == 1)'


def test_a_model_of_fixed_size_has_no_idle_gpus_alarm() -> None:
    data = stage_data("prod")
    del data["models"][0]["autoscaling"]
    names = [a["Properties"]["AlarmName"] for a in resources(model_alarms(data), "AWS::CloudWatch::Alarm")]
    assert len(names) == 7
    assert not [name for name in names if name.endswith("-VllmGpusIdle")]


@pytest.mark.parametrize(
    ("utilization", "allowed"), [(0, "greater than 0 (got 0)"), (1.5, "less than or equal to 1 (got 1.5)")]
)
def test_an_idle_threshold_outside_a_fraction_is_refused(utilization: float, allowed: str) -> None:
    data = stage_data("prod")
    data["observability"]["alarm_gpu_idle_utilization"] = utilization
    expected = f"observability.alarm_gpu_idle_utilization: Input should be {allowed}"
    with pytest.raises(SettingsError, match=re.escape(expected)):
        parse_stage_settings("prod", data)


def test_observability_without_metrics_is_refused() -> None:
    data = stage_data("dev")
    data["observability"] = {"enabled": True}
    with pytest.raises(SettingsError, match=r"observability\.enabled: .* set metrics\.enabled: true"):
        parse_stage_settings("dev", data)
