"""cdk8s charts: plain values in, Kubernetes manifests out. They know nothing of CDK stacks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cdk8s

from charts.exposure import NetworkPolicyController
from charts.gateway import GatewayChart, GatewayPlan
from charts.gateway_model import PICKER_IMAGE, GatewayModelPlan
from charts.gpu_node_pool import GpuNodePoolChart, GpuPoolList, PoolPlan, pool_weight
from charts.images import pulled_image
from charts.node_rotation import ROTATION_IMAGE, NodeRotationChart
from charts.queue_autoscaler import AutoscalingPlan
from charts.vllm_server import VllmServerChart, WeightsFileSystem
from settings.autoscaling import POLLING_SECONDS, scale_down_cooldown_seconds
from settings.cold_start import import_deadline_seconds, progress_deadline_seconds, startup_probe_seconds
from settings.schema import GpuNodePoolSettings, ModelSettings, StageSettings
from settings.sizing import candidates, gpu_memory_needed_mib, pool_limits, requests

NETWORK_POLICY_CONTROLLER = "NetworkPolicyController"
# The gateway's web ACL among DeployedResources.web_acl_arns: no model may be named so (a model name is a DNS label).
GATEWAY_WEB_ACL = "<gateway>"
GATEWAY_CHART = "Gateway"
# A small image with `sh`, for the replicas' wait for their weights (pulled through the cache too).
HELPER_IMAGE = "public.ecr.aws/docker/library/busybox:1.37.0"
# Envoy Gateway v1.9.0's own Envoy (envoyproxy/gateway api/v1alpha1/shared_types.go, DefaultEnvoyProxyImage), named
# here so that it comes through the stage's registry cache like every other image.
ENVOY_IMAGE = "docker.io/envoyproxy/envoy:distroless-v1.39.0"


@dataclass(frozen=True)
class DeployedResources:
    """What the charts need from the stacks: CDK tokens when the serving stack applies them,
    placeholders when the charts are written out alone for review (`python -m charts`)."""

    account: str
    node_role_name: str
    subnet_ids: tuple[str, ...]
    # Where internal load balancers and the metrics scraper live, and their ranges (stacks/network.py).
    inbound_subnet_ids: tuple[str, ...]
    inbound_cidrs: tuple[str, ...]
    cluster_security_group_id: str
    file_system_id: str
    file_system_dns_name: str
    file_system_mount_name: str
    bucket_name: str
    # The Prometheus workspace KEDA reads the queue from (stacks/metrics.py); None without metrics.
    prometheus_query_url: str | None = None
    # Each exposed model's AWS WAF web ACL, by model name, and the gateway's under GATEWAY_WEB_ACL (stacks/web_acl.py).
    web_acl_arns: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def placeholders(cls, settings: StageSettings) -> DeployedResources:
        return cls(
            account=settings.account or "<account>",
            node_role_name="<cluster node role name>",
            subnet_ids=tuple(f"<private subnet in {zone}>" for zone in settings.availability_zones),
            inbound_subnet_ids=tuple(f"<inbound subnet in {zone}>" for zone in settings.availability_zones),
            inbound_cidrs=tuple(f"<inbound subnet range in {zone}>" for zone in settings.availability_zones),
            cluster_security_group_id="<cluster security group id>",
            file_system_id="<file system id>",
            file_system_dns_name="<file system dns name>",
            file_system_mount_name="<file system mount name>",
            bucket_name="<model bucket name>",
            prometheus_query_url="<prometheus workspace url>" if settings.metrics.enabled else None,
            web_acl_arns={
                **{model.name: f"<web ACL of {model.name}>" for model in settings.models if model.exposure},
                **(
                    {GATEWAY_WEB_ACL: "<web ACL of the gateway>"}
                    if settings.routed and settings.routed.endpoint
                    else {}
                ),
            },
        )


def build_charts(app: cdk8s.App, settings: StageSettings, deployed: DeployedResources) -> dict[str, cdk8s.Chart]:
    """Every chart of a stage, by a stable id: the stage's (GPU pools, rotation, network policies), then each
    model's."""
    charts = stage_charts(app, settings, deployed)
    for model in settings.models:
        charts.update(model_charts(app, settings, model, deployed))
    return charts


def stage_charts(app: cdk8s.App, settings: StageSettings, deployed: DeployedResources) -> dict[str, cdk8s.Chart]:
    """What every model of the stage shares: its GPU pools, their rotation, the network policy controller."""
    # The GPU pools one chart each, so that removing a pool removes its NodePool and NodeClass (custom resources,
    # which kubectl's prune never deletes). "GpuNodePool", the chart that once held every pool, lists them in a
    # ConfigMap: kept, its deletion never takes the pools with it.
    charts: dict[str, cdk8s.Chart] = {"GpuNodePool": GpuPoolList(app, "gpu-node-pools", pools=settings.gpu_node_pools)}
    for index, pool in enumerate(settings.gpu_node_pools):
        charts[f"GpuNodePool-{pool.name}"] = GpuNodePoolChart(
            app,
            f"gpu-node-pool-{pool.name}",
            pools=[pool_plan(settings, index, pool)],
            node_role_name=deployed.node_role_name,
            subnet_ids=deployed.subnet_ids,
            security_group_id=deployed.cluster_security_group_id,
        )
    if any(pool.maintenance_window for pool in settings.gpu_node_pools):
        # Old GPU nodes are replaced in the window rather than expiring outside it (charts/node_rotation.py).
        charts["NodeRotation"] = NodeRotationChart(
            app,
            "gpu-node-rotation",
            pools=list(settings.gpu_node_pools),
            image=_pulled(ROTATION_IMAGE, settings, deployed),
        )
    # In every stage, exposed or not: turned off, its deletion would delete Auto Mode's whole amazon-vpc-cni
    # ConfigMap; on, it enforces only the policies there are (pods no policy selects stay open).
    charts[NETWORK_POLICY_CONTROLLER] = NetworkPolicyController(app, "network-policy-controller")
    if settings.routed is not None:
        charts[GATEWAY_CHART] = GatewayChart(
            app,
            "inference-gateway",
            settings=settings,
            plan=GatewayPlan(
                envoy_image=_pulled(ENVOY_IMAGE, settings, deployed),
                key_sync_image=_pulled(ROTATION_IMAGE, settings, deployed),
                region=settings.region,
                web_acl_arn=deployed.web_acl_arns.get(GATEWAY_WEB_ACL),
                inbound_subnet_ids=deployed.inbound_subnet_ids,
            ),
        )
    return charts


def model_charts(
    app: cdk8s.App, settings: StageSettings, model: ModelSettings, deployed: DeployedResources
) -> dict[str, cdk8s.Chart]:
    """One model's charts: its server (Model-<model>), and a chart per optional feature it has."""
    weights = WeightsFileSystem(
        file_system_id=deployed.file_system_id,
        dns_name=deployed.file_system_dns_name,
        mount_name=deployed.file_system_mount_name,
        bucket=deployed.bucket_name,
        region=settings.region,
        capacity_gib=settings.model_store.storage_capacity_gib,
        zone=settings.model_store_zone,
    )
    chart = VllmServerChart(
        app,
        f"vllm-{model.name}",
        model=model,
        image=_pulled(model.image, settings, deployed),
        helper_image=_pulled(HELPER_IMAGE, settings, deployed),
        weights=weights,
        startup_budget=startup_probe_seconds(settings, model),
        progress_deadline=progress_deadline_seconds(settings, model),
        import_deadline=import_deadline_seconds(settings, model),
        requests=requests(settings, model),
        autoscaling=_autoscaling_plan(settings, model, deployed),
        web_acl_arn=deployed.web_acl_arns.get(model.name),
        inbound_subnet_ids=deployed.inbound_subnet_ids,
        inbound_cidrs=deployed.inbound_cidrs,
        gpu_metrics=settings.metrics.enabled,
        gateway=(
            GatewayModelPlan(
                picker_image=_pulled(PICKER_IMAGE, settings, deployed),
                picker_replicas=2 if settings.production else 1,
            )
            if settings.routed
            else None
        ),
    )
    return {
        model_chart_id(model.name): chart,
        **{feature_chart_id(feature, model.name): each for feature, each in chart.feature_charts.items()},
    }


def model_chart_id(model_name: str) -> str:
    """The id of a model's own chart (its server, volume and import): Model-<model>."""
    return f"Model-{model_name}"


def feature_chart_id(feature: str, model_name: str) -> str:
    """The id of a model's chart for an optional feature: Autoscaler-<model>, ApiKeys-<model>, Exposure-<model>."""
    return f"{''.join(part.capitalize() for part in feature.split('-'))}-{model_name}"


def pool_plan(settings: StageSettings, index: int, pool: GpuNodePoolSettings) -> PoolPlan:
    """A GPU pool as its chart renders it; settings.sizing has checked that it can run some model."""
    runnable = [model for model in settings.models if candidates(settings, model, pool)]
    return PoolPlan(
        pool=pool,
        weight=pool_weight(index),
        zones=(settings.model_store_zone,) if pool.zones == "model_store_zone" else None,
        min_gpu_memory_mib=min(gpu_memory_needed_mib(model) for model in runnable),
        limits=pool_limits(settings, pool),
    )


def _autoscaling_plan(
    settings: StageSettings, model: ModelSettings, deployed: DeployedResources
) -> AutoscalingPlan | None:
    if model.autoscaling is None:
        return None
    assert deployed.prometheus_query_url is not None  # settings: autoscaling needs metrics
    return AutoscalingPlan(
        workspace_url=deployed.prometheus_query_url,
        region=settings.region,
        polling_seconds=POLLING_SECONDS,
        scale_down_seconds=scale_down_cooldown_seconds(settings, model),
    )


def _pulled(image: str, settings: StageSettings, deployed: DeployedResources) -> str:
    return pulled_image(image, settings=settings, account=deployed.account)
