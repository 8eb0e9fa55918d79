"""Metrics and autoscaling: the managed Prometheus workspace and scraper, vLLM's rules, and KEDA scaling on the queue.

What KEDA receives is checked against KEDA's own resource definitions (the vendored chart's CRDs),
and every PromQL expression is parsed by Prometheus's grammar (promql-parser).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import promql_parser
import pytest
import yaml

from charts.queue_autoscaler import TRIGGER_AUTHENTICATION, queue_query
from settings import names, parse_stage_settings
from settings.autoscaling import scale_down_cooldown_seconds
from settings.cold_start import cold_start_seconds
from settings.schema import MetricsSettings
from stacks.metrics import alert_manager, recorded, rules, scrape_configuration
from stacks.serving import KEDA_CHART, KEDA_SERVICE_ACCOUNT
from tests.conftest import Assembly, find, model_objects, render_charts, resources, stage_data
from tests.scanners import crd_problems
from tests.test_settings import rejected

# The metrics vLLM 0.11.2 exports (vllm/v1/metrics/loggers.py, PrometheusStatLogger): gauges,
# histograms (as _bucket, _sum, _count) and counters (as _total, prometheus_client's suffix).
VLLM_0_11_2_GAUGES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
VLLM_0_11_2_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
}
VLLM_0_11_2_COUNTERS = {"vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success"}
# What each replica's GPU reader exports (tests/test_gpu_metrics.py reads them from its page).
GPU_READER_SERIES = {"gpu_busy_seconds_total", "gpu_memory_used_bytes", "gpu_memory_total_bytes"}
VLLM_0_11_2_SERIES = (
    # prometheus-fastapi-instrumentator's default counter, which vLLM's api_server.py mount_metrics adds.
    {"http_requests_total"}
    | VLLM_0_11_2_GAUGES
    | {f"{name}_{suffix}" for name in VLLM_0_11_2_HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | {f"{name}_total" for name in VLLM_0_11_2_COUNTERS}
)


def scaled_objects(stage: str = "prod") -> list[dict[str, Any]]:
    return model_objects(render_charts(stage), "gpt-oss-20b")


# --- KEDA's resource definitions ---


KEDA_CRDS = {
    "ScaledObject": KEDA_CHART / "templates" / "crds" / "crd-scaledobjects.yaml",
    "TriggerAuthentication": KEDA_CHART / "templates" / "crds" / "crd-triggerauthentications.yaml",
}


def keda_problems(obj: dict[str, Any]) -> list[str]:
    return crd_problems(obj, KEDA_CRDS[obj["kind"]])


def test_the_scaled_object_and_its_authentication_match_kedas_definitions() -> None:
    objects = scaled_objects()
    for kind in ("ScaledObject", "TriggerAuthentication"):
        assert keda_problems(find(objects, kind)) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda spec: spec.update(maxReplicas=4),
            "Additional properties are not allowed ('maxReplicas' was unexpected)",
        ),
        (lambda spec: spec.update(minReplicaCount="two"), "'two' is not of type 'integer'"),
        (lambda spec: spec.pop("scaleTargetRef"), "'scaleTargetRef' is a required property"),
    ],
)
def test_kedas_definitions_reject_a_broken_scaled_object(change: Any, message: str) -> None:
    broken = copy.deepcopy(find(scaled_objects(), "ScaledObject"))
    change(broken["spec"])
    assert any(message in problem for problem in keda_problems(broken))


def test_the_chart_names_the_operators_service_account_and_is_the_vendored_version() -> None:
    chart = yaml.safe_load((KEDA_CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((KEDA_CHART / "values.yaml").read_text())
    assert (chart["name"], chart["version"], chart["appVersion"]) == ("keda", "2.20.2", "2.20.2")
    assert values["serviceAccount"]["operator"] == {**values["serviceAccount"]["operator"], "create": True}
    assert values["serviceAccount"]["operator"]["name"] == KEDA_SERVICE_ACCOUNT
    assert "2.20.2" in (KEDA_CHART / "VENDORED.md").read_text()


# --- what a scaled model renders ---


def test_keda_scales_the_deployment_between_replicas_and_the_maximum_on_the_queue() -> None:
    settings = parse_stage_settings("prod", stage_data("prod"))
    model = settings.models[0]
    objects = scaled_objects()
    spec = find(objects, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"] == {"name": "gpt-oss-20b"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"] == {
        "serverAddress": "<prometheus workspace url>",
        "awsRegion": "us-west-2",
        "query": 'sum(vllm:num_requests_waiting{namespace="gpt-oss-20b"})',
        "threshold": "5",
    }
    assert trigger["authenticationRef"] == {"name": TRIGGER_AUTHENTICATION}
    authentication = find(objects, "TriggerAuthentication")
    assert authentication["metadata"] == {"name": TRIGGER_AUTHENTICATION, "namespace": "gpt-oss-20b"}
    assert authentication["spec"] == {"podIdentity": {"provider": "aws"}}
    # The HPA owns the count: the Deployment states none, so a deploy never resets it.
    assert "replicas" not in find(objects, "Deployment")["spec"]
    assert model.peak_replicas == 4


def test_a_replica_goes_only_after_the_queue_stays_low_for_longer_than_a_cold_start() -> None:
    settings = parse_stage_settings("prod", stage_data("prod"))
    model = settings.models[0]
    spec = find(scaled_objects(), "ScaledObject")["spec"]
    window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert (
        window
        == scale_down_cooldown_seconds(settings, model)
        == math.ceil(cold_start_seconds(settings, model, budget=True)) + 60
    )
    assert window > cold_start_seconds(settings, model)
    assert spec["cooldownPeriod"] == window


def test_a_model_without_autoscaling_keeps_its_count_and_has_no_scaled_object() -> None:
    objects = model_objects(render_charts("dev"), "gpt-oss-20b")
    assert find(objects, "Deployment")["spec"]["replicas"] == 1
    assert not [obj for obj in objects if obj["apiVersion"] == "keda.sh/v1alpha1"]


def test_the_queue_query_reads_the_label_the_scraper_writes() -> None:
    relabels = scrape_configuration(MetricsSettings(enabled=True))["scrape_configs"][0]["relabel_configs"]
    assert {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"} in relabels
    parsed: Any = promql_parser.parse(queue_query("gpt-oss-20b"))
    selector = parsed.expr
    assert selector.name == "vllm:num_requests_waiting"
    assert 'namespace="gpt-oss-20b"' in str(selector.matchers)


# --- the rules and the scrape configuration ---


def metric_names(expression: str) -> set[str]:
    """Every series name a PromQL expression reads, from Prometheus's own parse of it."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            names.add(node.name)
        for attribute in ("expr", "lhs", "rhs", "vector_selector"):
            if hasattr(node, attribute) and getattr(node, attribute) is not None:
                walk(getattr(node, attribute))
        for argument in getattr(node, "args", None) or []:
            walk(argument)

    walk(promql_parser.parse(expression))
    return names


def test_every_rule_parses_and_reads_only_what_vllm_0_11_2_exports_or_what_the_rules_record() -> None:
    file = rules(MetricsSettings(enabled=True))
    (group,) = file["groups"]
    read = set()
    for rule in group["rules"]:
        read |= metric_names(rule["expr"])
    # And the gateway's token counts (Envoy AI Gateway's gen_ai.client.token.usage, internal/metrics/genai.go).
    gateway = {"gen_ai_client_token_usage_sum"}
    assert read <= VLLM_0_11_2_SERIES | GPU_READER_SERIES | gateway | set(recorded(MetricsSettings(enabled=True)))
    # vLLM 0.11 hides the names it replaced (vllm:gpu_cache_usage_perc), so rules must not read them.
    assert "vllm:gpu_cache_usage_perc" not in read
    alerts = {rule["alert"]: rule for rule in group["rules"] if "alert" in rule}
    assert set(alerts) == {
        "VllmTimeToFirstTokenSlow",
        "VllmQueueBacklog",
        "VllmKvCacheFull",
        "VllmServerErrors",
        "VllmReplicaStalled",
    }
    assert alerts["VllmReplicaStalled"]["expr"] == "namespace:vllm_stalled_replicas:count > 0"
    assert alerts["VllmServerErrors"]["expr"] == "namespace:vllm_http_server_errors:ratio > 0.05"
    assert alerts["VllmKvCacheFull"]["expr"] == "namespace:vllm_kv_cache_usage_perc:max > 0.95"
    assert all(rule["for"] == "5m" for rule in alerts.values())


def test_a_stalled_replica_is_one_that_holds_requests_and_generated_no_token() -> None:
    """Per replica (pod), as Prometheus parses the recorded expression: no token over the range, and requests
    running; counted per model."""
    parsed: Any = promql_parser.parse(recorded(MetricsSettings(enabled=True))["namespace:vllm_stalled_replicas:count"])
    assert (str(parsed.op), parsed.modifier.labels) == ("count", ["namespace"])
    both = parsed.expr
    assert (str(both.op), both.modifier.matching.labels) == ("and", ["namespace", "pod"])
    silent, busy = both.lhs.expr, both.rhs.expr
    assert (str(silent.op), str(silent.rhs), str(busy.op), str(busy.rhs)) == ("==", "0", ">", "0")
    assert str(silent.lhs) == "sum by (namespace, pod)(rate(vllm:generation_tokens_total{}[2m]))"
    assert str(busy.lhs) == "sum by (namespace, pod)(vllm:num_requests_running{})"


@pytest.mark.parametrize(("interval", "ttft_window", "tokens_window"), [(30, "300s", "120s"), (150, "600s", "600s")])
def test_every_rate_spans_at_least_four_scrapes(interval: int, ttft_window: str, tokens_window: str) -> None:
    signals = recorded(MetricsSettings(enabled=True, scrape_interval_seconds=interval))
    assert f"[{ttft_window}]" in signals["namespace:vllm_time_to_first_token_seconds:p95"]
    assert f"[{tokens_window}]" in signals["namespace:vllm_generation_tokens:rate"]


def test_the_parser_rejects_a_broken_expression() -> None:
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("sum by (namespace (vllm:num_requests_waiting)")
    assert metric_names("rate(vllm:generation_tokens_total[1m])") == {"vllm:generation_tokens_total"}


def test_the_scraper_keeps_only_vllm_pods_on_vllms_and_the_gpu_readers_ports_at_the_settings_interval() -> None:
    config = scrape_configuration(MetricsSettings(enabled=True, scrape_interval_seconds=60))
    assert config["global"] == {"scrape_interval": "60s"}
    keeps = {job["job_name"]: job["relabel_configs"][0] for job in config["scrape_configs"]}
    assert keeps == {
        "vllm": {"source_labels": ANY, "regex": "vllm-.+;8000", "action": "keep"},
        "gpu": {"source_labels": ANY, "regex": "vllm-.+;9400", "action": "keep"},  # charts/gpu_metrics.py
        # The gateway's processors, by their port's name in the gateway's namespace (docs/gateway.md, "Usage").
        "gateway": {
            "source_labels": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_container_port_name"],
            "regex": "inference-gateway;aigw-admin",
            "action": "keep",
        },
    }
    # Only sections AMP's managed collector accepts (AMP User Guide, "Scraper configuration").
    assert set(config) == {"global", "scrape_configs"}
    for job in config["scrape_configs"]:
        assert job["kubernetes_sd_configs"] == [{"role": "pod"}]  # the only discovery AMP's collectors take
        assert set(job) <= {"job_name", "kubernetes_sd_configs", "relabel_configs", "metric_relabel_configs"}


# --- the stacks ---


def test_production_has_a_retained_workspace_its_rules_and_a_scraper_of_the_cluster(prod: Assembly) -> None:
    cluster = prod.template("Cluster")
    (workspace,) = resources(cluster, "AWS::APS::Workspace")
    assert workspace["DeletionPolicy"] == "Retain"
    assert "AlertManagerDefinition" not in workspace["Properties"]  # no topic in prod.yaml
    (rule_groups,) = resources(cluster, "AWS::APS::RuleGroupsNamespace")
    assert yaml.safe_load(rule_groups["Properties"]["Data"]) == rules(MetricsSettings(enabled=True))
    (scraper,) = resources(cluster, "AWS::APS::Scraper")
    eks = scraper["Properties"]["Source"]["EksConfiguration"]
    assert len(eks["SubnetIds"]) == 3  # a private subnet per zone: AMP asks for at least two zones
    blob = scraper["Properties"]["ScrapeConfiguration"]["ConfigurationBlob"]["Fn::Base64"]
    assert yaml.safe_load(blob) == scrape_configuration(MetricsSettings(enabled=True))
    # No access entry: AMP creates the scraper's on an API-mode cluster, and none can name its role.
    assert resources(cluster, "AWS::EKS::Cluster")[0]["Properties"]["AccessConfig"]["AuthenticationMode"] == "API"


def test_dev_has_no_metrics_unless_it_asks(dev: Assembly) -> None:
    assert resources(dev.template("Cluster"), "AWS::APS::Workspace") == []
    assert resources(dev.template("Serving"), "Custom::AWSCDK-EKS-HelmChart") == []


def test_keda_is_installed_from_the_repository_with_read_access_to_the_workspace_only(prod: Assembly) -> None:
    serving = prod.template("Serving")
    (helm,) = [h for h in resources(serving, "Custom::AWSCDK-EKS-HelmChart") if h["Properties"]["Release"] == "keda"]
    assert (helm["Properties"]["Release"], helm["Properties"]["Namespace"]) == ("keda", names.KEDA_NAMESPACE)
    assert "Repository" not in helm["Properties"]  # no download at deploy: the chart is an asset
    assert helm["Properties"]["ChartAssetURL"]["Fn::Sub"].endswith(".zip")
    (association,) = [
        a["Properties"]
        for a in resources(serving, "AWS::EKS::PodIdentityAssociation")
        if a["Properties"]["Namespace"] == "keda"
    ]
    assert association["ServiceAccount"] == KEDA_SERVICE_ACCOUNT
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    (policy,) = [p for p in resources(serving, "AWS::IAM::Policy") if p["Properties"]["Roles"] == [{"Ref": role_id}]]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert all(action.startswith("aps:") and "*" not in action for action in statement["Action"])
    assert "Workspace" in json.dumps(statement["Resource"])
    # The association exists before the operator starts; the model's stack, with its ScaledObject, after KEDA's.
    assert any("KedaOperatorIdentity" in dependency for dependency in helm.get("DependsOn", []))
    assert [k for k in prod.model_template()["Resources"] if k.startswith("Autoscalergptoss20b")]
    assert "Serving" in prod.depends_on(names.model_stack_id("gpt-oss-20b"))


def test_the_chart_asset_is_the_vendored_folder() -> None:
    assert (KEDA_CHART / "Chart.yaml").is_file()
    assert (KEDA_CHART / "LICENSE").is_file()
    assert not list(Path(KEDA_CHART).glob("*.tgz"))  # the kubectl handler unzips a folder asset


# --- settings errors ---


def autoscaled(**changes: Any) -> dict[str, Any]:
    data = stage_data("prod")
    data["models"][0]["autoscaling"] |= changes
    return data


def test_a_maximum_below_the_minimum_is_refused() -> None:
    assert "models[0]: autoscaling.max_replicas: 1 is below replicas (2), the minimum it scales from" in rejected(
        autoscaled(max_replicas=1), "prod"
    )


@pytest.mark.parametrize("target", [0, -1])
def test_a_target_of_zero_or_less_is_refused(target: float) -> None:
    assert f"models[0].autoscaling.target_queue_per_replica: Input should be greater than 0 (got {target})" in (
        rejected(autoscaled(target_queue_per_replica=target), "prod")
    )


def test_autoscaling_without_metrics_is_refused() -> None:
    data = autoscaled()
    data["metrics"]["enabled"] = False
    data["observability"]["enabled"] = False
    assert "models[0].autoscaling: autoscaling reads vLLM's queue from Amazon Managed Service for Prometheus; set " in (
        rejected(data, "prod")
    )


def test_a_scale_down_shorter_than_a_cold_start_is_refused() -> None:
    data = autoscaled(scale_down_cooldown_seconds=300)
    assert "models[0].autoscaling.scale_down_cooldown_seconds: 300 is not longer than a cold start (604 s" in rejected(
        data, "prod"
    )
    settings = parse_stage_settings("prod", autoscaled(scale_down_cooldown_seconds=900))
    assert scale_down_cooldown_seconds(settings, settings.models[0]) == 900


def test_metrics_need_the_clusters_private_endpoint() -> None:
    data = stage_data()
    data["metrics"] = {"enabled": True}
    data["cluster"]["endpoint_access"] = "public"
    assert "metrics.enabled: the managed scraper reaches the cluster through its private endpoint" in rejected(data)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("arn:aws:sns:us-east-1:123456789012:alerts", "the topic is in us-east-1; AMP's alert manager publishes to"),
        ("sns:alerts", "an SNS topic ARN such as arn:aws:sns:us-west-2:123456789012:gpu-inference-alerts"),
    ],
)
def test_an_alert_topic_elsewhere_or_malformed_is_refused(topic: str, message: str) -> None:
    data = stage_data()
    data["metrics"] = {"enabled": True, "alert_topic_arn": topic}
    assert message in rejected(data)


def test_alerts_go_to_the_settings_topic() -> None:
    definition = alert_manager("arn:aws:sns:us-west-2:123456789012:alerts", "us-west-2")
    config = yaml.safe_load(definition["alertmanager_config"])
    (receiver,) = config["receivers"]
    assert receiver["sns_configs"] == [
        {"topic_arn": "arn:aws:sns:us-west-2:123456789012:alerts", "sigv4": {"region": "us-west-2"}}
    ]
    assert config["route"]["receiver"] == receiver["name"]


def test_a_scale_down_window_beyond_what_the_autoscaler_takes_is_refused() -> None:
    assert "models[0].autoscaling.scale_down_cooldown_seconds: Input should be less than or equal to 3600" in (
        rejected(autoscaled(scale_down_cooldown_seconds=3601), "prod")
    )
    # A model whose cold start alone passes the limit cannot derive one.
    data = autoscaled()
    data["models"][0]["load_seconds"] = 3600
    assert "models[0].autoscaling: a replica's cold start (" in rejected(data, "prod")
