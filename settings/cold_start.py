"""The cold-start budget of a new replica: each step, the figures it assumes and where they come from.

The startupProbe's budget, the rollout's progress deadline and how long the smoke test waits
are derived from it, so a faster disk, a bigger file system or a bigger model changes them in
one place. Figures are conservative: a budget that is too short restarts a healthy replica
or fails a healthy rollout, one that is too long only reports a broken one later.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from settings.schema import LUSTRE_THROUGHPUTS_PER_TIB, ModelSettings, StageSettings
from settings.sizing import (
    IMAGE_COMPRESSED_BYTES,
    IMAGE_UNPACKED_BYTES,
    GpuInstance,
    candidates,
    on_demand_prices,
    pools_for,
)

# Measured in the walkthrough: Karpenter had the GPU instance running and the pod scheduled "in
# under a minute".
NODE_LAUNCH_SECONDS = 60
# The walkthrough's kubelet pulled and unpacked it from ECR Public in 1 min 27.666 s. Unpacking
# gzip layers is CPU-bound, so a faster disk or a closer registry does not make a pull much
# shorter than that: it is the floor of the pull step.
MEASURED_PULL_SECONDS = 88
# vLLM's start of a model, measured, without reading its weights (the weight read is a step of its own), with a
# cold torch.compile cache. openai/gpt-oss-20b: 80 s from vLLM's first log line (11:10:51) to its engine built
# ("V1 AsyncLLM build complete", 11:12:11), less its "Model loading took 13.7194 GiB and 14.309837 seconds"; the
# engine's init (compilation, profiling, KV cache, CUDA graphs) took 44.21 s of it. KServe's vLLM runtime on one GPU
# (not named; one without native FP4), vLLM 0.10.1 installed that day (kserve/kserve#4657, kittywaresz,
# 2025-08-21).
MEASURED_LOAD_SECONDS = {"openai/gpt-oss-20b": 80 - 14.3}
MEASURED_LOAD_SOURCE = "kserve/kserve#4657: gpt-oss-20b, vLLM 0.10.1, cold compile cache, weights aside"
# A model without a measured start: the walkthrough's "takes a few minutes".
ASSUMED_LOAD_SECONDS = 180
# What a warm torch.compile cache takes off the engine's init: 44.46 s with an empty cache, 14.80 s (five runs'
# average) with a full one, for Qwen-14B on one machine with vLLM 0.10.1.1: compilation 29.12 s to 6.16 s, the
# profiling run 12.41 s to 1.79 s (upb-cn/vllm-startup-profiler experiments/node5/examples/model_size,
# uncached/comparison_results.json and avg_comparison_results.json, init_engine, at 9ef96f47).
WARM_COMPILE_CACHE_SAVES_SECONDS = 44.46 - 14.796
# The startupProbe and the progress deadline allow this many times the expected time.
STARTUP_SAFETY_FACTOR = 2
# The smoke test waits this many progress deadlines for a rollout: a first start may pass the
# deadline (an image imported into the cache, a GPU instance type scarce in the zone) and still
# serve; Kubernetes reports the rollout as stalled, and the smoke test tells slow from broken.
SMOKE_TEST_WAIT_FACTOR = 2
# The one-time import of a revision (charts.model_loader), one file at a time: assumptions to
# measure, not measurements. A single download stream from the Hub through the NAT gateway
# (which starts at 5 Gbps and scales to 100 Gbps: Amazon VPC User Guide, "NAT gateway basics")
# and one boto3 managed upload to S3 (multipart, 10 parts at once by default) are taken at
# 100 MB/s each; they run one after the other.
HUB_DOWNLOAD_MB_S = 100
# The import runs on Auto Mode's general-purpose pool, whose default NodeClass disk writes 125 MiB/s.
GENERAL_PURPOSE_DISK_MIB_S = 125
S3_UPLOAD_MB_S = 100
# The import Job's deadline: this many times its expected time, and never under an hour.
IMPORT_DEADLINE_FACTOR = 3
MIN_IMPORT_DEADLINE_SECONDS = 3600
MIB = 2**20
TIB_IN_GIB = 1024


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    assumes: str
    source: str


def file_system_throughput_mb_s(
    settings: StageSettings, capacity_gib: int | None = None, per_tib: int | None = None
) -> float:
    """FSx for Lustre baseline throughput: storage capacity (TiB) times the per-unit throughput (MB/s/TiB), the
    stage's or those given."""
    store = settings.model_store
    return (capacity_gib or store.storage_capacity_gib) / TIB_IN_GIB * (per_tib or store.throughput_per_tib)


def weights_read_at_once_gb(settings: StageSettings, model: ModelSettings | None = None) -> float:
    """What the file system serves when every replica of a model starts at once (its first deploy, a scale-out to its
    most, a replaced file system): each reads the model's weights, all sharing the file system's throughput. Without
    `model`, the stage's largest. Different models start together only on a stage's first deploy, when a rollout
    that passes its progress deadline goes on (Kubernetes reports it, and the smoke test waits twice as long)."""
    models = [model] if model is not None else settings.models
    return max(each.weights_gb * each.peak_replicas for each in models)


def weight_read_seconds(
    settings: StageSettings,
    capacity_gib: int | None = None,
    per_tib: int | None = None,
    model: ModelSettings | None = None,
) -> float:
    """How long a replica's weight read takes when its model's replicas start at once (they finish together); without
    `model`, the stage's slowest."""
    return (
        weights_read_at_once_gb(settings, model) * 1000 / file_system_throughput_mb_s(settings, capacity_gib, per_tib)
    )


# The capacities `make sizing` and the target's refusal offer: 1.2 TiB, then 2.4 TiB steps up to 48 TiB.
CAPACITY_OPTIONS_GIB = (1200, *range(2400, 48 * 1024 + 1, 2400))


def file_system_options(settings: StageSettings) -> list[tuple[int, int, float]]:
    """For each per-unit throughput, the smallest capacity that holds the weights and meets the stage's weight read
    target (the stage's own capacity without a target): (capacity GiB, MB/s per TiB, weight read seconds)."""
    target = settings.model_store.weight_read_target_seconds
    held_gb = sum(model.weights_gb for model in settings.models)
    options = []
    for per_tib in LUSTRE_THROUGHPUTS_PER_TIB:
        fitting = [
            capacity
            for capacity in CAPACITY_OPTIONS_GIB
            if capacity * 2**30 / 1e9 >= held_gb
            and (target is None or weight_read_seconds(settings, capacity, per_tib) <= target)
        ]
        if target is None:
            fitting = [max(settings.model_store.storage_capacity_gib, fitting[0])] if fitting else []
        if fitting:
            options.append((fitting[0], per_tib, weight_read_seconds(settings, fitting[0], per_tib)))
    return options


def file_system_problems(settings: StageSettings) -> list[str]:
    """A weight read slower than the stage's target, with the file systems that would meet it."""
    target, store = settings.model_store.weight_read_target_seconds, settings.model_store
    if target is None or weight_read_seconds(settings) <= target:
        return []
    meeting = "; ".join(
        f"{capacity} GiB at {per_tib} ({seconds:.0f} s)" for capacity, per_tib, seconds in file_system_options(settings)
    )
    return [
        f"model_store.weight_read_target_seconds: with every replica of a model starting at once "
        f"({weights_read_at_once_gb(settings):.1f} GB of weights), {store.storage_capacity_gib} GiB at "
        f"{store.throughput_per_tib} MB/s per TiB reads them in {weight_read_seconds(settings):.0f} s, more than "
        f"{target} s; storage_capacity_gib and throughput_per_tib that meet it: {meeting or 'none up to 48 TiB'}"
    ]


def slowest_network(settings: StageSettings, model: ModelSettings) -> GpuInstance | None:
    """Of the instances a replica may land on, the one with the least baseline network bandwidth (None: none can run
    it). The image and the weights reach the node through it, whatever the registry's or the file system's speed."""
    return min(candidates(settings, model), key=lambda instance: instance.network_mbps, default=None)


def network_seconds(instance: GpuInstance | None, gigabytes: float) -> float:
    """How long `gigabytes` take at the instance's baseline bandwidth (0 without an instance)."""
    return gigabytes * 1000 / (instance.network_mbps / 8) if instance else 0.0


def cold_start_steps(settings: StageSettings, model: ModelSettings, *, budget: bool = False) -> list[Step]:
    """Each step of a new replica's start, as expected, or with `budget` as the budgets take the model load."""
    # Whichever pool launches the node: the slowest disk of those that can run the model.
    disk = min(
        (pool.disk for pool in pools_for(settings, model) or settings.gpu_node_pools), key=lambda d: d.throughput_mib
    )
    throughput = file_system_throughput_mb_s(settings)
    disk_write_seconds = IMAGE_UNPACKED_BYTES / (disk.throughput_mib * MIB)
    instance = slowest_network(settings, model)
    image_network_seconds = network_seconds(instance, IMAGE_COMPRESSED_BYTES / 1e9)
    share, network = weight_read_seconds(settings, model=model), network_seconds(instance, model.weights_gb)
    bandwidth = f"{instance.network_mbps / 1000:g} Gbps on a {instance.type}" if instance else "no instance"
    steps = [
        Step(
            "node launch",
            NODE_LAUNCH_SECONDS,
            "a GPU instance launched and the pod scheduled",
            "walkthrough: 'in under a minute'",
        )
    ]
    if settings.registry.image_source == "pull_through_cache":
        steps.append(
            Step(
                "first pull through the cache",
                MEASURED_PULL_SECONDS,
                f"the first pull of an image version: ECR copies its {IMAGE_COMPRESSED_BYTES / 1e9:.1f} GB from "
                "ECR Public into the account's registry, taken to last as long as the walkthrough's direct pull "
                "(later pulls skip this step)",
                "walkthrough: pulled from ECR Public in 1 min 28 s",
            )
        )
    steps += [
        Step(
            "image pull",
            max(MEASURED_PULL_SECONDS, disk_write_seconds, image_network_seconds),
            f"{IMAGE_COMPRESSED_BYTES / 1e9:.1f} GB downloaded and unpacked to {IMAGE_UNPACKED_BYTES / 1e9:.0f} GB: "
            f"the longest of the measured pull, writing it at the node disk's {disk.throughput_mib} MiB/s "
            f"({disk_write_seconds:.0f} s) and downloading it at the node's baseline network, {bandwidth} "
            f"({image_network_seconds:.0f} s); gzip unpacking is CPU-bound",
            "walkthrough: 1 min 28 s; DLC buildspec image_size_baseline (the 0.11.2 image's, the only size "
            "stated); gpu_node_pools[].disk.throughput_mib; settings/catalog/gpu_instances.yaml network_mbps",
        ),
        Step(
            "weight read",
            max(share, network),
            f"{model.weights_gb:.1f} GB, while every replica of the model starts at once "
            f"({weights_read_at_once_gb(settings, model):.1f} GB in all) at {throughput:.0f} MB/s "
            f"({settings.model_store.storage_capacity_gib} GiB x {settings.model_store.throughput_per_tib} MB/s/TiB: "
            f"{share:.0f} s), and at most the node's baseline network, {bandwidth} ({network:.0f} s)",
            "the models' weight bytes (their facts) and peak replicas; FSx for Lustre baseline throughput = "
            "capacity x per-unit throughput, shared by its readers; settings/catalog/gpu_instances.yaml network_mbps",
        ),
        model_load_step(model, budget=budget),
    ]
    return steps


def model_load_step(model: ModelSettings, *, budget: bool = False) -> Step:
    """vLLM's start besides the weight read, with an empty compile cache (the first replica's): as set, as measured
    for the model, or as the walkthrough has it. The budgets (`budget`) take no less than the walkthrough's figure
    until models[].load_seconds gives one: the measurement is of another vLLM release, and a budget too short
    restarts a replica that is still loading, again and again."""
    assumes = "kernel compilation, profiling, KV cache and CUDA graphs, with an empty compile cache"
    if model.load_seconds is not None:
        return Step("model load", model.load_seconds, assumes, "models[].load_seconds")
    if model.model in MEASURED_LOAD_SECONDS and not budget:
        return Step("model load", MEASURED_LOAD_SECONDS[model.model], assumes, MEASURED_LOAD_SOURCE)
    return Step(
        "model load",
        ASSUMED_LOAD_SECONDS,
        assumes,
        "no measured start of this model (models[].load_seconds sets one): the walkthrough's loading 'takes a few "
        "minutes'",
    )


# What a replica skips on a warm spare's node (charts/warm_spares.py): the node is up and holds the image.
WARM_NODE_SKIPS = ("node launch", "first pull through the cache", "image pull")


def warm_start_seconds(settings: StageSettings, model: ModelSettings) -> float:
    """A new replica's start on a warm spare's node: the steps after the container starts."""
    return sum(step.seconds for step in cold_start_steps(settings, model) if step.name not in WARM_NODE_SKIPS)


@dataclass(frozen=True)
class Lever:
    """What shortens a step: whether the stage uses it, the seconds of the step with it, and where that comes from."""

    name: str
    step: str
    on: bool
    seconds: float | None  # None: no figure, the lever is not available here
    source: str


def levers(settings: StageSettings, model: ModelSettings) -> list[Lever]:
    """Each lever on a cold start, as the stage sets it, with the figure it gives and its source."""
    fastest = max(LUSTRE_THROUGHPUTS_PER_TIB)
    return [
        Lever(
            f"warm spares (models[].warm_spares: {model.warm_spares})",
            "node launch, first pull, image pull",
            model.warm_spares > 0,
            0,
            "charts/warm_spares.py: a replica preempts a placeholder on a node that holds its image",
        ),
        Lever(
            f"file system throughput ({settings.model_store.throughput_per_tib} MB/s per TiB now)",
            "weight read",
            settings.model_store.throughput_per_tib == fastest,
            max(
                weight_read_seconds(settings, per_tib=fastest, model=model),
                network_seconds(slowest_network(settings, model), model.weights_gb),
            ),
            f"at {fastest} MB/s per TiB, the fastest PERSISTENT_2 tier (model_store.throughput_per_tib), within the "
            "node's baseline network",
        ),
        network_lever(settings, model),
        Lever(
            f"shared compile cache (models[].compile_cache: {str(model.compile_cache).lower()})",
            "model load",
            model.compile_cache,
            max(model_load_step(model).seconds - WARM_COMPILE_CACHE_SAVES_SECONDS, 0),
            "charts/shared_compile_cache.py: torch.compile's output from an earlier replica; a full cache took "
            f"{WARM_COMPILE_CACHE_SAVES_SECONDS:.1f} s off the engine's init (upb-cn/vllm-startup-profiler, Qwen-14B, "
            "vLLM 0.10.1.1)",
        ),
        Lever(
            "lazy image pull (SOCI)",
            "image pull",
            False,
            None,
            "not offered: EKS Auto Mode's NodeClass has no snapshotter or image setting, its disk "
            "(ephemeralStorage) only (EKS User Guide, 'Create a Node Class for Amazon EKS')",
        ),
    ]


def keeping_up(settings: StageSettings, model: ModelSettings) -> GpuInstance | None:
    """Of the instances a replica may land on that read the weights no slower than the fastest file system tier shares
    them out, the one with the least baseline network (the cheapest of those), whose bandwidth is the floor to ask for;
    None: none keeps up."""
    share = weight_read_seconds(settings, per_tib=max(LUSTRE_THROUGHPUTS_PER_TIB), model=model)
    fast = [i for i in candidates(settings, model) if network_seconds(i, model.weights_gb) <= share]
    return min(fast, key=lambda instance: instance.network_mbps, default=None)  # min keeps the cheapest of a tie


def fastest_network(settings: StageSettings, model: ModelSettings) -> GpuInstance | None:
    """Of the instances a replica may land on, the one with the most baseline network."""
    return max(candidates(settings, model), key=lambda instance: instance.network_mbps, default=None)


def network_lever(settings: StageSettings, model: ModelSettings) -> Lever:
    """Nodes whose network keeps up with the file system: the weight read at the stage's tier on nodes that keep up
    with the fastest one, which gpu_node_pools[].min_network_mbps at the least such bandwidth admits alone."""
    lever = functools.partial(Lever, "node network (gpu_node_pools[].min_network_mbps)", "weight read")
    slowest, floor = slowest_network(settings, model), keeping_up(settings, model)
    share = weight_read_seconds(settings, model=model)
    catalog_note = "(settings/catalog/gpu_instances.yaml network_mbps)"
    if slowest is None:
        return lever(False, None, "no instance can run a replica")
    if floor is None:
        best = fastest_network(settings, model) or slowest
        seconds = max(share, network_seconds(best, model.weights_gb))
        return lever(
            False,
            seconds,
            f"no instance a replica may land on keeps up with the fastest tier; the most network, a {best.type}'s "
            f"{best.network_mbps} Mbps {catalog_note}",
        )
    if slowest.network_mbps >= floor.network_mbps:
        every = f"every instance a replica may land on keeps up with the fastest tier, the slowest a {slowest.type}"
        return lever(True, share, f"{every} of {slowest.network_mbps} Mbps {catalog_note}")
    cheapest = candidates(settings, model)[0]
    admitted = next(i for i in candidates(settings, model) if i.network_mbps >= floor.network_mbps)
    _, prices = on_demand_prices(settings.region)
    cost = (
        f"; the cheapest it admits, a {admitted.type}, at ${prices[admitted.type]:.3f}/h against a "
        f"{cheapest.type}'s ${prices[cheapest.type]:.3f}/h"
        if admitted.type in prices and cheapest.type in prices
        else ""
    )
    floor_note = (
        f"min_network_mbps: {floor.network_mbps}, the least baseline network that keeps up with the fastest tier"
    )
    return lever(False, max(share, network_seconds(admitted, model.weights_gb)), f"{floor_note}{cost} {catalog_note}")


def with_every_lever(settings: StageSettings, model: ModelSettings) -> tuple[float, float]:
    """A new replica's start with every lever that has a figure: the fastest file system tier on nodes whose network
    keeps up with it (or, where none does, the most network there is), and a full compile cache; on a new node whose
    image the stage's cache already holds, and on a warm spare's node."""
    fastest_tier = weight_read_seconds(settings, per_tib=max(LUSTRE_THROUGHPUTS_PER_TIB), model=model)
    network = network_seconds(keeping_up(settings, model) or fastest_network(settings, model), model.weights_gb)
    best = {
        lever.step: lever.seconds
        for lever in levers(settings, model)
        if lever.seconds is not None and lever.step == "model load"
    }
    best["weight read"] = max(fastest_tier, network)
    seconds = {step.name: best.get(step.name, step.seconds) for step in cold_start_steps(settings, model)}
    new_node = sum(value for name, value in seconds.items() if name != "first pull through the cache")
    warm_node = sum(value for name, value in seconds.items() if name not in WARM_NODE_SKIPS)
    return new_node, warm_node


def import_steps(settings: StageSettings, model: ModelSettings) -> list[Step]:
    """The one-time import of a model's revision into the model store, before its first replica can start."""
    if not model.imported:
        return []
    first_pulls = [step for step in cold_start_steps(settings, model) if step.name == "first pull through the cache"]
    disk_write_seconds = IMAGE_UNPACKED_BYTES / (GENERAL_PURPOSE_DISK_MIB_S * MIB)
    return [
        *(Step(f"import: {step.name}", step.seconds, step.assumes, step.source) for step in first_pulls),
        Step(
            "import: image pull",
            max(MEASURED_PULL_SECONDS, disk_write_seconds),
            f"the vLLM image (which has huggingface_hub and boto3) on a general-purpose node, whose disk writes "
            f"{GENERAL_PURPOSE_DISK_MIB_S} MiB/s: {disk_write_seconds:.0f} s for {IMAGE_UNPACKED_BYTES / 1e9:.0f} GB",
            "EKS Auto Mode's default NodeClass: 125 MiB/s",
        ),
        Step(
            "import: download from the Hub",
            model.weights_gb * 1000 / HUB_DOWNLOAD_MB_S,
            f"{model.weights_gb:.1f} GB, one file at a time, at {HUB_DOWNLOAD_MB_S} MB/s",
            "an assumption to measure: one stream through the NAT gateway (5 Gbps to start with)",
        ),
        Step(
            "import: upload to the bucket",
            model.weights_gb * 1000 / S3_UPLOAD_MB_S,
            f"{model.weights_gb:.1f} GB at {S3_UPLOAD_MB_S} MB/s",
            "an assumption to measure: boto3's managed multipart upload",
        ),
        Step(
            "import: read into the file system",
            model.weights_gb * 1000 / file_system_throughput_mb_s(settings),
            f"{model.weights_gb:.1f} GB at {file_system_throughput_mb_s(settings):.0f} MB/s",
            "FSx for Lustre baseline throughput = capacity x per-unit throughput",
        ),
    ]


def import_deadline_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long the import Job may run before Kubernetes stops it."""
    expected = sum(step.seconds for step in import_steps(settings, model))
    return max(MIN_IMPORT_DEADLINE_SECONDS, math.ceil(IMPORT_DEADLINE_FACTOR * expected / 60) * 60)


def startup_probe_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long the startupProbe lets a started container load: the steps after the container starts."""
    after_start = sum(
        step.seconds
        for step in cold_start_steps(settings, model, budget=True)
        if step.name in ("weight read", "model load")
    )
    return math.ceil(STARTUP_SAFETY_FACTOR * after_start / 60) * 60


def cold_start_seconds(settings: StageSettings, model: ModelSettings, *, budget: bool = False) -> float:
    """A new replica's expected cold start (or, with `budget`, the one the budgets take): every step, from the node's
    launch to serving."""
    return sum(step.seconds for step in cold_start_steps(settings, model, budget=budget))


def progress_deadline_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long a rollout may take before Kubernetes reports it stuck: the whole cold start, with the same margin."""
    return math.ceil(STARTUP_SAFETY_FACTOR * cold_start_seconds(settings, model, budget=True) / 60) * 60


def smoke_test_wait_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long the smoke test waits for a model's import and rollout before it fails the stage.

    Past the progress deadline, and for a new revision, past the import's expected time too.
    """
    importing = sum(step.seconds for step in import_steps(settings, model))
    return SMOKE_TEST_WAIT_FACTOR * (progress_deadline_seconds(settings, model) + math.ceil(importing / 60) * 60)
