"""What runs on the cluster: the GPU NodePool and one vLLM server per model, applied as cdk8s charts."""

from __future__ import annotations

import json
import re
from typing import Any

import cdk8s
from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

from charts import build_charts
from charts.vllm_server import PORT
from settings.model import GpuNodePoolSettings, ModelSettings

# The walkthrough's test request.
TEST_PROMPT = "What is machine learning?"
TEST_MAX_TOKENS = 100


class ServingStack(Stack):
    """Applies the charts through the cluster's kubectl handler.

    The cluster is imported by name, so the manifests live in this stack's template: a new
    model or new vLLM flags change this stack only, never the cluster's.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        cluster: eks.Cluster,
        gpu_node_pool: GpuNodePoolSettings,
        models: tuple[ModelSettings, ...],
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        target = eks.Cluster.from_cluster_attributes(
            self, "Cluster", cluster_name=cluster.cluster_name, kubectl_provider=cluster.kubectl_provider
        )
        for chart_id, chart in build_charts(cdk8s.App(), gpu_node_pool=gpu_node_pool, models=models).items():
            target.add_cdk8s_chart(chart_id, chart)

        for model in models:
            output_id = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", model.name))
            CfnOutput(
                self,
                f"{output_id}PortForwardCommand",
                description=f"Forwards localhost:{PORT} to {model.model} (leave it running)",
                value=port_forward_command(model),
            )
            CfnOutput(
                self,
                f"{output_id}TestRequestCommand",
                description=f"Sends the test prompt to {model.model} through the port-forward",
                value=test_request_command(model),
            )


def port_forward_command(model: ModelSettings) -> str:
    return f"kubectl -n {model.name} port-forward service/{model.service_name} {PORT}:{PORT}"


def test_request_command(model: ModelSettings) -> str:
    body = {
        "model": model.model,
        "messages": [{"role": "user", "content": TEST_PROMPT}],
        "temperature": 0.7,
        "max_tokens": TEST_MAX_TOKENS,
    }
    return (
        f"curl -s http://localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}' | jq -r '.choices[0].message.content'"
    )
