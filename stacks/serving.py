"""What runs on the cluster: the GPU NodePool and one vLLM server per model, applied as cdk8s charts."""

from __future__ import annotations

import json
import re
from typing import Any

import cdk8s
from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_iam as iam
from constructs import Construct

from charts import DeployedResources, build_charts
from charts.model_loader import preload_job_name
from charts.vllm_server import PORT
from settings.model import ModelSettings, StageSettings
from stacks.model_store import LUSTRE_PORTS

# The walkthrough's test request.
TEST_PROMPT = "What is machine learning?"
TEST_MAX_TOKENS = 100


class ServingStack(Stack):
    """Applies the charts through the cluster's kubectl handler, and lets the cluster reach the weights.

    The cluster is imported by name, so the manifests live in this stack's template: a new
    model or new vLLM flags change this stack only, never the cluster's. The Lustre rules live
    here too, so neither the cluster nor the model store depends on the other.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: StageSettings,
        cluster: eks.Cluster,
        node_role: iam.IRole,
        subnets: list[ec2.ISubnet],
        file_system: fsx.LustreFileSystem,
        file_system_security_group: ec2.ISecurityGroup,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        target = eks.Cluster.from_cluster_attributes(
            self, "Cluster", cluster_name=cluster.cluster_name, kubectl_provider=cluster.kubectl_provider
        )
        deployed = DeployedResources(
            account=settings.account or Aws.ACCOUNT_ID,
            node_role_name=node_role.role_name,
            subnet_ids=tuple(subnet.subnet_id for subnet in subnets),
            cluster_security_group_id=cluster.cluster_security_group_id,
            file_system_id=file_system.file_system_id,
            file_system_dns_name=file_system.dns_name,
            file_system_mount_name=file_system.mount_name,
        )
        for chart_id, chart in build_charts(cdk8s.App(), settings, deployed).items():
            target.add_cdk8s_chart(chart_id, chart)

        # Nodes (which carry the cluster security group) mount the file system; it answers them.
        for index, port in enumerate(LUSTRE_PORTS):
            low, high = port.to_rule_json()["fromPort"], port.to_rule_json()["toPort"]
            ec2.CfnSecurityGroupIngress(
                self,
                f"LustreFromNodes{index}",
                group_id=file_system_security_group.security_group_id,
                source_security_group_id=cluster.cluster_security_group_id,
                ip_protocol="tcp",
                from_port=low,
                to_port=high,
                description="Lustre from the cluster's nodes",
            )
            ec2.CfnSecurityGroupEgress(
                self,
                f"LustreToNodes{index}",
                group_id=file_system_security_group.security_group_id,
                destination_security_group_id=cluster.cluster_security_group_id,
                ip_protocol="tcp",
                from_port=low,
                to_port=high,
                description="Lustre to the cluster's nodes",
            )

        for model in settings.models:
            output_id = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", model.name))
            CfnOutput(
                self,
                f"{output_id}PortForwardCommand",
                description=f"Forwards localhost:{PORT} to {model.model} (leave it running)",
                value=port_forward_command(model),
            )
            CfnOutput(
                self,
                f"{output_id}PreloadCommand",
                description=f"After uploading {model.model} to s3://<model bucket>/{model.name}/: "
                "reads it into the file system",
                value=preload_command(model),
            )
            CfnOutput(
                self,
                f"{output_id}TestRequestCommand",
                description=f"Sends the test prompt to {model.model} through the port-forward",
                value=test_request_command(model),
            )


def preload_command(model: ModelSettings) -> str:
    job = preload_job_name(model.name)
    return (
        f"kubectl -n {model.name} create job {job}-$(date +%s) --from=cronjob/{job} && "
        f"kubectl -n {model.name} get jobs -l job-name -w"
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
