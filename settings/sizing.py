"""Sizing from the model: which GPU instances can run one replica, what a replica requests, what the pool holds.

Data kept in the repository, each file with its source and date: the GPU instance types EKS
Auto Mode offers (settings/catalog/gpu_instances.yaml) and their on-demand prices per region
(settings/catalog/on_demand_prices.yaml). The arithmetic of what a node leaves to pods is
Karpenter's (aws/karpenter-provider-aws, pkg/providers/instancetype/types.go).

An instance can run one replica of a model when one of the GPU pools admits it, it has exactly
the model's GPU count, each GPU holds the model's shard of the weights, its KV cache and the
runtime within --gpu-memory-utilization, and the pod's requests fit what Karpenter leaves to pods
on that pool's disk. Pools are tried in order and any one may have to take every replica (when
the ones before it have no capacity), so each pool's limits hold every replica it can run plus
one rollout surge, and every pool must be able to run at least one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from settings.lora_slots import EXTRA_VOCAB, LoraSlots, slot_bytes
from settings.model_facts import sequence_kv_bytes
from settings.schema import GpuNodePoolSettings, ModelSettings, StageSettings, size_bytes, vllm_flag, vllm_option
from settings.yaml_files import load_yaml

CATALOG_DIR = Path(__file__).parent / "catalog"
MIB = 2**20
GIB = 2**30

# --- the model's needs of each GPU ---

# The well-known label EKS Auto Mode puts on GPU nodes: memory per GPU, in MiB (EC2's
# DescribeInstanceTypes GpuInfo.Gpus[].MemoryInfo.SizeInMiB; Karpenter, types.go).
GPU_MEMORY_LABEL = "eks.amazonaws.com/instance-gpu-memory"
# Its baseline network bandwidth, in Mbps (settings/catalog/gpu_instances.yaml network_mbps).
NETWORK_BANDWIDTH_LABEL = "eks.amazonaws.com/instance-network-bandwidth"
# What vLLM keeps on each GPU besides the weights and the KV cache, within --gpu-memory-utilization: the peak of
# the activations in its profile run and the memory torch does not allocate (NCCL, the CUDA context); it gives
# the KV cache what is left (vllm/v1/worker/gpu_worker.py at v0.11.2, determine_available_memory; vllm/utils/
# mem_utils.py, memory_profiling). vLLM documents no figure: its logs in public issues show 0.15-0.39 GiB of
# non-torch memory and an activation peak of 0.79-2.53 GiB (vllm-project/vllm#15340, #14452, #11251, the last at a
# 40k context on a 16 GB GPU); the project takes the largest of each.
NON_TORCH_RESERVE_BYTES = round(0.4 * GIB)
ACTIVATION_PEAK_BYTES = round(2.6 * GIB)


@dataclass(frozen=True)
class GpuMemory:
    """What one GPU of a replica must hold (bytes), and the GPU memory that takes within gpu_memory_utilization."""

    weights: int
    kv_cache: int  # one sequence of max_model_len: vLLM refuses to start without room for it
    reserve: int
    utilization: float
    lora_slots: int = 0  # the LoRA slots' buffers (settings/lora_slots.py), allocated with the weights

    @property
    def needed_mib(self) -> int:
        return math.ceil((self.weights + self.lora_slots + self.kv_cache + self.reserve) / self.utilization / MIB)

    def kv_room(self, gpu_memory_mib: int) -> int:
        """The KV cache vLLM would have on a GPU of that size (bytes; negative: not even the weights fit)."""
        return math.floor(gpu_memory_mib * MIB * self.utilization) - self.weights - self.lora_slots - self.reserve

    def explained(self, gpu_memory_mib: int) -> str:
        """The start-up check vLLM makes, with the numbers, for one GPU."""
        usable, room = math.floor(gpu_memory_mib * self.utilization), self.kv_room(gpu_memory_mib) // MIB
        slots = f", {math.ceil(self.lora_slots / MIB):,} MiB of LoRA slots" if self.lora_slots else ""
        return (
            f"{self.utilization:.2f} x {gpu_memory_mib:,} MiB = {usable:,} MiB for vLLM, less {self.weights // MIB:,} "
            f"MiB of weights{slots} and {self.reserve // MIB:,} MiB of vLLM's reserve, leaves {room:,} MiB of KV "
            f"cache, and one sequence of max_model_len needs {math.ceil(self.kv_cache / MIB):,} MiB"
        )


T = TypeVar("T")
# What sizing worked out lately for the same objects, by identity (settings never change once loaded): sizing, the
# pools' limits and the cold start ask for a model's GPU memory and candidates again and again. Each entry keeps its
# objects, so an id is never another object's while it stands.
_REMEMBERED: dict[tuple[str, tuple[int, ...]], tuple[tuple[object, ...], Any]] = {}


def remembered(kind: str, objects: tuple[object, ...], work: Callable[[], T]) -> T:
    """`work()`, or what it gave for these very objects before."""
    key = (kind, tuple(map(id, objects)))
    found = _REMEMBERED.get(key)
    if found is not None and all(a is b for a, b in zip(found[0], objects, strict=True)):
        return cast(T, found[1])
    if len(_REMEMBERED) > 1024:
        _REMEMBERED.clear()
    value = work()
    _REMEMBERED[key] = (objects, value)
    return value


def gpu_memory(model: ModelSettings) -> GpuMemory:
    """Each of a model's GPUs: its shard of the weights, the KV cache of one full-length sequence (its shard of the
    KV heads), and vLLM's reserve, within --gpu-memory-utilization (vLLM docs, "Engine arguments")."""
    return remembered("gpu_memory", (model,), lambda: _gpu_memory(model))


def _gpu_memory(model: ModelSettings) -> GpuMemory:
    facts = model.architecture
    batched = batched_tokens(model)
    kv_cache = sequence_kv_bytes(
        facts,
        model.max_model_len,
        tensor_parallel_size=model.tensor_parallel_size,
        kv_dtype_bytes=model.kv_cache_dtype_bytes,
        batched_tokens=batched,
    )
    lora_slots = slot_bytes(facts, model.tensor_parallel_size, lora_slots_of(model, batched)) if model.adapters else 0
    return GpuMemory(
        weights=math.ceil(facts.weight_bytes / model.gpus),
        kv_cache=kv_cache,
        reserve=NON_TORCH_RESERVE_BYTES + ACTIVATION_PEAK_BYTES,
        utilization=float(model.gpu_memory_utilization),
        lora_slots=lora_slots,
    )


def batched_tokens(model: ModelSettings) -> int:
    """The most tokens one forward pass may hold (vLLM's max_num_batched_tokens): the largest its version defaults
    to on any GPU, or extra_args' if larger."""
    given = vllm_option(model.extra_args, "--max-num-batched-tokens")
    given_tokens = int(given) if given and given.isdigit() else 0
    return max(model.profile.extracted.serve_batched_tokens_default, given_tokens)


def lora_slots_of(model: ModelSettings, batched: int) -> LoraSlots:
    """The LoRA flags vLLM gets (charts/vllm_server.py, lora_args) and those extra_args add, as the slots'
    buffers depend on them."""
    extra_vocab = vllm_option(model.extra_args, "--lora-extra-vocab-size")
    return LoraSlots(
        max_loras=model.adapters_per_batch,
        max_rank=model.max_lora_rank,
        layout=model.profile.lora_layout,
        two_slice_experts=any(vllm_flag(arg) == "--enable-mixed-moe-lora-format" for arg in model.extra_args),
        extra_vocab=int(extra_vocab) if extra_vocab and extra_vocab.isdigit() else EXTRA_VOCAB,
        batched_tokens=batched,
    )


def gpu_memory_needed_mib(model: ModelSettings) -> int:
    """The least memory (MiB) each of a model's GPUs must have."""
    return gpu_memory(model).needed_mib


# --- what a node leaves to pods (Karpenter) ---

# memory(): the VM's overhead (--vm-memory-overhead-percent, 7.5 % by default);
# kubeReservedResources(): 255 MiB plus 11 MiB per pod, CPU in steps (below), 1 GiB of disk;
# evictionThreshold(): 100 MiB of memory and 10 % of the node's disk.
VM_MEMORY_OVERHEAD = 0.075
KUBE_RESERVED_BASE_MIB = 255
KUBE_RESERVED_PER_POD_MIB = 11
EVICTION_THRESHOLD_MIB = 100
KUBE_RESERVED_DISK_MIB = 1024
EVICTION_DISK_FRACTION = 0.10
# kube-reserved CPU: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above.
KUBE_RESERVED_CPU_STEPS = ((1000, 0.06), (1000, 0.01), (2000, 0.005), (math.inf, 0.0025))
# Pods per node that kube-reserved is sized for: Kubernetes' default maxPods, which EKS Auto
# Mode's nodes use (they get pod addresses from prefix delegation, not one ENI address per pod).
MAX_PODS = 110


# The DaemonSet pods on every GPU node, by their charts' requests, as (CPU millicores, memory MiB). They
# take from what the node leaves to pods before a replica does, and Karpenter launches only an instance
# that holds the replica and them together (karpenter.sh docs, "Scheduling": DaemonSets are counted).
# The FSx CSI driver's node pod: fsx-plugin 10m/40Mi, node-driver-registrar and liveness-probe 10m/32Mi
# each (kubernetes-sigs/aws-fsx-csi-driver, charts/aws-fsx-csi-driver/values.yaml, node and sidecars).
FSX_CSI_NODE = (30, 104)
# With API keys: the Secrets Store CSI driver's node pod, 50m/100Mi plus two sidecars of 10m/20Mi
# (kubernetes-sigs/secrets-store-csi-driver, charts/secrets-store-csi-driver/values.yaml, linux), and
# the AWS provider's, 50m/100Mi (aws/secrets-store-csi-driver-provider-aws, its chart's values.yaml).
SECRETS_STORE_NODE = (120, 240)
# With observability: the CloudWatch agent, 250m/128Mi (aws-observability/helm-charts,
# charts/amazon-cloudwatch-observability/values.yaml, agent.resources.requests).
CLOUDWATCH_AGENT = (250, 128)


# The vLLM image (Deep Learning Containers vllm:0.11.2-gpu-py312-ec2): 14,221,606,791 bytes
# compressed (the walkthrough's kubelet event) and about 26 GB unpacked (the image_size_baseline
# of its buildspec in aws/deep-learning-containers). The only vLLM image whose size a source states: taken for
# every version (the later images' release configurations state none) until `make e2e` measures a pull.
IMAGE_COMPRESSED_BYTES = 14_221_606_791
IMAGE_UNPACKED_BYTES = 26_000_000_000
# What it takes of a node's disk, where Auto Mode keeps images and pods' ephemeral storage alike (the
# NodeClass's ephemeralStorage): containerd keeps the pulled layers beside the unpacked ones (its CRI
# plugin's discard_unpacked_layers, a bool left false unless set: pkg/cri/config/config.go, "whether to allow
# GC to remove layers from the content store after successfully unpacking"), and the kubelet counts neither
# against a pod.
IMAGE_DISK_MIB = math.ceil((IMAGE_COMPRESSED_BYTES + IMAGE_UNPACKED_BYTES) / MIB)


@dataclass(frozen=True)
class NodeDaemons:
    cpu_millis: int
    memory_mib: int


def node_daemons(settings: StageSettings) -> NodeDaemons:
    """What the stage's DaemonSets request on each GPU node."""
    parts = [FSX_CSI_NODE]
    if settings.secrets_store:
        parts.append(SECRETS_STORE_NODE)
    if settings.observability.enabled:
        parts.append(CLOUDWATCH_AGENT)
    return NodeDaemons(sum(cpu for cpu, _ in parts), sum(memory for _, memory in parts))


def allocatable_memory_mib(capacity_mib: int, max_pods: int = MAX_PODS) -> int:
    """The memory (MiB) Karpenter counts as allocatable to pods on an instance with `capacity_mib` of memory.

    A 16 GiB instance (g6.xlarge): 16384 - 1229 (7.5 %) - 1465 (255 + 11 x 110) - 100 = 13590 MiB
    (13.3 GiB); a 32 GiB one (g6.2xlarge, g6e.xlarge): 28745 MiB (28.1 GiB).
    """
    overhead = math.ceil(capacity_mib * VM_MEMORY_OVERHEAD)
    kube_reserved = KUBE_RESERVED_BASE_MIB + KUBE_RESERVED_PER_POD_MIB * max_pods
    return capacity_mib - overhead - kube_reserved - EVICTION_THRESHOLD_MIB


def allocatable_cpu_millis(vcpus: int) -> int:
    """The CPU (millicores) Karpenter counts as allocatable: 4 vCPUs leave 3920m."""
    left: float = vcpus * 1000
    reserved = 0.0
    for step, fraction in KUBE_RESERVED_CPU_STEPS:
        reserved += min(left, step) * fraction
        left -= min(left, step)
    return vcpus * 1000 - math.ceil(reserved)


def allocatable_disk_mib(disk_mib: int) -> int:
    """The node disk (MiB) left to pods' ephemeral storage: less kube-reserved and the eviction threshold."""
    return disk_mib - KUBE_RESERVED_DISK_MIB - math.ceil(disk_mib * EVICTION_DISK_FRACTION)


# --- the catalog ---


@dataclass(frozen=True)
class GpuInstance:
    type: str
    family: str
    category: str
    generation: int
    vcpus: int
    memory_mib: int
    gpus: int
    gpu_model: str
    gpu_memory_mib: int
    architecture: str
    local_nvme_gib: int
    network_mbps: int  # the baseline network bandwidth: what reads from the file system and registry share


@cache
def catalog() -> tuple[GpuInstance, ...]:
    data = load_yaml((CATALOG_DIR / "gpu_instances.yaml").read_text())
    return tuple(GpuInstance(**entry) for entry in data["instances"])


# For a region the price table lacks, another's prices still rank the instances (GPU prices differ
# between regions by a similar factor), and `make sizing` says so.
PRICE_REFERENCE_REGION = "us-east-1"


@cache
def image_platforms(image: str) -> tuple[str, ...]:
    """The architectures an image is published for (settings/catalog/images.yaml); amd64 for one it lacks."""
    repository = image.split("@", 1)[0] if "@" in image else image.rsplit(":", 1)[0]
    images = load_yaml((CATALOG_DIR / "images.yaml").read_text())["images"]
    return tuple(images[repository]["platforms"]) if repository in images else ("amd64",)


@cache
def region_offerings(region: str) -> tuple[str, ...] | None:
    """The GPU families EC2 offers in a region (settings/catalog/regions.yaml); None for a region it lacks."""
    regions = load_yaml((CATALOG_DIR / "regions.yaml").read_text())["regions"]
    return tuple(regions[region]["gpu_families"]) if region in regions else None


@cache
def on_demand_source() -> str:
    """Where on_demand_prices.yaml's prices come from: its source's address (a catalog at a commit)."""
    return str(load_yaml((CATALOG_DIR / "on_demand_prices.yaml").read_text())["source"]["url"])


@cache
def on_demand_prices(region: str) -> tuple[str, dict[str, float]]:
    """USD per hour, Linux on-demand: the region whose prices the table has for `region`, and those prices."""
    prices = load_yaml((CATALOG_DIR / "on_demand_prices.yaml").read_text())["prices"]
    priced = region if region in prices else PRICE_REFERENCE_REGION
    return priced, dict(prices[priced])


# --- the weights import's requests (charts/model_loader.py) ---

# Two CPUs: the download (TLS, hashing) and the upload (multipart, 8 parts at once) of one file at a time.
IMPORT_CPU_MILLIS = 2000
# Its memory, request and limit, from what each part holds at most, one file at a time:
# - hf_xet's download buffer: 2 GB, plus 512 MB per file being downloaded (huggingface/xet-core from 1.3,
#   xet_runtime/src/config/groups/reconstruction.rs: HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_SIZE and _PERFILE_SIZE;
#   up to 1.2, 8 concurrent range gets of up to 64 MiB each, the Job's HF_XET_NUM_CONCURRENT_RANGE_GETS, less);
# - the upload's buffers: 8 parts of 64 MiB (workloads/import_weights.py, TRANSFER_CONFIG), after the download;
# - Python with huggingface_hub, boto3 and the file's hashing: taken at 1 GiB.
# With a quarter more for what these figures leave out. hf_xet near 4 GB was OOM-killed in pods at its old
# defaults (huggingface/huggingface_hub#3300), which is why the Job's limit is above both.
IMPORT_MEMORY_MIB = math.ceil((2_000_000_000 + 512_000_000 + 2**30) * 1.25 / GIB) * 1024


# --- a replica's requests ---

# Per GPU, where the settings give no value: vLLM's CPU-side processes (API server, tokenizer,
# one worker per GPU) and host memory for loading weights; /dev/shm for NCCL between GPUs.
CPU_PER_GPU = 3
MEMORY_PER_GPU_GIB = 24
SHARED_MEMORY_FRACTION = 4  # /dev/shm: a quarter of the memory, within its limit
EPHEMERAL_STORAGE = "20Gi"


@dataclass(frozen=True)
class Requests:
    cpu_millis: int
    memory_mib: int
    shared_memory_mib: int
    ephemeral_storage_mib: int


def pool_path(settings: StageSettings, pool: GpuNodePoolSettings) -> str:
    """Where a pool is in the settings, as messages name it: gpu_node_pools[1]. Found by its name, which is
    unique (the settings refuse a repeated one), not by comparing whole pools."""
    index = next(index for index, each in enumerate(settings.gpu_node_pools) if each.name == pool.name)
    return f"gpu_node_pools[{index}]"


def pool_label(settings: StageSettings, pool: GpuNodePoolSettings) -> str:
    """How messages name a pool: gpu_node_pools[1] (on-demand-g5)."""
    return f"{pool_path(settings, pool)} ({pool.name})"


def model_path(settings: StageSettings, model: ModelSettings) -> str:
    """Where a model is in the settings, as messages name it: models[0]. Found by its unique name."""
    return f"models[{next(index for index, each in enumerate(settings.models) if each.name == model.name)}]"


def meets_pool(settings: StageSettings, instance: GpuInstance, pool: GpuNodePoolSettings | None = None) -> list[str]:
    """Why a pool's requirements rule an instance out (empty: they admit it). Without a pool: why every
    pool does, as the first pool says it (empty when any pool admits it)."""
    if pool is None:
        per_pool = [meets_pool(settings, instance, each) for each in settings.gpu_node_pools]
        return [] if not all(per_pool) else per_pool[0]
    where = pool_path(settings, pool)
    reasons: list[str] = []
    if pool.instance_categories and instance.category not in pool.instance_categories:
        reasons.append(f"category {instance.category} is not in {where}.instance_categories")
    if pool.instance_families and instance.family not in pool.instance_families:
        reasons.append(f"family {instance.family} is not in {where}.instance_families")
    floor = pool.instance_generation_greater_than
    if floor is not None and instance.generation <= floor:
        reasons.append(
            f"generation {instance.generation} is not above {where}.instance_generation_greater_than ({floor})"
        )
    if instance.architecture not in pool.architectures:
        reasons.append(f"{instance.architecture} is not in {where}.architectures")
    if pool.min_network_mbps is not None and instance.network_mbps < pool.min_network_mbps:
        reasons.append(
            f"its {instance.network_mbps} Mbps of network is below {where}.min_network_mbps ({pool.min_network_mbps})"
        )
    return reasons


def gpu_fit(
    settings: StageSettings, model: ModelSettings, instance: GpuInstance, pool: GpuNodePoolSettings | None = None
) -> list[str]:
    """Why an instance cannot hold a model's GPUs in a pool, or in any pool (empty: it can)."""
    reasons = meets_pool(settings, instance, pool)
    where = model_path(settings, model)
    offered = region_offerings(settings.region)
    if offered is not None and instance.family not in offered:
        reasons.append(f"{instance.family} is not offered in region {settings.region} (settings/catalog/regions.yaml)")
    if instance.gpus != model.gpus:
        reasons.append(f"{instance.gpus} GPUs, {where}.gpus is {model.gpus}")
    memory = gpu_memory(model)
    if instance.gpu_memory_mib < memory.needed_mib:
        reasons.append(
            f"{instance.gpu_memory_mib} MiB per GPU ({instance.gpu_model}), {memory.needed_mib} needed: "
            f"{memory.explained(instance.gpu_memory_mib)} ({where}.max_model_len, .gpu_memory_utilization, .gpus)"
        )
    return reasons


def with_gpu_count(model: ModelSettings) -> list[GpuInstance]:
    """The catalog's instances with as many GPUs as the model uses: gpu_fit refuses every other one, and
    leaving those out first spares settings validation most of its work."""
    return [instance for instance in catalog() if instance.gpus == model.gpus]


def cheapest_first(settings: StageSettings, instances: list[GpuInstance]) -> list[GpuInstance]:
    """By on-demand price (see on_demand_prices); unpriced ones after, smallest first."""
    _, prices = on_demand_prices(settings.region)
    return sorted(instances, key=lambda i: (i.type not in prices, prices.get(i.type, 0.0), i.vcpus, i.memory_mib))


# The requests of the shared compile cache's sidecar (charts/shared_compile_cache.py), which count toward a replica
# pod's for as long as it runs (Kubernetes docs, "Sidecar containers", resource sharing).
SIDECAR_CPU_MILLIS = 100
SIDECAR_MEMORY_MIB = 256


def sidecar_requests(model: ModelSettings) -> tuple[int, int]:
    """What a replica's pod asks for beside vLLM: CPU millis and memory MiB."""
    return (SIDECAR_CPU_MILLIS, SIDECAR_MEMORY_MIB) if model.compile_cache else (0, 0)


def requests(settings: StageSettings, model: ModelSettings) -> Requests:
    """The replica's requests: the settings' where given, else scaled with its GPUs and capped to what the
    cheapest instance that holds its GPUs leaves to pods, in every pool that has one, so a 1-GPU model can
    land on that instance whichever pool launches it."""
    given = model.resources
    holders = [
        cheapest_first(settings, [i for i in with_gpu_count(model) if not gpu_fit(settings, model, i, pool)])
        for pool in settings.gpu_node_pools
    ]
    smallest = [found[0] for found in holders if found]
    daemons = node_daemons(settings)
    # What the node leaves to vLLM: its allocatable less the DaemonSets and the pod's sidecar, in whole CPUs and GiB.
    sidecar_cpu, sidecar_memory = sidecar_requests(model)
    cpu_cap = min(
        ((allocatable_cpu_millis(i.vcpus) - daemons.cpu_millis - sidecar_cpu) // 1000 * 1000 for i in smallest),
        default=math.inf,
    )
    memory_cap = min(
        ((allocatable_memory_mib(i.memory_mib) - daemons.memory_mib - sidecar_memory) // 1024 * 1024 for i in smallest),
        default=math.inf,
    )
    cpu = round(given.cpu * 1000) if given.cpu is not None else int(min(CPU_PER_GPU * 1000 * model.gpus, cpu_cap))
    memory = (
        size_bytes(given.memory) // MIB
        if given.memory is not None
        else int(min(MEMORY_PER_GPU_GIB * 1024 * model.gpus, memory_cap))
    )
    shared = (
        size_bytes(given.shared_memory) // MIB
        if given.shared_memory is not None
        else memory // SHARED_MEMORY_FRACTION // 1024 * 1024
    )
    ephemeral = size_bytes(given.ephemeral_storage or EPHEMERAL_STORAGE) // MIB
    return Requests(cpu, memory, shared, ephemeral)


def fit(
    settings: StageSettings,
    model: ModelSettings,
    instance: GpuInstance,
    wanted: Requests | None = None,
    pool: GpuNodePoolSettings | None = None,
) -> list[str]:
    """Why an instance cannot run one replica of a model in a pool, or in any pool (empty: it can);
    `wanted`: its requests, if known."""
    if pool is None:
        per_pool = [fit(settings, model, instance, wanted, each) for each in settings.gpu_node_pools]
        return [] if not all(per_pool) else per_pool[0]
    reasons = gpu_fit(settings, model, instance, pool)
    wanted = wanted or requests(settings, model)
    daemons = node_daemons(settings)
    where = model_path(settings, model)
    # The compile cache's sidecar asks beside vLLM for as long as the pod runs.
    sidecar_cpu, sidecar_memory = sidecar_requests(model)
    beside = f" and {sidecar_cpu}m by the compile cache's sidecar ({where}.compile_cache)" if sidecar_cpu else ""
    cpu = allocatable_cpu_millis(instance.vcpus) - daemons.cpu_millis
    if wanted.cpu_millis + sidecar_cpu > cpu:
        reasons.append(
            f"{cpu}m CPU left to pods besides the DaemonSets, {wanted.cpu_millis}m requested ({where}.resources.cpu)"
            + beside
        )
    memory = allocatable_memory_mib(instance.memory_mib) - daemons.memory_mib
    if wanted.memory_mib + sidecar_memory > memory:
        beside_memory = (
            f" and {sidecar_memory} MiB by the compile cache's sidecar ({where}.compile_cache)"
            if sidecar_memory
            else ""
        )
        reasons.append(
            f"{memory} MiB of memory left to pods besides the DaemonSets, {wanted.memory_mib} MiB requested "
            f"({where}.resources.memory)" + beside_memory
        )
    disk = allocatable_disk_mib(size_bytes(pool.disk.size) // MIB)
    if wanted.ephemeral_storage_mib + IMAGE_DISK_MIB > disk:
        reasons.append(
            f"{disk} MiB of node disk left to pods, {wanted.ephemeral_storage_mib} MiB requested and "
            f"{IMAGE_DISK_MIB} MiB for the vLLM image (pulled and unpacked) ({pool_path(settings, pool)}.disk.size, "
            f"{where}.resources.ephemeral_storage)"
        )
    return reasons


def candidates(
    settings: StageSettings, model: ModelSettings, pool: GpuNodePoolSettings | None = None
) -> list[GpuInstance]:
    """The catalog's instances that can run one replica in a pool, or in any pool, cheapest first."""

    def work() -> list[GpuInstance]:
        wanted = requests(settings, model)
        return cheapest_first(settings, [i for i in with_gpu_count(model) if not fit(settings, model, i, wanted, pool)])

    return list(remembered("candidates", (settings, model, pool), work))


def pools_for(settings: StageSettings, model: ModelSettings) -> list[GpuNodePoolSettings]:
    """The pools that can run a replica of the model, in order of preference."""
    return [pool for pool in settings.gpu_node_pools if candidates(settings, model, pool)]


def closest(settings: StageSettings, model: ModelSettings, count: int = 3) -> list[tuple[GpuInstance, list[str]]]:
    """What to say when none fits: the instances of the families the pools name first (why the chosen ones
    fail), then those that miss by the fewest reasons, those a pool admits and those with the model's GPU count."""
    wanted = requests(settings, model)
    named = {family for pool in settings.gpu_node_pools for family in pool.instance_families}
    ranked = sorted(
        ((instance, fit(settings, model, instance, wanted)) for instance in catalog()),
        key=lambda pair: (
            pair[0].family not in named,
            len(pair[1]),
            bool(meets_pool(settings, pair[0])),
            pair[0].gpus != model.gpus,
            -pair[0].gpu_memory_mib,
            pair[0].vcpus,
        ),
    )
    return ranked[:count]


# --- the pool's limits ---


@dataclass(frozen=True)
class PoolNeeds:
    cpu: int
    memory_gib: int
    gpus: int


def pool_needs(settings: StageSettings, pool: GpuNodePoolSettings, pick: str) -> PoolNeeds:
    """What a pool must hold for every replica it can run plus one rollout surge and the warm spares per model, each
    on its own node: the pools before it may have no capacity, and then it takes them all.

    `pick`: "cheapest", the least that works (Karpenter launches the cheapest that fits); "largest",
    so that any candidate fits, which is what limits default to. Karpenter counts a node's full
    capacity against the limits, not what it leaves to pods.
    """
    cpu = memory_mib = gpus = 0
    for model in settings.models:
        options = candidates(settings, model, pool)
        if not options:
            continue
        node = options[0] if pick == "cheapest" else max(options, key=lambda i: (i.vcpus, i.memory_mib))
        nodes = model.peak_replicas + 1 + model.warm_spares
        cpu += nodes * node.vcpus
        memory_mib += nodes * node.memory_mib
        gpus += nodes * model.gpus
    return PoolNeeds(cpu, math.ceil(memory_mib / 1024), gpus)


# A NodePool's spec.limits, as Karpenter reads them (karpenter.sh/v1 NodePool, spec.limits: resource quantities).
NodePoolLimits = TypedDict("NodePoolLimits", {"cpu": int, "memory": str, "nvidia.com/gpu": int})


def pool_limits(settings: StageSettings, pool: GpuNodePoolSettings) -> NodePoolLimits:
    """A NodePool's limits: the settings' where given, the largest candidates' needs where not."""
    limits, derived = pool.limits, pool_needs(settings, pool, "largest")
    return {
        "cpu": limits.cpu if limits.cpu is not None else derived.cpu,
        "memory": limits.memory if limits.memory is not None else f"{derived.memory_gib}Gi",
        "nvidia.com/gpu": limits.gpu if limits.gpu is not None else derived.gpus,
    }


def sizing_problems(settings: StageSettings) -> list[str]:
    """Every model no pool can run, every pool that can run no model, and every pool limit too small:
    one line each."""
    problems = []
    families = sorted({instance.family for instance in catalog()})
    for index, model in enumerate(settings.models):
        platforms = image_platforms(model.image)
        for pool in settings.gpu_node_pools:
            foreign = sorted({i.family for i in candidates(settings, model, pool) if i.architecture not in platforms})
            if foreign:
                others = ", ".join(arch for arch in pool.architectures if arch not in platforms)
                problems.append(
                    f"{pool_path(settings, pool)}.architectures admits {others} "
                    f"instances ({', '.join(foreign)}) that could run models[{index}] ({model.name}), but "
                    f"models[{index}].image ({model.image}) is published for {', '.join(platforms)} only "
                    "(settings/catalog/images.yaml): remove those architectures from the pool, or serve an image built "
                    "for them"
                )
    offered = region_offerings(settings.region)
    for pool in settings.gpu_node_pools:
        for family in pool.instance_families:
            if family not in families:
                problems.append(
                    f"{pool_label(settings, pool)}: instance family {family} is not one of the GPU instance families "
                    f"sizing knows (settings/catalog/gpu_instances.yaml): {', '.join(families)}"
                )
            elif offered is not None and family not in offered:
                problems.append(
                    f"{pool_path(settings, pool)}.instance_families: {family} is not offered in region "
                    f"{settings.region} (settings/catalog/regions.yaml); the region offers {', '.join(offered)}: "
                    "choose among those, or another region"
                )
    for index, model in enumerate(settings.models):
        wanted = requests(settings, model)
        # Given both, ModelResources has compared them already; here the memory is the derived one.
        if wanted.shared_memory_mib > wanted.memory_mib:
            problems.append(
                f"models[{index}] ({model.name}): resources.shared_memory ({model.resources.shared_memory}) is more "
                f"than the {wanted.memory_mib} MiB of memory the replica requests (derived, as memory is not given): "
                "the memory-backed /dev/shm counts against it; give shared_memory at most that, or give memory too"
            )
        if candidates(settings, model):
            continue
        near = "; ".join(f"{instance.type}: {', '.join(reasons)}" for instance, reasons in closest(settings, model))
        problems.append(
            f"models[{index}] ({model.name}): no GPU instance can run one replica. It needs {model.gpus} GPU(s) "
            f"with {gpu_memory_needed_mib(model)} MiB each, {wanted.cpu_millis}m CPU and {wanted.memory_mib} MiB of "
            f"memory. Closest: {near}. Change gpus, gpu_memory_utilization, max_model_len, resources or the "
            "gpu_node_pools' instance or disk settings"
        )
    if problems:
        return problems
    for pool in settings.gpu_node_pools:
        if not any(candidates(settings, model, pool) for model in settings.models):
            needs = "; ".join(
                f"{model.name} needs {model.gpus} GPU(s) with {gpu_memory_needed_mib(model)} MiB each"
                for model in settings.models
            )
            problems.append(
                f"{pool_label(settings, pool)}: none of its instances can run any model ({needs}); "
                "widen its instance settings or remove it"
            )
    for pool in settings.gpu_node_pools:
        problems += _limit_problems(settings, pool)
    return problems


def _limit_problems(settings: StageSettings, pool: GpuNodePoolSettings) -> list[str]:
    needs, limits = pool_needs(settings, pool, "cheapest"), pool.limits
    where = f"{pool_path(settings, pool)}.limits"
    surge = (
        "every replica it can run plus one rollout surge and the warm spares per model, each on the cheapest "
        "instance that fits"
    )
    problems = []
    if limits.cpu is not None and limits.cpu < needs.cpu:
        problems.append(f"{where}.cpu: {limits.cpu} is less than {surge}: at least {needs.cpu}")
    if limits.memory is not None and size_bytes(limits.memory) < needs.memory_gib * GIB:
        problems.append(f"{where}.memory: {limits.memory} is less than {surge}: at least {needs.memory_gib}Gi")
    if limits.gpu is not None and limits.gpu < needs.gpus:
        problems.append(f"{where}.gpu: {limits.gpu} is less than {surge}: at least {needs.gpus}")
    return problems
