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

from typing import Any

import cdk8s
from constructs import Construct

from charts.api_object import api_object
from charts.vllm_server import (
    CHECKOV_EXCEPTIONS,
    POD_SECURITY_LABELS,
    checkov_skip_annotations,
    container_security_context,
)
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
    "CKV_K8S_43": CHECKOV_EXCEPTIONS["CKV_K8S_43"],
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
        namespace = cdk8s.ApiObjectMetadata(name=NODE_ROTATION_NAMESPACE, labels=POD_SECURITY_LABELS)
        api_object(self, "Namespace", "v1", "Namespace", namespace)
        api_object(
            self,
            "ServiceAccount",
            "v1",
            "ServiceAccount",
            cdk8s.ApiObjectMetadata(name=SERVICE_ACCOUNT, namespace=NODE_ROTATION_NAMESPACE),
        )
        rules = [
            {"apiGroups": ["karpenter.sh"], "resources": ["nodeclaims"], "verbs": ["list"]},
            {
                "apiGroups": ["karpenter.sh"],
                "resources": ["nodepools"],
                "verbs": ["patch"],
                "resourceNames": sorted(name for names in schedules.values() for name in names),
            },
        ]
        api_object(
            self,
            "ClusterRole",
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            cdk8s.ApiObjectMetadata(name=NODE_ROTATION_NAMESPACE),
            rules=rules,
        )
        api_object(
            self,
            "ClusterRoleBinding",
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            cdk8s.ApiObjectMetadata(name=NODE_ROTATION_NAMESPACE),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_ROTATION_NAMESPACE},
            subjects=[{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NODE_ROTATION_NAMESPACE}],
        )
        for start, names in schedules.items():
            hour, minute = (int(part) for part in start.split(":"))
            api_object(
                self,
                f"CronJob-{hour:02d}{minute:02d}",
                "batch/v1",
                "CronJob",
                cdk8s.ApiObjectMetadata(
                    name=f"rotate-at-{hour:02d}{minute:02d}",
                    namespace=NODE_ROTATION_NAMESPACE,
                    annotations=checkov_skip_annotations(ROTATION_CHECKOV_EXCEPTIONS),
                ),
                spec=cron_job_spec(f"{minute} {hour} * * *", names, image),
            )


def cron_job_spec(schedule: str, pools: list[str], image: str) -> dict[str, Any]:
    """At the window's start in UTC, once; a run that cannot start within the first half hour is skipped."""
    return {
        "schedule": schedule,
        # The window is in UTC, as the Drifted budget's schedule (Karpenter has no time zones). timeZone is
        # stable since Kubernetes 1.27 (Kubernetes docs, "CronJob", "Time zones").
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 1800,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 3,
                "activeDeadlineSeconds": 600,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "restartPolicy": "Never",
                        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [
                            {
                                "name": "rotate",
                                "image": image,
                                "imagePullPolicy": "Always",  # a small image, once a day
                                "command": ["python3", "-c", ROTATION_SCRIPT],
                                "env": [
                                    {"name": "POOLS", "value": ",".join(pools)},
                                    {"name": "ROTATE_WITHIN_HOURS", "value": str(ROTATE_WITHIN_HOURS)},
                                    {"name": "ANNOTATION", "value": ROTATION_ANNOTATION},
                                ],
                                "resources": {
                                    "requests": {"cpu": f"{ROTATION_CPU_MILLIS}m", "memory": "64Mi"},
                                    "limits": {"cpu": "200m", "memory": "128Mi"},
                                },
                                "securityContext": container_security_context(RUN_AS_USER),
                            }
                        ],
                    }
                },
            }
        },
    }
