"""A model behind the stage's gateway (charts/gateway.py): its route, its InferencePool and its endpoint picker.

The route (aigateway.envoyproxy.io/v1beta1 AIGatewayRoute) sends requests whose `model` is this model's served name
to the model's InferencePool (inference.networking.k8s.io/v1), whose endpoint picker chooses a replica by prefix
cache, queue and KV cache use. The picker is the Gateway API Inference Extension's reference one, v1.0.2, the version
Envoy AI Gateway v1.1.0 lists among its dependencies (envoyproxy/ai-gateway site/src/data/releases/v1.1.json). It is
built here rather than from the extension's `inferencepool` Helm chart because the model's namespace enforces the
restricted Pod Security Standard, and that chart's pod sets no security context (kubernetes-sigs/
gateway-api-inference-extension config/charts/inferencepool/templates/epp-deployment.yaml at v1.0.2).

When the picker is down: Envoy AI Gateway v1.1.0 builds the picker's external processing filter with
`FailureModeAllow: false` whatever the InferencePool says (internal/extensionserver/inferencepool.go, line 314;
envoyproxy/ai-gateway#2502), so a request then fails rather than falling back to a replica. The pool says so
(`failureMode: FailClose`), and a production stage runs two pickers with leader election: the standby takes over
within its lease. They have no disruption budget: only the leader is ready (cmd/epp/runner/health.go), so any budget
would forbid draining its node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cdk8s
import cdk8s_plus_30 as kplus
import yaml
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_object import allow, api_object
from charts.exposure import admit_only, subnets
from charts.gateway import GATEWAY_REF, MODEL_HEADER, NAME, NAMESPACE, TOKEN_COST_KEYS
from charts.pod_security import PINNED_BY_TAG, checkov_skip_annotations, hardened, non_root_pod
from settings import names
from settings.drain import max_request_seconds
from settings.schema import ModelSettings
from settings.vllm_profiles import VllmProfile, profile_of

PICKER_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.2"
EXT_PROC_PORT = 9002
HEALTH_PORT = 9003
PICKER_METRICS_PORT = 9090
PICKER_CPU_MILLIS = 500
PICKER_MEMORY_MIB = 512
RUN_AS_USER = 65534
# The picker's scorers (the extension's default configuration at v1.0.2, config/charts/inferencepool/templates/
# epp-config.yaml): the replica with the longest cached prefix of the prompt, the shortest queue and the most free
# KV cache wins.
# checkov's checks the picker fails on purpose, with the reasons.
PICKER_CHECKOV_EXCEPTIONS = {
    "CKV_K8S_11": "no CPU limit on purpose: throttling the picker delays every request it routes; the request "
    "reserves what it needs",
    "CKV_K8S_38": "the picker watches its pool and the pool's pods through the Kubernetes API with its token",
    "CKV_K8S_43": PINNED_BY_TAG,
}
PICKER_CONFIG = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [{"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"}, {"type": "prefix-cache-scorer"}],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer"},
                {"pluginRef": "kv-cache-utilization-scorer"},
                {"pluginRef": "prefix-cache-scorer"},
            ],
        }
    ],
}


@dataclass(frozen=True)
class GatewayModelPlan:
    picker_image: str
    picker_replicas: int


def picker_metric_flags(profile: VllmProfile) -> list[str]:
    """The vLLM metrics the picker reads, by their names in the model's vLLM version (its profile): the picker's own
    defaults name `vllm:gpu_cache_usage_perc`, which vLLM 0.27 and later no longer export (cmd/epp/runner/runner.go
    and pkg/epp/server/runserver.go at v1.0.2)."""
    kv_cache = (
        "vllm:kv_cache_usage_perc"
        if "vllm:kv_cache_usage_perc" in profile.extracted.metrics
        else "vllm:gpu_cache_usage_perc"
    )
    flags = {
        "--total-queued-requests-metric": "vllm:num_requests_waiting",
        "--kv-cache-usage-percentage-metric": kv_cache,
        "--lora-info-metric": "vllm:lora_requests_info",
    }
    missing = [name for name in flags.values() if name not in profile.extracted.metrics]
    assert not missing, f"vLLM {profile.version} exports no {', '.join(missing)}"
    return [part for flag, name in flags.items() for part in (flag, name)]


# An AIGatewayRoute holds at most 15 rules (its CRD's maxItems): the model and up to 14 adapters.
MAX_ROUTE_RULES = 15


def route_spec(model: ModelSettings) -> dict[str, object]:
    """The model's route: requests naming it or one of its adapters (Envoy AI Gateway's model header; the adapter's
    name is what vLLM serves it under), to its pool, with their token counts recorded for quotas (charts/gateway.py,
    TOKEN_COST_KEYS). One rule per name: `GET /v1/models` lists each rule's exact match."""
    pool = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": model.name}
    return {
        "parentRefs": [{**GATEWAY_REF, "namespace": NAMESPACE}],
        "rules": [
            {
                "matches": [{"headers": [{"type": "Exact", "name": MODEL_HEADER, "value": served}]}],
                "backendRefs": [pool],
                "timeouts": {"request": f"{max_request_seconds(model)}s"},
            }
            for served in (model.model, *(adapter.name for adapter in model.adapters))
        ],
        "llmRequestCosts": [
            {"metadataKey": key, "type": f"{tokens.capitalize()}Token"} for tokens, key in TOKEN_COST_KEYS.items()
        ],
    }


class GatewayModel(Construct):
    """The model's route, pool, endpoint picker (account, role, configuration, Deployment, Service) and the
    NetworkPolicy that admits to the replicas only the gateway's proxies, the picker and the metrics scraper."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelSettings,
        plan: GatewayModelPlan,
        pod_labels: dict[str, str],
        port: int,
        inbound_cidrs: tuple[str, ...],
        scraped_ports: tuple[int, ...],
    ) -> None:
        super().__init__(scope, id)
        name = names.picker_name(model.name)
        api_object(
            self,
            "Route",
            "aigateway.envoyproxy.io/v1beta1",
            "AIGatewayRoute",
            cdk8s.ApiObjectMetadata(name=model.name),
            spec=route_spec(model),
        )
        api_object(
            self,
            "Pool",
            "inference.networking.k8s.io/v1",
            "InferencePool",
            cdk8s.ApiObjectMetadata(name=model.name),
            spec={
                "selector": {"matchLabels": pod_labels},
                "targetPorts": [{"number": port}],
                "endpointPickerRef": {"name": name, "port": {"number": EXT_PROC_PORT}, "failureMode": "FailClose"},
            },
        )
        picker_labels = {"app": name}
        self._picker(model, plan, name, picker_labels)
        self._admission(model, pod_labels, picker_labels, port, inbound_cidrs, scraped_ports)

    def _picker(self, model: ModelSettings, plan: GatewayModelPlan, name: str, labels: dict[str, str]) -> None:
        account = self._picker_access(model, plan, name)
        self._picker_deployment(model, plan, name, labels, account)

    def _picker_access(self, model: ModelSettings, plan: GatewayModelPlan, name: str) -> kplus.ServiceAccount:
        """The picker's account: it watches the pool and its pods, elects a leader, and reviews its scrapers."""
        account = kplus.ServiceAccount(self, "PickerAccount", metadata=cdk8s.ApiObjectMetadata(name=name))
        role = kplus.Role(self, "PickerRole", metadata=cdk8s.ApiObjectMetadata(name=name))
        allow(role, ["get", "list", "watch"], kplus.ApiResource.PODS)
        allow(
            role,
            ["get", "list", "watch"],
            kplus.ApiResource.custom(api_group="inference.networking.k8s.io", resource_type="inferencepools"),
        )
        allow(
            role,
            ["get", "list", "watch"],
            kplus.ApiResource.custom(api_group="inference.networking.x-k8s.io", resource_type="inferenceobjectives"),
        )
        if plan.picker_replicas > 1:
            # Leader election (cmd/epp/runner/runner.go, --ha-enable-leader-election): only the leader is ready.
            allow(
                role,
                ["get", "list", "watch", "create", "update", "patch", "delete"],
                kplus.ApiResource.custom(api_group="coordination.k8s.io", resource_type="leases"),
            )
            allow(role, ["create", "patch"], kplus.ApiResource.EVENTS)
        kplus.RoleBinding(self, "PickerRoleBinding", role=role).add_subjects(account)
        # The picker checks who scrapes its metrics (filters.WithAuthenticationAndAuthorization, cmd/epp/runner/
        # runner.go at v1.0.2): token and access reviews, cluster-wide by their nature.
        reviews = kplus.ClusterRole(
            self, "PickerReviews", metadata=cdk8s.ApiObjectMetadata(name=f"{names.picker_name(model.name)}-reviews")
        )
        for group, kind in (
            ("authentication.k8s.io", "tokenreviews"),
            ("authorization.k8s.io", "subjectaccessreviews"),
        ):
            reviews.allow(
                ["create"], cast(kplus.IApiEndpoint, kplus.ApiResource.custom(api_group=group, resource_type=kind))
            )
        kplus.ClusterRoleBinding(self, "PickerReviewsBinding", role=reviews).add_subjects(account)
        return account

    def _picker_deployment(
        self,
        model: ModelSettings,
        plan: GatewayModelPlan,
        name: str,
        labels: dict[str, str],
        account: kplus.ServiceAccount,
    ) -> None:
        """The picker's configuration, Deployment (with two, one per node, with leader election) and Service."""
        config = kplus.ConfigMap(
            self,
            "PickerConfig",
            metadata=cdk8s.ApiObjectMetadata(name=name),
            data={"config.yaml": yaml.safe_dump(PICKER_CONFIG)},
        )
        deployment = kplus.Deployment(
            self,
            "Picker",
            metadata=cdk8s.ApiObjectMetadata(
                name=name, annotations=checkov_skip_annotations(PICKER_CHECKOV_EXCEPTIONS)
            ),
            replicas=plan.picker_replicas,
            service_account=account,
            automount_service_account_token=True,
            security_context=non_root_pod(RUN_AS_USER),
            # The extension's chart's choice: the old picker goes at once, so the new leader takes over without
            # waiting for a rolling update's surge.
            strategy=kplus.DeploymentStrategy.recreate(),
            select=False,
            pod_metadata=cdk8s.ApiObjectMetadata(labels=labels),
        )
        deployment.select(kplus.LabelSelector.of(labels=labels))
        ha = plan.picker_replicas > 1
        if ha:
            # One picker per node, as the proxies: a node's loss takes one of them, and the other leads.
            deployment.scheduling.spread(topology=kplus.Topology.HOSTNAME)
        args = [
            "--pool-name", model.name,
            "--pool-namespace", model.name,
            "--zap-encoder", "json",
            "--config-file", "/config/config.yaml",
            *picker_metric_flags(profile_of(model.image)),
            *(["--ha-enable-leader-election"] if ha else []),
        ]  # fmt: skip
        container = deployment.add_container(
            name="epp",
            image=plan.picker_image,
            args=args,
            ports=[
                kplus.ContainerPort(number=EXT_PROC_PORT, name="grpc"),
                kplus.ContainerPort(number=HEALTH_PORT, name="grpc-health"),
                kplus.ContainerPort(number=PICKER_METRICS_PORT, name="metrics"),
            ],
            security_context=hardened(RUN_AS_USER),
            resources=kplus.ContainerResources(
                cpu=kplus.CpuResources(request=kplus.Cpu.millis(PICKER_CPU_MILLIS)),
                memory=kplus.MemoryResources(
                    request=cdk8s.Size.mebibytes(PICKER_MEMORY_MIB), limit=cdk8s.Size.mebibytes(PICKER_MEMORY_MIB)
                ),
            ),
            env_variables={"NAMESPACE": kplus.EnvValue.from_field_ref(kplus.EnvFieldPaths.POD_NAMESPACE)},
        )
        container.mount("/config", kplus.Volume.from_config_map(self, "PickerConfigVolume", config, name="config"))
        self._picker_probes_and_service(deployment, name, ha)

    def _picker_probes_and_service(self, deployment: kplus.Deployment, name: str, ha: bool) -> None:
        """The picker's gRPC probes and its Service."""
        # gRPC probes (cdk8s-plus has none): the picker's own health service, or with leader election its liveness and
        # readiness services, which only the leader passes (the extension's chart, epp-deployment.yaml).
        workload = cdk8s.ApiObject.of(deployment)
        for probe, service in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
            workload.add_json_patch(
                cdk8s.JsonPatch.add(
                    f"/spec/template/spec/containers/0/{probe}",
                    {
                        "grpc": {"port": HEALTH_PORT, "service": service if ha else "inference-extension"},
                        "periodSeconds": 5,
                    },
                )
            )
        kplus.Service(
            self,
            "PickerService",
            metadata=cdk8s.ApiObjectMetadata(name=name),
            selector=deployment,
            ports=[
                kplus.ServicePort(name="grpc-ext-proc", port=EXT_PROC_PORT),
                kplus.ServicePort(name="http-metrics", port=PICKER_METRICS_PORT),
            ],
        )

    def _admission(
        self,
        model: ModelSettings,
        pod_labels: dict[str, str],
        picker_labels: dict[str, str],
        port: int,
        inbound_cidrs: tuple[str, ...],
        scraped_ports: tuple[int, ...],
    ) -> None:
        """Only the gateway's proxies and the model's picker reach vLLM (and the scraper, from the inbound subnets);
        only the proxies reach the picker."""
        proxies = k8s.NetworkPolicyPeer(
            namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": NAMESPACE}),
            pod_selector=k8s.LabelSelector(match_labels={"gateway.envoyproxy.io/owning-gateway-name": NAME}),
        )
        picker = k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=picker_labels))
        admit_only(
            self,
            "ReplicasPolicy",
            name=f"{model.name}-from-gateway",
            pod_labels=pod_labels,
            rules=[([proxies, picker], (port,)), (subnets(inbound_cidrs), (port, *scraped_ports))],
        )
        admit_only(
            self,
            "PickerPolicy",
            name=f"{names.picker_name(model.name)}-from-gateway",
            pod_labels=picker_labels,
            rules=[([proxies], (EXT_PROC_PORT,))],
        )
