"""Once, before a stage first deploys with a stack per model: `make split-serving STAGE=dev`.

A stage deployed before each model had a stack of its own (stacks/model_serving.py) holds its models in the serving
stack. The next deploy moves them: CloudFormation creates each model's resources in its new stack, under the same
logical ids, and only then deletes them from the serving stack. For most that is harmless (an IAM role, a Pod Identity
association, an output). For three kinds it would undo the move: a manifest's deletion runs `kubectl delete` on the
objects the new stack has just applied, a KubernetesPatch's deletion restores what it patched, and a web ACL cannot be
deleted while its load balancer uses it. So this command first updates the serving stack with those resources
retained (DeletionPolicy and UpdateReplacePolicy Retain), changing nothing else: the deploy that follows leaves them
where they are, the model's stack applies its objects over the running ones (`kubectl apply`), and no replica stops.

It reads the serving stack's template from CloudFormation and the new cloud assembly (cdk.out/assembly-<stage>, which
`make split-serving` synthesizes first), uploads the retained template to the account's CDK assets bucket (templates
over 51,200 bytes must come from S3: CloudFormation API Reference, UpdateStack, TemplateBody) and waits for the update.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commands.plan import RETAINED_WHEN_MOVED, ROOT, assembly_templates, moves
from settings.names import cdk_assets_bucket

# The serving stack holds IAM resources, one of them named (the smoke test's trigger role): CloudFormation refuses the
# update without these acknowledgments (CloudFormation API Reference, UpdateStack, Capabilities).
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


def retained(deployed: dict[str, Any], after: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The deployed serving template with what moves to a model's stack, of the kinds whose deletion would undo the
    move, retained; and their logical ids. Retain applies to any resource, a custom one included, and to one a
    stack update removes from the template (CloudFormation Template Reference, DeletionPolicy attribute)."""
    template = copy.deepcopy(deployed)
    ids = sorted(
        logical_id
        for (_, logical_id) in moves({"Serving": deployed}, after)
        if deployed["Resources"][logical_id]["Type"] in RETAINED_WHEN_MOVED
    )
    for logical_id in ids:
        template["Resources"][logical_id]["DeletionPolicy"] = "Retain"
        template["Resources"][logical_id]["UpdateReplacePolicy"] = "Retain"
    return template, ids


def split_serving(
    stage: str, after: dict[str, dict[str, Any]], cloudformation: Any, s3: Any, account: str
) -> list[str]:
    """Retain in the deployed serving stack what moves to a model's stack; the logical ids retained."""
    stack = f"{stage}-Serving"
    body = cloudformation.get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    deployed = body if isinstance(body, dict) else json.loads(body)
    template, ids = retained(deployed, after)
    if not ids:
        return []
    region = cloudformation.meta.region_name
    bucket = cdk_assets_bucket(account, region)
    text = json.dumps(template)
    key = f"split-serving/{stack}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode())
    (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    cloudformation.update_stack(
        StackName=stack,
        TemplateURL=f"https://{bucket}.s3.{region}.amazonaws.com/{key}",
        Parameters=[
            {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True} for p in described.get("Parameters", [])
        ],
        Capabilities=CAPABILITIES,
    )
    cloudformation.get_waiter("stack_update_complete").wait(StackName=stack)
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.split_serving", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--after", type=Path, help="the new cloud assembly (default: cdk.out/assembly-<stage>)")
    args = parser.parse_args(argv)
    import boto3

    from commands import stage_settings_or_exit

    region = stage_settings_or_exit(args.stage).region
    after = assembly_templates(args.after or ROOT / "cdk.out" / f"assembly-{args.stage}")
    account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    ids = split_serving(
        args.stage,
        after,
        boto3.client("cloudformation", region_name=region),
        boto3.client("s3", region_name=region),
        account,
    )
    if not ids:
        print(f"{args.stage}-Serving holds nothing that moves to a model's stack: deploy as usual")
        return 0
    print(f"{args.stage}-Serving now retains {', '.join(ids)}: `make deploy STAGE={args.stage}` moves them")
    if any("WebAcl" in logical_id for logical_id in ids):
        print(
            "A retained web ACL stays in the account once its model's load balancer uses the new one: delete it then "
            "(`aws wafv2 list-web-acls --scope REGIONAL`)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
