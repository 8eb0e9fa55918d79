"""Where weights live, as Kubernetes sees them: the FSx for Lustre file system as a static volume."""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_object import without_namespace
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
CLAIM_REQUEST = cdk8s.Size.gibibytes(1200)


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
        # cdk8s-plus has no CSI volume source for a PersistentVolume: the typed object.
        volume = k8s.KubePersistentVolume(
            self,
            "Volume",
            metadata=k8s.ObjectMeta(name=volume_name),
            spec=k8s.PersistentVolumeSpec(
                capacity={"storage": k8s.Quantity.from_string(f"{capacity_gib}Gi")},
                # The weights import and every vLLM replica mount it at once.
                access_modes=ACCESS_MODES,
                persistent_volume_reclaim_policy="Retain",
                storage_class_name=STORAGE_CLASS,
                claim_ref=k8s.ObjectReference(namespace=namespace, name=self.claim_name),
                csi=k8s.CsiPersistentVolumeSource(
                    driver=CSI_DRIVER,
                    volume_handle=file_system_id,
                    read_only=True,
                    volume_attributes={"dnsname": dns_name, "mountname": mount_name},
                ),
            ),
        )
        without_namespace(volume)
        kplus.PersistentVolumeClaim(
            self,
            "Claim",
            metadata=cdk8s.ApiObjectMetadata(name=self.claim_name, namespace=namespace),
            access_modes=[kplus.PersistentVolumeAccessMode.READ_WRITE_MANY],
            storage_class_name=STORAGE_CLASS,
            volume=kplus.PersistentVolume.from_persistent_volume_name(self, "BoundVolume", volume_name),
            storage=CLAIM_REQUEST,
        )
