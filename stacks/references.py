"""How the serving stacks refer to what other stacks and the account hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Aws, ReferenceStrength, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from charts import DeployedResources
from settings.schema import StageSettings
from stacks.metrics import ManagedPrometheus, workspace_query_url

# The feature flag that sets how a stack refers to values of other stacks (read from the consumer).
CROSS_STACK_REFERENCES = "@aws-cdk/core:defaultCrossStackReferences"


def refer_strongly(stack: Construct) -> None:
    """Strong references (Fn::ImportValue) from `stack` to the cluster, the file system and the network, where the
    rest of the app uses weak ones (Fn::GetStackOutput).

    With a weak reference, a replaced cluster or file system leaves the consumer's template unchanged, so the next
    deploy skips it and its manifests keep the old ids ("consuming stacks may temporarily reference a nonexistent
    resource until they are updated as well": aws-cdk-lib README, "Cross-stack references"). A strong one makes
    CloudFormation refuse to replace what the consumer still uses: the replacement stops with an error naming the
    consumer, before anything is removed.
    """
    stack.node.set_context(CROSS_STACK_REFERENCES, "strong")


def optional_feature(value: str) -> str:
    """Another stack's value that an optional feature uses (metrics' workspace, exposure's inbound subnets), read
    weakly with its export kept (ReferenceStrength.BOTH): turning the feature off then drops the export in the same
    deploy, which nothing imports, where a strong reference would stop the producer's update (aws-cdk-lib README,
    "The deadly embrace"). A value known at synth, such as a subnet's range, is no reference and stays as it is."""
    return Stack.consume_reference(value, ReferenceStrength.BOTH) if Token.is_unresolved(value) else value


def secret_arn(settings: StageSettings, name: str) -> str:
    """A secret of the stage's account and region, by name.

    Secrets Manager appends a hyphen and six random characters to a secret's name in its ARN; a policy names the
    secret with `-??????` (Secrets Manager User Guide, "Permissions policy examples": secret names in ARNs).
    """
    return f"arn:{Aws.PARTITION}:secretsmanager:{settings.region}:{Aws.ACCOUNT_ID}:secret:{name}-??????"


@dataclass(frozen=True)
class StageResources:
    """What the serving stacks use of the stage's other stacks."""

    cluster: eks.Cluster
    node_role: iam.IRole
    vpc: ec2.IVpc
    inbound_subnets: list[ec2.ISubnet]
    file_system: fsx.LustreFileSystem
    file_system_security_group: ec2.ISecurityGroup
    bucket: s3.IBucket
    bucket_arn: str
    prometheus: ManagedPrometheus | None

    def query_url(self, region: str) -> str | None:
        """The Prometheus workspace's query URL, read as an optional feature's; None without metrics."""
        if self.prometheus is None:
            return None
        return workspace_query_url(region, optional_feature(self.prometheus.workspace.attr_workspace_id))

    def deployed(self, settings: StageSettings, web_acl_arns: Mapping[str, str] | None = None) -> DeployedResources:
        """The values the charts need, as references from the stack that applies them."""
        return DeployedResources(
            account=settings.account or Aws.ACCOUNT_ID,
            node_role_name=self.node_role.role_name,
            subnet_ids=tuple(subnet.subnet_id for subnet in self.vpc.private_subnets),
            inbound_subnet_ids=tuple(optional_feature(subnet.subnet_id) for subnet in self.inbound_subnets),
            inbound_cidrs=tuple(optional_feature(subnet.ipv4_cidr_block) for subnet in self.inbound_subnets),
            cluster_security_group_id=self.cluster.cluster_security_group_id,
            file_system_id=self.file_system.file_system_id,
            file_system_dns_name=self.file_system.dns_name,
            file_system_mount_name=self.file_system.mount_name,
            bucket_name=self.bucket.bucket_name,
            prometheus_query_url=self.query_url(settings.region),
            web_acl_arns=web_acl_arns or {},
        )

    def cluster_in(self, scope: Construct, id: str = "Cluster") -> eks.ICluster:
        """The cluster, imported into `scope` with its kubectl handler: the manifests live in the stack that applies
        them, never in the cluster's."""
        return eks.Cluster.from_cluster_attributes(
            scope, id, cluster_name=self.cluster.cluster_name, kubectl_provider=self.cluster.kubectl_provider
        )
