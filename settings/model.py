"""The settings of one deployment stage: the only input of the stacks and charts.

Every field is typed and checked here, before any construct exists, so a bad value
stops `cdk synth` with one message naming the stage, the field and what is allowed.
Defaults reproduce the GPU inference walkthrough (NodePool `gpu-node-pool`, vLLM serving
openai/gpt-oss-20b); a stage's YAML file only says where it differs.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# Each version needs its kubectl layer package in requirements.txt and an entry in
# stacks.cluster.KUBECTL_LAYERS. 1.36 is the newest aws-cdk-lib 2.275 knows; EKS ends
# standard support for 1.34 on 2026-12-02 and for 1.35 on 2027-03-27.
SUPPORTED_KUBERNETES_VERSIONS = ("1.34", "1.35", "1.36")

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)

# vLLM flags that the model settings own; giving them again in extra_args would be ambiguous.
MANAGED_VLLM_FLAGS = (
    "--model",
    "--port",
    "--host",
    "--gpu-memory-utilization",
    "--tensor-parallel-size",
    "--max-model-len",
    "--served-model-name",
)

DnsLabel = Annotated[
    str,
    StringConstraints(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    Field(description="a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters"),
]
# A size in Kubernetes' binary units, e.g. "24Gi".
BinarySize = Annotated[
    str, StringConstraints(pattern=r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$"), Field(description="a size such as 512Mi or 24Gi")
]
# Karpenter's duration syntax (e.g. "10m", "1h30m") or "Never".
KarpenterDuration = Annotated[str, StringConstraints(pattern=r"^(([0-9]+(s|m|h))+|Never)$")]


def _pinned_image(image: str) -> str:
    """An image reference must name an exact version: a digest, or a tag other than latest."""
    if "@sha256:" in image:
        return image
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        raise ValueError(f"{image!r} is not pinned; give a version tag other than 'latest' or an @sha256 digest")
    return image


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


def _repeated(values: tuple[str, ...] | list[str]) -> list[str]:
    return sorted({value for value in values if values.count(value) > 1})


class _Strict(BaseModel):
    """Unknown fields are errors and settings never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSettings(_Strict):
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.0.0/16")
    nat_gateways: int = Field(default=1, ge=1, description="one is cheaper; one per zone survives a zone's loss")
    flow_log_retention_days: Literal[LOG_RETENTION_DAYS] = 90


class RegistrySettings(_Strict):
    """Where nodes pull images from: an in-region ECR pull-through cache of ECR Public, or ECR Public itself."""

    image_source: Literal["pull_through_cache", "public"] = "pull_through_cache"
    # Images of public.ecr.aws/<path> are pulled as <account>.dkr.ecr.<region>.amazonaws.com/<prefix>/<path>.
    cache_prefix: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=30)] = (
        "ecr-public"
    )
    keep_images: int = Field(default=10, ge=1, description="per cached repository; older images expire")
    # Scan-on-push is a registry-wide setting (one per account and region): stages sharing an
    # account must leave it to one of them.
    scan_on_push: bool = True


# FSx for Lustre PERSISTENT_2: the per-unit throughputs offered (MB/s per TiB of storage), and
# capacities of 1.2 TiB or a multiple of 2.4 TiB (both in GiB).
LUSTRE_THROUGHPUTS_PER_TIB = (125, 250, 500, 1000)


class ModelStoreSettings(_Strict):
    """The S3 bucket and FSx for Lustre file system that hold model weights."""

    storage_capacity_gib: int = Field(default=1200, description="1200, or a multiple of 2400")
    throughput_per_tib: Literal[LUSTRE_THROUGHPUTS_PER_TIB] = 250
    # Lustre lives in one zone; unset: the stage's first zone.
    availability_zone: str | None = None
    # Retained on stack deletion unless a stage says otherwise (a throwaway test stage, say).
    retain_on_delete: bool = True

    @field_validator("storage_capacity_gib")
    @classmethod
    def _valid_capacity_step(cls, capacity: int) -> int:
        if capacity != 1200 and (capacity <= 0 or capacity % 2400):
            raise ValueError(
                f"{capacity} GiB is not a capacity FSx for Lustre PERSISTENT_2 offers; allowed: 1200, or a multiple "
                "of 2400 (2400, 4800, 7200, ...)"
            )
        return capacity


class NodeDiskSettings(_Strict):
    """The GPU nodes' root volume, where images are unpacked: sized and fast enough for a ~14 GB image."""

    size: BinarySize = "200Gi"
    iops: int = Field(default=10000, ge=3000, le=16000)
    throughput_mib: int = Field(default=1000, ge=125, le=1000, description="MiB/s; Auto Mode's default is 125")


class ClusterSettings(_Strict):
    name: DnsLabel
    kubernetes_version: str = "1.36"
    endpoint_access: Literal["public", "private", "public_and_private"] = "public_and_private"
    # Who may reach the public endpoint; only with public access.
    public_access_cidrs: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"),)
    admin_principal_arns: tuple[
        Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[\w+=,.@/-]+$")], ...
    ] = ()
    log_retention_days: Literal[LOG_RETENTION_DAYS] = 90

    @field_validator("kubernetes_version")
    @classmethod
    def _has_kubectl_layer(cls, version: str) -> str:
        if version not in SUPPORTED_KUBERNETES_VERSIONS:
            raise ValueError(
                f"{version!r} has no matching kubectl layer in this project; "
                f"allowed: {', '.join(SUPPORTED_KUBERNETES_VERSIONS)}"
            )
        return version

    @model_validator(mode="after")
    def _cidrs_fit_endpoint_access(self) -> ClusterSettings:
        if self.endpoint_access == "private" and "public_access_cidrs" in self.model_fields_set:
            raise ValueError(
                "cluster.public_access_cidrs applies only when endpoint_access is public or public_and_private"
            )
        restricted = self.public_access_cidrs != (ipaddress.IPv4Network("0.0.0.0/0"),)
        if self.endpoint_access == "public" and restricted:
            raise ValueError(
                "cluster.public_access_cidrs can narrow the endpoint only with endpoint_access public_and_private: "
                "the CDK's kubectl handler then reaches the cluster from inside the VPC"
            )
        return self


class NodePoolLimits(_Strict):
    """The most a pool may hold in total, across all its nodes."""

    cpu: int = Field(default=100, ge=1)
    memory: BinarySize = "100Gi"
    gpu: int | None = Field(default=None, ge=1, description="nvidia.com/gpu; no limit when unset")


class GpuNodePoolSettings(_Strict):
    name: DnsLabel = "gpu-node-pool"
    instance_categories: tuple[Annotated[str, StringConstraints(pattern=r"^[a-z]+$")], ...] = ("g",)
    instance_families: tuple[Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$")], ...] = ()
    # Karpenter's `Gt`: 4 admits generation 5 and newer (G5, G6, G6e).
    instance_generation_greater_than: int | None = Field(default=4, ge=0)
    capacity_types: tuple[Literal["spot", "on-demand"], ...] = Field(default=("spot", "on-demand"), min_length=1)
    architectures: tuple[Literal["amd64", "arm64"], ...] = Field(default=("amd64",), min_length=1)
    limits: NodePoolLimits = NodePoolLimits()
    # Only empty nodes are consolidated, so a serving replica is never evicted to save cost.
    consolidate_after: KarpenterDuration = "10m"
    # At most this many nodes (or percentage) disrupted at once, for any voluntary reason.
    disruption_budget_nodes: Annotated[str, StringConstraints(pattern=r"^((100|[0-9]{1,2})%|[0-9]+)$")] = "1"
    disk: NodeDiskSettings = NodeDiskSettings()
    # model_store_zone: GPU nodes only in the file system's zone (Lustre is single-AZ; reads from
    # other zones are slower and billed). all_zones: survive a zone's loss, at that price.
    zones: Literal["model_store_zone", "all_zones"] = "model_store_zone"

    @model_validator(mode="after")
    def _instances_chosen(self) -> GpuNodePoolSettings:
        if not self.instance_categories and not self.instance_families:
            raise ValueError("give instance_categories, instance_families or both; with neither the pool has no GPUs")
        return self


class ModelResources(_Strict):
    """Requests sized for vLLM serving a ~20B model on one GPU (cdk8s-plus defaults, 1 CPU / 2 GiB, starve it)."""

    cpu: float = Field(default=3, gt=0, description="cores requested; no CPU limit, so loading may burst")
    # Request and limit: host memory holds the weights while they load and the CPU side of the KV cache.
    memory: BinarySize = "24Gi"
    # Node disk for vLLM's compile caches (the weights are on the file system).
    ephemeral_storage: BinarySize = "20Gi"
    # /dev/shm for NCCL and vLLM's workers; counts against the memory limit.
    shared_memory: BinarySize = "8Gi"


class ModelSettings(_Strict):
    name: DnsLabel = Field(description="names the Deployment and the namespace it runs in")
    model: str = Field(min_length=1, description="Hugging Face model id that vLLM serves, e.g. openai/gpt-oss-20b")
    service_name: DnsLabel
    image: PinnedImage
    gpus: int = Field(default=1, ge=1, le=8)
    replicas: int = Field(default=1, ge=1)
    max_model_len: int = Field(default=20000, ge=1)
    gpu_memory_utilization: Decimal = Field(default=Decimal("0.90"), gt=0, le=1, decimal_places=2)
    tensor_parallel_size: int = Field(default=1, ge=1)
    extra_args: tuple[str, ...] = ()
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {
        "VLLM_ATTENTION_BACKEND": "TRITON_ATTN"
    }
    resources: ModelResources = ModelResources()
    # For the cold-start budget (charts/cold_start.py), from which the startupProbe is derived:
    # the weights' size on disk (openai/gpt-oss-20b's safetensors files are about 13.8 GB), and
    # the time from the weights read to serving (GPU upload, kernel compilation, CUDA graphs).
    weights_gb: float = Field(default=13.8, gt=0)
    load_seconds: int = Field(default=180, ge=1)

    @model_validator(mode="after")
    def _tensor_parallel_uses_every_gpu(self) -> ModelSettings:
        if self.tensor_parallel_size != self.gpus:
            raise ValueError(
                f"tensor_parallel_size ({self.tensor_parallel_size}) must equal gpus ({self.gpus}): "
                "vLLM shards the model over exactly the GPUs the pod gets"
            )
        return self

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        for arg in args:
            if arg.split("=", 1)[0] in MANAGED_VLLM_FLAGS:
                raise ValueError(
                    f"{arg!r} is set by its own field; flags kept out of extra_args: {', '.join(MANAGED_VLLM_FLAGS)}"
                )
        return args


class StageSettings(_Strict):
    """One deployment stage: where it runs and what it serves."""

    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]
    account: Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")] | None = Field(
        default=None, description="unset: the account of the credentials that deploy"
    )
    availability_zones: tuple[str, ...] = Field(min_length=2, description="explicit, so synth needs no lookup")
    production: bool = False
    network: NetworkSettings = NetworkSettings()
    registry: RegistrySettings = RegistrySettings()
    model_store: ModelStoreSettings = ModelStoreSettings()
    cluster: ClusterSettings
    gpu_node_pool: GpuNodePoolSettings = GpuNodePoolSettings()
    models: tuple[ModelSettings, ...] = Field(min_length=1)

    @field_validator("availability_zones")
    @classmethod
    def _distinct_zones(cls, zones: tuple[str, ...]) -> tuple[str, ...]:
        repeated = _repeated(zones)
        if repeated:
            raise ValueError(f"each zone may appear once; repeated: {', '.join(repeated)}")
        return zones

    @model_validator(mode="after")
    def _zones_in_region(self) -> StageSettings:
        outside = [
            zone for zone in self.availability_zones if not re.fullmatch(rf"{re.escape(self.region)}[a-z]", zone)
        ]
        if outside:
            raise ValueError(
                f"availability_zones: {', '.join(outside)} not in region {self.region} "
                f"(expected names like {self.region}a)"
            )
        store_zone = self.model_store.availability_zone
        if store_zone is not None and store_zone not in self.availability_zones:
            raise ValueError(
                f"model_store.availability_zone: {store_zone} is not one of the stage's availability_zones "
                f"({', '.join(self.availability_zones)})"
            )
        if self.network.nat_gateways > len(self.availability_zones):
            raise ValueError(
                f"network.nat_gateways: {self.network.nat_gateways} is more than the "
                f"{len(self.availability_zones)} availability zones"
            )
        return self

    @model_validator(mode="after")
    def _models_fit_together(self) -> StageSettings:
        for field in ("name", "service_name"):
            repeated = _repeated([getattr(model, field) for model in self.models])
            if repeated:
                raise ValueError(f"models: {field} must be unique; repeated: {', '.join(repeated)}")
        gpus_needed = sum(model.gpus * model.replicas for model in self.models)
        gpu_limit = self.gpu_node_pool.limits.gpu
        if gpu_limit is not None and gpu_limit < gpus_needed:
            raise ValueError(
                f"gpu_node_pool.limits.gpu: {gpu_limit} is fewer than the {gpus_needed} GPUs "
                "the models' replicas need; raise it or remove it"
            )
        return self

    @property
    def model_store_zone(self) -> str:
        """The zone of the FSx for Lustre file system (and, unless spread, of the GPU nodes)."""
        return self.model_store.availability_zone or self.availability_zones[0]

    @model_validator(mode="after")
    def _production_is_redundant(self) -> StageSettings:
        if self.production:
            single = [model.name for model in self.models if model.replicas < 2]
            if single:
                raise ValueError(
                    f"models: {', '.join(single)} run(s) fewer than 2 replicas; "
                    "a production stage runs at least 2 per model, on separate nodes"
                )
        return self


class PipelineStageTarget(_Strict):
    """One stage the pipeline deploys, and the account it goes to."""

    name: DnsLabel
    account: Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]


class PipelineSettings(_Strict):
    """The CodePipeline that rolls the stages out, in order, from a repository branch."""

    account: Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]
    # A CodeStar Connections (CodeConnections) connection, created and authorised in the console.
    connection_arn: Annotated[
        str,
        StringConstraints(
            pattern=r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:[0-9]{12}:connection/[0-9a-f-]+$"
        ),
    ]
    repository: Annotated[str, StringConstraints(pattern=r"^[\w.-]+/[\w.-]+$")] = Field(description="owner/name")
    branch: str = Field(default="main", min_length=1)
    stages: tuple[PipelineStageTarget, ...] = Field(min_length=1, description="deployed in this order")

    @field_validator("stages")
    @classmethod
    def _distinct_stages(cls, stages: tuple[PipelineStageTarget, ...]) -> tuple[PipelineStageTarget, ...]:
        repeated = _repeated([stage.name for stage in stages])
        if repeated:
            raise ValueError(f"each stage may appear once; repeated: {', '.join(repeated)}")
        return stages
