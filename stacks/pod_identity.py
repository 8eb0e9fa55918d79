"""Roles for pods, through EKS Pod Identity: Auto Mode runs the Pod Identity agent itself."""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from constructs import Construct


def pod_identity_role(
    scope: Construct, id: str, *, description: str, statements: list[iam.PolicyStatement]
) -> iam.Role:
    """A role that pods assume through EKS Pod Identity, allowed `statements` only."""
    # Pod Identity assumes the role as this service and tags the session with the pod's cluster,
    # namespace and service account (EKS User Guide, "Create an IAM role for EKS Pod Identity").
    principal = iam.SessionTagsPrincipal(iam.ServicePrincipal("pods.eks.amazonaws.com"))
    role = iam.Role(scope, id, description=description, assumed_by=principal)
    for statement in statements:
        role.add_to_policy(statement)
    return role
