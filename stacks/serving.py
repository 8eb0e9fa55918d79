"""What a stage's models share on the cluster, applied as cdk8s charts and a Helm release; and the smoke test."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cdk8s
from aws_cdk import Duration, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from charts import stage_charts
from charts.vllm_server import SMOKE_TEST_GROUP
from settings import names
from settings.cold_start import smoke_test_wait_seconds
from settings.schema import ModelSettings, StageSettings
from stacks.metrics import ManagedPrometheus
from stacks.model_store import LUSTRE_PORTS
from stacks.observability import PrometheusDataSource, StageAlarms, stage_dashboard
from stacks.pod_identity import pod_identity
from stacks.references import StageResources, optional_feature, refer_strongly, secret_arn
from workloads.smoke_test import LOAD_BALANCER_WAIT_SECONDS

# KEDA 2.20.2's Helm chart, vendored from kedacore/charts (charts/vendor/keda/VENDORED.md); its
# operator's service account, which the chart names keda-operator in the release's namespace.
KEDA_CHART = Path(__file__).resolve().parent.parent / "charts" / "vendor" / "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"
# workloads/smoke_test.py, shipped alone to the smoke test project as a (zipped) asset.
WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
SMOKE_TEST_FILE = "smoke_test.py"


class ServingStack(Stack):
    """What a stage's models share, applied to the cluster: the GPU pools, their rotation, the network policy
    controller and KEDA; the dashboard and alarms; the Lustre rules between the nodes and the file system; the smoke
    test. Each model has a stack of its own (stacks/model_serving.py), which depends on this one.

    The cluster is imported by name, so the manifests live in this stack's template: a new pool changes this stack,
    never the cluster's. The Lustre rules live here too, so neither the cluster nor the model store depends on the
    other.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: StageSettings,
        resources: StageResources,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        refer_strongly(self)
        self._settings, self._resources = settings, resources
        target = resources.cluster_in(self)
        for chart_id, chart in stage_charts(cdk8s.App(), settings, resources.deployed(settings)).items():
            if getattr(chart, "applies_over_existing", False):
                # A chart whose objects may already exist is applied (`kubectl apply`), not created.
                eks.KubernetesManifest(self, chart_id, cluster=target, manifest=chart.to_json(), overwrite=True)
            else:
                target.add_cdk8s_chart(chart_id, chart)
        prometheus = resources.prometheus
        self.keda: eks.HelmChart | None = None
        if settings.keda:
            assert prometheus is not None  # KEDA runs where metrics do
            self.keda = self._keda(target, resources.cluster, prometheus)
        if settings.observability.enabled:
            # settings: observability reads the Prometheus workspace
            assert prometheus is not None
            query_url = resources.query_url(settings.region)
            assert query_url is not None
            source = PrometheusDataSource(
                self,
                "PrometheusDataSource",
                settings=settings,
                workspace_arn=optional_feature(prometheus.workspace.attr_arn),
                query_url=query_url,
            )
            stage_dashboard(self, settings, source, StageAlarms(self, "Alarms", settings=settings, source=source))
        self._lustre_between(
            resources.file_system_security_group.security_group_id, resources.cluster.cluster_security_group_id
        )

    def add_smoke_test(self, import_jobs: Mapping[str, str | None], pipeline_account: str | None) -> None:
        """The smoke test of every model (`import_jobs`: each model's import Job, if it has one), and the role the
        pipeline's account may assume to start it."""
        self.smoke_test = self._smoke_test_project(self._settings, self._resources, import_jobs)
        self._smoke_test_trigger(self._settings, pipeline_account)

    def _keda(self, target: eks.ICluster, cluster: eks.Cluster, prometheus: ManagedPrometheus) -> eks.HelmChart:
        """KEDA from its chart in the repository (charts/vendor/keda, no download at deploy), with the AWS
        identity its operator signs Prometheus queries with: read access to the workspace, through EKS
        Pod Identity.

        The association comes first: Pod Identity gives credentials to pods created after it.
        """
        identity = pod_identity(
            self,
            "KedaOperator",
            cluster_name=cluster.cluster_name,
            namespace=names.KEDA_NAMESPACE,
            service_account=KEDA_SERVICE_ACCOUNT,
            description="KEDA's operator reads vLLM's queue from Amazon Managed Service for Prometheus",
            statements=[
                iam.PolicyStatement(
                    actions=["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata"],
                    resources=[optional_feature(prometheus.workspace.attr_arn)],
                )
            ],
        )
        keda = eks.HelmChart(
            self,
            "Keda",
            cluster=target,
            chart_asset=s3_assets.Asset(self, "KedaChart", path=str(KEDA_CHART)),
            release="keda",
            namespace=names.KEDA_NAMESPACE,
            create_namespace=True,
            wait=True,
            timeout=Duration.minutes(10),
        )
        keda.node.add_dependency(identity)
        return keda

    def _lustre_between(self, file_system_group_id: str, node_group_id: str) -> None:
        """Lustre traffic between the file system and the nodes (which carry the cluster security group), both ways.

        Clients connect to the servers, and the servers open connections back to the clients
        (callbacks, recovery), so each side admits the other on the Lustre ports and may reach
        it: the rules the FSx for Lustre User Guide gives for the file system's and the clients'
        security groups ("File system access control with Amazon VPC").
        """
        # Logical ids stay as first deployed: a renamed rule would be created while its twin still
        # exists, and EC2 refuses duplicate rules.
        sides = (
            ("LustreFromNodes", "LustreToNodes", file_system_group_id, node_group_id, "the cluster's nodes"),
            ("LustreFromFileSystem", "LustreToFileSystem", node_group_id, file_system_group_id, "the file system"),
        )
        for index, port in enumerate(LUSTRE_PORTS):
            ports = port.to_rule_json()
            for ingress_id, egress_id, group, peer, other in sides:
                ec2.CfnSecurityGroupIngress(
                    self,
                    f"{ingress_id}{index}",
                    group_id=group,
                    source_security_group_id=peer,
                    ip_protocol="tcp",
                    from_port=ports["fromPort"],
                    to_port=ports["toPort"],
                    description=f"Lustre from {other}",
                )
                ec2.CfnSecurityGroupEgress(
                    self,
                    f"{egress_id}{index}",
                    group_id=group,
                    destination_security_group_id=peer,
                    ip_protocol="tcp",
                    from_port=ports["fromPort"],
                    to_port=ports["toPort"],
                    description=f"Lustre to {other}",
                )

    def _smoke_test_project(
        self, settings: StageSettings, resources: StageResources, import_jobs: Mapping[str, str | None]
    ) -> codebuild.Project:
        """The post-deploy check: inside the VPC, as a role the cluster admits only to watch and port-forward.

        It runs workloads/smoke_test.py (shipped as an asset) for every model: wait for the rollout,
        then send the test prompt through the Service. Start it with
        `aws codebuild start-build --project-name <cluster name>-smoke-test`; the pipeline does after each deploy.
        """
        cluster, vpc = resources.cluster, resources.vpc
        role = iam.Role(
            self,
            "SmokeTestRole",
            description="Post-deploy smoke test: watches model rollouts and sends one test prompt",
            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
        )
        role.add_to_policy(iam.PolicyStatement(actions=["eks:DescribeCluster"], resources=[cluster.cluster_arn]))
        keys = [secret_arn(settings, model.api_keys_secret) for model in settings.models if model.api_keys_secret]
        if keys:
            # It asks with a key, as clients do.
            role.add_to_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=keys))
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
        checks = [smoke_test_command(settings, model, import_jobs[model.name]) for model in settings.models]
        script = s3_assets.Asset(self, "SmokeTestScript", path=str(WORKLOADS_DIR), exclude=["*", f"!{SMOKE_TEST_FILE}"])
        return codebuild.Project(
            self,
            "SmokeTest",
            project_name=names.smoke_test_project_name(settings.cluster.name),
            description="Sends the walkthrough's test prompt to every model after a deployment",
            source=codebuild.Source.s3(bucket=script.bucket, path=script.s3_object_key),
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
            timeout=smoke_test_timeout(settings),
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
            role_name=names.smoke_test_trigger_role_name(settings.cluster.name),
            description="Lets the deployment pipeline start the smoke test and wait for its result",
            assumed_by=iam.AccountPrincipal(pipeline_account or self.account),
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["codebuild:StartBuild", "codebuild:BatchGetBuilds"], resources=[self.smoke_test.project_arn]
            )
        )


def smoke_test_command(settings: StageSettings, model: ModelSettings, import_job: str | None) -> str:
    """How the smoke test project checks one model (workloads/smoke_test.py); `import_job`: its chart's, if any."""
    return (
        f"python3 {SMOKE_TEST_FILE} --namespace {model.name} --service {model.service_name} "
        f"--deployment {model.name} --model {model.model} "
        f"--rollout-timeout {smoke_test_wait_seconds(settings, model)}"
        + (f" --import-job {import_job}" if import_job else "")
        + (f" --api-key-secret {model.api_keys_secret}" if model.api_keys_secret else "")
        + (f" --ingress {model.name} --hostname {model.exposure.hostname}" if model.exposure else "")
    )


def smoke_test_timeout(settings: StageSettings) -> Duration:
    """The smoke test waits for each model in turn (and for an exposed one, its load balancer), then asks it: the
    longest waits, and ten minutes to spare."""
    waits = sum(
        smoke_test_wait_seconds(settings, model) + (LOAD_BALANCER_WAIT_SECONDS if model.exposure else 0)
        for model in settings.models
    )
    return Duration.minutes(math.ceil(waits / 60) + 10)
