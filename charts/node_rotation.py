"""Keeps GPU node expiry inside each pool's maintenance window, by replacing old nodes there first.

Karpenter's expiry is forceful and has no disruption budget: a NodeClaim is deleted once
`creationTimestamp + spec.expireAfter` has passed, whatever the hour (kubernetes-sigs/karpenter
pkg/controllers/nodeclaim/expiration/controller.go), and Auto Mode allows no `expireAfter` above
21 days (EKS User Guide, "Create a Node Pool for EKS Auto Mode"). Drift, though, waits for the
window (charts/gpu_node_pool.py, disruption_budgets) and replaces a node gracefully: the new node
first, then the old one drained. So when a window opens, a CronJob looks for GPU nodes that would
expire before two more windows have passed, and if a pool has any (and none still drifting from an
earlier rotation), it writes the time into the pool's template annotations. The template,
annotations included, is what Karpenter hashes for drift (kubernetes-sigs/karpenter
pkg/apis/v1/nodepool.go, NodePool.Hash), so the pool's nodes drift and are replaced within the
window, the disruption budget's number at a time.

The annotation survives the stack's later deploys: the CDK kubectl handler creates objects with
`kubectl create --save-config` and updates them with a client-side `kubectl apply`, which leaves
alone fields that the last applied configuration did not set (aws-cdk-lib,
custom-resource-handlers aws-eks-v2/kubectl-handler/apply).
"""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.pod_security import PINNED_BY_TAG, POD_SECURITY_LABELS, checkov_skip_annotations, hardened, non_root_pod
from settings.names import NODE_ROTATION_NAMESPACE
from settings.schema import GpuNodePoolSettings

SERVICE_ACCOUNT = "gpu-node-rotation"
ROTATION_ANNOTATION = "gpu-node-rotation/rotated-at"
ROTATION_CPU_MILLIS = 50
# A small image with Python's standard library, which is all the job needs (pulled through the cache).
ROTATION_IMAGE = "public.ecr.aws/docker/library/python:3.12.12-slim"
# A node is replaced when it would expire within this: the day until the window opens again, and
# one more day in case this window ends before every drifted node of the pool is replaced.
ROTATE_WITHIN_HOURS = 48
RUN_AS_USER = 65534  # nobody
# checkov's checks the job fails on purpose, with the reasons.
ROTATION_CHECKOV_EXCEPTIONS = {
    "CKV_K8S_38": "the job's work is Kubernetes API calls, made with its service account's token",
    "CKV_K8S_43": PINNED_BY_TAG,
    "CKV_K8S_31": "seccomp is RuntimeDefault on the job's one container, which the restricted Pod Security Standard "
    "accepts; cdk8s-plus sets no pod-level seccompProfile, the only place checkov reads for a CronJob (checkov "
    "kubernetes/checks/resource/k8s/Seccomp.py)",
}

# The job, from the Kubernetes API alone. KUBERNETES_API and SERVICE_ACCOUNT_DIR are there for its test.
ROTATION_SCRIPT = """
import datetime, json, os, re, ssl, urllib.parse, urllib.request
api = os.environ.get("KUBERNETES_API", "https://kubernetes.default.svc")
account = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
token = open(account + "/token").read().strip()
tls = ssl.create_default_context(cafile=account + "/ca.crt") if api.startswith("https:") else None
now = datetime.datetime.now(datetime.timezone.utc)
horizon = now + datetime.timedelta(hours=float(os.environ["ROTATE_WITHIN_HOURS"]))
SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "\\u00b5s": 1e-6, "ns": 1e-9}

def call(method, path, body=None):
    headers = {"Authorization": "Bearer " + token}
    if body is not None:
        headers["Content-Type"] = "application/merge-patch+json"
        body = json.dumps(body).encode()
    request = urllib.request.Request(api + path, method=method, data=body, headers=headers)
    with urllib.request.urlopen(request, context=tls, timeout=30) as response:
        return json.load(response)

def expiry(claim):  # spec.expireAfter is a Go duration such as 336h or 1h30m0s, or Never
    expire_after = claim["spec"].get("expireAfter", "Never")
    if expire_after == "Never":
        return None
    lifetime = sum(float(n) * SECONDS[unit] for n, unit in re.findall(r"([0-9.]+)([a-z\\u00b5]+)", expire_after))
    created = datetime.datetime.fromisoformat(claim["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return created + datetime.timedelta(seconds=lifetime)

def drifted(claim):  # Karpenter's Drifted condition: the claim waits to be replaced
    conditions = claim.get("status", {}).get("conditions", [])
    return any(c["type"] == "Drifted" and c["status"] == "True" for c in conditions)

for pool in os.environ["POOLS"].split(","):
    selector = urllib.parse.quote("karpenter.sh/nodepool=" + pool)
    claims = call("GET", "/apis/karpenter.sh/v1/nodeclaims?labelSelector=" + selector)["items"]
    due = sorted(claim["metadata"]["name"] for claim in claims if (expiry(claim) or horizon) < horizon)
    if not due:
        print(pool + ": no node expires before " + horizon.isoformat())
        continue
    drifting = [claim["metadata"]["name"] for claim in claims if drifted(claim)]
    if drifting:  # a rotation not finished yesterday goes on; a new one would replace the new nodes again
        print(pool + ": still replacing " + ", ".join(sorted(drifting)) + "; nodes due: " + ", ".join(due))
        continue
    patch = {"spec": {"template": {"metadata": {"annotations": {os.environ["ANNOTATION"]: now.isoformat()}}}}}
    call("PATCH", "/apis/karpenter.sh/v1/nodepools/" + pool, patch)
    print(pool + ": replacing its nodes now, since these expire before " + horizon.isoformat() + ": " + ", ".join(due))
"""


def rotation_schedules(pools: list[GpuNodePoolSettings]) -> dict[str, list[str]]:
    """The pools with a maintenance window, by the window's start (HH:MM, UTC)."""
    schedules: dict[str, list[str]] = {}
    for pool in pools:
        if pool.maintenance_window is not None:
            schedules.setdefault(pool.maintenance_window.start, []).append(pool.name)
    return schedules


class NodeRotationChart(cdk8s.Chart):
    """A CronJob per maintenance window start, allowed to read NodeClaims and to patch only its pools."""

    def __init__(self, scope: Construct, id: str, *, pools: list[GpuNodePoolSettings], image: str) -> None:
        super().__init__(scope, id, disable_resource_name_hashes=True)
        schedules = rotation_schedules(pools)
        kplus.Namespace(
            self,
            "Namespace",
            metadata=cdk8s.ApiObjectMetadata(name=NODE_ROTATION_NAMESPACE, labels=POD_SECURITY_LABELS),
        )
        # The job's work is Kubernetes API calls, made with this account's token.
        account = kplus.ServiceAccount(
            self,
            "ServiceAccount",
            metadata=cdk8s.ApiObjectMetadata(name=SERVICE_ACCOUNT, namespace=NODE_ROTATION_NAMESPACE),
            automount_token=True,
        )
        rotation_role(self, sorted(name for names in schedules.values() for name in names), account)
        for start, names in schedules.items():
            hour, minute = (int(part) for part in start.split(":"))
            rotation_cron_job(self, hour, minute, names, image, account)


def rotation_role(scope: Construct, pools: list[str], account: kplus.ServiceAccount) -> None:
    """May list NodeClaims, and patch the named pools only.

    cdk8s-plus's ClusterRole names a resource only through a construct of the resource's own, and a pool is applied
    by another chart: the typed objects.
    """
    role = k8s.KubeClusterRole(
        scope,
        "ClusterRole",
        metadata=k8s.ObjectMeta(name=NODE_ROTATION_NAMESPACE),
        rules=[
            k8s.PolicyRule(api_groups=["karpenter.sh"], resources=["nodeclaims"], verbs=["list"]),
            k8s.PolicyRule(api_groups=["karpenter.sh"], resources=["nodepools"], verbs=["patch"], resource_names=pools),
        ],
    )
    binding = kplus.ClusterRoleBinding(
        scope,
        "ClusterRoleBinding",
        metadata=cdk8s.ApiObjectMetadata(name=NODE_ROTATION_NAMESPACE),
        role=kplus.ClusterRole.from_cluster_role_name(scope, "Role", role.name),
    )
    binding.add_subjects(account)


def rotation_cron_job(
    scope: Construct, hour: int, minute: int, pools: list[str], image: str, account: kplus.ServiceAccount
) -> kplus.CronJob:
    """At the window's start in UTC, once; a run that cannot start within the first half hour is skipped."""
    job = kplus.CronJob(
        scope,
        f"CronJob-{hour:02d}{minute:02d}",
        metadata=cdk8s.ApiObjectMetadata(
            name=f"rotate-at-{hour:02d}{minute:02d}",
            namespace=NODE_ROTATION_NAMESPACE,
            annotations=checkov_skip_annotations(ROTATION_CHECKOV_EXCEPTIONS),
        ),
        schedule=cdk8s.Cron.schedule(minute=str(minute), hour=str(hour)),
        # The window is in UTC, as the Drifted budget's schedule (Karpenter has no time zones). timeZone is
        # stable since Kubernetes 1.27 (Kubernetes docs, "CronJob", "Time zones").
        time_zone="Etc/UTC",
        concurrency_policy=kplus.ConcurrencyPolicy.FORBID,
        starting_deadline=cdk8s.Duration.minutes(30),
        backoff_limit=3,
        active_deadline=cdk8s.Duration.minutes(10),
        ttl_after_finished=cdk8s.Duration.days(1),
        select=False,
        restart_policy=kplus.RestartPolicy.NEVER,
        service_account=account,
        automount_service_account_token=True,
        security_context=non_root_pod(RUN_AS_USER),
    )
    job.add_container(
        name="rotate",
        image=image,
        image_pull_policy=kplus.ImagePullPolicy.ALWAYS,  # a small image, once a day
        command=["python3", "-c", ROTATION_SCRIPT],
        env_variables={
            "POOLS": kplus.EnvValue.from_value(",".join(pools)),
            "ROTATE_WITHIN_HOURS": kplus.EnvValue.from_value(str(ROTATE_WITHIN_HOURS)),
            "ANNOTATION": kplus.EnvValue.from_value(ROTATION_ANNOTATION),
        },
        resources=kplus.ContainerResources(
            cpu=kplus.CpuResources(request=kplus.Cpu.millis(ROTATION_CPU_MILLIS), limit=kplus.Cpu.millis(200)),
            memory=kplus.MemoryResources(request=cdk8s.Size.mebibytes(64), limit=cdk8s.Size.mebibytes(128)),
        ),
        security_context=hardened(RUN_AS_USER),
    )
    return job
