"""A stand-in for a stage's cluster during teardown: kubectl, the AWS CLI and `cdk destroy` against simulated
controllers that behave as their sources show, on a simulated clock that only blocking commands advance.

- Karpenter (kubernetes-sigs/karpenter): deleting a NodePool deletes its NodeClaims (owner references, background
  cascade, no finalizer on the pool); a deleted NodeClaim drains its node through the eviction API, which respects
  PodDisruptionBudgets, until its termination time (deletion + the pool's terminationGracePeriod) minus a pod's
  grace period, when the pod is deleted anyway (pkg/controllers/nodeclaim/lifecycle/controller.go,
  pkg/controllers/node/termination/terminator); the NodeClaim's finalizer goes once its node is empty and the
  instance has shut down. A pod no pool can take stays Pending.
- KEDA (kedacore/keda controllers/keda/scaledobject_finalizer.go): finalizer.keda.sh on ScaledObjects and
  TriggerAuthentications is removed by the operator only, which runs on Auto Mode's general-purpose pool.
- Kubernetes: a Deployment keeps its replica count (a surplus pod is deleted, not evicted); a terminating pod goes
  after its drain, at most its grace period; a claim goes when no pod mounts it; a namespace when it is empty;
  load balancers' finalizers go once Elastic Load Balancing has deleted them.
- kubectl (kubernetes/kubectl pkg/cmd/wait, delete): `wait --for=delete` succeeds on nothing; a wait past its
  timeout fails. `cdk destroy` deletes each chart's objects as the CDK's kubectl handler does (`kubectl delete -f`,
  bounded by its Lambda function's 15 minutes), the model charts before KEDA's (their dependency).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

from settings import StageSettings, names
from settings.drain import termination_grace_seconds
from settings.schema import duration_seconds

# How long a replica takes to stop once asked (the preStop drain of an idle replica and vLLM's own stop).
REPLICA_STOP_SECONDS = 20
# A new GPU replica's start on a new node (settings/cold_start.py's model, rounded).
REPLICA_START_SECONDS = 480
# An empty node's instance shutting down before Karpenter removes the NodeClaim's finalizer.
INSTANCE_SHUTDOWN_SECONDS = 90
# Elastic Load Balancing deleting a load balancer.
LOAD_BALANCER_DELETION_SECONDS = 120
# The CDK kubectl handler's Lambda function times out after 15 minutes.
HANDLER_SECONDS = 900
KEDA_FINALIZER = "finalizer.keda.sh"
KARPENTER_FINALIZER = "karpenter.sh/termination"
AUTO_MODE_POOLS = ("system", "general-purpose")
SHORT_KINDS = {
    "nodepools.karpenter.sh": "nodepools",
    "nodeclaims.karpenter.sh": "nodeclaims",
    "nodeclasses.eks.amazonaws.com": "nodeclasses",
    "scaledobjects.keda.sh": "scaledobjects",
    "triggerauthentications.keda.sh": "triggerauthentications",
}
CLUSTER_SCOPED = ("nodepools", "nodeclaims", "nodeclasses", "namespaces")


@dataclass
class Obj:
    kind: str
    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    finalizers: list[str] = field(default_factory=list)
    deleted_at: float | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        metadata = {"name": self.name, "labels": self.labels, "finalizers": self.finalizers}
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {"kind": self.kind, "metadata": metadata, "spec": self.spec}


class Cluster:
    def __init__(self) -> None:
        self.now = 0.0
        self.objects: list[Obj] = []
        self.log: list[str] = []
        self._names = itertools.count(1)
        self.reachable = True
        # The stage's deployed model stacks that its app no longer has (`aws cloudformation list-stacks`).
        self.stacks: list[str] = []

    # --- building the starting state ---

    def add(self, kind: str, name: str, namespace: str = "", **fields: Any) -> Obj:
        obj = Obj(kind, name, namespace, **fields)
        self.objects.append(obj)
        return obj

    def node(self, pool: str) -> Obj:
        grace = self.one("nodepools", pool).spec["grace"]
        return self.add(
            "nodeclaims",
            f"{pool}-{next(self._names)}",
            labels={"karpenter.sh/nodepool": pool},
            finalizers=[KARPENTER_FINALIZER],
            spec={"grace": grace, "nodeClass": self.one("nodepools", pool).spec["nodeClass"]},
        )

    def pod(self, namespace: str, app: str, node: Obj | None, *, grace: int, owner: str = "", gpu: bool = False) -> Obj:
        return self.add(
            "pods",
            f"{app}-{next(self._names)}",
            namespace,
            labels={"app": app},
            spec={
                "node": node.name if node else None,
                "grace": grace,
                "owner": owner,
                "gpu": gpu,
                "ready_at": self.now,
            },
        )

    # --- queries ---

    def live(self, kind: str, namespace: str | None = None) -> list[Obj]:
        return [o for o in self.objects if o.kind == kind and (namespace is None or o.namespace == namespace)]

    def one(self, kind: str, name: str, namespace: str = "") -> Obj:
        (found,) = [o for o in self.live(kind) if o.name == name and o.namespace == namespace]
        return found

    def find(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        return next((o for o in self.live(kind) if o.name == name and o.namespace == namespace), None)

    def pods_on(self, claim: Obj) -> list[Obj]:
        return [pod for pod in self.live("pods") if pod.spec["node"] == claim.name]

    def keda_running(self) -> bool:
        return any(pod.labels.get("app") == "keda-operator" and pod.deleted_at is None for pod in self.live("pods"))

    # --- deletion ---

    def delete(self, obj: Obj) -> None:
        if obj.deleted_at is not None:
            return
        if obj.kind == "pods":
            obj.deleted_at = self.now  # terminating: goes after its drain (step)
            return
        obj.deleted_at = self.now
        if obj.kind == "nodepools":  # owner references: the claims go too (background cascade)
            for claim in self.live("nodeclaims"):
                if claim.labels.get("karpenter.sh/nodepool") == obj.name:
                    self.delete(claim)
        if obj.kind == "deployments":
            for pod in self.live("pods", obj.namespace):
                if pod.spec["owner"] == obj.name:
                    self.delete(pod)
        if obj.kind == "namespaces":
            for contained in [o for o in self.objects if o.namespace == obj.name]:
                self.delete(contained)
            obj.finalizers = ["kubernetes"]
        self._remove_if_done(obj)

    def _remove_if_done(self, obj: Obj) -> None:
        if obj.deleted_at is not None and not obj.finalizers and obj.kind != "pods" and obj in self.objects:
            self.objects.remove(obj)
            self.log.append(f"{self.now:>6.0f} s  {obj.kind} {obj.namespace}/{obj.name} gone")

    # --- the controllers, one simulated second at a time ---

    def step(self) -> None:
        self.now += 1
        self._deployments()
        self._karpenter()
        for pod in list(self.live("pods")):
            if pod.deleted_at is not None and self.now - pod.deleted_at >= min(REPLICA_STOP_SECONDS, pod.spec["grace"]):
                self.objects.remove(pod)
        for obj in list(self.objects):
            if obj.deleted_at is None:
                continue
            if KEDA_FINALIZER in obj.finalizers and self.keda_running():
                obj.finalizers.remove(KEDA_FINALIZER)
            if obj.kind in ("services", "ingresses") and self.now - obj.deleted_at >= LOAD_BALANCER_DELETION_SECONDS:
                obj.finalizers = []
            if obj.kind == "persistentvolumeclaims" and not self.live("pods", obj.namespace):
                obj.finalizers = []
            if obj.kind == "namespaces" and not any(o.namespace == obj.name for o in self.objects):
                obj.finalizers = []
            if obj.kind == "nodeclasses" and not any(c.spec["nodeClass"] == obj.name for c in self.live("nodeclaims")):
                obj.finalizers = []
            self._remove_if_done(obj)

    def _deployments(self) -> None:
        for deployment in self.live("deployments"):
            if deployment.deleted_at is not None:
                continue
            pods = [
                pod
                for pod in self.live("pods", deployment.namespace)
                if pod.spec["owner"] == deployment.name and pod.deleted_at is None
            ]
            for surplus in pods[deployment.spec["replicas"] :]:
                self.delete(surplus)
            for _ in range(deployment.spec["replicas"] - len(pods)):
                pool = next((p for p in self.live("nodepools") if p.spec["gpu"] and p.deleted_at is None), None)
                node = self.node(pool.name) if pool else None  # no pool left: the pod stays Pending
                pod = self.pod(
                    deployment.namespace, deployment.spec["app"], node, grace=deployment.spec["grace"], gpu=True
                )
                # A Pending pod never becomes ready: nothing runs it.
                ready_at = self.now + REPLICA_START_SECONDS if node else math.inf
                pod.spec.update(owner=deployment.name, ready_at=ready_at)

    def _karpenter(self) -> None:
        for claim in self.live("nodeclaims"):
            if claim.deleted_at is None:
                continue
            termination = claim.deleted_at + claim.spec["grace"]
            for pod in self.pods_on(claim):
                if pod.deleted_at is not None:
                    continue
                if self.now >= termination - pod.spec["grace"]:
                    self.log.append(f"{self.now:>6.0f} s  Karpenter deletes {pod.name}: termination time is near")
                    self.delete(pod)
                elif self._eviction_allowed(pod):
                    self.log.append(f"{self.now:>6.0f} s  {pod.name} evicted from {claim.name}")
                    self.delete(pod)
            if not self.pods_on(claim):
                claim.spec.setdefault("empty_at", self.now)
                if self.now - claim.spec["empty_at"] >= INSTANCE_SHUTDOWN_SECONDS:
                    claim.finalizers = []
                    self._remove_if_done(claim)

    def _eviction_allowed(self, pod: Obj) -> bool:
        """The eviction API: a PodDisruptionBudget of maxUnavailable N admits it while fewer than N of the pods it
        selects are unavailable (not ready, or terminating), counted against the Deployment's replicas."""
        for budget in self.live("poddisruptionbudgets", pod.namespace):
            if budget.spec["app"] != pod.labels.get("app"):
                continue
            selected = [p for p in self.live("pods", pod.namespace) if p.labels.get("app") == budget.spec["app"]]
            ready = [p for p in selected if p.deleted_at is None and p.spec["ready_at"] <= self.now]
            deployment = self.find("deployments", pod.spec["owner"], pod.namespace)
            expected = deployment.spec["replicas"] if deployment else len(selected)
            if expected - len(ready) >= budget.spec["maxUnavailable"]:
                return False
        return True

    def run_until(self, done: Any, timeout: float) -> bool:
        deadline = self.now + timeout
        while not done():
            if self.now >= deadline:
                return False
            self.step()
        return True

    # --- the command line tools ---

    def __call__(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        """subprocess.run for `aws`, `kubectl` and `cdk` commands."""
        tool, *args = command
        self.log.append(f"{self.now:>6.0f} s  $ {' '.join(command)}")
        if tool == "aws" and args[0] == "cloudformation":
            return self._cloudformation(args[1:])
        if tool == "aws":
            ok = self.reachable
            return self._result(0 if ok else 254, "", "" if ok else "No cluster found")
        if tool == "cdk":
            return self._cdk_destroy()
        args = [a for a in args if not a.startswith("--kubeconfig")]
        args = [a for i, a in enumerate(args) if i == 0 or not args[i - 1].startswith("--kubeconfig")]
        if args and args[0].startswith("/"):
            args = args[1:]
        return self._kubectl(args)

    def _cloudformation(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        """The stage's stacks outside the app (`stacks`): listed, and deleted with their model's objects."""
        if args[0] == "list-stacks":
            return self._result(
                0, json.dumps([{"StackName": s, "StackStatus": "UPDATE_COMPLETE"} for s in self.stacks])
            )
        if args[0] == "delete-stack":
            stack = args[args.index("--stack-name") + 1]
            self.stacks.remove(stack)
            # Its charts' objects go with it, as the serving stack's do (_cdk_destroy).
            namespace = self.find("namespaces", stack.rsplit("-Model-", 1)[1])
            if namespace is not None:
                self.delete(namespace)
                self.run_until(lambda: namespace not in self.objects, HANDLER_SECONDS)
        return self._result(0)

    def _result(self, code: int, out: str = "", err: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], code, out, err)

    def _kubectl(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        verb, kind, *rest = args
        if verb == "wait":
            verb, kind, rest = "wait", rest[0], rest[1:]
        kind = SHORT_KINDS.get(kind, kind)
        options, named = _parsed(rest)
        namespace = options.get("--namespace", "")
        everywhere = "--all-namespaces" in options

        def selected() -> list[Obj]:
            scope = self.live(kind) if everywhere or kind in CLUSTER_SCOPED else self.live(kind, namespace)
            if "-l" in options:
                scope = [o for o in scope if _matches(o.labels, options["-l"])]
            elif named:
                scope = [o for o in scope if o.name in named]
            return scope

        if verb == "get":
            found = selected()
            if named and not found and "--ignore-not-found" not in options:
                return self._result(1, err=f'{kind} "{named[0]}" not found')
            if options.get("-o") == "name":
                return self._result(0, "".join(f"{kind}/{o.name}\n" for o in found))
            return self._result(0, json.dumps({"items": [o.as_json() for o in found]}))
        if verb == "scale":
            (deployment,) = selected()
            deployment.spec["replicas"] = int(options["--replicas"])
            self.step()
            return self._result(0)
        timeout = _seconds(options.get("--timeout", "0s"))
        if verb == "delete":
            targets = selected()
            if named and not targets and "--ignore-not-found" not in options:
                return self._result(1, err=f'{kind} "{named[0]}" not found')
            for obj in targets:
                self.delete(obj)
            if options.get("--wait", "true") == "false":
                self.step()
                return self._result(0)
            limit = timeout or 7 * 24 * 3600  # kubectl delete's default: a week
            done = self.run_until(lambda: not any(o in self.objects for o in targets), limit)
            return self._result(0 if done else 1, err="" if done else "timed out waiting for the condition")
        if verb == "wait":
            targets = selected()
            done = self.run_until(lambda: not any(o in self.objects for o in targets), timeout or 30)
            return self._result(0 if done else 1, err="" if done else "timed out waiting for the condition")
        raise AssertionError(f"the stand-in has no `kubectl {verb}`")

    def _cdk_destroy(self) -> subprocess.CompletedProcess[str]:
        """CloudFormation deletes the Serving stack's charts, each with `kubectl delete -f` within 15 minutes: the
        models' namespaces before KEDA's (they depend on it), then the rest of the cluster with its stack."""
        chart_namespaces = [ns.name for ns in self.live("namespaces") if ns.spec.get("chart")]
        for name in [*chart_namespaces, "keda"]:
            namespace = self.find("namespaces", name)
            if namespace is None:
                continue
            self.delete(namespace)
            if not self.run_until(lambda ns=namespace: ns not in self.objects, HANDLER_SECONDS):
                stuck = [f"{o.kind}/{o.name} {o.finalizers}" for o in self.objects if o.namespace == name]
                return self._result(1, err=f"Serving DELETE_FAILED: namespace {name} still holds {stuck}")
        self.objects.clear()  # the cluster's stack goes, and everything in it
        return self._result(0)


# kubectl's options that take their value as the next argument, as teardown spells them.
SEPARATE_VALUES = ("--namespace", "-l", "-o")


def _parsed(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """A command's options (`--key=value`, or a SEPARATE_VALUES option and the next argument) and its names."""
    options, names = {}, []
    values = iter(args)
    for arg in values:
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            options[key] = value
        elif arg in SEPARATE_VALUES:
            options[arg] = next(values)
        elif arg.startswith("-"):
            options[arg] = ""
        else:
            names.append(arg)
    return options, names


def _matches(labels: dict[str, str], selector: str) -> bool:
    within = re.fullmatch(r"\s*([\w./-]+)\s+in\s+\(([^)]*)\)\s*", selector)
    if within:
        return labels.get(within.group(1)) in [value.strip() for value in within.group(2).split(",")]
    key, value = selector.split("=", 1)
    return labels.get(key) == value


def _seconds(duration: str) -> float:
    return sum(int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def stage_cluster(settings: StageSettings) -> Cluster:
    """A stage's cluster as it serves: Auto Mode's pools with KEDA's operator on general-purpose, each GPU pool, and
    each model's namespace with its replicas on GPU nodes of the first pool, budget, autoscaler, Service and claim."""
    cluster = Cluster()
    cluster.add("nodeclasses", "default", finalizers=["eks.amazonaws.com/termination"])
    for name in AUTO_MODE_POOLS:
        cluster.add("nodepools", name, spec={"grace": 24 * 3600, "gpu": False, "nodeClass": "default"})
    for pool in settings.gpu_node_pools:
        cluster.add("nodeclasses", pool.name, finalizers=["eks.amazonaws.com/termination"])
        grace = duration_seconds(pool.termination_grace_period)
        cluster.add("nodepools", pool.name, spec={"grace": grace, "gpu": True, "nodeClass": pool.name})
    cluster.add("namespaces", "keda")
    cluster.pod("keda", "keda-operator", cluster.node("general-purpose"), grace=30)
    first_pool = settings.gpu_node_pools[0].name
    for model in settings.models:
        namespace, app, grace = model.name, names.app_label(model.name), termination_grace_seconds(model)
        cluster.add("namespaces", namespace, spec={"chart": True})
        cluster.add("deployments", model.name, namespace, spec={"replicas": model.replicas, "app": app, "grace": grace})
        for _ in range(model.replicas):
            cluster.pod(namespace, app, cluster.node(first_pool), grace=grace, owner=model.name, gpu=True)
        cluster.add("poddisruptionbudgets", model.name, namespace, spec={"app": app, "maxUnavailable": 1})
        if model.autoscaling is not None:
            for kind in ("scaledobjects", "triggerauthentications"):
                cluster.add(kind, model.name, namespace, finalizers=[KEDA_FINALIZER])
        cluster.add("services", model.service_name, namespace, spec={"type": "ClusterIP"})
        cluster.add("persistentvolumeclaims", "model-weights", namespace, finalizers=["kubernetes.io/pvc-protection"])
    return cluster
