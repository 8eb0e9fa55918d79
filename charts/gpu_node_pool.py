"""Where GPU nodes come from: per GPU pool, a NodeClass and a Karpenter NodePool that EKS Auto Mode launches
GPU instances for.

Auto Mode's built-in pools run only C, M and R instances, so GPU workloads need pools of
their own. Auto Mode installs the NVIDIA drivers and device plugin on the nodes it launches.
Each NodeClass gives them a root volume big and fast enough to unpack a ~14 GB image, and
selects the pool's capacity reservations, if any.

The pools are tried in the order of the settings: each NodePool's weight is 10 below the one
before it, and Karpenter considers NodePools by weight, highest first (karpenter.sh docs,
"Scheduling", Weighted NodePools). When a launch fails for insufficient capacity, Karpenter
marks that offering (instance type, zone, capacity type) unavailable for 3 minutes
(karpenter-provider-aws pkg/cache/cache.go, UnavailableOfferingsTTL) and schedules the pending
pod again: onto another offering of the same pool if one is left, else onto the next pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cdk8s
import cdk8s_plus_30 as kplus
from constructs import Construct

from charts.api_object import api_object
from settings.schema import GpuNodePoolSettings
from settings.sizing import GPU_MEMORY_LABEL, NETWORK_BANDWIDTH_LABEL, NodePoolLimits

# The taint keeps everything but GPU workloads (which tolerate it) off these expensive nodes.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "Exists", "effect": "NoSchedule"}
ZONE_LABEL = "topology.kubernetes.io/zone"
# Karpenter's weights run from 1 to 100; the first pool gets the most.
FIRST_POOL_WEIGHT = 100
WEIGHT_STEP = 10


def pool_weight(index: int) -> int:
    """The NodePool weight of the pool at `index` in the settings' order of preference."""
    return FIRST_POOL_WEIGHT - WEIGHT_STEP * index


@dataclass(frozen=True)
class PoolPlan:
    """One GPU pool as rendered: its settings, its place in the order, where its nodes may run (None:
    any zone), the least memory per GPU of any model it can run, and its limits (settings.sizing)."""

    pool: GpuNodePoolSettings
    weight: int
    zones: tuple[str, ...] | None
    min_gpu_memory_mib: int
    limits: NodePoolLimits


def disruption_budgets(pool: GpuNodePoolSettings) -> list[dict[str, Any]]:
    """At most `disruption_budget_nodes` at once; with a maintenance window, no drifted node outside it.

    Karpenter applies the most restrictive budget that is active, and a budget with a schedule is
    active from each cron time for its duration (no time zones: UTC). So the window is the
    complement of a 0-node budget for the Drifted reason that starts when the window ends. Expiry
    (expireAfter, 14 days by default on Auto Mode, 21 at most: EKS User Guide, "Create a Node Pool
    for EKS Auto Mode") is not a budget reason in karpenter.sh/v1 (reasons: Underutilized, Empty,
    Drifted) and is forceful, so charts/node_rotation.py drifts a pool whose nodes near their expiry
    when its window opens.
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
    if pool.min_network_mbps is not None:
        # Karpenter's Gt is strict: more than one Mbps less.
        requirements.append(
            {"key": NETWORK_BANDWIDTH_LABEL, "operator": "Gt", "values": [str(pool.min_network_mbps - 1)]}
        )
    # Karpenter's Gt is strict: more than one MiB less than needed.
    requirements.append({"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(min_gpu_memory_mib - 1)]})
    requirements.append({"key": "kubernetes.io/arch", "operator": "In", "values": list(pool.architectures)})
    if zones is not None:
        requirements.append({"key": ZONE_LABEL, "operator": "In", "values": list(zones)})
    return requirements


class GpuPoolList(cdk8s.Chart):
    """The stage's GPU pools, by name, in a kube-system ConfigMap: what the chart that once held the pools holds
    now, so that its resource lives on (applied as it was, under the same logical id) and its deletion never
    deletes a pool."""

    def __init__(self, scope: Construct, id: str, *, pools: tuple[GpuNodePoolSettings, ...]) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        kplus.ConfigMap(
            self,
            "Pools",
            metadata=cdk8s.ApiObjectMetadata(name="gpu-inference-node-pools", namespace="kube-system"),
            data={"pools": ",".join(pool.name for pool in pools)},
        )


class GpuNodePoolChart(cdk8s.Chart):
    """A NodeClass and a `karpenter.sh/v1` NodePool per GPU pool (cluster-scoped: the chart has no namespace),
    each named after its pool.

    `node_role_name`, `subnet_ids` and `security_group_id` come from the cluster (CDK tokens when
    applied by the serving stack). Applied over existing objects, as a pool's objects moved into a chart of their own.
    """

    applies_over_existing = True

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        pools: list[PoolPlan],
        node_role_name: str,
        subnet_ids: tuple[str, ...],
        security_group_id: str,
    ) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        for plan in pools:
            self._node_class(plan.pool, node_role_name, subnet_ids, security_group_id)
            self._node_pool(plan)

    def _node_class(
        self,
        pool: GpuNodePoolSettings,
        node_role_name: str,
        subnet_ids: tuple[str, ...],
        security_group_id: str,
    ) -> None:
        spec: dict[str, Any] = {
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
            # Network policies on these nodes, from the first deploy: the EKS User Guide's steps for them set the
            # NodeClass's networkPolicy ("Use Network Policies with EKS Auto Mode", step 2), DefaultAllow being its
            # default for pods no policy selects ("Create a Node Class"). Set whether or not a model is exposed,
            # so that exposing one (which turns the network policy controller on, charts/exposure.py) changes no
            # NodeClass: a changed NodeClass drifts, and so replaces, every node of its pools.
            "networkPolicy": "DefaultAllow",
        }
        if pool.capacity_reservations:
            # EKS User Guide, auto-odcr.html: On-Demand Capacity Reservations and Capacity Blocks for ML
            # alike, by id. Selecting any turns off Auto Mode's use of open reservations cluster-wide
            # (settings: cluster.open_reservations_unused).
            spec["capacityReservationSelectorTerms"] = [
                {"id": reservation} for reservation in pool.capacity_reservations
            ]
        api_object(
            self,
            f"NodeClass-{pool.name}",
            "eks.amazonaws.com/v1",
            "NodeClass",
            cdk8s.ApiObjectMetadata(name=pool.name),
            spec=spec,
        )

    def _node_pool(self, plan: PoolPlan) -> None:
        pool = plan.pool
        api_object(
            self,
            f"NodePool-{pool.name}",
            "karpenter.sh/v1",
            "NodePool",
            cdk8s.ApiObjectMetadata(name=pool.name),
            spec={
                "weight": plan.weight,
                "template": {
                    "metadata": {"labels": {"type": "karpenter", "NodeGroupType": pool.name}},
                    "spec": {
                        "nodeClassRef": {"group": "eks.amazonaws.com", "kind": "NodeClass", "name": pool.name},
                        "taints": [GPU_TAINT],
                        "requirements": node_requirements(pool, plan.zones, plan.min_gpu_memory_mib),
                        # A node that expires or is replaced waits this long for its pods, then
                        # Karpenter deletes them anyway, PodDisruptionBudget or not, early enough
                        # for each pod's own grace period to fit (karpenter.sh docs, "Disruption",
                        # TerminationGracePeriod). Long enough, then, for a replacement replica
                        # to start (the budget holds the old one until it serves) and the old one
                        # to drain: settings/drain.py checks it against every model the pool runs.
                        "terminationGracePeriod": pool.termination_grace_period,
                    },
                },
                "limits": plan.limits,
                "disruption": {
                    # WhenEmpty: a node running a replica is never drained to pack pods tighter;
                    # Node expiry (14 days by default on Auto Mode) and auto repair still replace nodes.
                    "consolidationPolicy": "WhenEmpty",
                    "consolidateAfter": pool.consolidate_after,
                    "budgets": disruption_budgets(pool),
                },
            },
        )
