"""One throwaway stage, proven in a real account and removed again: `make e2e` (needs AWS credentials; never in CI).

1. Writes a stage `e2e-<6 hex>` from the dev settings (settings/stages/e2e-*.yaml, removed at the
   end): its own cluster name and registry prefix, and the caller's IAM role as cluster admin.
2. Deploys it (`cdk deploy`), waits for the weights import and the rollout, runs the smoke test.
3. Runs a short load test from inside the VPC: vLLM's own `vllm bench serve`, in a Job that uses
   the vLLM image the stage already pulled (no other image to trust or pull), with the model's
   tokenizer from the file system.
4. Records the replica's cold start from Kubernetes events, pod conditions and NodeClaims, and
   writes a report (JSON, Markdown, a picture of the timeline) under e2e-report/<stage>/.
5. Destroys the stage (commands.teardown), then removes what a normal stage keeps: it is throwaway.
6. Checks that nothing tagged with the stage is left (commands.leftovers); anything left fails the run.

With --gateway the stage also runs the inference gateway with a second model (Qwen/Qwen3-8B) and, with --adapter
REPO@COMMIT:RANK, a LoRA adapter on gpt-oss-20b; the run creates the gateway's clients secret (and deletes it at the
end), and proves through the gateway (commands/gateway_checks.py): every model and the adapter by name, a client's
token quota answered with 429, and the endpoint picker's prefix hit ratio for requests sharing a prefix, which the
report records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cdk8s
import cdk8s_plus_30 as kplus
import yaml

from charts import DeployedResources, build_charts
from charts.gateway import HTTP_PORT as GATEWAY_PORT
from charts.gateway import NAME as GATEWAY_NAME
from charts.gateway import NAMESPACE as GATEWAY_NAMESPACE
from charts.gateway_model import PICKER_METRICS_PORT
from charts.model_loader import job_name_in
from charts.model_volume import CLAIM_NAME
from charts.pod_security import hardened, non_root_pod
from charts.shared_compile_cache import RESTORE_CONTAINER, SAVE_CONTAINER
from charts.vllm_server import PORT, RUN_AS_USER, WEIGHTS_DIR
from commands import e2e_report, leftovers, teardown
from commands import gateway_checks as gateway_checks_module
from settings import STAGES_DIR, load_stage_settings, names, parse_stage_settings
from settings.cold_start import (
    WARM_COMPILE_CACHE_SAVES_SECONDS,
    cold_start_seconds,
    cold_start_steps,
    import_steps,
    keeping_up,
    progress_deadline_seconds,
)
from settings.schema import LUSTRE_THROUGHPUTS_PER_TIB, ModelSettings, StageSettings
from settings.sizing import candidates, on_demand_prices
from settings.yaml_files import load_yaml
from stacks.smoke_test_project import smoke_test_args
from workloads import smoke_test as smoke_test_script

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "e2e-report"
# The load test: enough requests at a few concurrent users to measure TTFT, ITL and throughput.
LOAD_TEST = ("--dataset-name", "random", "--random-input-len", "512", "--random-output-len", "256")
LOAD_TEST_PROMPTS, LOAD_TEST_CONCURRENCY = 64, 8


# How long the parts of a run take that the settings do not model: assumptions to compare with a run's own report.
# CloudFormation creates the VPC, the EKS cluster (about 10-15 minutes) and the FSx for Lustre file system (about
# 10-20 minutes) side by side; deletes them likewise after the teardown's own steps.
DEPLOY_SECONDS = 30 * 60
SMOKE_AND_LOAD_TEST_SECONDS = 10 * 60
DESTROY_SECONDS = 30 * 60
# The first replica's save of its compile cache, which the warm start waits for: its sidecar copies a few hundred MB
# to S3 once vLLM serves (an assumption the run's log measures).
COMPILE_CACHE_SAVE_SECONDS = 2 * 60
# What an hour of the stage costs besides its GPU nodes, at us-east-1's list prices: the EKS control plane (Amazon
# EKS pricing: $0.10 per cluster-hour, standard support) and its NAT gateway (Amazon VPC pricing: $0.045 an hour).
# The file system, endpoints, logs and a general-purpose node for the import add a few dollars more.
EKS_CONTROL_PLANE_PER_HOUR = 0.10
NAT_GATEWAY_PER_HOUR = 0.045


@dataclass(frozen=True)
class Estimate:
    """What one `make e2e` run takes, and costs at on-demand prices."""

    minutes: int
    gpu_instance: str
    gpu_hours: float
    gpu_dollars: float
    other_dollars: float

    @property
    def dollars(self) -> float:
        return self.gpu_dollars + self.other_dollars


def estimate(settings: StageSettings) -> Estimate:
    """A run of the dev stage: deploy, the weights import and a replica's cold start (settings/cold_start.py), the
    smoke and load tests, the teardown; the GPU node from its launch to its deletion, at the on-demand price of the
    instance Karpenter would launch (spot, which dev allows, costs less)."""
    model = settings.models[0]
    importing = sum(step.seconds for step in import_steps(settings, model))
    # With the levers, a second replica's start on the warm spare's node once the first has saved its compile cache.
    warm = sum(warm_modeled(settings, model).values()) + COMPILE_CACHE_SAVE_SECONDS if model.warm_spares else 0.0
    running = importing + cold_start_seconds(settings, model) + SMOKE_AND_LOAD_TEST_SECONDS + warm
    gpu_seconds = running + DESTROY_SECONDS / 3
    total = DEPLOY_SECONDS + running + DESTROY_SECONDS
    # A GPU node per replica and warm spare (a run behind the gateway serves two replicas of one model and one of
    # another), each for as long; a run with the levers scales out onto its spare, and Karpenter launches another.
    instances = [
        candidates(settings, each)[0].type
        for each in settings.models
        for _ in range(each.replicas + each.warm_spares + (1 if each.warm_spares else 0))
    ]
    _, prices = on_demand_prices(settings.region)
    hours = gpu_seconds / 3600
    return Estimate(
        minutes=math.ceil(total / 60),
        gpu_instance=", ".join(instances),
        gpu_hours=round(hours * len(instances), 2),
        gpu_dollars=round(sum(hours * prices[each] for each in instances), 2),
        other_dollars=round(total / 3600 * (EKS_CONTROL_PLANE_PER_HOUR + NAT_GATEWAY_PER_HOUR), 2),
    )


def throwaway_stage_data(name: str, admin_role_arn: str) -> dict[str, Any]:
    """The dev stage's settings, made the throwaway stage's own: names, prefixes, admin."""
    data = load_yaml((STAGES_DIR / "dev.yaml").read_text())
    data["cluster"]["name"] = f"gpu-inference-{name}"
    data["cluster"]["admin_principal_arns"] = [admin_role_arn]
    data.setdefault("registry", {})["owns_scanning_configuration"] = False  # the account's scanning stays as it is
    return data


# The throwaway gateway's clients: the checks' own, the one whose small quota the checks spend, the smoke test's.
E2E_CLIENT, QUOTA_CLIENT = "e2e", "e2e-quota"
QUOTA_TOKENS = 300
SECOND_MODEL = {"name": "qwen3-8b", "model": "Qwen/Qwen3-8B", "service_name": "qwen-service", "max_model_len": 8192}
# Distinct prompt prefixes, each sent twice in a row, to see the picker keep a prefix's requests together.
PREFIX_PAIRS = 16
LOAD_TEST_KEY_SECRET = "load-test-key"


def with_gateway(data: dict[str, Any], name: str, adapter: str | None) -> dict[str, Any]:
    """The throwaway stage behind the gateway: a second replica of the first model (routing by prefix chooses among
    replicas), a second model, the adapter if given, three clients, one small quota."""
    original = data["models"][0]
    first = {**original, "replicas": 2}
    second = {**original, **SECOND_MODEL, "attention_backend": None}  # gpt-oss's choice, vLLM's own for Qwen
    data["models"] = [first, second]
    if adapter:
        if not (parsed := re.fullmatch(r"([\w.-]+/[\w.-]+)@([0-9a-f]{40}):([0-9]+)", adapter)):
            raise E2eError(f"--adapter {adapter}: expected REPO@COMMIT:RANK, such as org/name@<40 hex digits>:16")
        repository, revision, rank = parsed.groups()
        first["adapters"] = [{"name": "e2e-adapter", "repository": repository, "revision": revision, "rank": int(rank)}]
    data["gateway"] = {
        "clients_secret": f"{name}/gateway-clients",
        "clients": [{"id": client} for client in (E2E_CLIENT, QUOTA_CLIENT, "smoke-test")],
        "quotas": [{"client": QUOTA_CLIENT, "limit": QUOTA_TOKENS, "window": "Hour"}],
    }
    return data


def with_levers(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The throwaway stage with every cold-start lever that has a figure: the fastest file system tier, nodes whose
    network keeps up with it, a shared compile cache and a warm spare (settings/cold_start.py, levers)."""
    data.setdefault("model_store", {})["throughput_per_tib"] = max(LUSTRE_THROUGHPUTS_PER_TIB)
    data["models"][0].update(compile_cache=True, warm_spares=1)
    settings = parse_stage_settings(name, data)
    fast = keeping_up(settings, settings.models[0])
    if fast is not None:
        for pool in data["gpu_node_pools"]:
            pool["min_network_mbps"] = fast.network_mbps
    return data


def role_of(caller_arn: str) -> str:
    """The IAM role behind an assumed-role session (what an EKS access entry names), or the caller itself."""
    if ":assumed-role/" not in caller_arn:
        return caller_arn
    partition_account, _, rest = caller_arn.partition(":assumed-role/")
    return f"{partition_account.replace(':sts:', ':iam:')}:role/{rest.split('/')[0]}"


@contextmanager
def throwaway_stage(
    admin_role_arn: str,
    stages_dir: Path = STAGES_DIR,
    *,
    gateway: bool = False,
    adapter: str | None = None,
    levers: bool = False,
) -> Iterator[StageSettings]:
    """A stage file for the run, checked like any other, and gone afterwards whatever happens."""
    name = f"e2e-{secrets.token_hex(3)}"
    path = stages_dir / f"{name}.yaml"
    data = throwaway_stage_data(name, admin_role_arn)
    if gateway:
        data = with_gateway(data, name, adapter)
    if levers:
        data = with_levers(data, name)
    path.write_text(yaml.safe_dump(data))
    try:
        yield load_stage_settings(name, stages_dir)
    finally:
        path.unlink(missing_ok=True)


class E2eError(Exception):
    """The stage ran, but not as the model of it says."""


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, **kwargs)


def kubectl_json(kubeconfig: str, *args: str) -> dict[str, Any]:
    output = run(["kubectl", "--kubeconfig", kubeconfig, *args, "-o", "json"], capture_output=True).stdout
    return json.loads(output)


def load_test_job(settings: StageSettings, job: str, image: str) -> dict[str, Any]:
    """A Job that runs `vllm bench serve` against the model and prints the result as JSON: at its Service, or behind
    a gateway at the gateway's, whose NetworkPolicy admits no other pod to the replicas, with the e2e client's key
    from the Secret LOAD_TEST_KEY_SECRET (`vllm bench` sends $OPENAI_API_KEY as its bearer token).

    `image`: the vLLM image the model's Deployment runs; the Job gets its pod's hardening too.
    """
    model = settings.models[0]
    base_url = (
        f"http://{GATEWAY_NAME}.{GATEWAY_NAMESPACE}:{GATEWAY_PORT}"
        if settings.routed
        else f"http://{model.service_name}.{model.name}:{PORT}"
    )
    command = (
        f"vllm bench serve --backend openai-chat --endpoint /v1/chat/completions "
        f"--base-url {base_url} --model {model.model} "
        f"--tokenizer {WEIGHTS_DIR}/{model.weights_path} {' '.join(LOAD_TEST)} --num-prompts {LOAD_TEST_PROMPTS} "
        f"--max-concurrency {LOAD_TEST_CONCURRENCY} --save-result --result-dir /tmp --result-filename result.json "
        "> /dev/stderr && cat /tmp/result.json"
    )
    chart = cdk8s.Chart(cdk8s.App(), "LoadTest", namespace=model.name, disable_resource_name_hashes=True)
    bench = kplus.Job(
        chart,
        "Job",
        metadata=cdk8s.ApiObjectMetadata(name=job),
        backoff_limit=0,
        select=False,
        restart_policy=kplus.RestartPolicy.NEVER,
        automount_service_account_token=False,
        security_context=non_root_pod(RUN_AS_USER),
    )
    container = bench.add_container(
        name="bench",
        image=image,
        command=["sh", "-c", command],
        env_variables={
            "HOME": kplus.EnvValue.from_value("/tmp"),
            "HF_HUB_OFFLINE": kplus.EnvValue.from_value("1"),
            **(
                {
                    "OPENAI_API_KEY": kplus.EnvValue.from_secret_value(
                        kplus.SecretValue(
                            secret=kplus.Secret.from_secret_name(chart, "Key", LOAD_TEST_KEY_SECRET), key=E2E_CLIENT
                        )
                    )
                }
                if settings.routed
                else {}
            ),
        },
        resources=kplus.ContainerResources(
            cpu=kplus.CpuResources(request=kplus.Cpu.units(2)),
            memory=kplus.MemoryResources(request=cdk8s.Size.gibibytes(4), limit=cdk8s.Size.gibibytes(4)),
        ),
        security_context=hardened(RUN_AS_USER),
    )
    container.mount("/tmp", kplus.Volume.from_empty_dir(chart, "Tmp", "tmp"))
    claim = kplus.PersistentVolumeClaim.from_claim_name(chart, "Claim", CLAIM_NAME)
    weights = kplus.Volume.from_persistent_volume_claim(chart, "Weights", claim, name="weights", read_only=True)
    container.mount(WEIGHTS_DIR, weights, sub_path="models", read_only=True)
    [manifest] = chart.to_json()
    return dict(manifest)


def _empty_and_delete_bucket(client: leftovers.ClientFactory, bucket: str) -> None:
    s3 = client("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


# How to remove each kind of resource a normal stage keeps; the leftover check finds them.
REMOVERS: dict[str, Callable[[leftovers.ClientFactory, str], object]] = {
    "s3:bucket": _empty_and_delete_bucket,
    # The shortest window AWS allows (7 to 30 days): the leftover check accepts keys pending that.
    "kms:key": lambda client, key: client("kms").schedule_key_deletion(KeyId=key, PendingWindowInDays=7),
    "logs:log-group": lambda client, group: client("logs").delete_log_group(logGroupName=group),
    "ecr:repository": lambda client, name: client("ecr").delete_repository(repositoryName=name, force=True),
    # The metrics workspace (stacks/metrics.py), found by its stage tag: an ARN.
    "aps:workspace": lambda client, arn: client("amp").delete_workspace(workspaceId=leftovers.arn_parts(arn)[1]),
}


def purge_retained(kept: list[leftovers.Leftover], client: leftovers.ClientFactory) -> list[leftovers.Leftover]:
    """Remove what a normal stage keeps when destroyed (this one is throwaway): the buckets with every object
    version, the log groups, cached image repositories and metrics workspace, and the keys (scheduled for
    deletion). `kept`: what the leftover check found after the destroy; anything else it found is left for it
    to report."""
    removed = [leftover for leftover in kept if leftover.kind in REMOVERS]
    for leftover in removed:
        REMOVERS[leftover.kind](client, leftover.id)
        print(f"removed {leftover.kind} {leftover.id}")
    return removed


def smoke_test(settings: StageSettings, model: ModelSettings, kubeconfig: str) -> None:
    """The smoke test, from here, with the arguments the stage's own smoke test stores: the import, the rollout, the
    prompt (through the gateway, when the stage has one)."""
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    job = job_name_in(charts[f"Model-{model.name}"].to_json())
    run(
        [sys.executable, "-m", "workloads.smoke_test", *smoke_test_args(settings, model, job)],
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


def record(kubeconfig: str, model: ModelSettings, outdir: Path, *, newest: bool = False) -> dict[str, Any]:
    """What the cluster says of a replica's start (events, pods, NodeClaims) and the replica's vLLM log (its weight
    load), kept in `outdir`: the model's first replica, or with `newest` its latest (`recorded["pod"]`)."""
    outdir.mkdir(parents=True, exist_ok=True)
    recorded: dict[str, Any] = {
        "events": kubectl_json(kubeconfig, "get", "events", "--namespace", model.name),
        "pods": kubectl_json(kubeconfig, "get", "pods", "--namespace", model.name),
        "nodeclaims": kubectl_json(kubeconfig, "get", "nodeclaims.karpenter.sh"),
    }
    for name, document in recorded.items():
        (outdir / f"{name}.json").write_text(json.dumps(document))
    replicas = [p for p in recorded["pods"]["items"] if p["metadata"].get("labels", {}).get("app") == app(model)]
    pod = (
        max(replicas, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))["metadata"]["name"]
        if newest and replicas
        else e2e_report.select_pod(recorded["pods"]["items"], app=app(model))["metadata"]["name"]
    )
    recorded["pod"] = pod
    try:
        server_log = run(
            ["kubectl", "--kubeconfig", kubeconfig, "logs", "--namespace", model.name, pod,
             "--container", e2e_report.SERVER_CONTAINER],
            capture_output=True,
        ).stdout  # fmt: skip
    except subprocess.CalledProcessError as error:
        # Without it the weight read and the model load are held against the model as one stretch.
        print(f"no vLLM log of {pod}: {error.stderr or error}", file=sys.stderr, flush=True)
        server_log = ""
    (outdir / "server.log").write_text(server_log)
    recorded["server_log"] = server_log
    return recorded


def app(model: ModelSettings) -> str:
    return names.app_label(model.name)


# The shared compile cache's save sidecar says what it uploaded once vLLM serves (workloads/compile_cache.py).
CACHE_SAVED = re.compile(r"compile cache: (\d+) files to (\S+)")
CACHE_NOT_COPIED = "compile cache: not copied"


def saved_compile_cache(log: str) -> int | None:
    """How many files the save sidecar uploaded, by its log; None before it has; an E2eError if it could not."""
    for line in log.splitlines():
        if CACHE_NOT_COPIED in line:
            raise E2eError(f"the first replica's compile cache was not saved: {line.strip()}")
        if match := CACHE_SAVED.search(line):
            return int(match.group(1))
    return None


def wait_for_compile_cache(
    kubeconfig: str,
    model: ModelSettings,
    pod: str,
    *,
    timeout: float = 900,
    poll: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Wait until the replica `pod` has saved its compile cache (the files it uploaded); an E2eError past `timeout`."""
    waited = 0.0
    while True:
        log = container_log(kubeconfig, model, pod, SAVE_CONTAINER)
        if (saved := saved_compile_cache(log)) is not None:
            return saved
        if waited >= timeout:
            raise E2eError(f"{pod} saved no compile cache within {timeout:.0f} s")
        sleep(poll)
        waited += poll


def warm_modeled(settings: StageSettings, model: ModelSettings) -> dict[str, float]:
    """A replica on a warm spare's node with a full compile cache, as the budgets take it (the run's first replica is
    held against the same): the weight read, and the model load less what a full cache saved where it was measured."""
    budgeted = {step.name: step.seconds for step in cold_start_steps(settings, model, budget=True)}
    return {
        "weight read": budgeted["weight read"],
        "model load": max(budgeted["model load"] - WARM_COMPILE_CACHE_SAVES_SECONDS, 0.0),
    }


# The restore init container says what it copied in before vLLM starts (workloads/compile_cache.py).
CACHE_RESTORED = re.compile(r"compile cache: (\d+) files from (\S+)")


def container_log(kubeconfig: str, model: ModelSettings, pod: str, container: str) -> str:
    return run(
        ["kubectl", "--kubeconfig", kubeconfig, "logs", "--namespace", model.name, pod, "--container", container],
        capture_output=True,
    ).stdout


def spare_nodes(kubeconfig: str, model: ModelSettings) -> set[str]:
    """The nodes the model's running placeholders hold (charts/warm_spares.py)."""
    pods = kubectl_json(kubeconfig, "get", "pods", "--namespace", model.name, "-l", f"app={model.name}-warm-spare")
    return {
        pod["spec"]["nodeName"]
        for pod in pods["items"]
        if pod.get("status", {}).get("phase") == "Running" and pod.get("spec", {}).get("nodeName")
    }


def warm_start(
    settings: StageSettings, kubeconfig: str, first: dict[str, Any], outdir: Path
) -> list[e2e_report.Comparison]:
    """With the levers on: once the first replica has saved its compile cache, one more replica, which must take a warm
    spare's node (it preempts the placeholder: no node launch, no pull of the vLLM image), restore the cache and load
    faster than the first replica did; its weight read and model load against the warm model, reported in `outdir`."""
    model = settings.models[0]
    if model.autoscaling is not None:
        raise E2eError("the warm start scales the Deployment by hand, which an autoscaled model's HPA would undo")
    saved = wait_for_compile_cache(kubeconfig, model, first["pod"])
    if not saved:
        raise E2eError(f"{first['pod']} saved an empty compile cache: the warm replica would have nothing to restore")
    spares = spare_nodes(kubeconfig, model)
    if not spares:
        raise E2eError(f"no running placeholder of {model.name}-warm-spare: the warm spare's node is not ready")
    kubectl = ["kubectl", "--kubeconfig", kubeconfig, "--namespace", model.name]
    run([*kubectl, "scale", f"deployment/{model.name}", f"--replicas={model.replicas + 1}"])
    deadline = progress_deadline_seconds(settings, model)
    run([*kubectl, "rollout", "status", f"deployment/{model.name}", f"--timeout={deadline}s"])
    recorded = record(kubeconfig, model, outdir, newest=True)
    pod = next(p for p in recorded["pods"]["items"] if p["metadata"]["name"] == recorded["pod"])
    if pod["spec"].get("nodeName") not in spares:
        raise E2eError(
            f"{recorded['pod']} started on {pod['spec'].get('nodeName')}, not on a warm spare's node "
            f"({', '.join(sorted(spares))}): the placeholder was not preempted"
        )
    restored = CACHE_RESTORED.search(container_log(kubeconfig, model, recorded["pod"], RESTORE_CONTAINER))
    if restored is None or not int(restored.group(1)):
        raise E2eError(f"{recorded['pod']} restored no compile cache (its {RESTORE_CONTAINER} log)")
    milestones = e2e_report.timeline(
        recorded["events"], recorded["pods"], recorded["nodeclaims"], app=app(model), pod=recorded["pod"]
    )
    weight_load = e2e_report.weight_load_seconds(recorded["server_log"])
    # Only the steps a warm node leaves: from the pod's creation to Ready it also waits for its preemption, the
    # weights' marker and the cache's restore, which no step models.
    comparisons = [
        c
        for c in e2e_report.compare(milestones, warm_modeled(settings, model), weight_load=weight_load)
        if c.stretch in ("weight read", "model load")
    ]
    written = e2e_report.write_report(
        outdir, stage=settings.name, model=model.model, milestones=milestones, load_test=None, comparisons=comparisons
    )
    print("\n".join(str(path) for path in written))
    first_load = first_model_load(first)
    warm_load = next((c.measured for c in comparisons if c.stretch == "model load"), None)
    if first_load is not None and warm_load is not None and warm_load >= first_load:
        raise E2eError(
            f"the warm replica's model load took {warm_load:.0f} s, no less than the first replica's "
            f"{first_load:.0f} s without a cache: the restored compile cache did not help"
        )
    return comparisons


def first_model_load(first: dict[str, Any]) -> float | None:
    """The first replica's model load (from its container's start to Ready, less its weight load), if measured."""
    milestones = e2e_report.timeline(first["events"], first["pods"], first["nodeclaims"], pod=first["pod"])
    weight_load = e2e_report.weight_load_seconds(first["server_log"])
    loads = [
        c.measured for c in e2e_report.compare(milestones, {}, weight_load=weight_load) if c.stretch == "model load"
    ]
    return loads[0] if loads else None


def load_test(
    settings: StageSettings, model: ModelSettings, kubeconfig: str, outdir: Path, keys: dict[str, str] | None = None
) -> str:
    """vllm bench against the model, as a Job in its namespace; its result (JSON), kept in `outdir`. Behind a gateway,
    with the e2e client's key in a Secret of the namespace, written from stdin (never a process argument)."""
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    job = f"load-test-{settings.name}"
    if keys is not None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": LOAD_TEST_KEY_SECRET, "namespace": model.name},
            "stringData": {E2E_CLIENT: keys[E2E_CLIENT]},
        }
        run([*kubectl, "apply", "-f", "-"], input=json.dumps(secret))
    deployment = kubectl_json(kubeconfig, "get", "deployment", model.name, "--namespace", model.name)
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    run([*kubectl, "apply", "-f", "-"], input=json.dumps(load_test_job(settings, job, image)))
    run([*kubectl, "wait", "--for=condition=complete", "--timeout=30m", "--namespace", model.name, f"job/{job}"])
    log = run([*kubectl, "logs", "--namespace", model.name, f"job/{job}"], capture_output=True).stdout
    # The Job's log is vllm bench's own output, then the result file on its last line.
    result: str = log.strip().splitlines()[-1]
    (outdir / "vllm_bench.json").write_text(result)
    return result


def create_clients_secret(settings: StageSettings, secrets_manager: Any) -> dict[str, str]:
    """The throwaway gateway's clients secret, a new key each: the stage reads it at deploy (the key sync)."""
    assert settings.gateway is not None
    keys = {client.id: secrets.token_hex(32) for client in settings.gateway.clients}
    secrets_manager.create_secret(
        Name=settings.gateway.clients_secret,
        SecretString=json.dumps(keys),
        # The leftovers check finds what is tagged with the stage.
        Tags=[{"Key": "stage", "Value": settings.name}],
    )
    return keys


def delete_clients_secret(settings: StageSettings, secrets_manager: Any) -> None:
    """The throwaway clients secret, gone at once; one never created is no error."""
    assert settings.gateway is not None
    with contextlib.suppress(secrets_manager.exceptions.ResourceNotFoundException):
        secrets_manager.delete_secret(SecretId=settings.gateway.clients_secret, ForceDeleteWithoutRecovery=True)


def gateway_checks(settings: StageSettings, kubeconfig: str, keys: dict[str, str], outdir: Path) -> dict[str, Any]:
    """Through the gateway (a port-forward to its Service): every model and adapter by name, the first model's picker's
    prefix hit ratio over pairs of requests that share a prefix, and the quota's 429; kept in `outdir`."""
    environment = {**os.environ, "KUBECONFIG": kubeconfig}
    served = [name for model in settings.models for name in (model.model, *(a.name for a in model.adapters))]
    first = settings.models[0]
    outer_kubeconfig = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = kubeconfig  # port_forward runs kubectl with the process's environment
    try:
        with smoke_test_script.port_forward(GATEWAY_NAMESPACE, GATEWAY_NAME, timeout=60, port=GATEWAY_PORT) as url:
            gateway_checks_module.every_name_answers(url, keys[E2E_CLIENT], served)
            token = json.loads(
                run(["aws", "eks", "get-token", "--cluster-name", settings.cluster.name, "--region", settings.region],
                    capture_output=True, env=environment).stdout
            )["status"]["token"]  # fmt: skip
            # The picker's ratio over the pairs alone: its metrics read before and after them.
            with smoke_test_script.port_forward(
                first.name, names.picker_name(first.name), timeout=60, port=PICKER_METRICS_PORT
            ) as picker:
                metrics_before = gateway_checks_module.picker_metrics(picker, token)
                gateway_checks_module.send_prefix_pairs(url, keys[E2E_CLIENT], first.model, PREFIX_PAIRS)
                metrics_after = gateway_checks_module.picker_metrics(picker, token)
            ratio = gateway_checks_module.prefix_hit_ratio(metrics_after, metrics_before)
            quota = gateway_checks_module.quota_is_enforced(url, keys[QUOTA_CLIENT], first.model)
        gateway_checks_module.prefix_routing_holds(ratio)
    except (smoke_test_script.SmokeTestError, OSError) as error:  # OSError: urllib's URLError and HTTPError
        raise gateway_checks_module.GatewayCheckError(f"through the gateway: {error}") from error
    finally:
        if outer_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = outer_kubeconfig
    result = {
        "served": served,
        "quota": {"tokens": QUOTA_TOKENS, "requests_before_429": quota.requests_before, "headers": quota.headers},
        "prefix_hit_ratio": ratio,
        "prefix_pairs": PREFIX_PAIRS,
    }
    (outdir / "gateway.json").write_text(json.dumps(result, indent=2))
    return result


def clean_up(settings: StageSettings) -> bool:
    """`make destroy` of the stage, then the check that nothing tagged with it is left; whether all went well."""
    stage = settings.name
    # The assembly `cdk deploy` just wrote: no second synth.
    assembly = ROOT / "cdk.out" / f"assembly-{stage}"
    ok = teardown.main(["--stage", stage, "--assembly", str(assembly)]) == 0
    client = leftovers.boto3_clients(settings.region)
    found = leftovers.find_leftovers(
        client, stage, cluster_name=settings.cluster.name, cache_prefix=settings.registry.cache_prefix
    )
    purge_retained(found, client)
    checked = leftovers.main(
        [
            *("--stage", stage, "--cluster-name", settings.cluster.name),
            *("--region", settings.region, "--cache-prefix", settings.registry.cache_prefix),
        ]
    )
    return ok and checked == 0


def run_stage(settings: StageSettings, keys: dict[str, str] | None = None) -> None:
    """Deploy the stage, smoke-test and load-test its model (and with `keys`, check the gateway), and write the
    report."""
    stage, model = settings.name, settings.models[0]
    outdir = REPORTS / stage
    outdir.mkdir(parents=True, exist_ok=True)
    run(["cdk", "--no-notices", "deploy", "--require-approval", "never", "-c", f"stage={stage}", f"{stage}/*"])
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = str(Path(scratch) / "kubeconfig")
        update = ["aws", "eks", "update-kubeconfig", "--region", settings.region, "--name", settings.cluster.name]
        run([*update, "--kubeconfig", kubeconfig])
        for each in settings.models:
            smoke_test(settings, each, kubeconfig)
        if keys is not None:
            print(json.dumps(gateway_checks(settings, kubeconfig, keys, outdir), indent=2), flush=True)
        recorded = record(kubeconfig, model, outdir)
        result = load_test(settings, model, kubeconfig, outdir, keys)
        comparisons = first_replica_report(settings, recorded, result, outdir)
        # With the levers, a second replica on the warm spare's node, once the first replica's report is written.
        warm = warm_start(settings, kubeconfig, recorded, outdir / "warm") if model.warm_spares else []
    over = [c.stretch for c in comparisons if c.over] + [f"{c.stretch} (warm)" for c in warm if c.over]
    if over:
        raise E2eError(f"measured over {e2e_report.TOLERANCE}x the cold-start model: {', '.join(over)} (report.md)")


def first_replica_report(
    settings: StageSettings, recorded: dict[str, Any], result: str, outdir: Path
) -> list[e2e_report.Comparison]:
    """The first replica's start against the model, and the load test, written in `outdir`."""
    model = settings.models[0]
    milestones = e2e_report.timeline(
        recorded["events"], recorded["pods"], recorded["nodeclaims"], app=app(model), pod=recorded["pod"]
    )
    # Held against the figures the budgets take: until models[].load_seconds gives a start measured for the release
    # served, the model load is the walkthrough's, not the measurement of another release (settings/cold_start.py).
    modeled = {step.name: step.seconds for step in cold_start_steps(settings, model, budget=True)}
    comparisons = e2e_report.compare(
        milestones, modeled, weight_load=e2e_report.weight_load_seconds(recorded["server_log"])
    )
    written = e2e_report.write_report(
        outdir,
        stage=settings.name,
        model=model.model,
        milestones=milestones,
        load_test=e2e_report.load_test_summary(json.loads(result)),
        comparisons=comparisons,
    )
    print("\n".join(str(path) for path in written))
    return comparisons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stage deployed (then `make destroy STAGE=...`)")
    parser.add_argument(
        "--estimate", action="store_true", help="print how long a run takes and what it costs, and stop"
    )
    parser.add_argument("--gateway", action="store_true", help="with the inference gateway and a second model")
    parser.add_argument("--adapter", help="with --gateway: a LoRA adapter for gpt-oss-20b, as REPO@COMMIT:RANK")
    parser.add_argument(
        "--levers",
        action="store_true",
        help="with every cold-start lever on, and a second replica's start on the warm spare's node measured too",
    )
    args = parser.parse_args(argv)
    if args.adapter and not args.gateway:
        parser.error("--adapter goes with --gateway")
    planned = load_yaml((STAGES_DIR / "dev.yaml").read_text())
    if args.gateway:
        planned = with_gateway(planned, "e2e-estimate", None)
    if args.levers:
        planned = with_levers(planned, "e2e-estimate")
    run_estimate = estimate(parse_stage_settings("e2e-estimate", planned))
    print(
        f"a run takes about {run_estimate.minutes} minutes; {run_estimate.gpu_hours} GPU node-hours "
        f"({run_estimate.gpu_instance}: ${run_estimate.gpu_dollars} on demand) and "
        f"${run_estimate.other_dollars} of EKS and NAT gateway: about ${run_estimate.dollars:.2f}",
        flush=True,
    )
    if args.estimate:
        return 0

    caller = json.loads(run(["aws", "sts", "get-caller-identity", "--output", "json"], capture_output=True).stdout)
    failed = False
    with throwaway_stage(
        role_of(caller["Arn"]), gateway=args.gateway, adapter=args.adapter, levers=args.levers
    ) as settings:
        secrets_manager = leftovers.boto3_clients(settings.region)("secretsmanager") if args.gateway else None
        try:
            keys = create_clients_secret(settings, secrets_manager) if secrets_manager else None
            run_stage(settings, keys)
        except subprocess.CalledProcessError as error:
            failed = True
            print(f"e2e of stage {settings.name} failed at: {' '.join(error.cmd)}", file=sys.stderr)
        except (E2eError, gateway_checks_module.GatewayCheckError) as error:
            failed = True
            print(f"e2e of stage {settings.name}: {error}", file=sys.stderr)
        finally:
            if not args.keep:
                try:
                    failed |= not clean_up(settings)
                finally:
                    if secrets_manager:
                        delete_clients_secret(settings, secrets_manager)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
