"""ModelStoreStack: the S3 bucket and FSx for Lustre file system holding the weights (stateful)."""

from __future__ import annotations

from typing import Any

import cdk8s
import pytest
from aws_cdk.assertions import Match, Template

from charts import DeployedResources, build_charts
from settings import parse_stage_settings
from tests.conftest import Assembly, find, stage_data
from tests.scanners import cfn_resource_schema


def resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return template["Resources"][logical_id]


def test_stateful_logical_ids_never_change(dev: Assembly) -> None:
    # A changed logical ID makes CloudFormation replace the resource: the weights would be lost.
    template = dev.template("ModelStore")
    assert resource(template, "ModelBucketB33D855B")["Type"] == "AWS::S3::Bucket"
    assert resource(template, "FileSystem8A8E25C0")["Type"] == "AWS::FSx::FileSystem"


def test_model_bucket_is_encrypted_versioned_tls_only_and_private(dev: Assembly) -> None:
    template = dev.template("ModelStore")
    bucket = resource(template, "ModelBucketB33D855B")
    properties = bucket["Properties"]
    assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert "LoggingConfiguration" in properties
    Template.from_json(template).has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": "ModelBucketB33D855B"},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            },
        },
    )


@pytest.mark.parametrize("logical_id", ["ModelBucketB33D855B", "AccessLogsBucket83982689", "FileSystemKey2DFFD0A9"])
def test_weights_are_retained_when_the_stack_is_deleted(dev: Assembly, logical_id: str) -> None:
    stored = resource(dev.template("ModelStore"), logical_id)
    assert (stored["DeletionPolicy"], stored["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_file_system_is_persistent_2_with_settings_capacity_throughput_lz4_and_our_key(dev: Assembly) -> None:
    file_system = resource(dev.template("ModelStore"), "FileSystem8A8E25C0")["Properties"]
    assert file_system["StorageCapacity"] == 1200
    assert file_system["LustreConfiguration"] == {
        "DataCompressionType": "LZ4",
        "DeploymentType": "PERSISTENT_2",
        "PerUnitStorageThroughput": 250,
    }
    assert file_system["KmsKeyId"] == {"Ref": "FileSystemKey2DFFD0A9"}
    (subnet,) = file_system["SubnetIds"]
    assert "PrivateSubnet1" in subnet["Fn::GetStackOutput"]["OutputName"]  # us-west-2a, the stage's first zone


def test_bucket_association_imports_new_changed_and_deleted_objects(dev: Assembly) -> None:
    Template.from_json(dev.template("ModelStore")).has_resource_properties(
        "AWS::FSx::DataRepositoryAssociation",
        {
            "FileSystemId": {"Ref": "FileSystem8A8E25C0"},
            "FileSystemPath": "/models",
            "DataRepositoryPath": {"Fn::Join": ["", ["s3://", {"Ref": "ModelBucketB33D855B"}]]},
            "BatchImportMetaDataOnCreate": True,
            "S3": {"AutoImportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}},
        },
    )


def test_file_system_admits_only_itself_here(dev: Assembly) -> None:
    # The cluster's nodes are admitted by the serving stack (tests/test_serving.py), on the Lustre ports.
    template = dev.template("ModelStore")
    ingress = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress
    for rule in ingress:
        assert rule["SourceSecurityGroupId"] == rule["GroupId"]
        assert (rule["FromPort"], rule["ToPort"]) == (988, 1023)
    group = next(r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::SecurityGroup")
    assert "SecurityGroupIngress" not in group["Properties"]


def test_model_store_does_not_wait_for_the_cluster(dev: Assembly) -> None:
    dependencies = [d for d in dev.stacks()["ModelStore"]["dependencies"] if not d.endswith(".assets")]
    assert [dev.manifest["artifacts"][d]["displayName"] for d in dependencies] == ["dev/Network"]


def test_production_protects_its_stacks_from_deletion(prod: Assembly) -> None:
    assert prod.stacks()["ModelStore"]["properties"]["terminationProtection"] is True
    assert prod.stacks()["Registry"]["properties"]["terminationProtection"] is True


def test_capacity_and_throughput_changes_update_the_file_system_in_place() -> None:
    # CloudFormation replaces a resource only for its createOnlyProperties (its resource schema, as cfn-lint bundles
    # it): a replaced file system would take its data and the serving stack's import of its id with it. Neither the
    # capacity (FSx grows it in place) nor PERSISTENT_2's per-unit throughput is among them.
    schema = cfn_resource_schema("AWS::FSx::FileSystem")
    create_only = set(schema["createOnlyProperties"])
    assert "/properties/StorageCapacity" not in create_only
    assert not [path for path in create_only if "LustreConfiguration" in path]
    assert "PerUnitStorageThroughput" in schema["definitions"]["LustreConfiguration"]["properties"]


def test_claims_ask_the_same_whatever_the_capacity() -> None:
    # A statically bound claim can neither grow nor shrink: its request stays, the volume's capacity follows.
    def volume_and_claim(capacity: int) -> tuple[dict[str, Any], dict[str, Any]]:
        data = stage_data()
        data["model_store"] = {"storage_capacity_gib": capacity}
        settings = parse_stage_settings("dev", data)
        objects = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))["Model-gpt-oss-20b"]
        rendered = objects.to_json()
        return find(rendered, "PersistentVolume"), find(rendered, "PersistentVolumeClaim")

    small_volume, small_claim = volume_and_claim(1200)
    large_volume, large_claim = volume_and_claim(4800)
    assert small_claim == large_claim
    assert small_claim["spec"]["resources"]["requests"]["storage"] == "1200Gi"
    assert (small_volume["spec"]["capacity"], large_volume["spec"]["capacity"]) == (
        {"storage": "1200Gi"},
        {"storage": "4800Gi"},
    )
