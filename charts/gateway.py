"""The stage's inference gateway: one address for every model, API keys that name a client, token quotas.

Envoy Gateway (charts/vendor/envoy-gateway) runs the proxies this chart asks for; Envoy AI Gateway
(charts/vendor/envoy-ai-gateway) adds its external processor to them, which reads the request's `model` into the
`x-ai-eg-model` header, counts the tokens of each response and answers `GET /v1/models` from the routes (envoyproxy/
ai-gateway internal/extproc/models_processor.go at v1.1.0). Each model's route, InferencePool and endpoint picker are
the model's own (charts/gateway_model.py), so adding a model never changes this chart.

A request: (the stage's load balancer, when `gateway.endpoint` is set) -> Envoy: the API key names the client
(SecurityPolicy apiKeyAuth, its id forwarded as CLIENT_HEADER and the key removed), the client's token quota
(BackendTrafficPolicy, counted in ElastiCache through Envoy's rate limit service) -> the model's endpoint picker
chooses a replica -> vLLM.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_keys import mounted_secret
from charts.api_object import allow, api_object, without_namespace
from charts.exposure import ROUTED_PATH, admit_only, ingress_class, load_balancer_annotations
from charts.pod_security import PINNED_BY_TAG, POD_SECURITY_LABELS, checkov_skip_annotations, hardened, non_root_pod
from charts.smoke_test_access import smoke_test_access
from settings.drain import max_request_seconds
from settings.schema import GatewaySettings, StageSettings, TokenQuota

NAMESPACE = "inference-gateway"
NAME = "inference-gateway"
# Envoy Gateway's controller name (its chart's config.envoyGateway.gateway.controllerName default).
CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"
# The Gateway, as a policy's target (Gateway API LocalPolicyTargetReference).
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": NAME}
# What Envoy sends vLLM in place of the key: the client's id, which quotas and usage metrics select on.
CLIENT_HEADER = "x-client-id"
# The header Envoy AI Gateway fills from the request body's `model` (api/v1beta1/shared_types.go, AIModelHeaderKey).
MODEL_HEADER = "x-ai-eg-model"
# Where Envoy AI Gateway writes a response's token counts (api/v1beta1/shared_types.go, AIGatewayFilterMetadataNS),
# under the keys each model's route names in its llmRequestCosts (charts/gateway_model.py).
COST_METADATA_NAMESPACE = "io.envoy.ai_gateway"
TOKEN_COST_KEYS = {"input": "llm_input_token", "output": "llm_output_token", "total": "llm_total_token"}
BODY_BUFFER = "50Mi"
# The listener clients reach: Envoy's Service port.
HTTP_PORT = 80
# The label a model's namespace carries so that its route may attach to the gateway.
ROUTES_LABEL = "inference-gateway/routes"
# The Kubernetes Secret the key sync writes: client id -> key (Envoy Gateway api/v1alpha1/api_key_auth_types.go).
KEYS_SECRET = "gateway-api-keys"
KEY_SYNC = "gateway-key-sync"
KEY_SYNC_MOUNT = "/etc/gateway/clients"
KEY_SYNC_FILE = "clients.json"
# Envoy's requests (the proxies carry every model's streams; Envoy Gateway's own default asks for 100m/512Mi).
ENVOY_CPU_MILLIS = 1000
ENVOY_MEMORY_MIB = 1024
# Envoy AI Gateway's processor beside each proxy parses every request and response body, counting tokens; without a
# GatewayConfig it gets no requests at all (envoyproxy/ai-gateway internal/controller/extproc_builder.go at v1.1.0).
PROCESSOR_CPU_MILLIS = 500
PROCESSOR_MEMORY_MIB = 512
KEY_SYNC_CPU_MILLIS = 10
KEY_SYNC_LABELS = {"app": KEY_SYNC}
# checkov's checks the key sync fails on purpose, with the reasons.
KEY_SYNC_CHECKOV_EXCEPTIONS = {
    "CKV_K8S_8": "a loop that writes a Secret serves nothing to probe: a failed write ends it, and the pod restarts",
    "CKV_K8S_9": "a loop that writes a Secret serves nothing to probe: a failed write ends it, and the pod restarts",
    "CKV_K8S_11": "no CPU limit on purpose: the loop sleeps between writes; the request reserves what it needs",
    "CKV_K8S_38": "the key sync writes the keys' Secret through the Kubernetes API with its token",
    "CKV_K8S_43": PINNED_BY_TAG,
}
RUN_AS_USER = 65534


@dataclass(frozen=True)
class GatewayPlan:
    """What the gateway chart needs from the stacks: CDK tokens when applied, placeholders when written alone."""

    envoy_image: str
    key_sync_image: str
    region: str
    # The stage's web ACL, when the gateway has a load balancer (stacks/web_acl.py).
    web_acl_arn: str | None
    inbound_subnet_ids: tuple[str, ...]


def gateway_policy(scope: Construct, id: str, kind: str, name: str, spec: dict[str, Any]) -> cdk8s.ApiObject:
    """One of Envoy Gateway's policies (gateway.envoyproxy.io/v1alpha1) on the stage's Gateway."""
    return api_object(
        scope,
        id,
        "gateway.envoyproxy.io/v1alpha1",
        kind,
        cdk8s.ApiObjectMetadata(name=name),
        spec={"targetRefs": [GATEWAY_REF], **spec},
    )


def quota_rule(quota: TokenQuota) -> dict[str, object]:
    """A quota as a global rate limit rule: the client's requests to the model (each model with its own count, when
    the quota names none) cost nothing on the way in and their tokens once answered (Envoy Gateway
    api/v1alpha1/ratelimit_types.go, RateLimitCost; the AI Gateway's usage-based rate limiting guide)."""
    model = (
        {"name": MODEL_HEADER, "type": "Exact", "value": quota.model}
        if quota.model
        else {"name": MODEL_HEADER, "type": "Distinct"}
    )
    return {
        "clientSelectors": [{"headers": [{"name": CLIENT_HEADER, "type": "Exact", "value": quota.client}, model]}],
        "limit": {"requests": quota.limit, "unit": quota.window},
        "cost": {
            "request": {"from": "Number", "number": 0},
            "response": {
                "from": "Metadata",
                "metadata": {"namespace": COST_METADATA_NAMESPACE, "key": TOKEN_COST_KEYS[quota.tokens]},
            },
        },
    }


class GatewayChart(cdk8s.Chart):
    """The gateway's namespace, GatewayClass, EnvoyProxy, Gateway, key authentication, quotas and key sync; and its
    load balancer when the settings give a hostname and certificate."""

    def __init__(self, scope: Construct, id: str, *, settings: StageSettings, plan: GatewayPlan) -> None:
        super().__init__(scope, id, namespace=NAMESPACE, disable_resource_name_hashes=True)
        gateway = settings.routed
        assert gateway is not None
        # The proxies Envoy Gateway creates here and the processor Envoy AI Gateway adds to them run as non-root
        # with no privilege escalation, every capability dropped and RuntimeDefault seccomp (envoyproxy/gateway
        # internal/infrastructure/kubernetes/proxy/resource.go at v1.9.0; ai-gateway internal/controller/
        # gateway_mutator.go at v1.1.0): the restricted standard, like the key sync.
        namespace = kplus.Namespace(
            self, "Namespace", metadata=cdk8s.ApiObjectMetadata(name=NAMESPACE, labels=POD_SECURITY_LABELS)
        )
        without_namespace(cdk8s.ApiObject.of(namespace))
        self._proxies(settings, gateway, plan)
        gateway_policy(
            self,
            "ApiKeys",
            "SecurityPolicy",
            "api-keys",
            {
                "apiKeyAuth": {
                    "credentialRefs": [{"group": "", "kind": "Secret", "name": KEYS_SECRET}],
                    # OpenAI clients send `Authorization: Bearer <key>`; Envoy takes the key after "Bearer "
                    # (Envoy Gateway docs, tasks/security/apikey-auth.md at v1.9.0).
                    "extractFrom": [{"headers": ["authorization"]}],
                    "forwardClientIDHeader": CLIENT_HEADER,
                    "sanitize": True,
                },
            },
        )
        # Envoy AI Gateway's processor reads whole request and response bodies, which Envoy buffers, 32 KiB by
        # default (envoyproxy/gateway internal/xds/translator/listener.go at v1.9.0): a longer prompt would be
        # refused with 413. AI Gateway's own examples raise it to 50 MiB (examples/basic/basic.yaml at v1.1.0).
        gateway_policy(
            self, "RequestBodies", "ClientTrafficPolicy", "request-bodies", {"connection": {"bufferLimit": BODY_BUFFER}}
        )
        if gateway.quotas:
            rules = [quota_rule(quota) for quota in gateway.quotas]
            gateway_policy(
                self,
                "TokenQuotas",
                "BackendTrafficPolicy",
                "token-quotas",
                {"rateLimit": {"type": "Global", "global": {"rules": rules}}},
            )
        KeySync(self, "KeySync", gateway=gateway, image=plan.key_sync_image, region=plan.region)
        # The smoke test asks every model through the gateway (workloads/smoke_test.py, --gateway).
        smoke_test_access(self)
        if gateway.endpoint is not None:
            assert plan.web_acl_arn is not None  # the serving stack makes one with the endpoint
            self._load_balancer(settings, gateway, plan)

    def _proxies(self, settings: StageSettings, gateway: GatewaySettings, plan: GatewayPlan) -> None:
        """The GatewayClass, the EnvoyProxy that shapes the proxies, and the Gateway with its one HTTP listener."""
        api_object(
            self,
            "GatewayClass",
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            cdk8s.ApiObjectMetadata(name=NAME),
            cluster_scoped=True,
            spec={"controllerName": CONTROLLER_NAME},
        )
        proxy_labels = {"app.kubernetes.io/name": "envoy", "gateway.envoyproxy.io/owning-gateway-name": NAME}
        kubernetes: dict[str, object] = {
            "envoyDeployment": {
                "replicas": gateway.replicas,
                "container": {
                    "image": plan.envoy_image,
                    "resources": {
                        "requests": {"cpu": f"{ENVOY_CPU_MILLIS}m", "memory": f"{ENVOY_MEMORY_MIB}Mi"},
                        "limits": {"memory": f"{ENVOY_MEMORY_MIB}Mi"},
                    },
                },
                "pod": {
                    # One proxy per node: a node's loss takes one replica.
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": proxy_labels},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    }
                },
            },
            # Reached inside the cluster (and by the stage's load balancer), never on a load balancer of its own.
            "envoyService": {"type": "ClusterIP", "name": NAME},
        }
        if gateway.replicas > 1:
            kubernetes["envoyPDB"] = {"minAvailable": gateway.replicas - 1}
        api_object(
            self,
            "EnvoyProxy",
            "gateway.envoyproxy.io/v1alpha1",
            "EnvoyProxy",
            cdk8s.ApiObjectMetadata(name=NAME),
            spec={"provider": {"type": "Kubernetes", "kubernetes": kubernetes}},
        )
        self._processor()
        api_object(
            self,
            "Gateway",
            "gateway.networking.k8s.io/v1",
            "Gateway",
            # The processor's settings are the GatewayConfig this annotation names, in the Gateway's namespace
            # (envoyproxy/ai-gateway api/v1beta1/gateway_config.go).
            cdk8s.ApiObjectMetadata(name=NAME, annotations={"aigateway.envoyproxy.io/gateway-config": NAME}),
            spec={
                "gatewayClassName": NAME,
                "infrastructure": {
                    "parametersRef": {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": NAME}
                },
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": HTTP_PORT,
                        "allowedRoutes": {
                            "namespaces": {"from": "Selector", "selector": {"matchLabels": {ROUTES_LABEL: "true"}}}
                        },
                    }
                ],
            },
        )

    def _processor(self) -> None:
        """Envoy AI Gateway's processor beside each proxy: its requests, in the GatewayConfig the Gateway names."""
        api_object(
            self,
            "ProcessorConfig",
            "aigateway.envoyproxy.io/v1beta1",
            "GatewayConfig",
            cdk8s.ApiObjectMetadata(name=NAME),
            spec={
                "extProc": {
                    "kubernetes": {
                        "resources": {
                            "requests": {"cpu": f"{PROCESSOR_CPU_MILLIS}m", "memory": f"{PROCESSOR_MEMORY_MIB}Mi"},
                            "limits": {"memory": f"{PROCESSOR_MEMORY_MIB}Mi"},
                        }
                    }
                }
            },
        )

    def _load_balancer(self, settings: StageSettings, gateway: GatewaySettings, plan: GatewayPlan) -> None:
        """The stage's internal load balancer: HTTPS with the given certificate, /v1 only, the web ACL, to the
        proxies (EKS User Guide, "Create an IngressClass to configure an Application Load Balancer")."""
        endpoint = gateway.endpoint
        assert endpoint is not None
        assert plan.web_acl_arn is not None
        # The longest request any model allows: the idle timeout and the drain cover it.
        longest = max(max_request_seconds(model) for model in settings.models)
        ingress_class(
            self,
            name=NAME,
            certificate_arn=endpoint.certificate_arn,
            subnet_ids=plan.inbound_subnet_ids,
            request_seconds=longest,
        )
        # The proxies' Service is Envoy Gateway's, so the Ingress names it rather than holding a cdk8s-plus Service.
        k8s.KubeIngress(
            self,
            "Ingress",
            metadata=k8s.ObjectMeta(
                name=NAME,
                # A key-less health check is answered 401 by a proxy that is up: any answer below 500 is healthy.
                annotations=load_balancer_annotations(
                    health_path="/v1/models",
                    request_seconds=longest,
                    web_acl_arn=plan.web_acl_arn,
                    success_codes="200-499",
                ),
            ),
            spec=k8s.IngressSpec(
                ingress_class_name=NAME,
                rules=[
                    k8s.IngressRule(
                        host=endpoint.hostname,
                        http=k8s.HttpIngressRuleValue(
                            paths=[
                                k8s.HttpIngressPath(
                                    path=ROUTED_PATH,
                                    path_type="Prefix",
                                    backend=k8s.IngressBackend(
                                        service=k8s.IngressServiceBackend(
                                            name=NAME, port=k8s.ServiceBackendPort(number=HTTP_PORT)
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
        )


# The key sync's script (workloads/gateway_keys.py), run by the Python image's standard library alone.
KEY_SYNC_SCRIPT = Path(__file__).resolve().parent.parent / "workloads" / "gateway_keys.py"


class KeySync(Construct):
    """The clients' keys from Secrets Manager to the Secret Envoy reads: the secret mounted by the Secrets Store CSI
    driver (read as this pod's account through EKS Pod Identity, the stage's grant in stacks/inference_gateway.py),
    written by a small loop that names no key in its log. A changed secret reaches Envoy when the pod restarts
    (`kubectl rollout restart deployment/gateway-key-sync -n inference-gateway`), as the driver mounts at start."""

    def __init__(self, scope: cdk8s.Chart, id: str, *, gateway: GatewaySettings, image: str, region: str) -> None:
        super().__init__(scope, id)
        account = kplus.ServiceAccount(self, "ServiceAccount", metadata=cdk8s.ApiObjectMetadata(name=KEY_SYNC))
        role = kplus.Role(self, "Role", metadata=cdk8s.ApiObjectMetadata(name=KEY_SYNC))
        # Create needs the collection; update only the one Secret.
        allow(role, ["create"], kplus.ApiResource.SECRETS)
        allow(role, ["update", "get"], kplus.Secret.from_secret_name(self, "KeysSecret", KEYS_SECRET))
        kplus.RoleBinding(self, "RoleBinding", role=role).add_subjects(account)
        clients = mounted_secret(
            self,
            provider_class=KEY_SYNC,
            secret_name=gateway.clients_secret,
            alias=KEY_SYNC_FILE,
            region=region,
            volume="clients",
        )
        script = kplus.ConfigMap(
            self,
            "Script",
            metadata=cdk8s.ApiObjectMetadata(name=f"{KEY_SYNC}-script"),
            data={"sync.py": KEY_SYNC_SCRIPT.read_text()},
        )
        deployment = kplus.Deployment(
            self,
            "Deployment",
            metadata=cdk8s.ApiObjectMetadata(
                name=KEY_SYNC, annotations=checkov_skip_annotations(KEY_SYNC_CHECKOV_EXCEPTIONS)
            ),
            replicas=1,
            select=False,
            # The sync reads its script, its clients and the mounted secret once, at start: a change to any of them
            # is a change to the pod template, which starts a new pod.
            pod_metadata=cdk8s.ApiObjectMetadata(
                labels=KEY_SYNC_LABELS,
                annotations={
                    "gateway/clients-secret": gateway.clients_secret,
                    "gateway/key-sync-sha256": hashlib.sha256(KEY_SYNC_SCRIPT.read_bytes()).hexdigest(),
                },
            ),
            service_account=account,
            automount_service_account_token=True,
            security_context=non_root_pod(RUN_AS_USER),
            strategy=kplus.DeploymentStrategy.recreate(),
        )
        container = deployment.add_container(
            name="sync",
            image=image,
            command=["python3", "/opt/sync/sync.py"],
            security_context=hardened(RUN_AS_USER),
            resources=kplus.ContainerResources(
                cpu=kplus.CpuResources(request=kplus.Cpu.millis(KEY_SYNC_CPU_MILLIS)),
                memory=kplus.MemoryResources(request=cdk8s.Size.mebibytes(32), limit=cdk8s.Size.mebibytes(64)),
            ),
            env_variables={
                "CLIENTS": kplus.EnvValue.from_value(json.dumps([client.id for client in gateway.clients])),
                "CLIENTS_FILE": kplus.EnvValue.from_value(f"{KEY_SYNC_MOUNT}/{KEY_SYNC_FILE}"),
                "SECRET": kplus.EnvValue.from_value(KEYS_SECRET),
                "NAMESPACE": kplus.EnvValue.from_value(NAMESPACE),
                "PYTHONDONTWRITEBYTECODE": kplus.EnvValue.from_value("1"),
            },
        )
        container.mount("/opt/sync", kplus.Volume.from_config_map(self, "ScriptVolume", script, name="script"))
        container.mount(KEY_SYNC_MOUNT, clients, read_only=True)
        deployment.select(kplus.LabelSelector.of(labels=KEY_SYNC_LABELS))
        # Nothing reaches the key sync: it only calls out, to the Kubernetes API.
        admit_only(self, "NetworkPolicy", name=KEY_SYNC, pod_labels=KEY_SYNC_LABELS, rules=[])
