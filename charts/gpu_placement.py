"""Where a model's GPU pods run, and the GPUs each holds: the replicas, and the warm spares that stand in for them."""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s

from charts.gpu_node_pool import GPU_TAINT
from settings.schema import ModelSettings
from settings.sizing import GPU_MEMORY_LABEL, gpu_memory_needed_mib


def schedule(deployment: kplus.Deployment, model: ModelSettings, labels: dict[str, str]) -> None:
    """Where the replicas run: GPU nodes whose GPUs hold the model, one replica a node, across zones if they can."""
    deployment.select(kplus.LabelSelector.of(labels=labels))
    for key, value in labels.items():
        deployment.pod_metadata.add_label(key, value)
    deployment.scheduling.tolerate(
        kplus.TaintedNode([kplus.NodeTaintQuery.exists(GPU_TAINT["key"], effect=kplus.TaintEffect.NO_SCHEDULE)])
    )
    # Only nodes whose GPUs hold this model's shard (the pool admits the smallest model's).
    deployment.scheduling.attract(
        kplus.Node.labeled(kplus.NodeLabelQuery.gt(GPU_MEMORY_LABEL, [str(gpu_memory_needed_mib(model) - 1)]))
    )
    # Replicas on separate nodes (a node's loss takes one replica), and across zones where possible.
    deployment.scheduling.spread(topology=kplus.Topology.HOSTNAME)
    deployment.scheduling.spread(topology=kplus.Topology.ZONE, weight=100)


def limit_gpus(deployment: kplus.Deployment, gpus: int) -> None:
    """The server's GPUs, as a limit. cdk8s-plus has no field for extended resources such as GPUs; the patch runs
    before the typed mapper, which renders a plain string as null: the value must be a k8s Quantity."""
    cdk8s.ApiObject.of(deployment).add_json_patch(
        cdk8s.JsonPatch.add(
            "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu", k8s.Quantity.from_string(str(gpus))
        ),
    )
