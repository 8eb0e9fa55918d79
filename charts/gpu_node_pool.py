"""Where GPU nodes come from: a Karpenter NodePool that EKS Auto Mode launches GPU instances for.

Auto Mode's built-in pools run only C, M and R instances, so GPU workloads need a pool of
their own. Auto Mode installs the NVIDIA drivers and device plugin on the nodes it launches.
"""

from __future__ import annotations

from typing import Any

import cdk8s
from constructs import Construct

from settings.model import GpuNodePoolSettings

# The taint keeps everything but GPU workloads (which tolerate it) off these expensive nodes.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}
# Auto Mode's own NodeClass; a custom one can replace it without touching the pool's shape.
DEFAULT_NODE_CLASS = {"group": "eks.amazonaws.com", "kind": "NodeClass", "name": "default"}


def node_requirements(pool: GpuNodePoolSettings) -> list[dict[str, Any]]:
    """The pool's instance constraints, in Karpenter's requirement syntax."""
    requirements = [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(pool.capacity_types)},
    ]
    if pool.instance_categories:
        requirements.append(
            {"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": list(pool.instance_categories)}
        )
    if pool.instance_families:
        requirements.append(
            {"key": "eks.amazonaws.com/instance-family", "operator": "In", "values": list(pool.instance_families)}
        )
    if pool.instance_generation_greater_than is not None:
        requirements.append(
            {
                "key": "eks.amazonaws.com/instance-generation",
                "operator": "Gt",
                "values": [str(pool.instance_generation_greater_than)],
            }
        )
    requirements.append({"key": "kubernetes.io/arch", "operator": "In", "values": list(pool.architectures)})
    return requirements


class GpuNodePoolChart(cdk8s.Chart):
    """The `karpenter.sh/v1` NodePool for GPU nodes (cluster-scoped: the chart has no namespace)."""

    def __init__(self, scope: Construct, id: str, *, pool: GpuNodePoolSettings) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        limits: dict[str, Any] = {"cpu": pool.limits.cpu, "memory": pool.limits.memory}
        if pool.limits.gpu is not None:
            limits["nvidia.com/gpu"] = pool.limits.gpu
        node_pool = cdk8s.ApiObject(
            self,
            "NodePool",
            api_version="karpenter.sh/v1",
            kind="NodePool",
            metadata=cdk8s.ApiObjectMetadata(name=pool.name),
        )
        # ApiObject has no typed `spec` in Python: the whole spec goes in as one patch.
        node_pool.add_json_patch(
            cdk8s.JsonPatch.add(
                "/spec",
                {
                    "template": {
                        "metadata": {"labels": {"type": "karpenter", "NodeGroupType": pool.name}},
                        "spec": {
                            "nodeClassRef": DEFAULT_NODE_CLASS,
                            "taints": [GPU_TAINT],
                            "requirements": node_requirements(pool),
                        },
                    },
                    "limits": limits,
                    "disruption": {
                        # WhenEmpty: a node running a replica is never drained to pack pods tighter;
                        # Auto Mode's 21-day node expiry and auto repair still replace nodes, within the budget.
                        "consolidationPolicy": "WhenEmpty",
                        "consolidateAfter": pool.consolidate_after,
                        "budgets": [{"nodes": pool.disruption_budget_nodes}],
                    },
                },
            )
        )
