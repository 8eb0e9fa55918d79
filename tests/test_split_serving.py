"""`make split-serving`: a stage deployed with its models in the serving stack retains, there, what moves to each
model's stack, so that the move leaves the running objects alone."""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.stub import ANY, Stubber

from commands import plan as make_plan
from commands.split_serving import CAPABILITIES, retained, split_serving
from tests.conftest import Assembly
from tests.test_plan import one_serving_stack

MOVED_AND_RETAINED = ["ClusterModelgptoss20b021B1A4B", "GptOss20bReplicaCountPatch41FFAA53"]


def client(service: str) -> Any:
    return boto3.client(service, region_name="us-west-2", aws_access_key_id="a", aws_secret_access_key="s")


def test_what_a_deletion_would_undo_is_retained_and_nothing_else_changes(dev: Assembly) -> None:
    deployed = one_serving_stack(dev)["Serving"]
    after = make_plan.assembly_templates(dev.directory)
    template, ids = retained(deployed, after)
    assert ids == MOVED_AND_RETAINED
    for logical_id, resource in template["Resources"].items():
        original = deployed["Resources"][logical_id]
        policies = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"} if logical_id in ids else {}
        assert resource == {**original, **policies}
    # The plan of the deploy that follows refuses nothing.
    assert make_plan.plan({"Serving": template}, after).refusals == []
    # A stage already split has nothing to retain.
    assert retained(dev.template("Serving"), after)[1] == []


def test_the_serving_stack_is_updated_from_the_assets_bucket_and_waited_for(dev: Assembly) -> None:
    deployed = one_serving_stack(dev)["Serving"]
    after = make_plan.assembly_templates(dev.directory)
    cloudformation, s3 = client("cloudformation"), client("s3")
    bucket = "cdk-hnb659fds-assets-123456789012-us-west-2"
    uploaded: list[dict[str, Any]] = []
    with Stubber(cloudformation) as stacks, Stubber(s3) as objects:
        stacks.add_response(
            "get_template",
            {"TemplateBody": json.dumps(deployed)},
            {"StackName": "dev-Serving", "TemplateStage": "Original"},
        )
        objects.add_response("put_object", {}, {"Bucket": bucket, "Key": ANY, "Body": ANY})
        described = {
            "StackName": "dev-Serving",
            "CreationTime": "2026-12-01T00:00:00Z",
            "StackStatus": "UPDATE_COMPLETE",
            "Parameters": [{"ParameterKey": "BootstrapVersion", "ParameterValue": "/cdk-bootstrap/hnb659fds/version"}],
        }
        stacks.add_response("describe_stacks", {"Stacks": [described]}, {"StackName": "dev-Serving"})
        stacks.add_response(
            "update_stack",
            {"StackId": "arn:aws:cloudformation:us-west-2:123456789012:stack/dev-Serving/1"},
            {
                "StackName": "dev-Serving",
                "TemplateURL": ANY,
                "Parameters": [{"ParameterKey": "BootstrapVersion", "UsePreviousValue": True}],
                "Capabilities": CAPABILITIES,
            },
        )
        stacks.add_response("describe_stacks", {"Stacks": [described]}, {"StackName": "dev-Serving"})
        s3.meta.events.register(
            "before-parameter-build.s3.PutObject", lambda params, **_: uploaded.append(json.loads(params["Body"]))
        )
        assert split_serving("dev", after, cloudformation, s3, "123456789012") == MOVED_AND_RETAINED
    (template,) = uploaded
    assert template == retained(deployed, after)[0]
