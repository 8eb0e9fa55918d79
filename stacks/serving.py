"""What runs on the cluster: the GPU NodePool and one vLLM server per model, applied as cdk8s charts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cdk8s
from aws_cdk import Aws, CfnOutput, Duration, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from charts import DeployedResources, build_charts
from charts.cold_start import progress_deadline_seconds
from charts.model_loader import preload_job_name
from charts.vllm_server import PORT, SMOKE_TEST_GROUP
from scripts.smoke_test import chat_request
from settings.model import ModelSettings, StageSettings
from stacks.model_store import LUSTRE_PORTS

# scripts/smoke_test.py, shipped alone to the smoke test project as a (zipped) asset.
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
SMOKE_TEST_FILE = "smoke_test.py"


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
        vpc: ec2.IVpc,
        file_system: fsx.LustreFileSystem,
        file_system_security_group: ec2.ISecurityGroup,
        pipeline_account: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        target = eks.Cluster.from_cluster_attributes(
            self, "Cluster", cluster_name=cluster.cluster_name, kubectl_provider=cluster.kubectl_provider
        )
        deployed = DeployedResources(
            account=settings.account or Aws.ACCOUNT_ID,
            node_role_name=node_role.role_name,
            subnet_ids=tuple(subnet.subnet_id for subnet in vpc.private_subnets),
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

        self.smoke_test = self._smoke_test_project(settings, cluster, vpc)
        self._smoke_test_trigger(settings, pipeline_account)

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

    def _smoke_test_project(self, settings: StageSettings, cluster: eks.Cluster, vpc: ec2.IVpc) -> codebuild.Project:
        """The post-deploy check: inside the VPC, as a role the cluster admits only to watch and port-forward.

        It runs scripts/smoke_test.py (shipped as an asset) for every model: wait for the rollout,
        then send the test prompt through the Service. Start it with
        `aws codebuild start-build --project-name <cluster name>-smoke-test`; the pipeline does after each deploy.
        """
        role = iam.Role(
            self,
            "SmokeTestRole",
            description="Post-deploy smoke test: watches model rollouts and sends one test prompt",
            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
        )
        role.add_to_policy(iam.PolicyStatement(actions=["eks:DescribeCluster"], resources=[cluster.cluster_arn]))
        # No access policy: the group gets exactly the namespaced RBAC rules the charts define.
        eks.CfnAccessEntry(
            self,
            "SmokeTestAccess",
            cluster_name=cluster.cluster_name,
            principal_arn=role.role_arn,
            kubernetes_groups=[SMOKE_TEST_GROUP],
            type="STANDARD",
        )
        kubectl_version = f"v{settings.cluster.kubernetes_version}.0"
        checks = [
            f"python3 {SMOKE_TEST_FILE} --namespace {model.name} --service {model.service_name} "
            f"--deployment {model.name} --model {model.model} "
            f"--rollout-timeout {progress_deadline_seconds(settings, model)}"
            for model in settings.models
        ]
        scripts = s3_assets.Asset(self, "SmokeTestScript", path=str(SCRIPTS_DIR), exclude=["*", f"!{SMOKE_TEST_FILE}"])
        return codebuild.Project(
            self,
            "SmokeTest",
            project_name=smoke_test_project_name(settings),
            description="Sends the walkthrough's test prompt to every model after a deployment",
            source=codebuild.Source.s3(bucket=scripts.bucket, path=scripts.s3_object_key),
            role=role,
            vpc=vpc,
            subnet_selection=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            # The cluster's security group is what the private API endpoint admits.
            security_groups=[
                ec2.SecurityGroup.from_security_group_id(
                    self, "ClusterSecurityGroup", cluster.cluster_security_group_id
                )
            ],
            environment=codebuild.BuildEnvironment(build_image=codebuild.LinuxBuildImage.STANDARD_7_0),
            encryption_key=kms.Key(
                self, "SmokeTestKey", description="Encrypts the smoke test's build artifacts", enable_key_rotation=True
            ),
            timeout=Duration.minutes(60),
            build_spec=codebuild.BuildSpec.from_object(
                {
                    "version": "0.2",
                    "phases": {
                        "install": {
                            "commands": [
                                f"curl -sSfL -o /usr/local/bin/kubectl https://dl.k8s.io/release/{kubectl_version}/bin/linux/amd64/kubectl",
                                "chmod +x /usr/local/bin/kubectl",
                            ]
                        },
                        "build": {
                            "commands": [
                                f"aws eks update-kubeconfig --region {settings.region} --name {settings.cluster.name}",
                                *checks,
                            ]
                        },
                    },
                }
            ),
        )

    def _smoke_test_trigger(self, settings: StageSettings, pipeline_account: str | None) -> None:
        """A role the pipeline's account may assume to start the smoke test and read its outcome, nothing more."""
        role = iam.Role(
            self,
            "SmokeTestTriggerRole",
            role_name=smoke_test_trigger_role_name(settings),
            description="Lets the deployment pipeline start the smoke test and wait for its result",
            assumed_by=iam.AccountPrincipal(pipeline_account or self.account),
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["codebuild:StartBuild", "codebuild:BatchGetBuilds"], resources=[self.smoke_test.project_arn]
            )
        )


def smoke_test_project_name(settings: StageSettings) -> str:
    return f"{settings.cluster.name}-smoke-test"


def smoke_test_trigger_role_name(settings: StageSettings) -> str:
    return f"{settings.cluster.name}-smoke-test-trigger"


def preload_command(model: ModelSettings) -> str:
    job = preload_job_name(model.name)
    return (
        f"kubectl -n {model.name} create job {job}-$(date +%s) --from=cronjob/{job} && "
        f"kubectl -n {model.name} get jobs -l job-name -w"
    )


def port_forward_command(model: ModelSettings) -> str:
    return f"kubectl -n {model.name} port-forward service/{model.service_name} {PORT}:{PORT}"


def test_request_command(model: ModelSettings) -> str:
    return (
        f"curl -s http://localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(chat_request(model.model))}' | jq -r '.choices[0].message.content'"
    )
