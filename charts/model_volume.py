"""Where weights live, as Kubernetes sees them: the FSx for Lustre file system as a static volume."""

from __future__ import annotations

import cdk8s
from constructs import Construct

from charts.api_object import api_object
from settings import names

STORAGE_CLASS = ""  # static provisioning: no class, the claim binds to the volume by name
CSI_DRIVER = "fsx.csi.aws.com"
# Each model's namespace claims the file system under this name.
CLAIM_NAME = "model-weights"
# The FSx for Lustre CSI driver accepts only the SINGLE_NODE_WRITER and MULTI_NODE_MULTI_WRITER
# capabilities (kubernetes-sigs/aws-fsx-csi-driver, pkg/driver/controller.go `volumeCaps`): a
# ReadOnlyMany volume is refused when the node publishes it (node.go, NodePublishVolume:
# "Volume capability not supported") and never mounts.
# Many nodes mount it, so ReadWriteMany; read-only comes from the csi `readOnly` flag and the pods'
# mounts, as in the driver's static provisioning example.
ACCESS_MODES = ["ReadWriteMany"]
# What each claim asks for: FSx for Lustre's smallest capacity, whatever the file system's. A statically bound claim
# (no StorageClass) may not grow (kubernetes plugin/pkg/admission/storage/persistentvolume/resize: "only dynamically
# provisioned pvc can be resized") nor shrink, so a request that followed model_store.storage_capacity_gib would fail
# every deploy after the file system grew. The volume's capacity may change, and follows it.
CLAIM_REQUEST = "1200Gi"


class ModelVolume(Construct):
    """A PersistentVolume for the file system and the claim that a model's namespace mounts.

    A volume binds one claim, so each model's namespace gets a volume of its own onto the same
    file system. `file_system_id`, `dns_name` and `mount_name` may be CDK tokens.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        namespace: str,
        file_system_id: str,
        dns_name: str,
        mount_name: str,
        capacity_gib: int,
    ) -> None:
        super().__init__(scope, id)
        self.claim_name = CLAIM_NAME
        volume_name = names.weights_volume_name(namespace)
        capacity = {"storage": f"{capacity_gib}Gi"}
        api_object(
            self,
            "Volume",
            "v1",
            "PersistentVolume",
            cdk8s.ApiObjectMetadata(name=volume_name),
            # The chart's namespace must not be stamped on it.
            cluster_scoped=True,
            spec={
                "capacity": capacity,
                # The weights import and every vLLM replica mount it at once.
                "accessModes": ACCESS_MODES,
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "claimRef": {"namespace": namespace, "name": self.claim_name},
                "csi": {
                    "driver": CSI_DRIVER,
                    "volumeHandle": file_system_id,
                    "readOnly": True,
                    "volumeAttributes": {"dnsname": dns_name, "mountname": mount_name},
                },
            },
        )
        api_object(
            self,
            "Claim",
            "v1",
            "PersistentVolumeClaim",
            cdk8s.ApiObjectMetadata(name=self.claim_name, namespace=namespace),
            spec={
                "accessModes": ACCESS_MODES,
                "storageClassName": STORAGE_CLASS,
                "volumeName": volume_name,
                "resources": {"requests": {"storage": CLAIM_REQUEST}},
            },
        )
