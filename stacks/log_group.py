"""Log groups with the retention the stage's settings give, in days."""

from __future__ import annotations

from typing import cast

from aws_cdk import aws_logs as logs
from constructs import Construct


def log_group(scope: Construct, id: str, *, retention_days: int, name: str | None = None) -> logs.LogGroup:
    """A log group kept for `retention_days` (one of settings.model.LOG_RETENTION_DAYS).

    logs.RetentionDays is an enum of names in Python (THREE_MONTHS, ...), so the number of
    days from settings goes straight onto the CloudFormation property. The group itself is
    retained when its stack is deleted, like every other record of what happened.
    """
    group = logs.LogGroup(scope, id, log_group_name=name)
    cast(logs.CfnLogGroup, group.node.default_child).retention_in_days = retention_days
    return group
