"""GPU utilization and memory per replica, read from inside its vLLM container, for the stage's Prometheus.

On Auto Mode, a DCGM exporter of our own would conflict with the node monitoring agent's DCGM host
engine (aws/containers-roadmap#2555, #2763), and neither the agent nor the CloudWatch Observability
add-on (whose DCGM exporter is off for that reason, stacks/cluster.py) publishes GPU utilization. So
each replica reads its own GPUs: workloads/gpu_reader.py, shipped in a ConfigMap and started beside
vLLM in the same container, the only one the device plugin gives the GPUs to. It reads NVML, as
`nvidia-smi` does, through the binding vLLM already uses, and serves /metrics on GPU_METRICS_PORT,
which the scraper reads (stacks/metrics.py, job "gpu"). It uses a few tens of MiB of the container's
memory, next to vLLM's gigabytes.

`sh` starts the reader in the background, in a loop that starts it again a minute after it stops
(NVML failing, say), then becomes vLLM (`exec`): vLLM stays the container's main process, the one
that receives SIGTERM after the preStop drain, and the loop and the reader end with it. The loop's
shell, not vLLM, reaps each reader that stops.

The pod template carries the script's hash, so a changed script rolls the replicas like any other
change to the pod: a ConfigMap's new contents alone would reach only new pods.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cdk8s
import cdk8s_plus_30 as kplus
from constructs import Construct

SCRIPT = Path(__file__).resolve().parent.parent / "workloads" / "gpu_reader.py"
# The reader's file name in its ConfigMap, which the replicas run.
SCRIPT_NAME = "gpu_metrics.py"
GPU_METRICS_PORT = 9400
GPU_METRICS_PORT_NAME = "gpu-metrics"
MOUNT = "/opt/gpu-metrics"
RESTART_SECONDS = 60
SCRIPT_HASH_ANNOTATION = "gpu-metrics/script-sha256"


def with_gpu_metrics(command: list[str]) -> list[str]:
    """`command`, with the GPU reader started beside it. The pod's args follow `command`, so they reach it too."""
    reader = f"python3 {MOUNT}/{SCRIPT_NAME} --port={GPU_METRICS_PORT}"
    return ["sh", "-c", f'while :; do {reader}; sleep {RESTART_SECONDS}; done & exec "$@"', "sh", *command]


def script_hash() -> str:
    return hashlib.sha256(SCRIPT.read_bytes()).hexdigest()


class GpuMetrics(Construct):
    """The ConfigMap holding the reader, and the volume that mounts it."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        script = kplus.ConfigMap(
            self,
            "Script",
            metadata=cdk8s.ApiObjectMetadata(name="gpu-metrics"),
            data={SCRIPT_NAME: SCRIPT.read_text()},
        )
        self.volume = kplus.Volume.from_config_map(self, "Volume", script, name="gpu-metrics")
