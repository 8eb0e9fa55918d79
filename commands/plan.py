"""What a deploy of a stage will do to it, in words, before it runs: `make plan STAGE=dev`.

It compares the stage as it is deployed with the stage as its settings now synthesize it. "As deployed" is the
cloud assembly `make deploy` saved after its last success (deployed/<stage>/), or, with --from-aws and credentials,
each stack's template as CloudFormation holds it. Then, per change:

- CloudFormation resources replaced (a property of the resource's createOnlyProperties changes, by its resource
  schema as cfn-lint bundles it), and whether they hold data; resources deleted;
- Kubernetes objects removed from the cluster, and objects whose immutable fields change (a Job's template, a
  claim's request), which the kubectl handler's apply would fail on;
- GPU pools whose nodes drift and are replaced: a NodePool's template other than its requirements, which Karpenter
  hashes (kubernetes-sigs/karpenter pkg/apis/v1/nodepool.go, Hash), or its NodeClass's spec;
- models whose replicas roll (the Deployment's pod template changes), and what that interrupts.

Exit status: 0, and the plan; 1 when a change would fail the deploy or lose data (each named); 2 when there is
nothing to compare with (0 with --gate, which `make deploy` runs before deploying the assembly it planned).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings.names import SECRETS_STORE_ADDON, model_stack_id

ROOT = Path(__file__).resolve().parent.parent
DEPLOYED = ROOT / "deployed"
MANIFEST_TYPE = "Custom::AWSCDK-EKS-KubernetesResource"
# A model's own stack (stacks/model_serving.py): Model-<model>.
MODEL_STACK_PREFIX = model_stack_id("")
# Resources whose replacement loses what they hold, or everything running on them.
HOLDS_DATA = {
    "AWS::S3::Bucket": "the model weights",
    "AWS::FSx::FileSystem": "the file system (refilled from the bucket, but every replica loses its volume)",
    "AWS::EKS::Cluster": "the cluster and everything running on it",
    "AWS::KMS::Key": "the key (what it encrypted stays unreadable without it)",
    "AWS::APS::Workspace": "the history of vLLM's metrics",
    "AWS::Logs::LogGroup": "the logs",
    "AWS::ECR::PullThroughCacheRule": "nothing (the cached images stay)",
}


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def refuse(self, line: str) -> None:
        self.refusals.append(line)
        self.lines.append(f"REFUSED: {line}")


# --- CloudFormation ---


def create_only(resource_type: str) -> list[str]:
    """The property paths whose change replaces a resource (its schema's createOnlyProperties)."""
    import cfnlint  # the linter the project's gates run; its bundled schemas are CloudFormation's own

    schemas = Path(cfnlint.__file__).parent / "data" / "schemas"
    provider = json.loads((schemas / "providers" / "us-east-1.json").read_text())
    if resource_type not in provider:
        return []
    schema = json.loads((schemas / "resources" / f"{provider[resource_type]}.json").read_text())
    return [path.removeprefix("/properties/") for path in schema.get("createOnlyProperties", [])]


def _at(properties: dict[str, Any], path: str) -> Any:
    value: Any = properties
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def kubernetes_version_problem(before: str, after: str) -> str | None:
    """EKS moves a cluster one minor version up at a time, never down (EKS User Guide, "Update existing cluster to
    new Kubernetes version")."""
    (major_before, minor_before), (major_after, minor_after) = (tuple(map(int, v.split("."))) for v in (before, after))
    if (major_after, minor_after) < (major_before, minor_before):
        return f"Kubernetes {before} would go down to {after}: EKS never downgrades a cluster"
    if major_after == major_before and minor_after > minor_before + 1:
        return f"Kubernetes {before} would skip to {after}: EKS upgrades one minor version at a time"
    return None


def compare_versions(plan: Plan, stack: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The cluster's Kubernetes version and the add-ons' versions, each moved on purpose."""
    for logical_id in sorted(old.keys() & new.keys()):
        if new[logical_id]["Type"] == "AWS::EKS::Cluster":
            versions = [resource[logical_id]["Properties"].get("Version") for resource in (old, new)]
            if all(isinstance(version, str) for version in versions) and versions[0] != versions[1]:
                problem = kubernetes_version_problem(versions[0], versions[1])
                if problem:
                    plan.refuse(f"{stack}: {problem}")
                else:
                    plan.say(
                        f"{stack}: Kubernetes {versions[0]} to {versions[1]}: see docs/operations.md, "
                        '"Upgrading Kubernetes"'
                    )
        if new[logical_id]["Type"] == "AWS::EKS::Addon":
            was, now = (resource[logical_id]["Properties"].get("AddonVersion") for resource in (old, new))
            if was != now:
                name = new[logical_id]["Properties"]["AddonName"]
                plan.say(
                    f"{stack}: add-on {name} moves from {was or 'the version EKS picked'} to "
                    f"{now or 'unpinned, where it stays'}"
                )


def compare_stack(
    plan: Plan, stack: str, before: dict[str, Any], after: dict[str, Any], moved_out: Collection[str] = ()
) -> None:
    """One stack's resources: deleted (but for those `moved_out` to another stack), replaced, versions moved."""
    old, new = before.get("Resources", {}), after.get("Resources", {})
    compare_versions(plan, stack, old, new)
    for logical_id in sorted(old.keys() - new.keys() - set(moved_out)):
        kind = old[logical_id]["Type"]
        if kind == MANIFEST_TYPE:
            continue  # said with the Kubernetes objects
        kept = old[logical_id].get("DeletionPolicy") == "Retain"
        held = HOLDS_DATA.get(kind)
        what = f"{stack}: {kind} {logical_id} is deleted" + (" (retained: it stays in the account)" if kept else "")
        if held and not kept:
            plan.refuse(f"{what}, and with it {held}")
        else:
            plan.say(what)
    for logical_id in sorted(old.keys() & new.keys()):
        kind = new[logical_id]["Type"]
        changed = [
            path
            for path in create_only(kind)
            if _at(old[logical_id].get("Properties", {}), path) != _at(new[logical_id].get("Properties", {}), path)
        ]
        if changed:
            held = HOLDS_DATA.get(kind)
            what = f"{stack}: {kind} {logical_id} is replaced ({', '.join(changed)} changes)"
            if held:
                plan.refuse(f"{what}, and with it {held}")
            else:
                plan.say(what)


# --- Kubernetes ---


def unfold(value: Any) -> Any:
    """A JSON property of a template (a manifest, a patch) as JSON, each CloudFormation reference shown as ${...}.

    A value that holds deployed values (a file system id, say) is an Fn::Join in the template.
    """
    if isinstance(value, dict):
        value = "".join(part if isinstance(part, str) else _reference(part) for part in value["Fn::Join"][1])
    return json.loads(value)


def unfold_manifest(manifest: Any) -> list[dict[str, Any]]:
    """A KubernetesManifest's objects."""
    objects: list[dict[str, Any]] = unfold(manifest)
    return objects


def _reference(intrinsic: dict[str, Any]) -> str:
    if "Fn::GetStackOutput" in intrinsic:
        output = intrinsic["Fn::GetStackOutput"]
        return "${" + f"{output['StackName']}:{output['OutputName']}" + "}"
    if "Fn::ImportValue" in intrinsic:
        return "${" + intrinsic["Fn::ImportValue"] + "}"
    if "Ref" in intrinsic:
        return "${" + intrinsic["Ref"] + "}"
    return "${" + json.dumps(intrinsic, sort_keys=True).replace('"', "'") + "}"


def manifests(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The Kubernetes objects of each manifest resource, deployed values shown as references."""
    return {
        logical_id: unfold_manifest(resource["Properties"]["Manifest"])
        for logical_id, resource in template.get("Resources", {}).items()
        if resource["Type"] == MANIFEST_TYPE
    }


# What `kubectl apply --prune` deletes when a manifest stops declaring it, with no allow-list given (the CDK kubectl
# handler gives none): kubernetes/kubectl pkg/util/prune/prune.go, the default GVKs. Custom resources stay.
PRUNED_KINDS = {
    "ConfigMap",
    "Endpoints",
    "PersistentVolumeClaim",
    "Pod",
    "ReplicationController",
    "Secret",
    "Service",
    "Job",
    "CronJob",
    "Ingress",
    "DaemonSet",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "Namespace",
    "PersistentVolume",
}


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def without_prune_label(obj: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(obj))
    labels = copy["metadata"].get("labels", {})
    for label in [label for label in labels if label.startswith("aws.cdk.eks/prune-")]:
        del labels[label]
    return copy


def compare_objects(
    plan: Plan, before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> None:
    """The objects of the manifest resources before and after (by logical id)."""
    old = {key(obj): without_prune_label(obj) for objects in before.values() for obj in objects}
    new = {key(obj): without_prune_label(obj) for objects in after.values() for obj in objects}
    chart_of = {key(obj): chart for chart, objects in before.items() for obj in objects}
    pools = {name for kind, _, name in new if kind == "NodePool"}
    for kind, namespace, name in sorted(old.keys() - new.keys()):
        where = f"{kind} {namespace + '/' if namespace else ''}{name}"
        if kind not in PRUNED_KINDS and chart_of[kind, namespace, name] in after:
            # Its manifest is updated, not deleted: kubectl's prune leaves it.
            plan.say(
                f"Kubernetes: {where} stays in the cluster (kubectl's prune never deletes a {kind}): "
                f"`kubectl delete {kind.lower()} {name}{' -n ' + namespace if namespace else ''}` once nothing uses it"
            )
            continue
        plan.say(f"Kubernetes: {where} is removed from the cluster")
        if kind == "Service" and namespace in {ns for k, ns, _ in new if k == "Namespace" or ns == namespace}:
            plan.say(f"in-cluster clients of {name}.{namespace}.svc lose it: point them at the model's new Service")
    _renames(plan, old, new)
    _repo_changes(plan, old, new)
    for ident in sorted(old.keys() & new.keys()):
        kind, namespace, name = ident
        was, now = old[ident], new[ident]
        if was == now:
            continue
        where = f"{namespace}/{name}" if namespace else name
        if kind == "Job" and was["spec"] != now["spec"]:
            plan.refuse(f"Kubernetes: Job {where} changes its spec under the same name; a Job's template is immutable")
        elif kind == "PersistentVolumeClaim" and was["spec"] != now["spec"]:
            plan.refuse(f"Kubernetes: PersistentVolumeClaim {where} changes its spec; a bound static claim's is fixed")
        elif kind == "NodePool" and _hashed(was) != _hashed(now):
            plan.say(f"GPU pool {name}: its template changes, so every node of it drifts and is replaced")
        elif kind == "NodeClass" and was["spec"] != now["spec"] and name in pools:
            plan.say(f"GPU pool {name}: its NodeClass changes, so every node of it drifts and is replaced")
        elif kind == "Deployment" and was["spec"]["template"] != now["spec"]["template"]:
            replicas = now["spec"].get("replicas", "the autoscaler's")
            plan.say(
                f"model {namespace}: its replicas roll ({replicas}), one new replica serving before an old one goes "
                "(maxUnavailable 0): no request dropped, a cold start per replica"
            )


def _served(objects: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, str]:
    """Each model namespace's served model name, from its Deployment's --served-model-name."""
    served = {}
    for (kind, namespace, _), obj in objects.items():
        if kind == "Deployment":
            args = obj["spec"]["template"]["spec"]["containers"][0].get("args", [])
            for arg in args:
                if arg.startswith("--served-model-name="):
                    served[namespace] = arg.split("=", 1)[1]
    return served


def _renames(plan: Plan, old: dict[Any, Any], new: dict[Any, Any]) -> None:
    """A model that goes under one name and comes under another: the old namespace goes as the new one comes."""
    before, after = _served(old), _served(new)
    for gone in sorted(before.keys() - after.keys()):
        for came in sorted(after.keys() - before.keys()):
            if before[gone] == after[came]:
                plan.say(
                    f"model {gone} is renamed {came}: {gone} stops serving {before[gone]} as soon as the deploy "
                    f"applies the change, and {came} serves only after its import and a cold start. Without an outage: "
                    f"add {came} beside {gone}, deploy, wait until it serves, then remove {gone} (docs/operations.md, "
                    '"Changing a running stage")'
                )


def _repo_changes(plan: Plan, old: dict[Any, Any], new: dict[Any, Any]) -> None:
    """An import whose repository changes while its weights folder stays: the import refuses to mix them."""

    def imports(objects: dict[Any, Any]) -> dict[str, tuple[str, str]]:
        found = {}
        for (kind, namespace, _), obj in objects.items():
            if kind == "Job":
                command = obj["spec"]["template"]["spec"]["containers"][0]["command"]
                flags = dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
                if "repo" in flags:
                    found[namespace] = (flags["repo"], flags["prefix"])
        return found

    before, after = imports(old), imports(new)
    for namespace in sorted(before.keys() & after.keys()):
        (was, folder), (now, new_folder) = before[namespace], after[namespace]
        if was != now and folder == new_folder:
            plan.refuse(
                f"model {namespace}: {now} would be imported into {folder}, which holds {was}'s weights; give the "
                "model a new revision (or name), so that its weights get a folder of their own"
            )


def _hashed(node_pool: dict[str, Any]) -> dict[str, Any]:
    template = json.loads(json.dumps(node_pool["spec"]["template"]))
    template.get("spec", {}).pop("requirements", None)  # Hash() ignores them; they drift on their own
    return template


# --- the command ---


def assembly_templates(directory: Path) -> dict[str, dict[str, Any]]:
    """The templates of a cloud assembly's stacks, by their short names (Network, Cluster, ...)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    return {
        artifact["displayName"].split("/")[-1]: json.loads(
            (directory / artifact["properties"]["templateFile"]).read_text()
        )
        for artifact in manifest["artifacts"].values()
        if artifact["type"] == "aws:cloudformation:stack"
    }


# The stage's stacks besides one per model.
STACKS = ("Network", "Registry", "ModelStore", "Cluster", "Serving")


def deployed_model_stacks(stage: str, cloudformation: Any) -> list[str]:
    """The short names of the model stacks the stage has deployed (Model-<model>), listed by their names. ListStacks
    also lists stacks deleted in the last 90 days, as DELETE_COMPLETE (CloudFormation API Reference, ListStacks):
    those are left out, whatever state the others are in."""
    prefix = f"{stage}-{MODEL_STACK_PREFIX}"
    pages = cloudformation.get_paginator("list_stacks").paginate()
    return sorted(
        summary["StackName"].removeprefix(f"{stage}-")
        for page in pages
        for summary in page["StackSummaries"]
        if summary["StackName"].startswith(prefix) and summary["StackStatus"] != "DELETE_COMPLETE"
    )


def deployed_templates(stage: str, cloudformation: Any, stacks: Collection[str] = STACKS) -> dict[str, dict[str, Any]]:
    """Each of the stage's `stacks` as CloudFormation holds it (a boto3 client with credentials); a stack not yet
    deployed is left out, and any other error (no access, say) ends the plan."""
    from botocore.exceptions import ClientError

    found = {}
    for stack in stacks:
        try:
            body = cloudformation.get_template(StackName=f"{stage}-{stack}", TemplateStage="Original")["TemplateBody"]
        except ClientError as error:
            if "does not exist" in error.response["Error"].get("Message", ""):
                continue
            raise
        # boto3 hands a JSON template over already parsed.
        found[stack] = body if isinstance(body, dict) else json.loads(body)
    return found


# EKS add-ons of the Cluster stack that run a CSI driver, and the kind of object in Serving whose pods mount it. The
# Cluster stack deploys before Serving, so an add-on removed there goes while those pods still run: the kubelet
# cannot unmount their volumes without the driver, and they stay Terminating.
CSI_ADDONS = {SECRETS_STORE_ADDON: "SecretProviderClass"}


def addons(template: dict[str, Any]) -> set[str]:
    return {
        resource["Properties"]["AddonName"]
        for resource in template.get("Resources", {}).values()
        if resource["Type"] == "AWS::EKS::Addon"
    }


def helm_releases(template: dict[str, Any]) -> set[str]:
    return {
        resource["Properties"]["Release"]
        for resource in template.get("Resources", {}).values()
        if resource["Type"] == "Custom::AWSCDK-EKS-HelmChart"
    }


def compare_drivers(plan: Plan, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    """A controller removed in the deploy that removes the last objects it serves: the stage's stacks deploy
    before the models', so it would go first. A CSI driver's add-on (the Cluster stack) before the pods that mount
    its volumes; KEDA (the serving stack) before the ScaledObjects whose finalizer it removes; the gateway's
    controllers (the serving stack) before the routes whose finalizer they remove."""
    mounted = {obj["kind"] for objects in all_manifests(before).values() for obj in objects}
    keda_goes = "keda" in helm_releases(before.get("Serving", {})) - helm_releases(after.get("Serving", {}))
    if keda_goes and "ScaledObject" in mounted:
        plan.refuse(
            "Serving: KEDA would be removed before the models' ScaledObjects, whose finalizer only KEDA removes: "
            "turn autoscaling off in one deploy, metrics in the next "
            '(docs/operations.md, "Autoscaling on vLLM\'s queue")'
        )
    gateway_goes = "envoy-ai-gateway" in helm_releases(before.get("Serving", {})) - helm_releases(
        after.get("Serving", {})
    )
    if gateway_goes and "AIGatewayRoute" in mounted:
        plan.refuse(
            "Serving: the gateway's controllers would be removed before the models' routes, whose finalizer only Envoy "
            "AI Gateway's controller removes: set gateway.enabled: false in one deploy, remove gateway in the next "
            '(docs/gateway.md, "Turning it off")'
        )
    for addon in sorted(addons(before.get("Cluster", {})) - addons(after.get("Cluster", {}))):
        if CSI_ADDONS.get(addon) in mounted:
            plan.refuse(
                f"Cluster: the {addon} add-on would be removed before the replicas that mount its volumes are gone; "
                "they would stay Terminating. Deploy with cluster.secrets_store_driver: true first, then unset it "
                '(docs/access.md, "API keys")'
            )


# What a model's stack takes over from the serving stack and must find running: CloudFormation creates it there
# before it deletes it here, and the deletion (the kubectl handler's `kubectl delete`, the patch's restore, a web
# ACL still on its load balancer) would undo it. Retained here first (`make split-serving`), it is left alone.
RETAINED_WHEN_MOVED = {MANIFEST_TYPE, "Custom::AWSCDK-EKS-KubernetesPatch", "AWS::WAFv2::WebACL"}


def moves(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Resources that leave one stack for another under the same logical id: (stack, logical id) -> new stack."""
    found = {}
    for source, template in before.items():
        left = template.get("Resources", {}).keys() - after.get(source, {}).get("Resources", {}).keys()
        for target, new in after.items():
            for logical_id in left & new.get("Resources", {}).keys():
                if target != source:
                    found[source, logical_id] = target
    return found


def compare_moves(plan: Plan, before: dict[str, dict[str, Any]], moved: dict[tuple[str, str], str]) -> None:
    for (source, logical_id), target in sorted(moved.items()):
        resource = before[source]["Resources"][logical_id]
        what = f"{source}: {resource['Type']} {logical_id} moves to stack {target}"
        if resource["Type"] in RETAINED_WHEN_MOVED and resource.get("DeletionPolicy") != "Retain":
            plan.refuse(
                f"{what}, which creates it before {source} deletes it, undoing it: run `make split-serving` once "
                'first (docs/architecture.md, "One stack per model")'
            )
        else:
            plan.say(what)


def all_manifests(templates: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The Kubernetes objects of every stack's manifest resources, by logical id (the same in whichever stack)."""
    return {
        logical_id: objects for template in templates.values() for logical_id, objects in manifests(template).items()
    }


def plan(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> Plan:
    result = Plan()
    for stack in sorted(before.keys() - after.keys()):
        if stack.startswith(MODEL_STACK_PREFIX):
            result.say(
                f"stack {stack} is no longer in the stage: `make deploy` deletes it after the others, and with it the "
                "model's objects in the cluster; the pipeline leaves it (`aws cloudformation delete-stack`)"
            )
        else:
            result.refuse(f"stack {stack} is no longer in the stage")
    for stack in sorted(after.keys() - before.keys()):
        result.say(f"stack {stack} is created")
    moved = moves(before, after)
    for stack in sorted(after):
        moved_out = [logical_id for source, logical_id in moved if source == stack]
        compare_stack(result, stack, before.get(stack, {}), after[stack], moved_out)
    compare_moves(result, before, moved)
    compare_objects(result, all_manifests(before), all_manifests(after))
    compare_drivers(result, before, after)
    if not result.lines:
        result.say("nothing changes")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--save", type=Path, help="keep this cloud assembly as the stage's deployed one, and stop")
    parser.add_argument("--before", type=Path, help="a saved cloud assembly (default: deployed/<stage>)")
    parser.add_argument("--after", type=Path, help="the new cloud assembly (default: cdk.out/assembly-<stage>)")
    parser.add_argument("--from-aws", action="store_true", help="read the deployed templates from CloudFormation")
    parser.add_argument(
        "--gate", action="store_true", help="before a deploy: nothing to compare with is no reason to stop (status 0)"
    )
    parser.add_argument(
        "--delete-removed", action="store_true", help="after a deploy: delete the stacks of models no longer there"
    )
    args = parser.parse_args(argv)
    if args.save:
        save_deployed(args.stage, args.save)
        return 0
    after_dir = args.after or ROOT / "cdk.out" / f"assembly-{args.stage}"
    after = assembly_templates(after_dir)
    if args.delete_removed:
        return _delete_removed(args.stage, args.before or DEPLOYED / args.stage, after)
    if args.from_aws:
        import boto3

        from commands import stage_settings_or_exit

        cloudformation = boto3.client("cloudformation", region_name=stage_settings_or_exit(args.stage).region)
        stacks = {*STACKS, *after, *deployed_model_stacks(args.stage, cloudformation)}
        before = deployed_templates(args.stage, cloudformation, sorted(stacks))
    else:
        before_dir = args.before or DEPLOYED / args.stage
        if not (before_dir / "manifest.json").is_file():
            print(
                f"nothing to compare with: {before_dir} holds no cloud assembly (`make deploy` saves one after each "
                "success; or give --from-aws with credentials)",
                file=sys.stderr,
            )
            return 0 if args.gate else 2
        before = assembly_templates(before_dir)
    result = plan(before, after)
    print(f"# Plan of stage {args.stage}\n")
    print("\n".join(f"- {line}" for line in result.lines))
    if result.refusals and args.gate:
        print(
            f"\n{len(result.refusals)} change(s) refused: see the plan above; FORCE=1 deploys anyway", file=sys.stderr
        )
    return 1 if result.refusals else 0


def delete_removed_models(
    stage: str, before: Collection[str], after: Collection[str], cloudformation: Any
) -> list[str]:
    """After a deploy: delete the stacks of the models the stage no longer has (`cdk deploy` leaves a stack that left
    the app), each waited for. A stack under termination protection (a production stage's) is left, with the way to
    delete it said: that is a decision for a person. The stacks deleted."""
    deleted = []
    for stack in sorted(set(before) - set(after)):
        if not stack.startswith(MODEL_STACK_PREFIX):
            continue
        name = f"{stage}-{stack}"
        (described,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
        if described.get("EnableTerminationProtection"):
            print(
                f"{name} is protected from deletion: `aws cloudformation update-termination-protection "
                f"--no-enable-termination-protection --stack-name {name}`, then `aws cloudformation delete-stack "
                f"--stack-name {name}`",
                file=sys.stderr,
            )
            continue
        print(f"deleting {name}: {stack.removeprefix(MODEL_STACK_PREFIX)} is no longer in the stage")
        cloudformation.delete_stack(StackName=name)
        cloudformation.get_waiter("stack_delete_complete").wait(StackName=name)
        deleted.append(name)
    return deleted


def _delete_removed(stage: str, before_dir: Path, after: dict[str, dict[str, Any]]) -> int:
    if not (before_dir / "manifest.json").is_file():
        return 0  # a first deploy here: no model stack was deployed from this copy
    import boto3

    from commands import stage_settings_or_exit

    cloudformation = boto3.client("cloudformation", region_name=stage_settings_or_exit(stage).region)
    delete_removed_models(stage, assembly_templates(before_dir), after, cloudformation)
    return 0


def save_deployed(stage: str, assembly: Path, root: Path = DEPLOYED) -> None:
    """After a successful deploy: keep its cloud assembly (templates and manifest) for the next `make plan`."""
    target = root / stage
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(assembly, target, ignore=shutil.ignore_patterns("asset.*", "*.zip"))


if __name__ == "__main__":
    sys.exit(main())
