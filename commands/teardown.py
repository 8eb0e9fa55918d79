"""Delete a stage so that nothing Auto Mode created is orphaned, then say what was kept: `make destroy STAGE=dev`.

EKS Auto Mode creates AWS resources for Kubernetes objects: load balancers for Services of type
LoadBalancer and for Ingresses, EBS volumes for PersistentVolumeClaims, EC2 instances for
NodeClaims. Deleting the cluster stack first would leave them running, outside CloudFormation,
and their network interfaces would then stop the VPC's deletion. So, in this order, while the
cluster still runs its controllers:

1. Stop serving, per model: its KEDA objects first (KEDA's operator removes their finalizers,
   finalizer.keda.sh, only while it runs: kedacore/keda controllers/keda/scaledobject_finalizer.go),
   then its PodDisruptionBudget, then its Deployment scaled to zero, waiting for the replicas to drain
   within their grace period. Otherwise the budget (maxUnavailable 1) blocks a second replica's
   eviction once the GPU pools go, since its replacement can never be scheduled, and Karpenter deletes
   it only at the pool's terminationGracePeriod minus the pod's grace (kubernetes-sigs/karpenter
   pkg/controllers/node/termination/terminator).
2. Services of type LoadBalancer and Ingresses, in every namespace (their load balancers go);
3. PersistentVolumeClaims (their volumes go; the weights volume only lets go of the file system),
   marked for deletion: Kubernetes keeps a claim while a running pod mounts it ("Storage Object
   in Use Protection"), so they go once their pods do;
4. the stage's GPU NodePools, by name, then their NodeClaims (Auto Mode terminates the nodes),
   waiting until none is left, then the pools' NodeClasses, then the claims. Auto Mode's own pools
   (system, general-purpose) stay: KEDA and the other controllers run there until `cdk destroy`
   deletes their objects;
5. the stacks of models the stage no longer has but that are still deployed (the pipeline leaves a removed
   model's stack; step 1 stopped its serving too), then `cdk destroy` of the stage's stacks. An orphan's stack
   imports the stage's exports, so it goes first or the stacks it reads from could not;
6. a list of what the stage keeps on purpose (its retained resources), with the command that
   removes each.

Every wait is bounded by the settings that bound what it waits for (TeardownPlan); kubectl's own
default is a week.

Needs AWS credentials, the AWS CLI, kubectl and the project's CDK CLI (node_modules/.bin).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from commands import stage_settings_or_exit
from settings import StageSettings, names
from settings.drain import termination_grace_seconds
from settings.schema import duration_seconds

ROOT = Path(__file__).resolve().parent.parent
# Object kinds whose deletion makes Auto Mode delete AWS resources, in the order they go.
KUBERNETES_CLEANUP = (
    ("services", "load balancers", lambda item: item["spec"].get("type") == "LoadBalancer"),
    ("ingresses", "load balancers", lambda item: True),
    ("persistentvolumeclaims", "volumes", lambda item: True),
)
# Kinds whose deletion waits for the AWS resources to go; a claim waits for its pods instead (step 3).
WAIT_FOR_DELETION = {"services": True, "ingresses": True, "persistentvolumeclaims": False}
KEDA_KINDS = ("scaledobjects.keda.sh", "triggerauthentications.keda.sh")
NODE_POOLS, NODE_CLAIMS, NODE_CLASSES = (
    "nodepools.karpenter.sh",
    "nodeclaims.karpenter.sh",
    "nodeclasses.eks.amazonaws.com",
)
NODE_POOL_LABEL = "karpenter.sh/nodepool"
# KEDA's operator removes its finalizer on its next reconcile of a deleted object: seconds, given a minute here.
FINALIZER_SECONDS = 60
# After a pod's grace period the kubelet kills its containers, and the pod object goes once it reports that.
POD_GONE_MARGIN_SECONDS = 60
# Once a node holds no pod to wait for, Auto Mode terminates its instance and Karpenter then removes the
# NodeClaim's finalizer: an EC2 instance's shutdown, given ten minutes here (to measure: `make e2e`).
INSTANCE_TERMINATION_SECONDS = 600
# Elastic Load Balancing's deletion of a load balancer, and of a claim's volume once its pods are gone.
LOAD_BALANCER_SECONDS = 600
CLAIM_SECONDS = 600


class TeardownError(Exception):
    """A step failed; the message says which and how to go on by hand."""


@dataclass(frozen=True)
class ServedModel:
    """A model's objects that stop its serving, and how long its replicas may take to drain."""

    namespace: str
    deployment: str
    app_label: str
    autoscaled: bool
    drain_seconds: int


@dataclass(frozen=True)
class TeardownPlan:
    """What the stage made in its cluster and the bounds of each wait, from its settings."""

    cluster: str
    region: str
    models: tuple[ServedModel, ...]
    gpu_pools: tuple[str, ...]
    # Karpenter's bound on a node going away (the longest terminationGracePeriod of the pools), and the
    # instance's termination after it.
    node_seconds: int

    @classmethod
    def of(cls, settings: StageSettings, orphans: tuple[str, ...] = ()) -> TeardownPlan:
        """`orphans`: models still deployed that the settings no longer name; their replicas' grace is unknown, so
        the longest a pool lets a pod take bounds their drain (the settings check every grace against it)."""
        longest_pool_grace = max(duration_seconds(pool.termination_grace_period) for pool in settings.gpu_node_pools)
        return cls(
            cluster=settings.cluster.name,
            region=settings.region,
            models=(
                *(
                    served(model.name, model.autoscaling is not None, termination_grace_seconds(model))
                    for model in settings.models
                ),
                # Their autoscaler's objects exist only where the stage runs KEDA.
                *(served(name, settings.keda, longest_pool_grace) for name in orphans),
            ),
            gpu_pools=tuple(pool.name for pool in settings.gpu_node_pools),
            node_seconds=longest_pool_grace + INSTANCE_TERMINATION_SECONDS,
        )


def served(model_name: str, autoscaled: bool, grace_seconds: int) -> ServedModel:
    return ServedModel(
        namespace=names.namespace(model_name),
        deployment=model_name,
        app_label=names.app_label(model_name),
        autoscaled=autoscaled,
        drain_seconds=grace_seconds + POD_GONE_MARGIN_SECONDS,
    )


def orphaned_model_stacks(settings: StageSettings, stage: str) -> list[str]:
    """The model stacks the stage has deployed (any state but deleted) whose model its settings no longer name."""
    prefix = f"{stage}-{names.model_stack_id('')}"
    found = run(
        [
            *("aws", "cloudformation", "list-stacks", "--region", settings.region, "--output", "json"),
            *("--query", f"StackSummaries[?starts_with(StackName, '{prefix}') && StackStatus!='DELETE_COMPLETE']"),
        ]
    )
    current = {f"{stage}-{names.model_stack_id(model.name)}" for model in settings.models}
    return sorted({summary["StackName"] for summary in json.loads(found.stdout or "[]")} - current)


def delete_stacks(region: str, stacks: list[str]) -> None:
    """Deletes each stack and waits for it (CloudFormation's waiter gives up after an hour)."""
    for stack in stacks:
        print(f"deleting {stack}: its model is no longer in the stage's settings")
        run(["aws", "cloudformation", "delete-stack", "--region", region, "--stack-name", stack])
        run(["aws", "cloudformation", "wait", "stack-delete-complete", "--region", region, "--stack-name", stack])


def run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode:
        raise TeardownError(f"{' '.join(command[:3])} failed: {result.stderr.strip()}")
    return result


def stop_serving(kubectl: list[str], plan: TeardownPlan) -> None:
    """Step 1: every model's autoscaler, budget and replicas go, while KEDA and the GPU pools still run."""
    for model in plan.models:
        where = ["--namespace", model.namespace]
        if model.autoscaled:
            for kind in KEDA_KINDS:
                run([*kubectl, "delete", kind, "--all", *where, "--wait=true", f"--timeout={FINALIZER_SECONDS}s"])
        run([*kubectl, "delete", "poddisruptionbudgets", model.deployment, *where, "--ignore-not-found"])
        found = run([*kubectl, "get", "deployments", model.deployment, *where, "--ignore-not-found", "-o", "name"])
        if found.stdout.strip():
            print(f"stopping {model.namespace}/{model.deployment}: its replicas drain within {model.drain_seconds} s")
            run([*kubectl, "scale", "deployments", model.deployment, *where, "--replicas=0"])
    for model in plan.models:
        run(
            [
                *kubectl,
                *("wait", "--for=delete", "pods", "-l", f"app={model.app_label}", "--namespace", model.namespace),
                f"--timeout={model.drain_seconds}s",
            ]
        )


def remove_gpu_nodes(kubectl: list[str], plan: TeardownPlan) -> None:
    """Step 4: the stage's GPU NodePools by name (their NodeClaims follow, by owner reference), then the nodes
    are waited for, then the NodeClasses. Auto Mode's built-in pools are left alone."""
    pools = list(plan.gpu_pools)
    run([*kubectl, "delete", NODE_POOLS, *pools, "--ignore-not-found", "--wait=true", "--timeout=60s"])
    selector = f"{NODE_POOL_LABEL} in ({','.join(pools)})"
    run([*kubectl, "delete", NODE_CLAIMS, "-l", selector, "--wait=false"])
    run([*kubectl, "wait", "--for=delete", NODE_CLAIMS, "-l", selector, f"--timeout={plan.node_seconds}s"])
    run([*kubectl, "delete", NODE_CLASSES, *pools, "--ignore-not-found", "--wait=true", "--timeout=120s"])


def kubernetes_cleanup(plan: TeardownPlan) -> None:
    """Steps 1-4, against the stage's cluster; nothing to do when the cluster is already gone."""
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = str(Path(scratch) / "kubeconfig")
        found = run(
            [
                *("aws", "eks", "update-kubeconfig", "--region", plan.region, "--name", plan.cluster),
                *("--kubeconfig", kubeconfig),
            ],
            check=False,
        )
        if found.returncode:
            print(
                f"cluster {plan.cluster} not reachable ({found.stderr.strip()}): no Kubernetes objects to delete first"
            )
            return
        kubectl = ["kubectl", "--kubeconfig", kubeconfig]
        stop_serving(kubectl, plan)
        for kind, what, selected in KUBERNETES_CLEANUP:
            items = json.loads(run([*kubectl, "get", kind, "--all-namespaces", "-o", "json"]).stdout)["items"]
            for item in filter(selected, items):
                namespace, name = item["metadata"]["namespace"], item["metadata"]["name"]
                print(f"deleting {kind} {namespace}/{name} (and its {what})")
                # kubectl waits for the finalizers, that is until Auto Mode has deleted the AWS resources.
                wait = WAIT_FOR_DELETION[kind]
                bound = ["--wait=true", f"--timeout={LOAD_BALANCER_SECONDS}s"] if wait else ["--wait=false"]
                run([*kubectl, "delete", kind, name, "--namespace", namespace, *bound])
        remove_gpu_nodes(kubectl, plan)
        run(
            [
                *kubectl,
                *("wait", "--for=delete", "persistentvolumeclaims", "--all", "--all-namespaces"),
                f"--timeout={CLAIM_SECONDS}s",
            ]
        )


@dataclass(frozen=True)
class Kept:
    kind: str
    logical_id: str
    stack: str
    remove: str


REMOVE_COMMANDS = {
    "AWS::S3::Bucket": "aws s3 rb s3://<bucket> --force  (versioned: delete every object version first)",
    "AWS::KMS::Key": "aws kms schedule-key-deletion --key-id <key id> --pending-window-in-days 7",
    "AWS::Logs::LogGroup": "aws logs delete-log-group --log-group-name <name>",
    "Custom::LogRetention": "aws logs delete-log-group --log-group-name {LogGroupName}",
}


def kept(assembly: Path) -> Iterator[Kept]:
    """What the stage's templates keep when their stacks are deleted, and how to remove each."""
    manifest = json.loads((assembly / "manifest.json").read_text())
    for artifact in manifest["artifacts"].values():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        stack = artifact["properties"].get("stackName", artifact.get("displayName", ""))
        template = json.loads((assembly / artifact["properties"]["templateFile"]).read_text())
        for logical_id, resource in template["Resources"].items():
            properties = resource.get("Properties", {})
            retained = resource.get("DeletionPolicy") == "Retain" or properties.get("RemovalPolicy") == "retain"
            if retained:
                command = REMOVE_COMMANDS.get(resource["Type"], "see the resource in the console").format(**properties)
                yield Kept(resource["Type"], logical_id, stack, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.teardown", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--assembly", type=Path, help="the stage's synthesized cloud assembly (default: synth it)")
    args = parser.parse_args(argv)
    settings = stage_settings_or_exit(args.stage)
    cdk = ["cdk", "--no-notices"]
    assembly = args.assembly
    try:
        if assembly is None:
            run([*cdk, "synth", "--quiet", "-c", f"stage={args.stage}"])
            assembly = ROOT / "cdk.out" / f"assembly-{args.stage}"
        orphans = orphaned_model_stacks(settings, args.stage)
        prefix = f"{args.stage}-{names.model_stack_id('')}"
        kubernetes_cleanup(TeardownPlan.of(settings, tuple(stack.removeprefix(prefix) for stack in orphans)))
        delete_stacks(settings.region, orphans)
        run([*cdk, "destroy", "--force", "-c", f"stage={args.stage}", f"{args.stage}/*"])
    except TeardownError as error:
        print(f"teardown of stage {args.stage} stopped: {error}", file=sys.stderr)
        if settings.production:
            print(
                'a production stage\'s stacks have termination protection: see docs/operations.md, "Clean up"',
                file=sys.stderr,
            )
        return 1
    print(f"\nstage {args.stage} is deleted; it keeps, on purpose (find them by the tag stage={args.stage}):")
    for item in kept(assembly):
        print(f"  {item.stack} {item.kind} {item.logical_id}: {item.remove}")
    for prefix in (settings.image_cache_prefix, settings.docker_hub_cache_prefix, settings.kubernetes_cache_prefix):
        print(
            f"  the repositories the pull-through cache created under {prefix}/ (if any): "
            "aws ecr delete-repository --repository-name <name> --force"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
