"""How busy a vLLM replica's GPUs are, and how much of their memory is in use, on /metrics for the stage's
Prometheus workspace.

It runs beside vLLM in the replica's container (charts/gpu_metrics.py), the one place of an Auto Mode
node that sees the replica's GPUs without a DCGM host engine: a second one would conflict with Auto
Mode's node monitoring agent (aws/containers-roadmap#2555). It reads NVML instead, as `nvidia-smi` does,
through NVIDIA's own Python binding: the copy vLLM ships (vllm/third_party/pynvml.py, NVIDIA's
nvidia-ml-py, which vLLM itself uses to find the GPUs), loaded from its file so that vLLM, and torch with
it, are not imported; or `pynvml` where an image has that instead. prometheus_client, which vLLM's own
metrics use, serves the page. Both are in the vLLM image; the script needs nothing else.

Utilization is a counter of busy seconds per GPU. NVML's figure is the share of its last sample period
(1/6 s to 1 s, by GPU) in which a kernel ran (nvml.h, nvmlDeviceGetUtilizationRates). The script reads
it every second and adds it, weighted by the time since the last read: rate() over a range is then the
mean of those readings over the range, whatever the scrape interval, as nvidia-smi would show them read
once a second. Memory is read when scraped. When NVML fails, the script stops (or a scrape answers
500), so Prometheus records the target as down rather than as idle; the container starts it again
(charts/gpu_metrics.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

SAMPLE_SECONDS = 1.0
# The name vLLM's copy is loaded under: not vLLM's own (its package would be imported) nor `pynvml`.
VENDORED_BINDING = "vllm_pynvml"


def load_nvml() -> ModuleType:
    """vLLM's copy of NVIDIA's binding, else `pynvml`; without importing vLLM (find_spec only locates it)."""
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.submodule_search_locations:
        vendored = Path(next(iter(spec.submodule_search_locations))) / "third_party" / "pynvml.py"
        if vendored.is_file():
            spec = importlib.util.spec_from_file_location(VENDORED_BINDING, vendored)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {vendored}")
            module = importlib.util.module_from_spec(spec)
            # Registered before it runs: the binding finds itself in sys.modules to add its error classes.
            sys.modules[VENDORED_BINDING] = module
            spec.loader.exec_module(module)
            return module
    import pynvml  # the image has no vLLM copy: nvidia-ml-py's

    return pynvml


class GpuCollector(Collector):
    """The replica's GPUs, as NVML lists them in the container: the ones the device plugin gave it."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            self.gpus.append((str(index), uuid.decode() if isinstance(uuid, bytes) else uuid, handle))
        self.busy_seconds = [0.0] * len(self.gpus)
        self.lock = threading.Lock()

    def sample(self, elapsed_seconds: float) -> None:
        """Adds each GPU's busy share of the last `elapsed_seconds`."""
        shares = [self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100 for _, _, handle in self.gpus]
        with self.lock:
            for index, share in enumerate(shares):
                self.busy_seconds[index] += share * elapsed_seconds

    def keep_sampling(self, every_seconds: float) -> None:
        """Samples until NVML fails, which ends the script (its error is the last thing it logs)."""
        last = time.monotonic()
        while True:
            time.sleep(every_seconds)
            now = time.monotonic()
            self.sample(now - last)
            last = now

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            busy = list(self.busy_seconds)
        labels = ["gpu", "uuid"]
        busy_seconds = CounterMetricFamily(
            "gpu_busy_seconds", "Seconds in which a kernel ran on the GPU (NVML utilization, summed)", labels=labels
        )
        used = GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=labels)
        total = GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory (NVML)", labels=labels)
        for (index, uuid, handle), seconds in zip(self.gpus, busy, strict=True):
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            busy_seconds.add_metric([index, uuid], seconds)
            used.add_metric([index, uuid], memory.used)
            total.add_metric([index, uuid], memory.total)
        yield from (busy_seconds, used, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="charts/gpu_metrics.py gives the scraped one")
    parser.add_argument("--sample-seconds", type=float, default=SAMPLE_SECONDS)
    args = parser.parse_args()
    collector = GpuCollector(load_nvml())
    # A registry of its own: the GPUs' series only, not this process's.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(args.port, registry=registry)
    collector.keep_sampling(args.sample_seconds)


if __name__ == "__main__":
    main()
