"""Roles for pods, through EKS Pod Identity: Auto Mode runs the Pod Identity agent itself."""

from __future__ import annotations

from aws_cdk import aws_eks_v2 as eks
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


def pod_identity(
    scope: Construct,
    id_prefix: str,
    *,
    cluster_name: str,
    namespace: str,
    service_account: str,
    description: str,
    statements: list[iam.PolicyStatement],
) -> eks.CfnPodIdentityAssociation:
    """A role for one service account's pods, through EKS Pod Identity, allowed `statements` only.

    An association (CfnPodIdentityAssociation) rather than the aws_eks_v2 ServiceAccount, which would also install
    the Pod Identity agent add-on that Auto Mode already runs (aws-cdk#32580).
    """
    role = pod_identity_role(
        scope,
        f"{id_prefix}Role",
        description=f"{description} (service account {service_account} in namespace {namespace})",
        statements=statements,
    )
    association = eks.CfnPodIdentityAssociation(
        scope,
        f"{id_prefix}Identity",
        cluster_name=cluster_name,
        namespace=namespace,
        service_account=service_account,
        role_arn=role.role_arn,
    )
    # After the role's policy too, not only the role: the pods that come after the association may use it at once.
    association.node.add_dependency(role)
    return association
