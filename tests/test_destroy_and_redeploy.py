"""A destroyed stage can be deployed again: what a destroy keeps never blocks a rebuild, or the destroy itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Assembly

# The physical-name properties of the resource types our stages create: a retained resource that
# names itself is still there when the stage is deployed again, and the new one's create fails
# with "already exists" (CloudFormation user guide, "Name type").
NAME_PROPERTIES = {
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::IAM::Role": "RoleName",
    "AWS::ECR::Repository": "RepositoryName",
    "AWS::EKS::Cluster": "Name",
    "AWS::EC2::SecurityGroup": "GroupName",
    "AWS::CodeBuild::Project": "Name",
    "AWS::KMS::Alias": "AliasName",
}


def retained(resource: dict[str, Any]) -> bool:
    return resource.get("DeletionPolicy") == "Retain"


def references(value: Any) -> Iterator[tuple[str | None, str]]:
    """(stack or None for this one, logical id or export) of every reference inside a property value."""
    if isinstance(value, dict):
        if "Ref" in value and not str(value["Ref"]).startswith("AWS::"):
            yield None, value["Ref"]
        elif "Fn::GetAtt" in value:
            yield None, value["Fn::GetAtt"][0]
        elif "Fn::GetStackOutput" in value:
            yield value["Fn::GetStackOutput"]["StackName"], value["Fn::GetStackOutput"]["OutputName"]
        elif "Fn::ImportValue" in value:
            stack, _, export = value["Fn::ImportValue"].partition(":")
            yield stack, export
        else:
            for item in value.values():
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def producer(assembly: Assembly, stack_name: str, output: str) -> tuple[str, str]:
    """The stack and logical id behind another stack's output (weak reference) or export (strong one)."""
    stack = stack_name.removeprefix(f"{assembly.stage}-")
    for name, value in assembly.template(stack).get("Outputs", {}).items():
        if output in (name, value.get("Export", {}).get("Name", "").partition(":")[2]):
            ((_, logical_id),) = list(references(value["Value"]))
            return stack, logical_id
    raise AssertionError(f"{stack_name} has no output {output}")


def dependencies(assembly: Assembly, stack: str, logical_id: str) -> Iterator[tuple[str, str]]:
    """Every resource a resource refers to, in its own stack or in another, and theirs in turn."""
    resource = assembly.template(stack)["Resources"][logical_id]
    properties = dict(resource.get("Properties", {}))
    # A retained custom resource is left alone at deletion: its function is never called then.
    properties.pop("ServiceToken", None)
    # A name derived from another resource's (a function's log group) does not use that resource.
    properties.pop(NAME_PROPERTIES.get(resource["Type"], ""), None)
    for other_stack, target in references(properties):
        found = (stack, target) if other_stack is None else producer(assembly, other_stack, target)
        yield found
        yield from dependencies(assembly, *found)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_no_retained_resource_names_itself(assemblies: dict[str, Assembly], stage: str) -> None:
    assembly = assemblies[stage]
    for stack in assembly.stacks():
        for logical_id, resource in assembly.template(stack)["Resources"].items():
            name = NAME_PROPERTIES.get(resource["Type"])
            given = resource.get("Properties", {}).get(name) if name else None
            # A name built from another resource's generated name (a function's log group) is new
            # on every deploy; a name from literals and the stage's settings is not.
            if retained(resource) and given is not None:
                assert list(references(given)), (
                    f"{stack}/{logical_id} is retained and named {given!r}: the stage's next deploy cannot create it"
                )


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_what_a_retained_resource_uses_is_retained_with_it(assemblies: dict[str, Assembly], stage: str) -> None:
    # Otherwise the destroy tries to delete it (a security group, a subnet) while the retained
    # resource still uses it, and fails.
    assembly = assemblies[stage]
    for stack in assembly.stacks():
        for logical_id, resource in assembly.template(stack)["Resources"].items():
            if retained(resource):
                for used_stack, used in dependencies(assembly, stack, logical_id):
                    used_resource = assembly.template(used_stack)["Resources"][used]
                    assert retained(used_resource), f"{stack}/{logical_id} is retained, {used_stack}/{used} is not"


def test_the_control_plane_log_group_is_adopted_not_created(dev: Assembly) -> None:
    # EKS writes to /aws/eks/<cluster>/cluster, a fixed name: CDK's LogRetention creates or adopts
    # it, sets its retention, and leaves it (and its records) behind when the stack is deleted.
    (group,) = [
        r["Properties"] for r in dev.template("Cluster")["Resources"].values() if r["Type"] == "Custom::LogRetention"
    ]
    assert group["LogGroupName"] == "/aws/eks/gpu-inference-dev/cluster"
    assert group["RetentionInDays"] == 90
    assert group["RemovalPolicy"] == "retain"
    assert not [
        r
        for r in dev.template("Cluster")["Resources"].values()
        if r["Type"] == "AWS::Logs::LogGroup" and "/aws/eks/" in json.dumps(r["Properties"])
    ]
    (cluster,) = [r for r in dev.template("Cluster")["Resources"].values() if r["Type"] == "AWS::EKS::Cluster"]
    assert any(dependency.startswith("ControlPlaneLogRetention") for dependency in cluster["DependsOn"])


def test_the_weights_file_system_is_a_cache_that_goes_with_the_stack(dev: Assembly) -> None:
    # The bucket holds the weights and is retained; the file system (and its security group and
    # network interfaces) goes, so the network can go too.
    resources = dev.template("ModelStore")["Resources"]
    (file_system,) = [r for r in resources.values() if r["Type"] == "AWS::FSx::FileSystem"]
    assert file_system["DeletionPolicy"] == "Delete"
    buckets = [r for r in resources.values() if r["Type"] == "AWS::S3::Bucket"]
    assert buckets
    assert all(retained(bucket) for bucket in buckets)


def test_the_retained_check_follows_references_into_other_stacks(dev: Assembly) -> None:
    # The checks above would be blind to a retained file system's subnet if references across
    # stacks were not followed: prove they are, on a resource that does refer across.
    (file_system,) = [
        logical_id
        for logical_id, r in dev.template("ModelStore")["Resources"].items()
        if r["Type"] == "AWS::FSx::FileSystem"
    ]
    used = set(dependencies(dev, "ModelStore", file_system))
    assert any(stack == "Network" and "PrivateSubnet1" in logical_id for stack, logical_id in used)
    assert any(stack == "ModelStore" and "SecurityGroup" in logical_id for stack, logical_id in used)
