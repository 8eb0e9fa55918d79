"""ClusterStack: EKS Auto Mode, its logs, secrets encryption, access and kubectl handler.

cdk-nag's EKS rules only know the v1 cluster class, so these assertions are the check.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aws_cdk.assertions import Template

from settings import SettingsError, parse_stage_settings
from settings.names import FSX_CSI_ADDON, SECRETS_STORE_ADDON
from tests.conftest import ADMIN_ROLE, ADMIN_USER, PINNED_FSX_CSI_VERSION, Assembly, Scenario, properties, stage_data


def cluster_properties(template: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::EKS::Cluster"]
    return cluster


def test_cluster_runs_auto_mode_with_the_built_in_pools(dev: Assembly) -> None:
    cluster = cluster_properties(dev.template("Cluster"))
    assert cluster["ComputeConfig"]["Enabled"] is True
    assert cluster["ComputeConfig"]["NodePools"] == ["system", "general-purpose"]
    assert "NodeRoleArn" in cluster["ComputeConfig"]
    assert cluster["StorageConfig"] == {"BlockStorage": {"Enabled": True}}
    assert cluster["KubernetesNetworkConfig"]["ElasticLoadBalancing"] == {"Enabled": True}


def test_cluster_runs_the_configured_kubernetes_version(dev: Assembly, admins_cluster: Scenario) -> None:
    assert cluster_properties(dev.template("Cluster"))["Version"] == "1.36"
    assert cluster_properties(admins_cluster.template)["Version"] == "1.35"


def test_cluster_nodes_live_in_private_subnets(dev: Assembly) -> None:
    subnet_ids = cluster_properties(dev.template("Cluster"))["ResourcesVpcConfig"]["SubnetIds"]
    outputs = [subnet["Fn::GetStackOutput"]["OutputName"] for subnet in subnet_ids]
    assert len(outputs) == 3
    assert all("PrivateSubnet" in output for output in outputs)


def test_all_five_control_plane_log_types_are_on(dev: Assembly) -> None:
    types = [
        t["Type"] for t in cluster_properties(dev.template("Cluster"))["Logging"]["ClusterLogging"]["EnabledTypes"]
    ]
    assert sorted(types) == ["api", "audit", "authenticator", "controllerManager", "scheduler"]


def test_secrets_are_encrypted_with_a_rotating_customer_key(dev: Assembly) -> None:
    template = dev.template("Cluster")
    (encryption,) = cluster_properties(template)["EncryptionConfig"]
    assert encryption["Resources"] == ["secrets"]
    key_id = encryption["Provider"]["KeyArn"]["Fn::GetAtt"][0]
    key = template["Resources"][key_id]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"


def test_authentication_is_by_access_entries_only(dev: Assembly) -> None:
    access = cluster_properties(dev.template("Cluster"))["AccessConfig"]
    assert access == {"AuthenticationMode": "API", "BootstrapClusterCreatorAdminPermissions": False}


def test_dev_endpoint_is_public_and_private(dev: Assembly) -> None:
    vpc_config = cluster_properties(dev.template("Cluster"))["ResourcesVpcConfig"]
    assert (vpc_config["EndpointPublicAccess"], vpc_config["EndpointPrivateAccess"]) == (True, True)
    assert "PublicAccessCidrs" not in vpc_config


def test_prod_endpoint_is_private_only(prod: Assembly) -> None:
    vpc_config = cluster_properties(prod.template("Cluster"))["ResourcesVpcConfig"]
    assert (vpc_config["EndpointPublicAccess"], vpc_config["EndpointPrivateAccess"]) == (False, True)


def test_public_endpoint_can_be_narrowed_to_cidrs(admins_cluster: Scenario) -> None:
    assert cluster_properties(admins_cluster.template)["ResourcesVpcConfig"]["PublicAccessCidrs"] == ["203.0.113.0/24"]


@pytest.mark.parametrize("principal", [ADMIN_ROLE, ADMIN_USER])
def test_configured_admins_get_cluster_admin_through_access_entries(admins_cluster: Scenario, principal: str) -> None:
    Template.from_json(admins_cluster.template).has_resource_properties(
        "AWS::EKS::AccessEntry",
        {
            "PrincipalArn": principal,
            "AccessPolicies": [
                {
                    "AccessScope": {"Type": "cluster"},
                    "PolicyArn": {
                        "Fn::Join": [
                            "",
                            [
                                "arn:",
                                {"Ref": "AWS::Partition"},
                                ":eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                            ],
                        ]
                    },
                }
            ],
        },
    )


def test_only_the_kubectl_handler_has_access_when_no_admins_are_configured(dev: Assembly) -> None:
    entries = [
        r["Properties"] for r in dev.template("Cluster")["Resources"].values() if r["Type"] == "AWS::EKS::AccessEntry"
    ]
    assert len(entries) == 1
    assert entries[0]["PrincipalArn"]["Fn::GetAtt"][0].startswith("ClusterKubectlProviderHandlerServiceRole")


def kubectl_layer_description(template: dict[str, Any]) -> str:
    resources = template["Resources"]
    (handler,) = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function" and "kubectl" in r["Properties"].get("Description", "")
    ]
    descriptions = [
        resources[layer["Ref"]]["Properties"].get("Description", "") for layer in handler["Properties"]["Layers"]
    ]
    (kubectl,) = [d for d in descriptions if "kubectl" in d]
    return kubectl


def test_kubectl_layer_matches_the_cluster_version(dev: Assembly, admins_cluster: Scenario) -> None:
    assert kubectl_layer_description(dev.template("Cluster")).startswith("/opt/kubectl/kubectl 1.36.")
    assert kubectl_layer_description(admins_cluster.template).startswith("/opt/kubectl/kubectl 1.35.")


def test_stage_prints_the_update_kubeconfig_command(dev: Assembly, prod: Assembly) -> None:
    assert dev.template("Cluster")["Outputs"]["UpdateKubeconfigCommand"]["Value"] == (
        "aws eks update-kubeconfig --region us-west-2 --name gpu-inference-dev"
    )
    assert prod.template("Cluster")["Outputs"]["UpdateKubeconfigCommand"]["Value"].endswith("--name gpu-inference-prod")


def test_node_role_has_only_the_auto_mode_policies_and_the_first_pull_through_the_cache(dev: Assembly) -> None:
    template = dev.template("Cluster")
    cluster = cluster_properties(template)
    role_id = cluster["ComputeConfig"]["NodeRoleArn"]["Fn::GetAtt"][0]
    role = template["Resources"][role_id]["Properties"]
    managed = [arn["Fn::Join"][1][-1] for arn in role["ManagedPolicyArns"]]
    assert managed == [
        ":iam::aws:policy/AmazonEKSWorkerNodeMinimalPolicy",
        ":iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
    ]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    (policy,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy" and r["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["ecr:BatchImportUpstreamImage", "ecr:CreateRepository"]
    assert statement["Resource"] == {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":ecr:us-west-2:",
                {"Ref": "AWS::AccountId"},
                ":repository/ecr-public/dev/*",
            ],
        ]
    }


def test_an_add_on_runs_the_version_pinned_or_else_the_default_eks_picks(
    dev: Assembly, admins_cluster: Scenario
) -> None:
    (unpinned,) = properties(dev.template("Cluster"), "AWS::EKS::Addon")
    assert "AddonVersion" not in unpinned
    pinned, keys = properties(admins_cluster.template, "AWS::EKS::Addon")
    assert (pinned["AddonName"], pinned["AddonVersion"]) == (FSX_CSI_ADDON, PINNED_FSX_CSI_VERSION)
    # The scenario's second model has API keys: their add-on, unpinned.
    assert (keys["AddonName"], "AddonVersion" in keys) == (SECRETS_STORE_ADDON, False)


@pytest.mark.parametrize(
    ("pins", "problem"),
    [
        ({FSX_CSI_ADDON: "1.6.0"}, "an EKS add-on version such as v1.6.0-eksbuild.1"),
        ({"vpc-cni": "v1.19.0-eksbuild.1"}, "cluster.addon_versions"),
        (
            {"aws-secrets-store-csi-driver-provider": "v1.0.0-eksbuild.1"},
            "cluster.addon_versions.aws-secrets-store-csi-driver-provider: the stage installs no such add-on; it "
            "installs aws-fsx-csi-driver",
        ),
    ],
)
def test_an_add_on_version_is_checked_before_synth(pins: dict[str, str], problem: str) -> None:
    data = stage_data("dev")
    data["cluster"]["addon_versions"] = pins
    with pytest.raises(SettingsError, match=re.escape(problem)):
        parse_stage_settings("dev", data)


def test_fsx_csi_driver_add_on_uses_pod_identity_with_a_read_only_role(dev: Assembly) -> None:
    template = dev.template("Cluster")
    (addon,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::EKS::Addon"]
    assert addon["AddonName"] == "aws-fsx-csi-driver"
    (association,) = addon["PodIdentityAssociations"]
    assert association["ServiceAccount"] == "fsx-csi-controller-sa"
    role_id = association["RoleArn"]["Fn::GetAtt"][0]
    trust = template["Resources"][role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
        }
    ]
    (policy,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy" and r["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    assert [statement["Action"] for statement in policy["PolicyDocument"]["Statement"]] == ["fsx:DescribeFileSystems"]
