"""Warm capacity: GPU nodes held ready beyond a model's replicas, each already holding its image.

Each spare is a placeholder pod of the model's shape (its GPUs, requests and placement, and its image, which the
node pulls for it) at a negative priority, running nothing but `sleep`. A new replica, of the default priority 0,
preempts it (Kubernetes docs, "Pod Priority and Preemption"): the scheduler evicts the placeholder and nominates its
node for the replica, which starts there with neither a node launch nor an image pull. Karpenter does not provision
for a pod that is preempting (kubernetes-sigs/karpenter pkg/utils/pod/scheduling.go, IsProvisionable: a pod with a
nominated node is left out), and the evicted placeholder's Deployment makes a new one, for which Karpenter launches
the next spare node. The placeholders never preempt anything themselves.
"""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_object import without_namespace
from charts.gpu_placement import limit_gpus, schedule
from charts.pod_security import hardened, non_root_pod
from settings.names import app_label
from settings.schema import ModelSettings
from settings.sizing import Requests, sidecar_requests

# Below every pod of the cluster (the default is 0), so that any replica preempts a placeholder.
PLACEHOLDER_PRIORITY = -10


class WarmSpares(Construct):
    """The model's placeholders and their PriorityClass (cluster-scoped, named after the model)."""

    def __init__(
        self, scope: Construct, id: str, *, model: ModelSettings, image: str, requests: Requests, user: int
    ) -> None:
        super().__init__(scope, id)
        name = f"{model.name}-warm-spare"
        sidecar_cpu, sidecar_memory = sidecar_requests(model)
        # cdk8s-plus has no PriorityClass: the typed object.
        priority = k8s.KubePriorityClass(
            self,
            "Priority",
            metadata=k8s.ObjectMeta(name=name),
            value=PLACEHOLDER_PRIORITY,
            preemption_policy="Never",
            global_default=False,
            description=f"Placeholders holding GPU nodes ready for {model.name}; any replica preempts them",
        )
        without_namespace(priority)
        spares = kplus.Deployment(
            self,
            "Placeholders",
            metadata=cdk8s.ApiObjectMetadata(name=name, labels={"app": name}),
            replicas=model.warm_spares,
            select=False,
            # A changed placeholder replaces the old one, not beside it: a surge would launch one more GPU node.
            strategy=kplus.DeploymentStrategy.recreate(),
            # `sleep` as the container's first process takes no signal: a preempted placeholder goes at once.
            termination_grace_period=cdk8s.Duration.seconds(0),
            automount_service_account_token=False,
            security_context=non_root_pod(user),
        )
        cdk8s.ApiObject.of(spares).add_json_patch(cdk8s.JsonPatch.add("/spec/template/spec/priorityClassName", name))
        # Where a replica would go, one a node: the same pools, GPU memory and spread; never beside a replica, whose
        # own spread (one a node) would then forbid it to preempt this placeholder.
        schedule(spares, model, {"app": name})
        spares.scheduling.separate(
            kplus.Pods.select(self, "Replicas", labels={"app": app_label(model.name)}), topology=kplus.Topology.HOSTNAME
        )
        spares.add_container(
            name="placeholder",
            # The replicas' image, so that the node holds it when a replica arrives.
            image=image,
            image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
            command=["sleep", "infinity"],
            # A replica's requests (its compile cache's sidecar's too), so that Karpenter launches the instance a
            # replica would get, and the replica fits where the placeholder was.
            resources=kplus.ContainerResources(
                cpu=kplus.CpuResources(request=kplus.Cpu.millis(requests.cpu_millis + sidecar_cpu)),
                memory=kplus.MemoryResources(
                    request=cdk8s.Size.mebibytes(requests.memory_mib + sidecar_memory),
                    limit=cdk8s.Size.mebibytes(requests.memory_mib + sidecar_memory),
                ),
                ephemeral_storage=kplus.EphemeralStorageResources(
                    request=cdk8s.Size.mebibytes(requests.ephemeral_storage_mib)
                ),
            ),
            security_context=hardened(user),
        )
        limit_gpus(spares, model.gpus)
