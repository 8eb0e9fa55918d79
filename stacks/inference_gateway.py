"""The stage's inference gateway installed on the cluster: the charts it runs on, the store its quotas count in, the
key sync's identity and, with an endpoint, the load balancer's web ACL (charts/gateway.py renders the gateway).

Installed as KEDA is (stacks/serving.py): each chart from its folder in the repository (charts/vendor/*/VENDORED.md),
shipped as a CDK asset, so a deploy downloads no chart. In order: the Inference Extension's resource definitions,
Envoy Gateway (with the Gateway API's), Envoy AI Gateway's definitions, then its controller, which Envoy Gateway
calls as an extension.

Components and versions, from their sources: Envoy AI Gateway v1.1.0 runs on Envoy Gateway v1.8.1 or later and
Kubernetes 1.32 or later (envoyproxy/ai-gateway site/versioned_docs/version-1.1/compatibility.md); Envoy Gateway
v1.9.0 supports Kubernetes 1.33 to 1.36, where v1.8 ended its support on 2026-11-08 (envoyproxy/gateway
site/content/en/news/releases/matrix.md); the Inference Extension v1.0.2 is the one AI Gateway v1.1.0 lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Aws, Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from charts.gateway import KEY_SYNC, NAMESPACE
from charts.images import pulled_image
from settings.schema import GatewaySettings, StageSettings
from stacks.pod_identity import pod_identity
from stacks.references import StageResources, secret_arn
from stacks.web_acl import web_acl

VENDOR = Path(__file__).resolve().parent.parent / "charts" / "vendor"
ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
AI_GATEWAY_NAMESPACE = "envoy-ai-gateway-system"
# Valkey's port; ElastiCache Serverless speaks TLS only (ElastiCache User Guide, "In-transit encryption (TLS)").
STORE_PORT = 6379
# The rate limit service's image in Envoy Gateway v1.9.0 (its chart's global.images.ratelimit.image).
RATELIMIT_IMAGE = "docker.io/envoyproxy/ratelimit:17b1956c"
# Its requests: Envoy Gateway's defaults (api/v1alpha1/kubernetes_helpers.go), with a memory limit.
RATELIMIT_CPU_MILLIS = 100
ENVOY_GATEWAY_IMAGE = "docker.io/envoyproxy/gateway:v1.9.0"
AI_GATEWAY_CONTROLLER_IMAGE = "docker.io/envoyproxy/ai-gateway-controller:v1.1.0"
AI_GATEWAY_EXTPROC_IMAGE = "docker.io/envoyproxy/ai-gateway-extproc:v1.1.0"
# What Envoy AI Gateway needs of Envoy Gateway (envoyproxy/ai-gateway manifests/envoy-gateway-values.yaml and
# examples/inference-pool/envoy-gateway-values-addon.yaml at v1.1.0).
EXTENSION_MANAGER = {
    "hooks": {
        "xdsTranslator": {
            "translation": {kind: {"includeAll": True} for kind in ("listener", "route", "cluster", "secret")},
            "post": ["Translation", "Cluster", "Route"],
        }
    },
    "service": {"fqdn": {"hostname": f"ai-gateway-controller.{AI_GATEWAY_NAMESPACE}.svc.cluster.local", "port": 1063}},
    "backendResources": [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "version": "v1"}],
}
# Clients' usage as a label of the token metrics (envoyproxy/ai-gateway manifests/charts/ai-gateway-helm/values.yaml,
# controller.metricsRequestHeaderAttributes): the id the key authentication forwards becomes `client_id`.
USAGE_LABELS = "x-client-id:client.id"


def store_name(settings: StageSettings) -> str:
    return f"{settings.cluster.name}-quotas"


def envoy_gateway_values(settings: StageSettings, account: str, store: str, replicas: int) -> dict[str, Any]:
    """Envoy Gateway's chart values: the AI Gateway extension, the quota store, the images through the stage's cache.

    The rate limit service reaches ElastiCache over TLS without a client certificate: REDIS_TLS set on its container,
    because the `tls` field without a certificate mounts a volume the chart never creates (envoyproxy/gateway
    internal/infrastructure/kubernetes/ratelimit/resource.go at v1.9.0); ElastiCache Serverless is a Valkey cluster
    (REDIS_TYPE=cluster, envoyproxy/ratelimit README, "Redis type"). Each quota check is a call to that service from
    the proxies: it runs beside them, with a disruption budget in production."""

    def pulled(image: str) -> str:
        return pulled_image(image, settings=settings, account=account)

    return {
        "global": {
            "images": {
                "envoyGateway": {"image": pulled(ENVOY_GATEWAY_IMAGE)},
                "ratelimit": {"image": pulled(RATELIMIT_IMAGE)},
            }
        },
        "deployment": {"replicas": replicas},
        "podDisruptionBudget": {"minAvailable": 1} if replicas > 1 else {},
        "config": {
            "envoyGateway": {
                "gateway": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
                "provider": {
                    "type": "Kubernetes",
                    "kubernetes": {
                        # The proxies run beside their Gateway, in the gateway's namespace.
                        "deploy": {"type": "GatewayNamespace"},
                        "rateLimitDeployment": {
                            "replicas": replicas,
                            "container": {
                                "env": [
                                    {"name": "REDIS_TLS", "value": "true"},
                                    {"name": "REDIS_TYPE", "value": "cluster"},
                                    # Required in cluster mode by the service's README ("Pipelining"); older
                                    # releases refused to start without it.
                                    {"name": "REDIS_PIPELINE_WINDOW", "value": "150us"},
                                ],
                                "resources": {
                                    "requests": {"cpu": f"{RATELIMIT_CPU_MILLIS}m", "memory": "512Mi"},
                                    "limits": {"memory": "512Mi"},
                                },
                            },
                        },
                        # envoyproxy/gateway api/v1alpha1/envoygateway_types.go (KubernetesPodDisruptionBudgetSpec).
                        **({"rateLimitPDB": {"minAvailable": 1}} if replicas > 1 else {}),
                    },
                },
                "extensionApis": {"enableEnvoyPatchPolicy": True, "enableBackend": True},
                "extensionManager": EXTENSION_MANAGER,
                # Without an answer from the rate limit service within its timeout (20 ms, the default), a request
                # goes on uncounted: failClosed false, Envoy Gateway's default, said here because it is a choice of
                # serving over enforcing quotas while the store is away (api/v1alpha1/envoygateway_types.go).
                "rateLimit": {"backend": {"type": "Redis", "redis": {"url": store}}, "failClosed": False},
            }
        },
    }


def ai_gateway_values(settings: StageSettings, account: str, replicas: int) -> dict[str, Any]:
    def pulled(image: str) -> dict[str, str]:
        repository, tag = pulled_image(image, settings=settings, account=account).rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    return {
        "controller": {
            "replicaCount": replicas,
            "podDisruptionBudget": {"enabled": replicas > 1, "minAvailable": 1},
            "image": pulled(AI_GATEWAY_CONTROLLER_IMAGE),
            "metricsRequestHeaderAttributes": USAGE_LABELS,
        },
        "extProc": {"image": pulled(AI_GATEWAY_EXTPROC_IMAGE)},
    }


class InferenceGateway(Construct):
    """The gateway's charts, its quota store and the key sync's access; `self.installed` is what the gateway's
    objects (the stage's chart and each model's) must come after."""

    def __init__(
        self, scope: Construct, id: str, *, settings: StageSettings, resources: StageResources, target: eks.ICluster
    ) -> None:
        super().__init__(scope, id)
        gateway = settings.gateway
        assert gateway is not None
        account = settings.account or Aws.ACCOUNT_ID
        controllers = 2 if settings.production else 1
        store = self._store(settings, resources)

        def chart(chart_id: str, folder: str, namespace: str, values: dict[str, Any] | None = None) -> eks.HelmChart:
            return eks.HelmChart(
                self,
                chart_id,
                cluster=target,
                chart_asset=s3_assets.Asset(self, f"{chart_id}Asset", path=str(VENDOR / folder)),
                release=folder,
                namespace=namespace,
                create_namespace=True,
                values=values,
                wait=True,
                timeout=Duration.minutes(10),
            )

        definitions = chart("InferenceExtensionCrds", "inference-extension-crds", ENVOY_GATEWAY_NAMESPACE)
        envoy_gateway = chart(
            "EnvoyGateway",
            "envoy-gateway",
            ENVOY_GATEWAY_NAMESPACE,
            envoy_gateway_values(settings, account, f"{store.attr_endpoint_address}:{STORE_PORT}", controllers),
        )
        envoy_gateway.node.add_dependency(definitions)
        ai_definitions = chart("AiGatewayCrds", "envoy-ai-gateway-crds", AI_GATEWAY_NAMESPACE)
        ai_gateway = chart(
            "AiGateway", "envoy-ai-gateway", AI_GATEWAY_NAMESPACE, ai_gateway_values(settings, account, controllers)
        )
        ai_gateway.node.add_dependency(envoy_gateway, ai_definitions)
        key_sync = self._key_sync(settings, gateway, resources)
        self.installed: list[Construct] = [ai_gateway, key_sync]
        self.web_acl_arn = (
            web_acl(self, "Gateway", f"the gateway of stage {settings.name}", gateway.endpoint).attr_arn
            if gateway.endpoint and gateway.enabled
            else None
        )

    def _store(self, settings: StageSettings, resources: StageResources) -> elasticache.CfnServerlessCache:
        """ElastiCache Serverless for Valkey in the private subnets, reached only from the cluster's nodes, over TLS
        (always on for serverless caches). It holds only counters of tokens per client and window."""
        group = ec2.SecurityGroup(
            self,
            "StoreSecurityGroup",
            vpc=resources.vpc,
            description="The gateway quota store, reached by the cluster pods",
            allow_all_outbound=False,
        )
        group.add_ingress_rule(
            ec2.Peer.security_group_id(resources.cluster.cluster_security_group_id),
            ec2.Port.tcp(STORE_PORT),
            # EC2 takes letters, digits, spaces and ._-:/()#,@[]+=&;{}!$* in a rule's description (EC2 API Reference,
            # IpRange Description): no apostrophe.
            "Valkey from the cluster nodes (the Envoy rate limit service)",
        )
        return elasticache.CfnServerlessCache(
            self,
            "Store",
            serverless_cache_name=store_name(settings),
            # Valkey 8, which ElastiCache Serverless runs (ElastiCache User Guide, "Supported engines and versions");
            # the engine's name as CreateServerlessCache takes it (ElastiCache API Reference: valkey, redis,
            # memcached).
            engine="valkey",
            major_engine_version="8",
            description=f"Token quota counters of the {settings.name} stage's inference gateway",
            security_group_ids=[group.security_group_id],
            subnet_ids=[subnet.subnet_id for subnet in resources.vpc.private_subnets],
        )

    def _key_sync(
        self, settings: StageSettings, gateway: GatewaySettings, resources: StageResources
    ) -> eks.CfnPodIdentityAssociation:
        """The key sync reads the clients' secret, and nothing else (charts/gateway.py, KeySync)."""
        return pod_identity(
            self,
            "KeySync",
            cluster_name=resources.cluster.cluster_name,
            namespace=NAMESPACE,
            service_account=KEY_SYNC,
            description=f"Reads the {settings.name} stage's gateway clients' keys",
            statements=[
                iam.PolicyStatement(
                    # DescribeSecret: the provider checks the version before it reads (secrets_manager_provider.go).
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                    resources=[secret_arn(settings, gateway.clients_secret)],
                )
            ],
        )
