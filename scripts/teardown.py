"""Delete a stage so that nothing Auto Mode created is orphaned, then say what was kept: `make destroy STAGE=dev`.

EKS Auto Mode creates AWS resources for Kubernetes objects: load balancers for Services of type
LoadBalancer and for Ingresses, EBS volumes for PersistentVolumeClaims, EC2 instances for
NodeClaims. Deleting the cluster stack first would leave them running, outside CloudFormation,
and their network interfaces would then stop the VPC's deletion. So, in this order, while the
cluster still runs its controllers:

1. Services of type LoadBalancer and Ingresses, in every namespace (their load balancers go);
2. PersistentVolumeClaims (their volumes go; the weights volume only lets go of the file system),
   marked for deletion: Kubernetes keeps a claim while a running pod mounts it ("Storage Object
   in Use Protection"), so they go once their pods do;
3. NodePools, then NodeClaims (Auto Mode terminates the nodes, and their pods go), waiting until
   none is left, then until the claims are gone too;
4. `cdk destroy` of the stage's stacks;
5. a list of what the stage keeps on purpose (its retained resources), with the command that
   removes each.

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

from scripts import stage_settings_or_exit

ROOT = Path(__file__).resolve().parent.parent
# Object kinds whose deletion makes Auto Mode delete AWS resources, in the order they go.
KUBERNETES_CLEANUP = (
    ("services", "load balancers", lambda item: item["spec"].get("type") == "LoadBalancer"),
    ("ingresses", "load balancers", lambda item: True),
    ("persistentvolumeclaims", "volumes", lambda item: True),
)
# Kinds whose deletion waits for the AWS resources to go; a claim waits for its pods instead (step 2).
WAIT_FOR_DELETION = {"services": True, "ingresses": True, "persistentvolumeclaims": False}
# Bounds on the waits; kubectl's own default is a week.
LOAD_BALANCER_WAIT, NODE_WAIT, CLAIM_WAIT = "10m", "15m", "10m"


class TeardownError(Exception):
    """A step failed; the message says which and how to go on by hand."""


def run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode:
        raise TeardownError(f"{' '.join(command[:3])} failed: {result.stderr.strip()}")
    return result


def kubernetes_cleanup(cluster: str, region: str) -> None:
    """Steps 1-3, against the stage's cluster; nothing to do when the cluster is already gone."""
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = str(Path(scratch) / "kubeconfig")
        found = run(
            ["aws", "eks", "update-kubeconfig", "--region", region, "--name", cluster, "--kubeconfig", kubeconfig],
            check=False,
        )
        if found.returncode:
            print(f"cluster {cluster} not reachable ({found.stderr.strip()}): no Kubernetes objects to delete first")
            return
        kubectl = ["kubectl", "--kubeconfig", kubeconfig]
        for kind, what, selected in KUBERNETES_CLEANUP:
            items = json.loads(run([*kubectl, "get", kind, "--all-namespaces", "-o", "json"]).stdout)["items"]
            for item in filter(selected, items):
                namespace, name = item["metadata"]["namespace"], item["metadata"]["name"]
                print(f"deleting {kind} {namespace}/{name} (and its {what})")
                # kubectl waits for the finalizers, that is until Auto Mode has deleted the AWS resources.
                wait = WAIT_FOR_DELETION[kind]
                bound = ["--wait=true", f"--timeout={LOAD_BALANCER_WAIT}"] if wait else ["--wait=false"]
                run([*kubectl, "delete", kind, name, "--namespace", namespace, *bound])
        run([*kubectl, "delete", "nodepools.karpenter.sh", "--all", "--wait=true", f"--timeout={NODE_WAIT}"])
        run([*kubectl, "delete", "nodeclaims.karpenter.sh", "--all", "--wait=false"])
        run([*kubectl, "wait", "--for=delete", "nodeclaims.karpenter.sh", "--all", f"--timeout={NODE_WAIT}"])
        run(
            [
                *kubectl,
                *("wait", "--for=delete", "persistentvolumeclaims", "--all", "--all-namespaces"),
                f"--timeout={CLAIM_WAIT}",
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
    parser = argparse.ArgumentParser(prog="python -m scripts.teardown", description=__doc__.splitlines()[0])
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
        kubernetes_cleanup(settings.cluster.name, settings.region)
        run([*cdk, "destroy", "--force", "-c", f"stage={args.stage}", f"{args.stage}/*"])
    except TeardownError as error:
        print(f"teardown of stage {args.stage} stopped: {error}", file=sys.stderr)
        if settings.production:
            print("a production stage's stacks have termination protection: see README, Clean up", file=sys.stderr)
        return 1
    print(f"\nstage {args.stage} is deleted; it keeps, on purpose (find them by the tag stage={args.stage}):")
    for item in kept(assembly):
        print(f"  {item.stack} {item.kind} {item.logical_id}: {item.remove}")
    print(
        f"  the repositories the pull-through cache created under {settings.image_cache_prefix}/: "
        "aws ecr delete-repository --repository-name <name> --force"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
