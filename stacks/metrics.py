"""vLLM's metrics without a Prometheus of our own: an Amazon Managed Service for Prometheus workspace, a
managed scraper of every replica's /metrics, and recording and alerting rules on vLLM's signals.

The scraper (AWS::APS::Scraper) runs in the cluster's private subnets with the cluster security
group, which admits traffic from itself to the pods. On a cluster whose authentication mode is
API (this one's), AMP creates the scraper's access entry and its Kubernetes permissions itself:
an access entry cannot name the scraper's service-linked role (AMP User Guide, "Configuring your
Amazon EKS cluster"; EKS User Guide, "Create access entries"). The scraper reads only the
cluster's private endpoint, so metrics need one (settings: cluster.endpoint_access).

Metric names are those every supported vLLM version exports (each profile's metrics, tests/test_vllm_profiles.py;
vllm/v1/metrics/loggers.py): the gauges vllm:num_requests_waiting
and vllm:kv_cache_usage_perc (which replaced vllm:gpu_cache_usage_perc), the histogram
vllm:time_to_first_token_seconds and the counter vllm:generation_tokens (exposed with _total),
and the HTTP server's http_requests_total. Each replica's GPUs are scraped too (job "gpu", from
charts/gpu_metrics.py): the counter gpu_busy_seconds_total and the gauges gpu_memory_used_bytes and
gpu_memory_total_bytes, per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from aws_cdk import CfnOutput, Fn, RemovalPolicy
from aws_cdk import aws_aps as aps
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from charts.gateway import NAMESPACE as GATEWAY_NAMESPACE
from charts.gpu_metrics import GPU_METRICS_PORT
from charts.vllm_server import PORT as VLLM_PORT
from settings.names import app_label
from settings.schema import MetricsSettings

# The pods scraped: every model's vLLM replicas (their `app` label), on vLLM's port and, as job "gpu",
# on their GPU reader's. Prometheus's pod discovery makes one target per declared container port
# (Prometheus docs, configuration.md, kubernetes_sd_config "pod" role), so each job keeps its own port.
VLLM_APP_PATTERN = app_label(".+")
VLLM_JOB = "vllm"
SCRAPE_JOBS = {VLLM_JOB: VLLM_PORT, "gpu": GPU_METRICS_PORT}
# Envoy AI Gateway's processor beside each gateway proxy serves its token counts on its admin port, named
# aigw-admin (envoyproxy/ai-gateway internal/controller/extproc_builder.go at v1.1.0); the proxies' own
# prometheus.io annotations point at Envoy's statistics instead.
GATEWAY_JOB = "gateway"
GATEWAY_METRICS_PORT_NAME = "aigw-admin"
RULES_NAMESPACE = "vllm"
# The recorded signals' names, one series per model (its namespace).
TTFT_P95 = "namespace:vllm_time_to_first_token_seconds:p95"
QUEUE = "namespace:vllm_num_requests_waiting:sum"
QUEUE_PER_REPLICA = "namespace:vllm_num_requests_waiting:avg"
KV_CACHE_USAGE = "namespace:vllm_kv_cache_usage_perc:max"
TOKENS_PER_SECOND = "namespace:vllm_generation_tokens:rate"
SERVER_ERROR_RATIO = "namespace:vllm_http_server_errors:ratio"
STALLED_REPLICAS = "namespace:vllm_stalled_replicas:count"
GPU_UTILIZATION = "namespace:gpu_utilization:avg"
GPU_MEMORY_USED = "namespace:gpu_memory_used:max_ratio"
# Tokens per second through the gateway, by client, model and kind (input, output, ...): one series each.
CLIENT_TOKENS = "client_model_type:gen_ai_client_token_usage:rate"
# How long a signal stays past its threshold before its alert fires.
ALERT_AFTER_MINUTES = 5
ALERT_AFTER = f"{ALERT_AFTER_MINUTES}m"


def scrape_configuration(metrics: MetricsSettings) -> dict[str, Any]:
    """The scraper's Prometheus configuration: vLLM pods found through the Kubernetes API, labelled by namespace.

    AMP's managed collector accepts global, scrape_configs with kubernetes_sd_configs, static and
    relabel configs only, and no interval under 30 s (AMP User Guide, "Scraper configuration").
    """
    return {
        "global": {"scrape_interval": f"{metrics.scrape_interval_seconds}s"},
        "scrape_configs": [
            {
                "job_name": job,
                "kubernetes_sd_configs": [{"role": "pod"}],
                "relabel_configs": [
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_label_app",
                            "__meta_kubernetes_pod_container_port_number",
                        ],
                        "regex": f"{VLLM_APP_PATTERN};{port}",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
            for job, port in SCRAPE_JOBS.items()
        ]
        + [gateway_scrape_job()],
    }


def gateway_scrape_job() -> dict[str, Any]:
    """The gateway proxies' token counts: every stage scrapes them, and finds none without a gateway."""
    return {
        "job_name": GATEWAY_JOB,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_container_port_name"],
                "regex": f"{GATEWAY_NAMESPACE};{GATEWAY_METRICS_PORT_NAME}",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


def rate_window(metrics: MetricsSettings, at_least_seconds: int) -> str:
    """A range for rate() over at least four scrapes (it needs two samples; four ride out a missed
    scrape), and no shorter than `at_least_seconds`."""
    return f"{max(at_least_seconds, 4 * metrics.scrape_interval_seconds)}s"


def recorded(metrics: MetricsSettings) -> dict[str, str]:
    """The recorded signals, per model (its namespace), for the alerts and for anyone querying the workspace."""
    ttft = rate_window(metrics, 300)
    tokens = rate_window(metrics, 120)
    return {
        TTFT_P95: (
            f"histogram_quantile(0.95, sum by (namespace, le) (rate(vllm:time_to_first_token_seconds_bucket[{ttft}])))"
        ),
        QUEUE: "sum by (namespace) (vllm:num_requests_waiting)",
        QUEUE_PER_REPLICA: "avg by (namespace) (vllm:num_requests_waiting)",
        KV_CACHE_USAGE: "max by (namespace) (vllm:kv_cache_usage_perc)",
        TOKENS_PER_SECOND: f"sum by (namespace) (rate(vllm:generation_tokens_total[{tokens}]))",
        # vLLM's HTTP server counts its responses by class, 5xx among them (prometheus-fastapi-instrumentator's
        # default http_requests_total{handler, method, status}: 0.11.2's api_server.py mount_metrics, 0.31.0's
        # serve/instrumentator/metrics.py).
        SERVER_ERROR_RATIO: (
            f'sum by (namespace) (rate(http_requests_total{{job="{VLLM_JOB}", status="5xx"}}[{tokens}])) '
            f'/ sum by (namespace) (rate(http_requests_total{{job="{VLLM_JOB}"}}[{tokens}]))'
        ),
        # Replicas that hold requests yet generated no token over the range: an engine stuck while /health still
        # answers, which asks only whether the engine process has died (vllm/v1/engine/async_llm.py, check_health, in
        # 0.11.2 and 0.31.0). No such replica, no series.
        STALLED_REPLICAS: (
            f"count by (namespace) ((sum by (namespace, pod) (rate(vllm:generation_tokens_total[{tokens}])) == 0) "
            "and on (namespace, pod) (sum by (namespace, pod) (vllm:num_requests_running) > 0))"
        ),
        # The mean share of time the model's GPUs ran a kernel (charts/gpu_metrics.py), and its fullest GPU's memory.
        GPU_UTILIZATION: f"avg by (namespace) (rate(gpu_busy_seconds_total[{tokens}]))",
        GPU_MEMORY_USED: "max by (namespace) (gpu_memory_used_bytes / gpu_memory_total_bytes)",
        # The gateway's counts (OpenTelemetry's gen_ai.client.token.usage histogram, its sum the tokens): client_id
        # from the key's client (x-client-id, stacks/inference_gateway.py USAGE_LABELS), the model as requested.
        CLIENT_TOKENS: (
            "sum by (client_id, gen_ai_request_model, gen_ai_token_type) "
            f'(rate(gen_ai_client_token_usage_sum{{job="{GATEWAY_JOB}"}}[{tokens}]))'
        ),
    }


@dataclass(frozen=True)
class Alert:
    """A recorded signal past its threshold for ALERT_AFTER: an AMP alerting rule, and a CloudWatch alarm per
    model when the stage has observability (stacks/observability.py)."""

    name: str
    signal: str
    threshold: float
    summary: str  # AMP's annotation, a Go template over the firing series


def alerts(metrics: MetricsSettings) -> list[Alert]:
    """An alert on each recorded signal that users feel."""
    return [
        Alert(
            "VllmTimeToFirstTokenSlow",
            TTFT_P95,
            metrics.alert_ttft_p95_seconds,
            "p95 time to first token of {{ $labels.namespace }} is {{ $value | humanizeDuration }}",
        ),
        Alert(
            "VllmQueueBacklog",
            QUEUE_PER_REPLICA,
            metrics.alert_queue_per_replica,
            "{{ $labels.namespace }} has {{ $value }} requests waiting per replica",
        ),
        Alert(
            "VllmServerErrors",
            SERVER_ERROR_RATIO,
            metrics.alert_server_error_ratio,
            "{{ $labels.namespace }} answers {{ $value | humanizePercentage }} of its requests with a 5xx",
        ),
        Alert(
            "VllmReplicaStalled",
            STALLED_REPLICAS,
            0,
            "{{ $value }} replica(s) of {{ $labels.namespace }} hold requests but generate no token",
        ),
        Alert(
            "VllmKvCacheFull",
            KV_CACHE_USAGE,
            metrics.alert_kv_cache_usage,
            "a replica of {{ $labels.namespace }} uses {{ $value | humanizePercentage }} of its KV cache",
        ),
    ]


def rules(metrics: MetricsSettings) -> dict[str, Any]:
    """The workspace's rules file: the recorded signals, and the alerts."""
    return {
        "groups": [
            {
                "name": RULES_NAMESPACE,
                "rules": [{"record": name, "expr": expr} for name, expr in recorded(metrics).items()]
                + [
                    {
                        "alert": alert.name,
                        "expr": f"{alert.signal} > {alert.threshold:g}",
                        "for": ALERT_AFTER,
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": alert.summary},
                    }
                    for alert in alerts(metrics)
                ],
            }
        ]
    }


def alert_manager(topic_arn: str, region: str) -> dict[str, Any]:
    """Every alert to one SNS topic, the only receiver AMP's alert manager has (AMP User Guide,
    "Understand the alert manager receiver"); sigv4's region is required."""
    return {
        "alertmanager_config": yaml.safe_dump(
            {
                "route": {"receiver": "sns", "group_by": ["alertname", "namespace"]},
                "receivers": [{"name": "sns", "sns_configs": [{"topic_arn": topic_arn, "sigv4": {"region": region}}]}],
            },
            sort_keys=False,
        )
    }


class ManagedPrometheus(Construct):
    """The workspace (retained: it holds the metrics' history), its rules and alert routing, and the scraper."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        metrics: MetricsSettings,
        cluster_arn: str,
        subnets: list[ec2.ISubnet],
        security_group_id: str,
        region: str,
        alias: str,
        route_alerts: bool = True,
    ) -> None:
        """`route_alerts`: AMP's alert manager sends the alerts to `metrics.alert_topic_arn`; off when CloudWatch
        alarms do (stacks/observability.py), so that each alert arrives once."""
        super().__init__(scope, id)
        self.region = region
        self.workspace = aps.CfnWorkspace(
            self,
            "Workspace",
            alias=alias,
            # Encrypted with an AWS owned key: a customer managed key would need extra roles for
            # the managed scraper to write (AMP User Guide, "Encryption at rest").
            alert_manager_definition=(
                yaml.safe_dump(alert_manager(metrics.alert_topic_arn, region), sort_keys=False)
                if metrics.alert_topic_arn and route_alerts
                else None
            ),
        )
        self.workspace.apply_removal_policy(RemovalPolicy.RETAIN)
        aps.CfnRuleGroupsNamespace(
            self,
            "Rules",
            workspace=self.workspace.attr_arn,
            name=RULES_NAMESPACE,
            data=yaml.safe_dump(rules(metrics), sort_keys=False),
        )
        aps.CfnScraper(
            self,
            "Scraper",
            source=aps.CfnScraper.SourceProperty(
                eks_configuration=aps.CfnScraper.EksConfigurationProperty(
                    cluster_arn=cluster_arn,
                    subnet_ids=[subnet.subnet_id for subnet in subnets],
                    security_group_ids=[security_group_id],
                )
            ),
            destination=aps.CfnScraper.DestinationProperty(
                amp_configuration=aps.CfnScraper.AmpConfigurationProperty(workspace_arn=self.workspace.attr_arn)
            ),
            # "Prometheus compatible scrape configuration in base64 encoded blob format" (the
            # AWS::APS::Scraper resource schema).
            scrape_configuration=aps.CfnScraper.ScrapeConfigurationProperty(
                configuration_blob=Fn.base64(yaml.safe_dump(scrape_configuration(metrics), sort_keys=False))
            ),
        )

        CfnOutput(
            self,
            "QueryUrl",
            description="The Prometheus query endpoint of vLLM's metrics (SigV4-signed, service aps)",
            value=f"{self.query_url}/api/v1/query",
        )

    @property
    def query_url(self) -> str:
        """The workspace's Prometheus endpoint as KEDA takes it: without /api/v1/, which KEDA appends."""
        return workspace_query_url(self.region, self.workspace.attr_workspace_id)


def workspace_query_url(region: str, workspace_id: str) -> str:
    """A workspace's Prometheus endpoint, without the /api/v1/ that KEDA and CloudWatch's data source append."""
    return f"https://aps-workspaces.{region}.amazonaws.com/workspaces/{workspace_id}"
