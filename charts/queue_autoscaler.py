"""KEDA scales a model's Deployment on vLLM's queue, read from Amazon Managed Service for Prometheus.

Per model, in its namespace: a TriggerAuthentication that signs KEDA's queries with the KEDA
operator's own AWS identity (EKS Pod Identity: `podIdentity.provider: aws`, kedacore/keda-docs
content/docs/2.20/authentication-providers/aws.md), and a ScaledObject with a Prometheus trigger
(content/docs/2.20/scalers/prometheus.md, "Amazon Managed Service for Prometheus"). KEDA hands the
scaling between the minimum and the maximum to a HorizontalPodAutoscaler, whose target is the
queue per replica (metric type AverageValue: replicas = ceil(queue / target)). Scale-down waits
for the HPA's stabilization window (advanced.horizontalPodAutoscalerConfig.behavior); KEDA's own
cooldownPeriod only governs scaling to zero, which a synchronous API never does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cdk8s
from constructs import Construct

from charts.api_object import api_object
from settings.schema import ModelSettings

TRIGGER_AUTHENTICATION = "amp-queries"


@dataclass(frozen=True)
class AutoscalingPlan:
    """Where the queue is read (the workspace's Prometheus endpoint and its region), how often, and how
    long it stays low before a replica goes (settings/autoscaling.py)."""

    workspace_url: str  # https://aps-workspaces.<region>.amazonaws.com/workspaces/<id>
    region: str
    polling_seconds: int
    scale_down_seconds: int


def queue_query(namespace: str) -> str:
    """Requests waiting in all of a model's replicas (vLLM's vllm:num_requests_waiting gauge, v1/metrics/loggers.py)."""
    return f'sum(vllm:num_requests_waiting{{namespace="{namespace}"}})'


class QueueAutoscaler(Construct):
    """A TriggerAuthentication and a ScaledObject for one model's Deployment."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelSettings,
        deployment_name: str,
        plan: AutoscalingPlan,
    ) -> None:
        super().__init__(scope, id)
        assert model.autoscaling is not None
        api_object(
            self,
            "TriggerAuthentication",
            "keda.sh/v1alpha1",
            "TriggerAuthentication",
            cdk8s.ApiObjectMetadata(name=TRIGGER_AUTHENTICATION),
            spec={"podIdentity": {"provider": "aws"}},
        )
        api_object(
            self,
            "ScaledObject",
            "keda.sh/v1alpha1",
            "ScaledObject",
            cdk8s.ApiObjectMetadata(name=deployment_name),
            spec={
                "scaleTargetRef": {"name": deployment_name},
                "minReplicaCount": model.replicas,
                "maxReplicaCount": model.autoscaling.max_replicas,
                "pollingInterval": plan.polling_seconds,
                "cooldownPeriod": plan.scale_down_seconds,
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {
                            # A replica goes only after the queue has stayed low this long, one at a time.
                            "scaleDown": {
                                "stabilizationWindowSeconds": plan.scale_down_seconds,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                            }
                        }
                    }
                },
                "triggers": [
                    {
                        "type": "prometheus",
                        "authenticationRef": {"name": TRIGGER_AUTHENTICATION},
                        "metadata": {
                            "serverAddress": plan.workspace_url,
                            "awsRegion": plan.region,
                            "query": queue_query(model.name),
                            "threshold": f"{model.autoscaling.target_queue_per_replica:g}",
                        },
                    }
                ],
            },
        )
