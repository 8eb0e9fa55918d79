"""A model behind an internal Application Load Balancer, from EKS Auto Mode's own load balancing.

Auto Mode configures a load balancer from an IngressClass whose controller is eks.amazonaws.com/alb
and its IngressClassParams (eks.amazonaws.com/v1): not from annotations on the IngressClass. The
Ingress may still carry annotations, such as the listener ports, the health check and the AWS WAF
web ACL: IngressClassParams has no field for a web ACL, and the guide names the Ingress annotation
instead (EKS User Guide, "Create an IngressClass to configure an Application Load Balancer"; its
IngressClassParams reference lists scheme, certificateARNs, subnets.ids and loadBalancerAttributes,
the fields used here). No schema of IngressClassParams is published: tests/test_exposure.py
asserts the fields.
Private subnets carry kubernetes.io/role/internal-elb (stacks/network.py), where Auto Mode places
internal load balancers.

Only /v1 is routed (pathType Prefix: /v1 and /v1/*); vLLM's other routes (/metrics, /health,
/tokenize, /invocations, ...) are not reachable through the load balancer, whose default action
answers 404. vLLM itself requires an API key on /v1 (charts/api_keys.py).

A NetworkPolicy admits only the inbound subnets (stacks/network.py) to the replicas' port; Auto
Mode enforces it on the GPU nodes, whose NodeClasses enable network policies, once the network
policy controller is on (NetworkPolicyController, EKS User Guide, "Use Network Policies with EKS
Auto Mode").
"""

from __future__ import annotations

import json

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_object import api_object, without_namespace
from settings.drain import max_request_seconds
from settings.schema import ExposureSettings, ModelSettings

CONTROLLER = "eks.amazonaws.com/alb"
ROUTED_PATH = "/v1"
HTTPS_PORT = 443


# Elastic Load Balancing's longest idle timeout (Application Load Balancers, "Connection idle timeout").
MAX_IDLE_TIMEOUT_SECONDS = 4000
# A target group's longest deregistration delay (Application Load Balancers, "Target groups", Deregistration
# delay: 0-3600 seconds; 300 by default, after which a draining target's requests are cut off).
MAX_DEREGISTRATION_DELAY_SECONDS = 3600


def idle_timeout_seconds(request_seconds: int) -> int:
    """The load balancer's idle timeout: the longest request behind it, within what ELB takes."""
    return min(request_seconds, MAX_IDLE_TIMEOUT_SECONDS)


def deregistration_delay_seconds(request_seconds: int) -> int:
    """How long the load balancer lets a deregistered target finish its requests: the longest request behind it,
    within what ELB takes (its 300 s default would cut longer ones off while the target drains)."""
    return min(request_seconds, MAX_DEREGISTRATION_DELAY_SECONDS)


def load_balancer_annotations(
    *, health_path: str, request_seconds: int, web_acl_arn: str, success_codes: str | None = None
) -> dict[str, str]:
    """An Ingress's annotations: HTTPS only, health from `health_path` (answered with `success_codes`, ELB's 200
    unless given), draining as long as a request, the web ACL. Auto Mode configures load balancers from Ingress
    annotations, except those its guide lists as unsupported (EKS User Guide, "Create an IngressClass to configure
    an Application Load Balancer"); target group attributes are not among them."""
    return {
        "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTPS": HTTPS_PORT}]),
        "alb.ingress.kubernetes.io/target-type": "ip",
        "alb.ingress.kubernetes.io/healthcheck-path": health_path,
        **({"alb.ingress.kubernetes.io/success-codes": success_codes} if success_codes else {}),
        "alb.ingress.kubernetes.io/target-group-attributes": (
            f"deregistration_delay.timeout_seconds={deregistration_delay_seconds(request_seconds)}"
        ),
        "alb.ingress.kubernetes.io/wafv2-acl-arn": web_acl_arn,
    }


class InternalEndpoint(Construct):
    """IngressClassParams and IngressClass (cluster-scoped, named after the model), the model's NetworkPolicy, and
    its Ingress, built in `ingress_scope`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        ingress_scope: Construct,
        service: kplus.Service,
        model: ModelSettings,
        exposure: ExposureSettings,
        port: int,
        web_acl_arn: str,
        inbound_subnet_ids: tuple[str, ...],
        inbound_cidrs: tuple[str, ...],
        pod_labels: dict[str, str],
        scraped_ports: tuple[int, ...] = (),
    ) -> None:
        """`scraped_ports`: the replicas' other ports the metrics scraper reads (charts/gpu_metrics.py)."""
        super().__init__(scope, id)
        ingress_class(
            self,
            name=model.name,
            certificate_arn=exposure.certificate_arn,
            subnet_ids=inbound_subnet_ids,
            request_seconds=max_request_seconds(model),
        )
        ingress(ingress_scope, model, service, web_acl_arn)
        # Only the load balancer (and the metrics scraper) reach the replicas, from the inbound
        # subnets; other pods of the cluster do not. The kubelet's probes, `kubectl port-forward`
        # and the preStop drain are unaffected: the network policy agent always admits the node's
        # own address (aws/aws-network-policy-agent, pkg/fwruleprocessor/fw_rule_processor.go),
        # and a port-forward or the drain reach vLLM from inside the pod.
        admit_only(
            self,
            "NetworkPolicy",
            name=f"{model.name}-inbound",
            pod_labels=pod_labels,
            rules=[(subnets(inbound_cidrs), (port, *scraped_ports))],
        )


def subnets(cidrs: tuple[str, ...]) -> list[k8s.NetworkPolicyPeer]:
    """Peers by address range: the inbound subnets (the load balancers, the metrics scraper)."""
    return [k8s.NetworkPolicyPeer(ip_block=k8s.IpBlock(cidr=cidr)) for cidr in cidrs]


def admit_only(
    scope: Construct,
    id: str,
    *,
    name: str,
    pod_labels: dict[str, str],
    rules: list[tuple[list[k8s.NetworkPolicyPeer], tuple[int, ...]]],
) -> None:
    """A NetworkPolicy: the pods `pod_labels` select take traffic only from each rule's peers on its TCP ports (no
    rule: from nobody). cdk8s-plus checks an IP block's text, and the inbound subnets' ranges are deploy-time values
    (CDK tokens): the typed object."""
    k8s.KubeNetworkPolicy(
        scope,
        id,
        metadata=k8s.ObjectMeta(name=name),
        spec=k8s.NetworkPolicySpec(
            pod_selector=k8s.LabelSelector(match_labels=pod_labels),
            policy_types=["Ingress"],
            ingress=[
                k8s.NetworkPolicyIngressRule(
                    from_=peers,
                    ports=[k8s.NetworkPolicyPort(protocol="TCP", port=k8s.IntOrString.from_number(n)) for n in ports],
                )
                for peers, ports in rules
            ],
        ),
    )


def ingress_class(
    scope: Construct, *, name: str, certificate_arn: str, subnet_ids: tuple[str, ...], request_seconds: int
) -> None:
    """An IngressClass and its IngressClassParams, cluster-scoped: an internal load balancer in the inbound subnets
    (the subnets no pod lives in, which the NetworkPolicies admit), serving `certificate_arn`."""
    api_object(
        scope,
        "IngressClassParams",
        "eks.amazonaws.com/v1",
        "IngressClassParams",
        cdk8s.ApiObjectMetadata(name=name),
        cluster_scoped=True,
        spec={
            "scheme": "internal",
            "certificateARNs": [certificate_arn],
            "subnets": {"ids": list(subnet_ids)},
            # A request that streams nothing sends no byte until it ends: the idle timeout (60 s by
            # default, 4000 at most) covers the longest request behind it (settings/drain.py).
            "loadBalancerAttributes": [
                {"key": "idle_timeout.timeout_seconds", "value": str(idle_timeout_seconds(request_seconds))}
            ],
        },
    )
    # cdk8s-plus has no IngressClass: the typed object.
    ingress_class = k8s.KubeIngressClass(
        scope,
        "IngressClass",
        metadata=k8s.ObjectMeta(name=name),
        spec=k8s.IngressClassSpec(
            controller=CONTROLLER,
            parameters=k8s.IngressClassParametersReference(
                api_group="eks.amazonaws.com", kind="IngressClassParams", name=name
            ),
        ),
    )
    without_namespace(ingress_class)


def ingress(scope: Construct, model: ModelSettings, service: kplus.Service, web_acl_arn: str) -> None:
    """The model's Ingress: its routed path (ROUTED_PATH and below) to the model's Service, behind its web ACL."""
    kplus.Ingress(
        scope,
        "Ingress",
        metadata=cdk8s.ApiObjectMetadata(
            name=model.name,
            annotations=load_balancer_annotations(
                health_path="/health", request_seconds=max_request_seconds(model), web_acl_arn=web_acl_arn
            ),
        ),
        class_name=model.name,
        rules=[
            kplus.IngressRule(
                backend=kplus.IngressBackend.from_service(service),
                path=ROUTED_PATH,
                path_type=kplus.HttpIngressPathType.PREFIX,
            )
        ],
    )


class NetworkPolicyController(cdk8s.Chart):
    """Turns on the network policy controller of an Auto Mode cluster (EKS User Guide, "Use Network Policies
    with EKS Auto Mode"): a ConfigMap that may already exist."""

    # Apply with `kubectl apply`, not `kubectl create`: the object may be there before us.
    applies_over_existing = True

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        kplus.ConfigMap(
            self,
            "ConfigMap",
            metadata=cdk8s.ApiObjectMetadata(name="amazon-vpc-cni", namespace="kube-system"),
            data={"enable-network-policy-controller": "true"},
        )
