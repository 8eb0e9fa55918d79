"""What runs on the cluster: the GPU NodePool and one vLLM server per model, applied as cdk8s charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cdk8s
from aws_cdk import Aws, CfnOutput, Duration, ReferenceStrength, Stack, Token
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from charts import DeployedResources, build_charts, feature_chart_id
from charts.api_keys import SERVICE_ACCOUNT as API_KEYS_SERVICE_ACCOUNT
from charts.model_loader import COMPLETION_MARKER, IMPORT_SERVICE_ACCOUNT, has_import_job, import_folders, job_name_in
from charts.vllm_server import PORT, SMOKE_TEST_GROUP
from settings import names
from settings.cold_start import smoke_test_wait_seconds
from settings.schema import ModelSettings, StageSettings
from stacks.metrics import ManagedPrometheus, workspace_query_url
from stacks.model_store import LUSTRE_PORTS
from stacks.observability import PrometheusDataSource, StageAlarms, stage_dashboard
from stacks.pod_identity import pod_identity_role
from stacks.replica_count import ReplicaCountHandover
from stacks.web_acl import rate_limited_web_acl
from workloads.smoke_test import LOAD_BALANCER_WAIT_SECONDS, chat_request

# KEDA 2.20.2's Helm chart, vendored from kedacore/charts (charts/vendor/keda/VENDORED.md); its
# operator's service account, which the chart names keda-operator in the release's namespace.
KEDA_CHART = Path(__file__).resolve().parent.parent / "charts" / "vendor" / "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"
# workloads/smoke_test.py, shipped alone to the smoke test project as a (zipped) asset.
WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
SMOKE_TEST_FILE = "smoke_test.py"
# The feature flag that sets how a stack refers to values of other stacks (read from the consumer).
CROSS_STACK_REFERENCES = "@aws-cdk/core:defaultCrossStackReferences"


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
        inbound_subnets: list[ec2.ISubnet],
        file_system: fsx.LustreFileSystem,
        bucket: s3.IBucket,
        bucket_arn: str,
        file_system_security_group: ec2.ISecurityGroup,
        prometheus: ManagedPrometheus | None = None,
        pipeline_account: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        # Strong references (Fn::ImportValue) to the cluster, the file system and the network, where
        # the rest of the app uses weak ones (Fn::GetStackOutput). With a weak reference, a replaced
        # cluster or file system leaves this template unchanged, so the next deploy skips it and
        # its manifests keep the old ids ("consuming stacks may temporarily reference a nonexistent
        # resource until they are updated as well": aws-cdk-lib README, "Cross-stack references").
        # A strong one makes CloudFormation refuse to replace what this stack still uses: the
        # replacement stops with an error naming this stack, before anything is removed.
        self.node.set_context(CROSS_STACK_REFERENCES, "strong")
        # The values only an optional feature uses (metrics' workspace, exposure's inbound subnets) are read weakly
        # (Fn::GetStackOutput), their exports kept (ReferenceStrength.BOTH): turning the feature off then drops the
        # export in the same deploy, which nothing imports, where a strong reference would stop the producer's
        # update (aws-cdk-lib README, "The deadly embrace").
        inbound_subnet_ids = tuple(optional_feature(subnet.subnet_id) for subnet in inbound_subnets)
        inbound_cidrs = tuple(optional_feature(subnet.ipv4_cidr_block) for subnet in inbound_subnets)
        query_url = (
            workspace_query_url(self.region, optional_feature(prometheus.workspace.attr_workspace_id))
            if prometheus is not None
            else None
        )
        target = eks.Cluster.from_cluster_attributes(
            self, "Cluster", cluster_name=cluster.cluster_name, kubectl_provider=cluster.kubectl_provider
        )
        deployed = DeployedResources(
            account=settings.account or Aws.ACCOUNT_ID,
            node_role_name=node_role.role_name,
            subnet_ids=tuple(subnet.subnet_id for subnet in vpc.private_subnets),
            inbound_subnet_ids=inbound_subnet_ids,
            inbound_cidrs=inbound_cidrs,
            cluster_security_group_id=cluster.cluster_security_group_id,
            file_system_id=file_system.file_system_id,
            file_system_dns_name=file_system.dns_name,
            file_system_mount_name=file_system.mount_name,
            bucket_name=bucket.bucket_name,
            prometheus_query_url=query_url,
            web_acl_arns={
                model.name: rate_limited_web_acl(self, model).attr_arn for model in settings.models if model.exposure
            },
        )
        charts = build_charts(cdk8s.App(), settings, deployed)
        manifests = {
            chart_id: (
                # A chart whose objects may already exist is applied (`kubectl apply`), not created.
                eks.KubernetesManifest(self, chart_id, cluster=target, manifest=chart.to_json(), overwrite=True)
                if getattr(chart, "applies_over_existing", False)
                else target.add_cdk8s_chart(chart_id, chart)
            )
            for chart_id, chart in charts.items()
        }
        for model in settings.models:
            # The replica count passes to the autoscaler (and back) without a reset (stacks/replica_count.py).
            ReplicaCountHandover(
                self,
                f"{names.output_id(model.name)}ReplicaCount",
                cluster=target,
                manifest=manifests[f"Model-{model.name}"],
                objects=charts[f"Model-{model.name}"].to_json(),
                deployment_name=model.name,
                namespace=model.name,
            )
        for model in settings.models:
            for feature in ("api-keys", "autoscaler", "exposure"):
                if (chart_id := feature_chart_id(feature, model.name)) in manifests:
                    # Into the model's namespace; and removed before it, as CloudFormation deletes in reverse order.
                    manifests[chart_id].node.add_dependency(manifests[f"Model-{model.name}"])
        scaled = [model for model in settings.models if model.autoscaling is not None]
        if scaled:
            assert prometheus is not None  # settings: autoscaling needs metrics
            keda = self._keda(target, cluster, prometheus)
            for model in scaled:
                # A ScaledObject needs KEDA's resource definitions, and KEDA to remove its finalizer when it goes.
                manifests[feature_chart_id("autoscaler", model.name)].node.add_dependency(keda)

        if settings.observability.enabled:
            # settings: observability reads the Prometheus workspace
            assert prometheus is not None
            assert query_url is not None
            source = PrometheusDataSource(
                self,
                "PrometheusDataSource",
                settings=settings,
                workspace_arn=optional_feature(prometheus.workspace.attr_arn),
                query_url=query_url,
            )
            stage_dashboard(self, settings, source, StageAlarms(self, "Alarms", settings=settings, source=source))

        self._lustre_between(file_system_security_group.security_group_id, cluster.cluster_security_group_id)
        for model in settings.models:
            identities = []
            if has_import_job(model):
                identities.append(self._weights_import_identity(settings, model, cluster, bucket_arn))
            if model.api_keys_secret:
                identities.append(self._api_keys_identity(settings, model, model.api_keys_secret, cluster))
            # EKS Pod Identity gives credentials only to pods created after their association (EKS User
            # Guide, "Assign an IAM role to a Kubernetes service account"): the import Job's pod and the
            # replicas, which the model's chart creates, come after their associations.
            for identity in identities:
                manifests[f"Model-{model.name}"].node.add_dependency(identity)

        import_jobs = {model.name: job_name_in(charts[f"Model-{model.name}"].to_json()) for model in settings.models}
        self.smoke_test = self._smoke_test_project(settings, cluster, vpc, import_jobs)
        self._smoke_test_trigger(settings, pipeline_account)

        for model in settings.models:
            output_id = names.output_id(model.name)
            CfnOutput(
                self,
                f"{output_id}PortForwardCommand",
                description=f"Forwards localhost:{PORT} to {model.model} (leave it running)",
                value=port_forward_command(model),
            )
            CfnOutput(
                self,
                f"{output_id}WeightsCommand",
                description=f"Shows where {model.model}'s weights are: the import's status and log, or what to upload",
                value=weights_command(model, import_jobs[model.name]),
            )
            CfnOutput(
                self,
                f"{output_id}TestRequestCommand",
                description=f"Sends the test prompt to {model.model} through the port-forward",
                value=test_request_command(model),
            )

    def _keda(self, target: eks.ICluster, cluster: eks.Cluster, prometheus: ManagedPrometheus) -> eks.HelmChart:
        """KEDA from its chart in the repository (charts/vendor/keda, no download at deploy), with the AWS
        identity its operator signs Prometheus queries with: read access to the workspace, through EKS
        Pod Identity.

        The association comes first: Pod Identity gives credentials to pods created after it.
        """
        identity = self._pod_identity(
            "KedaOperator",
            cluster,
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

    def _api_keys_identity(
        self, settings: StageSettings, model: ModelSettings, secret: str, cluster: eks.Cluster
    ) -> eks.CfnPodIdentityAssociation:
        """The replicas' read access to their API keys secret (charts/api_keys.py)."""
        return self._pod_identity(
            f"{names.output_id(model.name)}ApiKeys",
            cluster,
            namespace=model.name,
            service_account=API_KEYS_SERVICE_ACCOUNT,
            description=f"Reads {model.model}'s API keys",
            statements=[
                iam.PolicyStatement(
                    # DescribeSecret: the provider checks the version before it reads (secrets_manager_provider.go).
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                    resources=[secret_arn(settings, secret)],
                )
            ],
        )

    def _pod_identity(
        self,
        id_prefix: str,
        cluster: eks.Cluster,
        *,
        namespace: str,
        service_account: str,
        description: str,
        statements: list[iam.PolicyStatement],
    ) -> eks.CfnPodIdentityAssociation:
        """A role for one service account's pods, through EKS Pod Identity, allowed `statements` only.

        An association (CfnPodIdentityAssociation) rather than the aws_eks_v2 ServiceAccount, which
        would also install the Pod Identity agent add-on that Auto Mode already runs (aws-cdk#32580).
        """
        role = pod_identity_role(
            self,
            f"{id_prefix}Role",
            description=f"{description} (service account {service_account} in namespace {namespace})",
            statements=statements,
        )
        return eks.CfnPodIdentityAssociation(
            self,
            f"{id_prefix}Identity",
            cluster_name=cluster.cluster_name,
            namespace=namespace,
            service_account=service_account,
            role_arn=role.role_arn,
        )

    def _weights_import_identity(
        self, settings: StageSettings, model: ModelSettings, cluster: eks.Cluster, bucket_arn: str
    ) -> eks.CfnPodIdentityAssociation:
        """AWS access for a model's import Job: its folders of the bucket, its token."""
        folders = import_folders(model)
        statements = [
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[f"{bucket_arn}/{folder}" for folder in folders],
            ),
            iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[bucket_arn], conditions={"StringLike": {"s3:prefix": folders}}
            ),
        ]
        if model.hf_token_secret:
            statements.append(
                iam.PolicyStatement(
                    actions=["secretsmanager:GetSecretValue"], resources=[secret_arn(settings, model.hf_token_secret)]
                )
            )
        return self._pod_identity(
            f"{names.output_id(model.name)}Import",
            cluster,
            namespace=model.name,
            service_account=IMPORT_SERVICE_ACCOUNT,
            description=f"Imports {model.model} into the model store",
            statements=statements,
        )

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
        self, settings: StageSettings, cluster: eks.Cluster, vpc: ec2.IVpc, import_jobs: dict[str, str | None]
    ) -> codebuild.Project:
        """The post-deploy check: inside the VPC, as a role the cluster admits only to watch and port-forward.

        It runs workloads/smoke_test.py (shipped as an asset) for every model: wait for the rollout,
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


def optional_feature(value: str) -> str:
    """Another stack's value that an optional feature of this one uses, read weakly with its export kept (a value
    known at synth, such as a subnet's range, is no reference and stays as it is)."""
    return Stack.consume_reference(value, ReferenceStrength.BOTH) if Token.is_unresolved(value) else value


def secret_arn(settings: StageSettings, name: str) -> str:
    """A secret of the stage's account and region, by name.

    Secrets Manager appends a hyphen and six random characters to a secret's name in its ARN; a
    policy names the secret with `-??????` (Secrets Manager User Guide, "Permissions policy
    examples": secret names in ARNs).
    """
    return f"arn:{Aws.PARTITION}:secretsmanager:{settings.region}:{Aws.ACCOUNT_ID}:secret:{name}-??????"


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


def weights_command(model: ModelSettings, job: str | None) -> str:
    """How to watch a model's weights arrive: the import Job's status and log, or where to upload them."""
    if not model.imported or job is None:
        return (
            f"aws s3 sync <weights folder> s3://<model bucket>/{model.weights_path}/ && "
            f"echo '{{}}' | aws s3 cp - s3://<model bucket>/{model.weights_path}/{COMPLETION_MARKER}"
        )
    return f"kubectl -n {model.name} get job {job} && kubectl -n {model.name} logs -f job/{job}"


def port_forward_command(model: ModelSettings) -> str:
    return f"kubectl -n {model.name} port-forward service/{model.service_name} {PORT}:{PORT}"


def test_request_command(model: ModelSettings) -> str:
    key = (
        '-H "Authorization: Bearer $(aws secretsmanager get-secret-value --secret-id '
        f'{model.api_keys_secret} --query SecretString --output text | jq -r \'."api-key"[0]\')" '
        if model.api_keys_secret
        else ""
    )
    return (
        f"curl -s http://localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' {key}"
        f"-d '{json.dumps(chat_request(model.model))}' "
        # gpt-oss may answer in its reasoning only when the token budget runs out.
        "| jq -r '.choices[0] | .finish_reason, (.message | .content // .reasoning_content // .reasoning)'"
    )
