"""Where model weights live: an S3 bucket and an FSx for Lustre file system linked to it (stateful)."""

from __future__ import annotations

from typing import Any

from aws_cdk import App, CfnElement, CfnOutput, CfnResource, Names, RemovalPolicy, Stack, Stage
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from settings.schema import ModelStoreSettings

# Lustre clients and servers talk on these TCP ports (FSx for Lustre user guide, "File system access control").
LUSTRE_PORTS = (ec2.Port.tcp(988), ec2.Port.tcp_range(1018, 1023))
# The file system shows the bucket's objects under this directory: s3://<bucket>/<model> is /models/<model>.
FILE_SYSTEM_PATH = "/models"


def deployed_alone_path(stack: Stack) -> list[str]:
    """The construct path of a stage's stack as `make deploy` builds it (<stage>/<stack>), whatever app holds it: the
    pipeline nests the same stage under its own stack (<pipeline>/<stage>/<stack>)."""
    return [Stage.of(stack).stage_name, stack.node.id]


def bucket_arn_export(stack_name: str) -> str:
    """The export that carries the model bucket's ARN to the serving stack."""
    return f"{stack_name}:ModelBucketArn"


class ModelStoreStack(Stack):
    """The bucket weights are uploaded to, and the Lustre file system vLLM reads them from.

    A data repository association imports new, changed and deleted objects from the bucket into
    the file system, so an upload is visible to every pod without a pod ever downloading it. The
    bucket is what a stage keeps when it is destroyed; the file system is rebuilt from it. The
    stack never depends on the cluster: the cluster's access is granted by the serving stack.
    Logical IDs of the bucket and file system are fixed by tests so a refactor cannot replace them.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        availability_zone: str,
        store: ModelStoreSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        removal = RemovalPolicy.RETAIN if store.retain_on_delete else RemovalPolicy.DESTROY
        access_logs = self._private_bucket("AccessLogsBucket", removal)
        self.bucket = self._private_bucket(
            "ModelBucket", removal, server_access_logs_bucket=access_logs, server_access_logs_prefix="model-bucket/"
        )
        self.file_system = self._file_system(vpc, availability_zone, store, removal)
        self._stage_independent_self_rules()
        fsx.CfnDataRepositoryAssociation(
            self,
            "BucketAssociation",
            file_system_id=self.file_system.file_system_id,
            file_system_path=FILE_SYSTEM_PATH,
            data_repository_path=f"s3://{self.bucket.bucket_name}",
            batch_import_meta_data_on_create=True,
            s3=fsx.CfnDataRepositoryAssociation.S3Property(
                auto_import_policy=fsx.CfnDataRepositoryAssociation.AutoImportPolicyProperty(
                    events=["NEW", "CHANGED", "DELETED"]
                )
            ),
        )
        # Exported under a name of its own, so the weights import's IAM grants (and their reviewed
        # cdk-nag findings) spell the bucket the same way at every synth.
        self.bucket_arn_import = self.export_value(self.bucket.bucket_arn, name=bucket_arn_export(self.stack_name))
        CfnOutput(
            self,
            "ModelBucketName",
            description="Upload model weights to s3://<this>/<model name>/",
            value=self.bucket.bucket_name,
        )

    def _private_bucket(self, bucket_id: str, removal: RemovalPolicy, **extra: Any) -> s3.Bucket:
        """Encrypted, versioned, TLS-only, never public."""
        return s3.Bucket(
            self,
            bucket_id,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            **extra,
        )

    def _file_system(
        self, vpc: ec2.IVpc, availability_zone: str, store: ModelStoreSettings, removal: RemovalPolicy
    ) -> fsx.LustreFileSystem:
        """The Lustre file system in one zone, encrypted with a key of its own, behind a security group of its own."""
        key = kms.Key(
            self,
            "FileSystemKey",
            description="Encrypts the model weights file system",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "FileSystemSecurityGroup",
            vpc=vpc,
            description="Lustre traffic to the model weights file system",
            allow_all_outbound=False,
        )
        # The file system's servers talk to each other (LustreFileSystem admits its own group on
        # 988-1023); the cluster's nodes are admitted by the serving stack.
        for port in LUSTRE_PORTS:
            self.security_group.add_egress_rule(self.security_group, port, "Lustre servers among themselves")
        return fsx.LustreFileSystem(
            self,
            "FileSystem",
            vpc=vpc,
            vpc_subnet=vpc.select_subnets(
                subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, availability_zones=[availability_zone]
            ).subnets[0],
            storage_capacity_gib=store.storage_capacity_gib,
            lustre_configuration=fsx.LustreConfiguration(
                deployment_type=fsx.LustreDeploymentType.PERSISTENT_2,
                per_unit_storage_throughput=store.throughput_per_tib,
                data_compression_type=fsx.LustreDataCompressionType.LZ4,
            ),
            kms_key=key,
            security_group=self.security_group,
            # The bucket holds the weights; the file system is a cache of it, filled again by the
            # association and the weights import. Deleted with the stack, it takes its
            # security group and network interfaces with it: a retained file system would keep
            # both (and its subnet, and so the VPC) from being deleted, and cost money every hour
            # while the next deploy builds a new one anyway.
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _stage_independent_self_rules(self) -> None:
        """The file system's security group admits itself (LustreFileSystem, and the egress above) through rules
        whose logical ids hold the group's unique id, which hashes its whole construct path: a stage deployed by
        the pipeline would name them otherwise than one deployed by `make deploy`, and moving a stage between the
        two would create rules EC2 refuses as duplicates of the ones it replaces. Each keeps the id `make deploy`
        gives it, in either app."""
        alone = App()
        stage = Stage(alone, deployed_alone_path(self)[0])
        stack = Stack(stage, deployed_alone_path(self)[1])
        group = Construct(stack, self.security_group.node.id)
        here, there = Names.unique_id(self.security_group), Names.unique_id(group)
        for rule in self.security_group.node.children:
            if isinstance(rule, CfnElement) and here in rule.node.id:
                twin = CfnResource(group, rule.node.id.replace(here, there), type="AWS::EC2::SecurityGroupIngress")
                rule.override_logical_id(stack.get_logical_id(twin))
