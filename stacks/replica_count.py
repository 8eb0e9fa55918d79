"""A model's Deployment whose replica count can pass to an autoscaler, and back, without a reset.

The CDK kubectl handler applies a chart with a client-side `kubectl apply` (aws-cdk-lib custom-resource-handlers,
aws-eks-v2/kubectl-handler/apply), which deletes every field the object's last applied configuration (its
kubectl.kubernetes.io/last-applied-configuration annotation) has and the new manifest has not. So when autoscaling
is turned on for a running model, and its manifest stops giving `replicas`, the apply deletes the field and the API
server defaults it to 1: the model drops to one replica until the autoscaler scales it up again, a cold start later
(Kubernetes docs, "Horizontal Pod Autoscaling", migrating Deployments and StatefulSets to horizontal autoscaling,
whose fix is a hand-run `kubectl apply edit-last-applied`).

Here that edit is a step of every deploy: after the chart is applied, a KubernetesPatch (`kubectl patch --type
merge`) writes the Deployment's last applied configuration again, as applied but without `spec.replicas`. An apply
never deletes a field it has no record of having set, so the count the autoscaler (or the manifest) set stays, and
a manifest that gives `replicas` still sets it. The patch also records a digest of the whole applied manifest, so
that it runs again after any apply of the chart, each of which writes the annotation anew.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MANIFEST_DIGEST = "gpu-inference/applied-manifest"
# The label the kubectl handler's manifests put on every object they apply (aws-cdk-lib aws-eks-v2
# lib/k8s-manifest.ts, injectPruneLabel: PRUNE_LABEL_PREFIX plus the manifest construct's address).
PRUNE_LABEL_PREFIX = "aws.cdk.eks/prune-"


def last_applied_without_replicas(deployment: dict[str, Any], prune_label: str | None) -> dict[str, Any]:
    """The Deployment as the kubectl handler applies it (with its prune label), without a replica count."""
    applied = copy.deepcopy(deployment)
    if prune_label is not None:
        applied["metadata"]["labels"] = {prune_label: "", **applied["metadata"].get("labels", {})}
    applied["spec"].pop("replicas", None)
    return applied


def handover_patch(last_applied: str, manifest_digest: str) -> dict[str, Any]:
    """The merge patch written after every apply: `last_applied`, the JSON text of last_applied_without_replicas."""
    return {"metadata": {"annotations": {LAST_APPLIED: last_applied, MANIFEST_DIGEST: manifest_digest}}}


class ReplicaCountHandover(Construct):
    """The KubernetesPatch that runs after a model's chart is applied (see the module's docstring)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: eks.ICluster,
        manifest: eks.KubernetesManifest,
        objects: list[dict[str, Any]],
        deployment_name: str,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment_name]
        # The manifest as CloudFormation holds it (references, not values): it changes exactly when the chart does.
        resolved = json.dumps(stack.resolve(objects), sort_keys=True)
        digest = hashlib.sha256(resolved.encode()).hexdigest()[:16]
        # As JSON text whose deployed values (the image's account, say) CloudFormation fills in.
        last_applied = stack.to_json_string(
            last_applied_without_replicas(deployment, f"{PRUNE_LABEL_PREFIX}{manifest.node.addr}")
        )
        patch = handover_patch(last_applied, manifest_digest=digest)
        handover = eks.KubernetesPatch(
            self,
            "Patch",
            cluster=cluster,
            resource_name=f"deployment/{deployment_name}",
            resource_namespace=namespace,
            apply_patch=patch,
            # When the model goes, its Deployment goes too: nothing to restore.
            restore_patch={},
            patch_type=eks.PatchType.MERGE,
        )
        handover.node.add_dependency(manifest)
