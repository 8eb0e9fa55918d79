"""The cold-start budget of a new replica: each step, the figures it assumes and where they come from.

The startupProbe's budget and the rollout's progress deadline are derived from it, so a faster
disk, a bigger file system or a bigger model changes them in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from settings.model import ModelSettings, StageSettings

# Measured in the walkthrough: Karpenter had the GPU instance running and the pod scheduled "in
# under a minute", and the vLLM image is 14,221,606,791 bytes.
NODE_LAUNCH_SECONDS = 60
IMAGE_BYTES = 14_221_606_791
# The startupProbe allows this many times the expected read-and-load time.
STARTUP_SAFETY_FACTOR = 2
MIB = 2**20
TIB_IN_GIB = 1024


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    assumes: str
    source: str


def file_system_throughput_mb_s(settings: StageSettings) -> float:
    """FSx for Lustre baseline throughput: storage capacity (TiB) times the per-unit throughput (MB/s/TiB)."""
    store = settings.model_store
    return store.storage_capacity_gib / TIB_IN_GIB * store.throughput_per_tib


def cold_start_steps(settings: StageSettings, model: ModelSettings) -> list[Step]:
    disk = settings.gpu_node_pool.disk
    throughput = file_system_throughput_mb_s(settings)
    return [
        Step(
            "node launch",
            NODE_LAUNCH_SECONDS,
            "a GPU instance launched and the pod scheduled",
            "walkthrough: 'in under a minute'",
        ),
        Step(
            "image pull",
            IMAGE_BYTES / (disk.throughput_mib * MIB),
            f"{IMAGE_BYTES / 1e9:.1f} GB written at the node disk's {disk.throughput_mib} MiB/s "
            "(a lower bound: download and decompression can be slower)",
            "walkthrough: image size; gpu_node_pool.disk.throughput_mib (assumed to limit the pull, not the registry)",
        ),
        Step(
            "weight read",
            model.weights_gb * 1000 / throughput,
            f"{model.weights_gb} GB at {throughput:.0f} MB/s "
            f"({settings.model_store.storage_capacity_gib} GiB x {settings.model_store.throughput_per_tib} MB/s/TiB)",
            "models[].weights_gb; FSx for Lustre baseline throughput = capacity x per-unit throughput",
        ),
        Step(
            "model load",
            model.load_seconds,
            "weights into GPU memory, kernel compilation, CUDA graph capture",
            "models[].load_seconds (walkthrough: loading 'takes a few minutes')",
        ),
    ]


def startup_probe_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long the startupProbe lets a started container load: the steps after the container starts."""
    after_start = sum(
        step.seconds for step in cold_start_steps(settings, model) if step.name in ("weight read", "model load")
    )
    return math.ceil(STARTUP_SAFETY_FACTOR * after_start / 60) * 60


def progress_deadline_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long a rollout may take before Kubernetes reports it stuck: the whole cold start, with the same margin."""
    total = sum(step.seconds for step in cold_start_steps(settings, model))
    return math.ceil(STARTUP_SAFETY_FACTOR * total / 60) * 60
