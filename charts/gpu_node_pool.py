"""Where GPU nodes come from: a NodeClass and a Karpenter NodePool that EKS Auto Mode launches GPU instances for.

Auto Mode's built-in pools run only C, M and R instances, so GPU workloads need a pool of
their own. Auto Mode installs the NVIDIA drivers and device plugin on the nodes it launches.
The NodeClass gives them a root volume big and fast enough to unpack a ~14 GB image.
"""

from __future__ import annotations

from typing import Any

import cdk8s
from constructs import Construct

from settings.model import GpuNodePoolSettings
from settings.sizing import GPU_MEMORY_LABEL

# The taint keeps everything but GPU workloads (which tolerate it) off these expensive nodes.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}
NODE_CLASS_NAME = "gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"


def disruption_budgets(pool: GpuNodePoolSettings) -> list[dict[str, Any]]:
    """At most `disruption_budget_nodes` at once; with a maintenance window, no drifted node outside it.

    Karpenter applies the most restrictive budget that is active, and a budget with a schedule is
    active from each cron time for its duration (no time zones: UTC). So the window is the
    complement of a 0-node budget for the Drifted reason that starts when the window ends. Expiry
    (expireAfter, 14 days by default on Auto Mode, 21 at most: EKS User Guide, "Create a Node Pool
    for EKS Auto Mode") is not a budget reason in karpenter.sh/v1 (reasons: Underutilized, Empty,
    Drifted) and is forceful: an expiring node is drained within the NodePool's
    terminationGracePeriod (see GpuNodePoolChart).
    """
    budgets: list[dict[str, Any]] = [{"nodes": pool.disruption_budget_nodes}]
    window = pool.maintenance_window
    if window is not None:
        hour, minute = (int(part) for part in window.start.split(":"))
        budgets.append(
            {
                "nodes": "0",
                "reasons": ["Drifted"],
                "schedule": f"{minute} {(hour + window.hours) % 24} * * *",
                "duration": f"{24 - window.hours}h",
            }
        )
    return budgets


def node_requirements(
    pool: GpuNodePoolSettings, zones: tuple[str, ...] | None, min_gpu_memory_mib: int
) -> list[dict[str, Any]]:
    """The pool's instance constraints, in Karpenter's requirement syntax; `zones` None means any zone.

    `min_gpu_memory_mib`: the least memory per GPU any model needs (settings.sizing). Category g of
    generation 5 and newer also holds g6f, whose GPUs are fractions of one L4 (3-12 GB) and whose
    GPU count Karpenter has reported inconsistently (aws/karpenter-provider-aws#8324, #8368):
    requiring whole GPUs with enough memory keeps them, and any such family to come, out.
    """
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
    # Karpenter's Gt is strict: more than one MiB less than needed.
    requirements.append({"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(min_gpu_memory_mib - 1)]})
    requirements.append({"key": "kubernetes.io/arch", "operator": "In", "values": list(pool.architectures)})
    if zones is not None:
        requirements.append({"key": ZONE_LABEL, "operator": "In", "values": list(zones)})
    return requirements


class GpuNodePoolChart(cdk8s.Chart):
    """The GPU NodeClass and `karpenter.sh/v1` NodePool (both cluster-scoped: the chart has no namespace).

    `node_role_name`, `subnet_ids` and `security_group_id` come from the cluster (CDK tokens when
    applied by the serving stack); `zones` pins the pool to the model store's zone, or None;
    `min_gpu_memory_mib` is the least memory per GPU that any model served from the pool needs;
    `limits` what the pool may hold in all (settings.sizing.pool_limits); `drain_seconds` how long
    a node going away waits for its replicas: their replacements' start and their own drain.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        pool: GpuNodePoolSettings,
        node_role_name: str,
        subnet_ids: tuple[str, ...],
        security_group_id: str,
        zones: tuple[str, ...] | None,
        min_gpu_memory_mib: int,
        limits: dict[str, Any],
        drain_seconds: int,
    ) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        node_class = cdk8s.ApiObject(
            self,
            "NodeClass",
            api_version="eks.amazonaws.com/v1",
            kind="NodeClass",
            metadata=cdk8s.ApiObjectMetadata(name=NODE_CLASS_NAME),
        )
        node_class.add_json_patch(
            cdk8s.JsonPatch.add(
                "/spec",
                {
                    # The cluster's Auto Mode node role: EKS created its access entry with the cluster.
                    "role": node_role_name,
                    "subnetSelectorTerms": [{"id": subnet_id} for subnet_id in subnet_ids],
                    "securityGroupSelectorTerms": [{"id": security_group_id}],
                    # Auto Mode's default (80Gi at 125 MiB/s) turns unpacking a 14 GB image into minutes.
                    # Auto Mode encrypts the volume; the key is the account's EBS default.
                    "ephemeralStorage": {
                        "size": pool.disk.size,
                        "iops": pool.disk.iops,
                        "throughput": pool.disk.throughput_mib,
                    },
                },
            )
        )
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
                            "nodeClassRef": {
                                "group": "eks.amazonaws.com",
                                "kind": "NodeClass",
                                "name": NODE_CLASS_NAME,
                            },
                            "taints": [GPU_TAINT],
                            "requirements": node_requirements(pool, zones, min_gpu_memory_mib),
                            # A node that expires or is replaced waits this long for its pods, then
                            # Karpenter deletes them anyway, PodDisruptionBudget or not, early enough
                            # for each pod's own grace period to fit (karpenter.sh docs, "Disruption",
                            # TerminationGracePeriod). Long enough, then, for a replacement replica
                            # to start (the budget holds the old one until it serves) and the old one
                            # to drain.
                            "terminationGracePeriod": f"{drain_seconds}s",
                        },
                    },
                    "limits": limits,
                    "disruption": {
                        # WhenEmpty: a node running a replica is never drained to pack pods tighter;
                        # Node expiry (14 days by default on Auto Mode) and auto repair still replace nodes.
                        "consolidationPolicy": "WhenEmpty",
                        "consolidateAfter": pool.consolidate_after,
                        "budgets": disruption_budgets(pool),
                    },
                },
            )
        )
