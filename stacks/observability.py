"""Amazon CloudWatch for a stage: a dashboard of its models and alarms on them, to the stage's SNS topic.

vLLM's signals live in the stage's Prometheus workspace (stacks/metrics.py), which CloudWatch cannot
query by itself, so a CloudWatch data source function answers CloudWatch's metric math with PromQL
(stacks/prometheus_data_source/handler.py): LAMBDA("<function>", "<query>") in a widget or an alarm
(CloudWatch User Guide, "Use your custom data source"). The replicas and the GPUs held come from the
CloudWatch Observability add-on's Container Insights (stacks/cluster.py): `replicas_ready` and
`replicas_desired` per Deployment (dimensions PodName, which holds the Deployment's name, Namespace,
ClusterName), and `node_gpu_limit` and `node_gpu_usage_total` per cluster (aws/amazon-cloudwatch-agent,
translator/translate/otel/exporter/awsemf/kubernetes.go).

GPU utilization and memory come from the workspace too: each replica reads its own GPUs through NVML
(charts/gpu_metrics.py), since on Auto Mode a DCGM exporter of our own would conflict with the node
monitoring agent (aws/containers-roadmap#2555, #2763). Memory in use is flat at vLLM's
--gpu-memory-utilization once a replica has started (vLLM reserves it), so the KV cache in use, the share
of that memory requests fill, is drawn beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_cdk import Aws, Duration, Tags
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from constructs import Construct

from settings import names
from settings.autoscaling import scale_down_cooldown_seconds
from settings.cold_start import progress_deadline_seconds
from settings.schema import ModelSettings, StageSettings
from stacks.log_group import log_group
from stacks.metrics import (
    ALERT_AFTER_MINUTES,
    CLIENT_TOKENS,
    GPU_MEMORY_USED,
    GPU_UTILIZATION,
    KV_CACHE_USAGE,
    QUEUE,
    SCRAPE_JOBS,
    SERVER_ERROR_RATIO,
    TOKENS_PER_SECOND,
    TTFT_P95,
    VLLM_JOB,
    alerts,
)

DATA_SOURCE_CODE = Path(__file__).resolve().parent / "prometheus_data_source"
# CloudWatch invokes data source functions as this service (CloudWatch User Guide, "Create a custom
# connector to a data source", step 2); the tag lists the function among the console's data sources.
DATA_SOURCE_PRINCIPAL = "lambda.datasource.cloudwatch.amazonaws.com"
DATA_SOURCE_TAG = ("cloudwatch:datasource", "custom")
CONTAINER_INSIGHTS = "ContainerInsights"
# After the scale-down cooldown, how long more a model's idle GPUs may stay above its minimum replicas.
GPUS_IDLE_GRACE_MINUTES = 15
# Alarms are evaluated every minute; so are the data source's points.
PERIOD = Duration.minutes(1)


def for_model(signal: str, model: ModelSettings) -> str:
    """A recorded signal of one model. Single quotes: the query sits inside metric math's double-quoted string."""
    return f"{signal}{{namespace='{names.namespace(model.name)}'}}"


def fewest_scraped(model: ModelSettings) -> str:
    """The fewer of the model's replicas scraped by each job (stacks/metrics.py, SCRAPE_JOBS). A job with no
    target at all counts 0: each job's count is its own series, labelled by job, or 0 when it has none
    (`sum(...) or vector(0)`; label_replace with an empty source label sets `job`, so `or` keeps both
    series: Prometheus docs, querying/functions.md and operators.md)."""
    namespace = names.namespace(model.name)
    counts = (
        f"label_replace(sum(up{{job='{job}', namespace='{namespace}'}}) or vector(0), 'job', '{job}', '', '')"
        for job in SCRAPE_JOBS
    )
    return f"min({' or '.join(counts)})"


class PrometheusDataSource(Construct):
    """The data source function, allowed to query one workspace, invoked by CloudWatch of this account only."""

    def __init__(
        self, scope: Construct, id: str, *, settings: StageSettings, workspace_arn: str, query_url: str
    ) -> None:
        super().__init__(scope, id)
        self.name = names.prometheus_data_source_name(settings.cluster.name)
        role = iam.Role(
            self,
            "Role",
            description="Answers CloudWatch's dashboards and alarms with PromQL queries of the stage's workspace",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        )
        role.add_to_policy(iam.PolicyStatement(actions=["aps:QueryMetrics"], resources=[workspace_arn]))
        logs = log_group(self, "Logs", retention_days=settings.cluster.log_retention_days)
        logs.grant_write(role)
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=self.name,
            description="CloudWatch data source: PromQL against the stage's Amazon Managed Service for Prometheus",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(DATA_SOURCE_CODE), exclude=["__pycache__"]),
            role=role,
            # Dashboards wait 10 s for a data source, alarms 4.5 s; the query itself gives up sooner.
            timeout=Duration.seconds(10),
            memory_size=256,
            environment={"PROMETHEUS_QUERY_URL": query_url},
            log_group=logs,
        )
        self.function.add_permission(
            "CloudWatch", principal=iam.ServicePrincipal(DATA_SOURCE_PRINCIPAL), source_account=Aws.ACCOUNT_ID
        )
        Tags.of(self.function).add(*DATA_SOURCE_TAG)

    def query(self, promql: str, label: str) -> cloudwatch.MathExpression:
        return prometheus_query(self.name, promql, label)


def prometheus_query(data_source: str, promql: str, label: str) -> cloudwatch.MathExpression:
    """A PromQL query through the stage's data source function (named `data_source`), as metric math: one series per
    result, each labelled by its model (stacks/prometheus_data_source/handler.py). The function is called by name,
    so a model's stack needs no reference to the stage's."""
    return cloudwatch.MathExpression(
        expression=f'LAMBDA("{data_source}", "{promql}")', using_metrics={}, period=PERIOD, label=label
    )


def replicas(settings: StageSettings, model: ModelSettings, metric_name: str) -> cloudwatch.Metric:
    """A Deployment's replicas, from Container Insights."""
    return cloudwatch.Metric(
        namespace=CONTAINER_INSIGHTS,
        metric_name=metric_name,
        dimensions_map={
            "ClusterName": settings.cluster.name,
            "Namespace": names.namespace(model.name),
            "PodName": model.name,
        },
        statistic="Minimum",
        period=PERIOD,
        label=f"{model.name} {metric_name.removeprefix('replicas_')}",
    )


def gpus(settings: StageSettings, metric_name: str, label: str) -> cloudwatch.Metric:
    """GPUs over the cluster: each node reports its own once a minute under the ClusterName dimension too,
    so their sum over a minute is the cluster's."""
    return cloudwatch.Metric(
        namespace=CONTAINER_INSIGHTS,
        metric_name=metric_name,
        dimensions_map={"ClusterName": settings.cluster.name},
        statistic="Sum",
        period=PERIOD,
        label=label,
    )


class ModelAlarms(Construct):
    """A model's alarms: one on each of vLLM's alerts (stacks/metrics.py, alerts), on too few ready replicas, on its
    metrics going missing and, when it autoscales, on idle GPUs above its minimum replicas; to the stage's topic
    (`metrics.alert_topic_arn`) when it has one. In the model's stack: a model added or removed touches no other."""

    def __init__(self, scope: Construct, id: str, *, settings: StageSettings, model: ModelSettings) -> None:
        super().__init__(scope, id)
        self.alarms: list[cloudwatch.Alarm] = []
        topic_arn = settings.metrics.alert_topic_arn
        self.topic = sns.Topic.from_topic_arn(self, "Topic", topic_arn) if topic_arn else None
        source = names.prometheus_data_source_name(settings.cluster.name)
        prefix = f"{settings.cluster.name}-{model.name}"
        for alert in alerts(settings.metrics):
            self._alarm(
                f"{model.name}-{alert.name}",
                alarm_name=f"{prefix}-{alert.name}",
                alarm_description=f"{alert.signal} of {model.name} above {alert.threshold:g} for "
                f"{ALERT_AFTER_MINUTES} minutes (docs/operations.md, 'Dashboard and alarms')",
                metric=prometheus_query(source, for_model(alert.signal, model), alert.name),
                threshold=alert.threshold,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=ALERT_AFTER_MINUTES,
                # No requests, no ratio or quantile: quiet hours are not trouble.
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        # Fewer ready replicas than the minimum for longer than a new replica may take to start.
        minutes = math.ceil(progress_deadline_seconds(settings, model) / 60)
        self._alarm(
            f"{model.name}-VllmReplicasMissing",
            alarm_name=f"{prefix}-VllmReplicasMissing",
            alarm_description=f"fewer than {model.replicas} ready replicas of {model.name} for {minutes} "
            "minutes, longer than a replica's start may take (docs/operations.md, 'Dashboard and alarms')",
            metric=replicas(settings, model, "replicas_ready"),
            threshold=model.replicas,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=minutes,
            # Container Insights reports nothing for a Deployment it cannot see: that is trouble too.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        # No replica scraped, of vLLM's metrics or of its GPUs': the scraper, the data source, every
        # replica or every GPU reader is down.
        self._alarm(
            f"{model.name}-VllmMetricsMissing",
            alarm_name=f"{prefix}-VllmMetricsMissing",
            alarm_description=f"no replica of {model.name} scraped (vLLM's or its GPUs' metrics) for "
            f"{ALERT_AFTER_MINUTES} minutes: the other alarms of the model cannot fire (docs/operations.md, "
            "'Dashboard and alarms')",
            metric=prometheus_query(source, fewest_scraped(model), "replicas scraped"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=ALERT_AFTER_MINUTES,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        if model.autoscaling is not None:
            self._gpus_idle_alarm(settings, model, source, prefix)

    def _gpus_idle_alarm(self, settings: StageSettings, model: ModelSettings, source: str, prefix: str) -> None:
        """More replicas than the minimum, on GPUs that stay idle past the scale-down cooldown: KEDA should have
        removed one by then. The query answers only while more than the minimum are scraped; no answer is quiet."""
        namespace = names.namespace(model.name)
        threshold = settings.observability.alarm_gpu_idle_utilization
        minutes = math.ceil(scale_down_cooldown_seconds(settings, model) / 60) + GPUS_IDLE_GRACE_MINUTES
        self._alarm(
            f"{model.name}-VllmGpusIdle",
            alarm_name=f"{prefix}-VllmGpusIdle",
            alarm_description=f"more than {model.replicas} replicas of {model.name} whose GPUs were below "
            f"{threshold:.0%} busy for {minutes} minutes, past the scale-down cooldown (docs/operations.md, "
            "'Dashboard and alarms')",
            metric=prometheus_query(
                source,
                f"{for_model(GPU_UTILIZATION, model)} and on (namespace) "
                f"(count by (namespace) (up{{job='{VLLM_JOB}', namespace='{namespace}'}} == 1) > {model.replicas})",
                "GPU utilization above the minimum replicas",
            ),
            threshold=threshold,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=minutes,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def _alarm(self, id: str, **props: Any) -> None:
        alarm = cloudwatch.Alarm(self, id, **props)
        if self.topic is not None:
            alarm.add_alarm_action(actions.SnsAction(self.topic))
            alarm.add_ok_action(actions.SnsAction(self.topic))
        self.alarms.append(alarm)


def graph(title: str, *metrics: cloudwatch.IMetric, unit: str | None = None) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(
        title=title, left=list(metrics), width=8, height=6, left_y_axis=cloudwatch.YAxisProps(label=unit, min=0)
    )


def signal_widgets(query: Callable[[str, str], cloudwatch.IMetric]) -> list[cloudwatch.IWidget]:
    """vLLM's and the GPUs' signals, each line a model's: `query(signal, what)` reads one recorded signal."""
    return [
        graph("GPU utilization: mean of the model's GPUs", query(GPU_UTILIZATION, ""), unit="fraction"),
        graph(
            "GPU memory: in use, and KV cache in use (fullest GPU, fullest replica)",
            query(GPU_MEMORY_USED, "memory in use"),
            query(KV_CACHE_USAGE, "KV cache in use"),
            unit="fraction",
        ),
        graph("Requests waiting", query(QUEUE, "")),
        graph("Time to first token, p95", query(TTFT_P95, ""), unit="seconds"),
        graph("Tokens generated per second", query(TOKENS_PER_SECOND, ""), unit="tokens/s"),
        graph("Share of responses that are 5xx", query(SERVER_ERROR_RATIO, ""), unit="fraction"),
    ]


def stage_dashboard(scope: Construct, settings: StageSettings, source: PrometheusDataSource) -> cloudwatch.Dashboard:
    """The stage's dashboard: its GPUs, then vLLM's signals with a line per model, whichever models it serves (each
    query reads every model; the data source labels each series by its model). Each model's replicas and alarms are
    on its own dashboard (model_dashboard)."""
    return cloudwatch.Dashboard(
        scope,
        "Dashboard",
        dashboard_name=names.dashboard_name(settings.cluster.name),
        default_interval=Duration.hours(3),
        widgets=[
            [
                graph(
                    "GPUs: in the cluster, held by pods",
                    gpus(settings, "node_gpu_limit", "GPUs in the cluster"),
                    gpus(settings, "node_gpu_usage_total", "GPUs held by pods"),
                ),
                # ${LABEL}: each series' own label, its model (CloudWatch User Guide, "Use dynamic labels").
                *signal_widgets(lambda signal, what: source.query(signal, f"${{LABEL}} {what}".strip())),
                # Through the gateway: whose tokens, on which model (docs/gateway.md, "Usage").
                *(
                    [graph("Tokens per second by client, model and kind", source.query(CLIENT_TOKENS, "${LABEL}"))]
                    if settings.routed
                    else []
                ),
            ]
        ],
    )


def model_dashboard(
    scope: Construct, settings: StageSettings, model: ModelSettings, alarms: ModelAlarms
) -> cloudwatch.Dashboard:
    """A model's dashboard, in its stack: its replicas, its signals and its alarms."""
    source = names.prometheus_data_source_name(settings.cluster.name)
    return cloudwatch.Dashboard(
        scope,
        "Dashboard",
        dashboard_name=names.model_dashboard_name(settings.cluster.name, model.name),
        default_interval=Duration.hours(3),
        widgets=[
            [
                graph(
                    "Replicas: ready and desired",
                    *(replicas(settings, model, name) for name in ("replicas_ready", "replicas_desired")),
                ),
                *signal_widgets(
                    lambda signal, what: prometheus_query(
                        source, for_model(signal, model), f"{model.name} {what}".strip()
                    )
                ),
                cloudwatch.AlarmStatusWidget(title="Alarms", alarms=alarms.alarms, width=8, height=6),
            ]
        ],
    )
