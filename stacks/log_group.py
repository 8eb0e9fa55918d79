"""Log groups encrypted with a rotating key of their own and kept for the days the settings give."""

from __future__ import annotations

from typing import cast

from aws_cdk import Aws, CfnResource, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

# What CloudWatch Logs needs of a key to encrypt and read a log group's events.
LOGS_KEY_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
]


def log_group(scope: Construct, id: str, *, retention_days: int, name: str | None = None) -> logs.LogGroup:
    """A log group kept for `retention_days` (one of settings.schema.LOG_RETENTION_DAYS).

    The group and its key are retained when the stack is deleted, like every other record of
    what happened. logs.RetentionDays is an enum of names in Python (THREE_MONTHS, ...), so the
    number of days from settings goes straight onto the CloudFormation property.
    """
    region = Stack.of(scope).region
    log_groups_here = f"arn:{Aws.PARTITION}:logs:{region}:{Aws.ACCOUNT_ID}:log-group:*"
    key = kms.Key(scope, f"{id}Key", description=f"Encrypts the {id} log group", enable_key_rotation=True)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            principals=[iam.ServicePrincipal(f"logs.{region}.amazonaws.com")],
            actions=LOGS_KEY_ACTIONS,
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": log_groups_here}},
        )
    )
    group = logs.LogGroup(scope, id, log_group_name=name, encryption_key=key)
    cast(logs.CfnLogGroup, group.node.default_child).retention_in_days = retention_days
    return group


def service_log_group(scope: Construct, id: str, *, name: str, retention_days: int) -> logs.LogRetention:
    """The log group an AWS service writes to under a name of its own (EKS: /aws/eks/<cluster>/cluster).

    A retained AWS::Logs::LogGroup with that fixed name would make the next deploy after a
    destroy fail ("already exists"). aws-cdk-lib's LogRetention custom resource instead creates
    the group if it is missing, adopts it if a destroyed stage left it behind, sets the
    retention, and leaves the group (the records) in place when the stack is deleted. The group
    is encrypted by CloudWatch Logs with an AWS key: LogRetention cannot associate one of ours.
    """
    retention = logs.LogRetention(
        scope, id, log_group_name=name, retention=logs.RetentionDays.INFINITE, removal_policy=RemovalPolicy.RETAIN
    )
    # RetentionDays is an enum of names in Python: the number of days goes straight onto the resource.
    cast(CfnResource, retention.node.default_child).add_property_override("RetentionInDays", retention_days)
    return retention
