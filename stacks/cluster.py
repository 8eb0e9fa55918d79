"""The EKS Auto Mode cluster: control plane, built-in node pools, access and the kubectl handler."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk.lambda_layer_kubectl_v34 import KubectlV34Layer
from aws_cdk.lambda_layer_kubectl_v35 import KubectlV35Layer
from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer
from constructs import Construct

from charts.gpu_node_pool import GPU_TAINT
from settings import names
from settings.names import CLOUDWATCH_ADDON, FSX_CSI_ADDON, SECRETS_STORE_ADDON
from settings.schema import ClusterSettings, MetricsSettings, ObservabilitySettings
from stacks.log_group import service_log_group
from stacks.metrics import ManagedPrometheus
from stacks.pod_identity import pod_identity_role

# kubectl must match the cluster's minor version; one layer per settings.schema.SUPPORTED_KUBERNETES_VERSIONS.
KUBECTL_LAYERS = {"1.34": KubectlV34Layer, "1.35": KubectlV35Layer, "1.36": KubectlV36Layer}

ENDPOINT_ACCESS = {
    "public": eks.EndpointAccess.PUBLIC,
    "private": eks.EndpointAccess.PRIVATE,
    "public_and_private": eks.EndpointAccess.PUBLIC_AND_PRIVATE,
}

CLUSTER_ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"
# What the EKS Auto Mode documentation gives the node role, nothing broader.
NODE_ROLE_POLICIES = ("AmazonEKSWorkerNodeMinimalPolicy", "AmazonEC2ContainerRegistryPullOnly")
# The FSx CSI driver's controller runs under this service account (the add-on's default: the
# driver's Helm chart, charts/aws-fsx-csi-driver/values.yaml, controller.serviceAccount.name).
FSX_CSI_SERVICE_ACCOUNT = "fsx-csi-controller-sa"


# The GPU nodes' taint (charts/gpu_node_pool.py), as a toleration.
GPU_TAINT_TOLERATION = {"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}
# The CloudWatch agent's service account (CloudWatch User Guide, "Install the CloudWatch agent with the Amazon
# CloudWatch Observability EKS add-on").
CLOUDWATCH_AGENT_SERVICE_ACCOUNT = "cloudwatch-agent"


class ClusterStack(Stack):
    """An EKS Auto Mode cluster with the built-in system and general-purpose pools.

    GPU capacity is not here: the GPU NodePool is a chart the serving stack applies, so
    changing it never touches this template.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        cluster: ClusterSettings,
        inbound_subnets: list[ec2.ISubnet],
        metrics: MetricsSettings,
        observability: ObservabilitySettings,
        image_cache_prefixes: tuple[str, ...],
        container_logs: bool = False,
        secrets_store: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self._addon_versions = cluster.addon_versions
        self.node_role = self._node_role(image_cache_prefixes)
        self.cluster = self._cluster(vpc, cluster)

        for principal_arn in cluster.admin_principal_arns:
            self.cluster.grant_access(
                _access_entry_id(principal_arn),
                principal_arn,
                [
                    eks.AccessPolicy.from_access_policy_name(
                        CLUSTER_ADMIN_POLICY, access_scope_type=eks.AccessScopeType.CLUSTER
                    )
                ],
            )

        self._fsx_csi_driver()

        if secrets_store:
            # The AWS provider for the Secrets Store CSI driver, with the driver (charts/api_keys.py). It
            # needs no role of its own: each pod reads its secrets as its own service account.
            # The provider's DaemonSet tolerates nothing by default (its chart's values.yaml: tolerations: []),
            # so without this it never runs on the GPU nodes, and a replica's mount fails there. The driver's
            # own DaemonSet tolerates every taint already.
            self._addon(
                "SecretsStoreCsiProvider", SECRETS_STORE_ADDON, configuration={"tolerations": [GPU_TAINT_TOLERATION]}
            )

        # vLLM's metrics in Amazon Managed Service for Prometheus (stacks/metrics.py), when the stage asks.
        self.prometheus = (
            ManagedPrometheus(
                self,
                "Prometheus",
                metrics=metrics,
                cluster_arn=self.cluster.cluster_arn,
                # The scraper reaches the pods from subnets no pod lives in (stacks/network.py).
                subnets=inbound_subnets,
                security_group_id=self.cluster.cluster_security_group_id,
                region=self.region,
                alias=cluster.name,
                route_alerts=not observability.enabled,
            )
            if metrics.enabled
            else None
        )

        if observability.enabled or container_logs:
            self._cloudwatch_observability(cluster, insights=observability.enabled, container_logs=container_logs)

        CfnOutput(
            self,
            "UpdateKubeconfigCommand",
            description="Points kubectl at this cluster (as one of the cluster's admin principals)",
            value=f"aws eks update-kubeconfig --region {self.region} --name {cluster.name}",
        )

    def _cluster(self, vpc: ec2.IVpc, cluster: ClusterSettings) -> eks.Cluster:
        """The Auto Mode cluster: its logs in a group with a retention, its secrets under a key of its own, no admin
        but those the settings name, and the kubectl handler of its Kubernetes version."""
        # Created (or adopted) before the cluster so the control plane logs land in a group with a
        # retention, instead of the never-expiring one EKS would create.
        control_plane_logs = service_log_group(
            self,
            "ControlPlaneLogRetention",
            name=names.control_plane_log_group(cluster.name),
            retention_days=cluster.log_retention_days,
        )
        secrets_key = kms.Key(
            self,
            "SecretsKey",
            description=f"Envelope encryption of Kubernetes secrets in EKS cluster {cluster.name}",
            enable_key_rotation=True,
        )
        created = eks.Cluster(
            self,
            "Cluster",
            cluster_name=cluster.name,
            version=eks.KubernetesVersion.of(cluster.kubernetes_version),
            vpc=vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            default_capacity_type=eks.DefaultCapacityType.AUTOMODE,
            # Auto Mode creates the node role's access entry; custom NodeClasses reuse this role.
            compute=eks.ComputeConfig(node_pools=["system", "general-purpose"], node_role=self.node_role),
            endpoint_access=_endpoint_access(cluster),
            cluster_logging=[
                eks.ClusterLoggingTypes.API,
                eks.ClusterLoggingTypes.AUDIT,
                eks.ClusterLoggingTypes.AUTHENTICATOR,
                eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
                eks.ClusterLoggingTypes.SCHEDULER,
            ],
            secrets_encryption_key=secrets_key,
            # Admins come from settings through access entries, not from whoever ran CloudFormation.
            bootstrap_cluster_creator_admin_permissions=False,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KUBECTL_LAYERS[cluster.kubernetes_version](self, "KubectlLayer"),
            ),
        )
        cast(eks.CfnCluster, created.node.default_child).node.add_dependency(control_plane_logs)
        return created

    def _node_role(self, image_cache_prefixes: tuple[str, ...]) -> iam.Role:
        """The role of every Auto Mode node, allowed the two extra calls a first pull through the cache makes."""
        role = iam.Role(
            self,
            "NodeRole",
            description="EKS Auto Mode nodes",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(name) for name in NODE_ROLE_POLICIES],
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="FirstPullThroughCache",
                actions=["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"],
                resources=[
                    f"arn:{Aws.PARTITION}:ecr:{self.region}:{Aws.ACCOUNT_ID}:repository/{prefix}/*"
                    for prefix in image_cache_prefixes
                ],
            )
        )
        return role

    def _fsx_csi_driver(self) -> None:
        """The FSx for Lustre CSI driver, authenticated with EKS Pod Identity (Auto Mode runs its agent)."""
        role = pod_identity_role(
            self,
            "FsxCsiDriverRole",
            description="FSx for Lustre CSI driver controller (static volumes only)",
            # Static volumes need no create or delete: the controller only looks file systems up.
            statements=[
                iam.PolicyStatement(
                    actions=["fsx:DescribeFileSystems"],
                    resources=[f"arn:{Aws.PARTITION}:fsx:{self.region}:{Aws.ACCOUNT_ID}:file-system/*"],
                )
            ],
        )
        self._addon("FsxCsiDriver", FSX_CSI_ADDON, identity=(role, FSX_CSI_SERVICE_ACCOUNT))

    def _addon(
        self,
        id: str,
        name: names.EksAddon,
        *,
        configuration: dict[str, Any] | None = None,
        identity: tuple[iam.Role, str] | None = None,
    ) -> eks.Addon:
        """An EKS add-on, with its configuration values and the role its service account gets through Pod
        Identity: the L2 add-on has no property for either; the L1 does. Its version is the one
        cluster.addon_versions pins, or else the default EKS picks for the cluster's version when it creates it."""
        addon = eks.Addon(self, id, cluster=self.cluster, addon_name=name, addon_version=self._addon_versions.get(name))
        cfn_addon = cast(eks.CfnAddon, addon.node.default_child)
        if configuration is not None:
            cfn_addon.configuration_values = json.dumps(configuration)
        if identity is not None:
            role, service_account = identity
            cfn_addon.pod_identity_associations = [
                eks.CfnAddon.PodIdentityAssociationProperty(role_arn=role.role_arn, service_account=service_account)
            ]
        return addon

    def _cloudwatch_observability(self, cluster: ClusterSettings, *, insights: bool, container_logs: bool) -> None:
        """The Amazon CloudWatch Observability add-on, through EKS Pod Identity: with `insights`, Container Insights'
        pod, node and Deployment metrics (stacks/observability.py reads them); with `container_logs`, its Fluent
        Bit's copy of every container's log.

        Each log group it writes is created first, with the cluster's retention: Fluent Bit's own would never
        expire (its outputs set auto_create_group and no log_retention_days). Application Signals stays off: on by
        default, it would inject its auto-instrumentation into every workload behind a Service, vLLM's included
        (CloudWatch User Guide, "Enabling APM through Application Signals"; the chart's applicationSignals.enabled,
        and manager.applicationSignals.autoMonitor.monitorAllServices for add-on versions before it). So do its
        DCGM exporter, which conflicts with Auto Mode's node monitoring agent (aws/containers-roadmap#2555, #2763),
        and its Neuron monitor. The keys are the add-on chart's (aws-observability/helm-charts,
        charts/amazon-cloudwatch-observability/values.yaml). Its agent and Fluent Bit tolerate every taint by default
        (the same file's `tolerations`), so they run on the GPU nodes, as the cloudwatch-agent service account.
        """
        groups = names.cloudwatch_log_groups(cluster.name, insights=insights, container_logs=container_logs)
        retentions = [
            service_log_group(
                self,
                f"ContainerInsights{name.rsplit('/', 1)[-1].capitalize()}LogRetention",
                name=name,
                retention_days=cluster.log_retention_days,
            )
            for name in groups
        ]
        arns = [f"arn:{Aws.PARTITION}:logs:{self.region}:{Aws.ACCOUNT_ID}:log-group:{name}" for name in groups]
        role = pod_identity_role(
            self,
            "CloudWatchAgentRole",
            description="The CloudWatch agent's and Fluent Bit's records (service account "
            f"{CLOUDWATCH_AGENT_SERVICE_ACCOUNT} in namespace {names.CLOUDWATCH_NAMESPACE})",
            statements=[
                # The part of CloudWatchAgentServerPolicy that Container Insights and Fluent Bit use, narrowed to
                # their log groups; CreateLogGroup as Fluent Bit's auto_create_group asks for it on a group that
                # exists already.
                iam.PolicyStatement(
                    actions=[
                        "logs:CreateLogGroup",
                        "logs:CreateLogStream",
                        "logs:PutLogEvents",
                        "logs:DescribeLogStreams",
                    ],
                    resources=[*arns, *(f"{arn}:log-stream:*" for arn in arns)],
                ),
                # Node volumes and instance tags; the EC2 API lets no policy narrow these to a resource.
                iam.PolicyStatement(actions=["ec2:DescribeVolumes", "ec2:DescribeTags"], resources=["*"]),
            ],
        )
        addon = self._addon(
            "CloudWatchObservability",
            CLOUDWATCH_ADDON,
            configuration={
                "containerInsights": {"enabled": insights},
                "containerLogs": {"enabled": container_logs},
                "applicationSignals": {"enabled": False},
                "manager": {"applicationSignals": {"autoMonitor": {"monitorAllServices": False}}},
                "dcgmExporter": {"enabled": False},
                "neuronMonitor": {"enabled": False},
            },
            identity=(role, CLOUDWATCH_AGENT_SERVICE_ACCOUNT),
        )
        for retention in retentions:
            addon.node.add_dependency(retention)


def _endpoint_access(cluster: ClusterSettings) -> eks.EndpointAccess:
    access = ENDPOINT_ACCESS[cluster.endpoint_access]
    cidrs = [str(cidr) for cidr in cluster.public_access_cidrs]
    if cluster.endpoint_access == "private" or cidrs == ["0.0.0.0/0"]:
        return access
    return access.only_from(*cidrs)


def _access_entry_id(principal_arn: str) -> str:
    """A construct id that follows the principal, not its place in the list (reordering replaces nothing)."""
    account = principal_arn.split(":")[4]
    name = principal_arn.rsplit("/", 1)[-1]
    return "Admin" + re.sub(r"[^A-Za-z0-9]", "", account + name)
