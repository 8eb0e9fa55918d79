"""cdk8s charts: plain values in, Kubernetes manifests out. They know nothing of CDK stacks."""

from __future__ import annotations

import cdk8s

from charts.gpu_node_pool import GpuNodePoolChart
from charts.vllm_server import VllmServerChart
from settings.model import GpuNodePoolSettings, ModelSettings


def build_charts(
    app: cdk8s.App, *, gpu_node_pool: GpuNodePoolSettings, models: tuple[ModelSettings, ...]
) -> dict[str, cdk8s.Chart]:
    """Every chart of a stage, by a stable id: the GPU NodePool, then one vLLM server per model."""
    charts: dict[str, cdk8s.Chart] = {"GpuNodePool": GpuNodePoolChart(app, "gpu-node-pool", pool=gpu_node_pool)}
    for model in models:
        charts[f"Model-{model.name}"] = VllmServerChart(app, f"vllm-{model.name}", model=model)
    return charts
