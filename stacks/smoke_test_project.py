"""The post-deploy smoke test: a CodeBuild project in the stage's VPC that asks every model (or one) a real question.

The project is the stage's and names no model: each model's stack stores its own check (workloads/smoke_test.py's
arguments for it) as an SSM parameter under /<cluster>/smoke-test, and lets the project's role read its API keys; the
project runs the checks it finds there. So a model added or removed changes its own stack only. Start it with

    aws codebuild start-build --project-name <cluster>-smoke-test \\
        [--environment-variables-override name=MODEL,value=<model>]

as each model stack's SmokeTestCommand output spells out; the pipeline does after each stage's deploy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from charts.gateway import NAME as GATEWAY_NAME
from charts.gateway import NAMESPACE as GATEWAY_NAMESPACE
from charts.smoke_test_access import SMOKE_TEST_GROUP
from settings import names
from settings.cold_start import smoke_test_wait_seconds
from settings.schema import GatewaySettings, ModelSettings, StageSettings
from stacks.references import StageResources, secret_arn
from workloads.smoke_test import LOAD_BALANCER_WAIT_SECONDS

# workloads/smoke_test.py, shipped alone to the smoke test project as a (zipped) asset.
WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
SMOKE_TEST_FILE = "smoke_test.py"
# The project's own limit, whatever the models: each check bounds itself by its model's waits (smoke_test_args), and
# the pipeline starts a build with the stage's total (smoke_test_timeout).
PROJECT_TIMEOUT = Duration.hours(8)


def add_smoke_test(
    stack: Stack, settings: StageSettings, resources: StageResources, pipeline_account: str | None
) -> codebuild.Project:
    """The project, its role (admitted to the cluster only to watch and port-forward), and the role the pipeline's
    account may assume to start it, in the serving stack. Built at the stack's top level, under the ids they have had
    there, so that the project and the trigger role, whose names are fixed, are updated in place, never replaced."""
    cluster, checks = resources.cluster, names.smoke_test_checks_path(settings.cluster.name)
    role = iam.Role(
        stack,
        "SmokeTestRole",
        role_name=names.smoke_test_role_name(settings.cluster.name),
        description="Post-deploy smoke test: watches model rollouts and sends one test prompt",
        assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
    )
    role.add_to_policy(iam.PolicyStatement(actions=["eks:DescribeCluster"], resources=[cluster.cluster_arn]))
    parameters = f"arn:{Aws.PARTITION}:ssm:{settings.region}:{Aws.ACCOUNT_ID}:parameter{checks}"
    # The checks the models' stacks store; each of those stacks lets the role read its model's API keys.
    role.add_to_policy(
        iam.PolicyStatement(actions=["ssm:GetParametersByPath"], resources=[parameters, f"{parameters}/*"])
    )
    # No access policy: the group gets exactly the namespaced RBAC rules the charts define.
    eks.CfnAccessEntry(
        stack,
        "SmokeTestAccess",
        cluster_name=cluster.cluster_name,
        principal_arn=role.role_arn,
        kubernetes_groups=[SMOKE_TEST_GROUP],
        type="STANDARD",
    )
    project = smoke_test_project(stack, settings, resources, role, checks)
    trigger = iam.Role(
        stack,
        "SmokeTestTriggerRole",
        role_name=names.smoke_test_trigger_role_name(settings.cluster.name),
        description="Lets the deployment pipeline start the smoke test and wait for its result",
        assumed_by=iam.AccountPrincipal(pipeline_account or stack.account),
    )
    trigger.add_to_policy(
        iam.PolicyStatement(
            actions=["codebuild:StartBuild", "codebuild:BatchGetBuilds"], resources=[project.project_arn]
        )
    )
    return project


def smoke_test_project(
    stack: Stack, settings: StageSettings, resources: StageResources, role: iam.Role, checks: str
) -> codebuild.Project:
    """Inside the VPC, as a role the cluster admits only to watch and port-forward: every stored check, or the one of
    $MODEL."""
    kubectl_version = f"v{settings.cluster.kubernetes_version}.0"
    script = s3_assets.Asset(stack, "SmokeTestScript", path=str(WORKLOADS_DIR), exclude=["*", f"!{SMOKE_TEST_FILE}"])
    return codebuild.Project(
        stack,
        "SmokeTest",
        project_name=names.smoke_test_project_name(settings.cluster.name),
        description="Sends the walkthrough's test prompt to every model (or $MODEL) after a deployment",
        source=codebuild.Source.s3(bucket=script.bucket, path=script.s3_object_key),
        role=role,
        vpc=resources.vpc,
        subnet_selection=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        # The cluster's security group is what the private API endpoint admits.
        security_groups=[
            ec2.SecurityGroup.from_security_group_id(
                stack, "ClusterSecurityGroup", resources.cluster.cluster_security_group_id
            )
        ],
        environment=codebuild.BuildEnvironment(build_image=codebuild.LinuxBuildImage.STANDARD_7_0),
        # MODEL, unset here, is given by a start-build that checks one model.
        environment_variables={"CHECKS": codebuild.BuildEnvironmentVariable(value=checks)},
        encryption_key=kms.Key(
            stack, "SmokeTestKey", description="Encrypts the smoke test's build artifacts", enable_key_rotation=True
        ),
        timeout=PROJECT_TIMEOUT,
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
                            f'python3 {SMOKE_TEST_FILE} --checks-from "$CHECKS" --only "$MODEL"',
                        ]
                    },
                },
            }
        ),
    )


class ModelSmokeTest(Construct):
    """One model's part of the smoke test, in its stack: its check, stored where the project reads it, and the
    project's access to its API keys."""

    def __init__(
        self, scope: Construct, id: str, *, settings: StageSettings, model: ModelSettings, import_job: str | None
    ) -> None:
        super().__init__(scope, id)
        self.parameter = ssm.StringParameter(
            self,
            "Check",
            parameter_name=f"{names.smoke_test_checks_path(settings.cluster.name)}/{model.name}",
            description=f"The smoke test's arguments for {model.model} (workloads/smoke_test.py)",
            string_value=json.dumps(smoke_test_args(settings, model, import_job)),
        )
        if secret := model.api_keys_secret or (settings.routed.clients_secret if settings.routed else None):
            # It asks with a key, as clients do: the model's, or the gateway client's.
            iam.Policy(
                self,
                "Keys",
                # Named for the model: every model stack attaches one to the same role, and an inline policy's name is
                # its key there (IAM API Reference, PutRolePolicy "adds or updates"); CDK's default name is the
                # construct's path in its stack, the same in every model stack.
                policy_name=f"smoke-test-keys-{model.name}",
                roles=[iam.Role.from_role_name(self, "Role", names.smoke_test_role_name(settings.cluster.name))],
                statements=[
                    iam.PolicyStatement(
                        actions=["secretsmanager:GetSecretValue"],
                        resources=[secret_arn(settings, secret)],
                    )
                ],
            )


def smoke_test_args(settings: StageSettings, model: ModelSettings, import_job: str | None) -> list[str]:
    """workloads/smoke_test.py's arguments for one model; `import_job`: its chart's, if any."""
    return [
        *("--namespace", model.name, "--service", model.service_name, "--deployment", model.name),
        *("--model", model.model, "--rollout-timeout", str(smoke_test_wait_seconds(settings, model))),
        *("--vllm-version", model.profile.version),
        *(("--import-job", import_job) if import_job else ()),
        *(("--api-key-secret", model.api_keys_secret) if model.api_keys_secret else ()),
        *(("--ingress", model.name, "--hostname", model.exposure.hostname) if model.exposure else ()),
        *(gateway_args(settings.routed) if settings.routed else ()),
    ]


def gateway_args(gateway: GatewaySettings) -> list[str]:
    """Through the stage's gateway, with its smoke-test client's key (and through its load balancer, if it has one)."""
    endpoint = (
        ("--ingress", GATEWAY_NAME, "--ingress-namespace", GATEWAY_NAMESPACE, "--hostname", gateway.endpoint.hostname)
        if gateway.endpoint
        else ()
    )
    return [
        *("--gateway", f"{GATEWAY_NAMESPACE}/{GATEWAY_NAME}"),
        *("--clients-secret", gateway.clients_secret, "--client", gateway.smoke_test_client),
        *endpoint,
    ]


def longest_check_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long one model's check may wait: for its import and rollout, and for an exposed one, its load balancer."""
    behind_load_balancer = model.exposure or (settings.routed and settings.routed.endpoint)
    return smoke_test_wait_seconds(settings, model) + (LOAD_BALANCER_WAIT_SECONDS if behind_load_balancer else 0)


# StartBuild's timeoutInMinutesOverride: 5 to 2160 (CodeBuild API Reference).
MAX_BUILD_MINUTES = 2160


def smoke_test_timeout(settings: StageSettings, models: list[ModelSettings] | None = None) -> Duration:
    """The smoke test of a stage's models (all of them by default) waits for each in turn, then asks it: the longest
    waits, and ten minutes to spare, within what CodeBuild allows a build. The pipeline starts the stage's build
    with it."""
    waits = sum(longest_check_seconds(settings, model) for model in (settings.models if models is None else models))
    return Duration.minutes(min(math.ceil(waits / 60) + 10, MAX_BUILD_MINUTES))


def smoke_test_start_command(settings: StageSettings, model: ModelSettings) -> str:
    """How to smoke test one model by hand."""
    minutes = int(smoke_test_timeout(settings, [model]).to_minutes())
    return (
        f"aws codebuild start-build --region {settings.region} "
        f"--project-name {names.smoke_test_project_name(settings.cluster.name)} "
        f"--environment-variables-override name=MODEL,value={model.name} --timeout-in-minutes-override {minutes}"
    )
