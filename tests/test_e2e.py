"""`make e2e`'s offline parts: the throwaway stage, the load test Job, and removing what a stage keeps."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from commands import e2e
from commands.leftovers import Leftover
from settings import STAGES_DIR, load_stage_settings, parse_stage_settings
from tests.aws_stubs import StubbedClients
from tests.conftest import ROOT, find, render_charts
from tests.scanners import kubernetes_problems

ROLE = "arn:aws:iam::123456789012:role/PlatformAdmin"


def test_an_assumed_role_session_is_admitted_as_its_role() -> None:
    assert e2e.role_of("arn:aws:sts::123456789012:assumed-role/PlatformAdmin/alice") == ROLE
    assert e2e.role_of("arn:aws:iam::123456789012:user/alice") == "arn:aws:iam::123456789012:user/alice"


# The stage files go to a scratch folder: the session's synths may be reading settings/stages/.
def test_the_throwaway_stage_is_dev_with_names_of_its_own_and_leaves_no_file(tmp_path: Path) -> None:
    with e2e.throwaway_stage(ROLE, tmp_path) as settings:
        assert settings.name.startswith("e2e-")
        assert (tmp_path / f"{settings.name}.yaml").exists()
        assert settings.cluster.name == f"gpu-inference-{settings.name}"
        assert settings.cluster.admin_principal_arns == (ROLE,)
        assert settings.image_cache_prefix == f"ecr-public/{settings.name}"
        assert (
            settings.models
            == parse_stage_settings("dev", e2e.yaml.safe_load((STAGES_DIR / "dev.yaml").read_text())).models
        )
    assert not (tmp_path / f"{settings.name}.yaml").exists()


def test_the_stage_file_goes_even_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), e2e.throwaway_stage(ROLE, tmp_path) as settings:
        raise RuntimeError("deploy failed")
    assert not (tmp_path / f"{settings.name}.yaml").exists()


def test_the_load_test_job_is_valid_kubernetes_and_runs_vllm_bench_against_the_service(tmp_path: Path) -> None:
    with e2e.throwaway_stage(ROLE, tmp_path) as settings:
        job = e2e.load_test_job(settings, "load-test", "vllm:0.11.2")
    assert kubernetes_problems(job, "1.36") == []
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert command.startswith("vllm bench serve --backend openai-chat --endpoint /v1/chat/completions ")
    assert "--base-url http://gptoss-service.gpt-oss-20b:8000 --model openai/gpt-oss-20b" in command
    assert "--tokenizer /models/gpt-oss-20b/main" in command
    assert "--save-result" in command
    pod = job["spec"]["template"]["spec"]
    # The namespace enforces the restricted Pod Security Standard: the Job is hardened like the replicas.
    replicas = find(render_charts("dev")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == replicas["securityContext"]
    assert pod["containers"][0]["securityContext"] == replicas["containers"][0]["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]  # --result-dir


def test_what_a_normal_stage_keeps_is_removed_for_a_throwaway_one() -> None:
    key = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    control_plane = "/aws/eks/gpu-inference-e2e-abc123/cluster"
    repository = "ecr-public/e2e-abc123/deep-learning-containers/vllm"
    workspace = "arn:aws:aps:us-west-2:123456789012:workspace/ws-0123abcd-4567-89ef-0123-456789abcdef"
    kept = [
        Leftover("s3:bucket", "e2e-bucket", "versioned"),
        Leftover("kms:key", key, "Enabled"),
        Leftover("logs:log-group", control_plane, "named after cluster"),
        Leftover("ecr:repository", repository, "pull-through cache repository"),
        Leftover("aps:workspace", workspace, "tagged stage=e2e-abc123"),
        Leftover("ec2:network-interface", "eni-0123456789abcdef0", "in-use"),  # not ours to remove: reported
    ]
    with StubbedClients(("s3", "kms", "logs", "ecr", "amp")) as aws:
        aws.add(
            "s3",
            "list_object_versions",
            {"Versions": [{"Key": "gpt-oss-20b/main/config.json", "VersionId": "v1"}], "DeleteMarkers": []},
            {"Bucket": "e2e-bucket"},
        )
        aws.add(
            "s3",
            "delete_objects",
            {},
            {
                "Bucket": "e2e-bucket",
                "Delete": {"Objects": [{"Key": "gpt-oss-20b/main/config.json", "VersionId": "v1"}], "Quiet": True},
            },
        )
        aws.add("s3", "delete_bucket", {}, {"Bucket": "e2e-bucket"})
        aws.add(
            "kms",
            "schedule_key_deletion",
            {"KeyId": key, "DeletionDate": datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)},
            {"KeyId": key, "PendingWindowInDays": 7},
        )
        aws.add("logs", "delete_log_group", {}, {"logGroupName": control_plane})
        aws.add("ecr", "delete_repository", {}, {"repositoryName": repository, "force": True})
        aws.add(
            "amp",
            "delete_workspace",
            {},
            {"workspaceId": "ws-0123abcd-4567-89ef-0123-456789abcdef"},
        )
        removed = e2e.purge_retained(kept, aws.client)
        aws.assert_no_pending_responses()
    assert [leftover.kind for leftover in removed] == [
        "s3:bucket",
        "kms:key",
        "logs:log-group",
        "ecr:repository",
        "aps:workspace",
    ]


def test_a_run_behind_the_gateway_holds_a_gpu_node_per_replica() -> None:
    data = e2e.with_gateway(e2e.throwaway_stage_data("e2e-0a1b2c", "arn:aws:iam::123456789012:role/Admin"), "x", None)
    three = e2e.estimate(parse_stage_settings("e2e-0a1b2c", data))
    one = e2e.estimate(load_stage_settings("dev"))
    # Two replicas of gpt-oss-20b and one of Qwen3-8B; the two read their weights at once, 47 s longer.
    assert three.gpu_instance == "g6.xlarge, g6.xlarge, g6.xlarge"
    assert three.gpu_hours == pytest.approx(3 * (one.gpu_hours + 47 / 3600), abs=0.02)
    assert three.gpu_dollars == pytest.approx(3 * 0.8048 * (one.gpu_hours + 47 / 3600), abs=0.02)


def test_the_deploy_guide_gives_a_runs_duration_and_cost_as_the_estimate_computes_them() -> None:
    run = e2e.estimate(load_stage_settings("dev"))
    readme = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    assert f"A run takes about {run.minutes} minutes and costs about ${run.dollars:.2f}" in readme
    assert f"{run.gpu_hours} hours of the `{run.gpu_instance}`" in readme
    assert f"${run.gpu_dollars:.2f} at the catalog's us-west-2 price" in readme
    assert f"${run.other_dollars:.2f} of EKS control plane and NAT gateway" in readme


def levers_stage() -> e2e.StageSettings:
    data = e2e.with_levers(e2e.throwaway_stage_data("e2e-0a1b2c", ROLE), "e2e-0a1b2c")
    return parse_stage_settings("e2e-0a1b2c", data)


def test_a_run_with_the_levers_turns_each_on() -> None:
    settings = levers_stage()
    model = settings.models[0]
    assert (settings.model_store.throughput_per_tib, model.compile_cache, model.warm_spares) == (1000, True, 1)
    # Nodes whose network keeps up with the fastest tier: a g6.4xlarge's 10 Gbps and up.
    assert {pool.min_network_mbps for pool in settings.gpu_node_pools} == {10000}
    # The warm replica is held against the weight read at that tier (12 s) and the budgeted load less what a full
    # compile cache saved (180 - 29.7 s).
    warm = e2e.warm_modeled(settings, model)
    assert warm["weight read"] == pytest.approx(13.761264768e3 / (1200 / 1024 * 1000))
    assert warm["model load"] == pytest.approx(180 - 29.66, abs=0.01)


def test_a_run_with_the_levers_pays_for_the_spare_and_the_scale_out() -> None:
    run = e2e.estimate(levers_stage())
    # The replica, its warm spare, and the spare Karpenter launches after the scale-out takes the first.
    assert run.gpu_instance == "g6.4xlarge, g6.4xlarge, g6.4xlarge"


@pytest.mark.parametrize(
    ("logs", "outcome"),
    [
        (["", "", "compile cache: 214 files to s3://bucket/compile-cache/gpt-oss-20b/0.31.0/\n"], 214),
        (["compile cache: not copied (save, s3://b/p): AccessDenied\n"], "was not saved: compile cache: not copied"),
        (["", "", "", ""], "saved no compile cache within 30 s"),
    ],
)
def test_the_warm_start_waits_for_the_first_replica_to_save_its_compile_cache(
    monkeypatch: pytest.MonkeyPatch, logs: list[str], outcome: int | str
) -> None:
    asked: list[list[str]] = []

    def kubectl(command: list[str], **_: object) -> e2e.subprocess.CompletedProcess[str]:
        asked.append(command)
        return e2e.subprocess.CompletedProcess(command, 0, logs[min(len(asked), len(logs)) - 1], "")

    monkeypatch.setattr(e2e, "run", kubectl)
    model = load_stage_settings("dev").models[0]

    def wait() -> int:
        return e2e.wait_for_compile_cache("kubeconfig", model, "gpt-oss-20b-abc", timeout=30, poll=15, sleep=print)

    if isinstance(outcome, int):
        assert wait() == outcome
        assert asked[0][-2:] == ["--container", "save-compile-cache"]
        assert len(asked) == 3
    else:
        with pytest.raises(e2e.E2eError, match=outcome):
            wait()


def test_the_record_keeps_the_chosen_replicas_vllm_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fixtures = ROOT / "tests" / "fixtures" / "e2e"
    pods = json.loads((fixtures / "pods.json").read_text())
    first = next(p for p in pods["items"] if p["metadata"].get("labels", {}).get("app") == "vllm-gpt-oss-20b")
    later = json.loads(json.dumps(first))
    later["metadata"].update(name="gpt-oss-20b-later", creationTimestamp="2099-01-01T00:00:00Z")
    pods["items"].append(later)
    documents = {"events": {"items": []}, "pods": pods, "nodeclaims.karpenter.sh": {"items": []}}
    monkeypatch.setattr(e2e, "kubectl_json", lambda _, __, kind, *rest: documents[kind])
    logs: list[list[str]] = []

    def kubectl(command: list[str], **_: object) -> e2e.subprocess.CompletedProcess[str]:
        logs.append(command)
        return e2e.subprocess.CompletedProcess(command, 0, f"log of {command[command.index('logs') + 3]}\n", "")

    monkeypatch.setattr(e2e, "run", kubectl)
    model = load_stage_settings("dev").models[0]
    earliest = e2e.e2e_report.select_pod(pods["items"], app="vllm-gpt-oss-20b")["metadata"]["name"]
    assert e2e.record("kubeconfig", model, tmp_path / "first")["pod"] == earliest
    newest = e2e.record("kubeconfig", model, tmp_path / "warm", newest=True)
    assert newest["pod"] == "gpt-oss-20b-later"
    assert (tmp_path / "warm" / "server.log").read_text() == "log of gpt-oss-20b-later\n"
    assert logs[-1][-2:] == ["--container", "inference-server"]


def test_the_gateway_checks_leave_the_callers_kubeconfig_as_it_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = e2e.with_gateway(e2e.throwaway_stage_data("e2e-0a1b2c", ROLE), "e2e-0a1b2c", None)
    settings = parse_stage_settings("e2e-0a1b2c", data)
    metrics = iter(["# before\n", "# after\n"])
    monkeypatch.setenv("KUBECONFIG", "/home/me/.kube/config")
    seen: list[str | None] = []

    @contextlib.contextmanager
    def port_forward(namespace: str, service: str, **_: object) -> Iterator[str]:
        seen.append(os.environ.get("KUBECONFIG"))
        yield f"http://{service}.{namespace}"

    checks = e2e.gateway_checks_module
    monkeypatch.setattr(e2e.smoke_test_script, "port_forward", port_forward)
    monkeypatch.setattr(
        e2e, "run", lambda command, **_: e2e.subprocess.CompletedProcess(command, 0, '{"status": {"token": "t"}}', "")
    )
    monkeypatch.setattr(checks, "every_name_answers", lambda *_: None)
    monkeypatch.setattr(checks, "send_prefix_pairs", lambda *_: None)
    monkeypatch.setattr(checks, "picker_metrics", lambda *_: next(metrics))
    monkeypatch.setattr(
        checks, "prefix_hit_ratio", lambda after, before: 0.49 if (after, before) == ("# after\n", "# before\n") else 0
    )
    monkeypatch.setattr(checks, "quota_is_enforced", lambda *_: checks.QuotaAnswer(2, {}))
    keys = {"e2e": "k1", "e2e-quota": "k2", "smoke-test": "k3"}
    result = e2e.gateway_checks(settings, "/tmp/run/kubeconfig", keys, tmp_path)
    assert seen == ["/tmp/run/kubeconfig", "/tmp/run/kubeconfig"]  # kubectl port-forward reads the run's
    assert os.environ["KUBECONFIG"] == "/home/me/.kube/config"
    assert (result["prefix_hit_ratio"], result["prefix_pairs"]) == (0.49, e2e.PREFIX_PAIRS)


def test_a_record_without_the_vllm_log_goes_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pods = json.loads((ROOT / "tests" / "fixtures" / "e2e" / "pods.json").read_text())
    documents = {"events": {"items": []}, "pods": pods, "nodeclaims.karpenter.sh": {"items": []}}
    monkeypatch.setattr(e2e, "kubectl_json", lambda _, __, kind, *rest: documents[kind])

    def kubectl(command: list[str], **_: object) -> e2e.subprocess.CompletedProcess[str]:
        raise e2e.subprocess.CalledProcessError(1, command, "", "container not found")

    monkeypatch.setattr(e2e, "run", kubectl)
    recorded = e2e.record("kubeconfig", load_stage_settings("dev").models[0], tmp_path)
    assert recorded["server_log"] == ""  # the run compares the weight read and the load as one stretch


def weight_log(seconds: float) -> str:
    return f"(Worker pid=1) INFO [gpu_model_runner.py] Model loading took 12.8 GiB memory and {seconds} seconds\n"


def replica_record(node: str, weight_seconds: float) -> dict[str, object]:
    """The fixtures' replica start, on `node`, with a vLLM log that took `weight_seconds` to load the weights."""
    fixtures = ROOT / "tests" / "fixtures" / "e2e"
    recorded: dict[str, object] = {n: json.loads((fixtures / f"{n}.json").read_text()) for n in ("events", "pods")}
    recorded["nodeclaims"] = json.loads((fixtures / "nodeclaims.json").read_text())
    pods = recorded["pods"]
    assert isinstance(pods, dict)
    chosen = e2e.e2e_report.select_pod(pods["items"], app="vllm-gpt-oss-20b")
    chosen["spec"]["nodeName"] = node
    recorded.update(pod=chosen["metadata"]["name"], server_log=weight_log(weight_seconds))
    return recorded


@pytest.mark.parametrize(
    ("node", "restored", "warm_weights", "problem"),
    [
        ("spare-node", 120, 30.0, None),
        ("new-node", 120, 30.0, "not on a warm spare's node (spare-node): the placeholder was not preempted"),
        ("spare-node", 0, 30.0, "restored no compile cache (its restore-compile-cache log)"),
        ("spare-node", 120, 14.3, "no less than the first replica's"),
    ],
)
def test_the_warm_replica_must_take_the_spares_node_restore_the_cache_and_load_faster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, node: str, restored: int, warm_weights: float, problem: str | None
) -> None:
    settings = levers_stage()
    first = replica_record("first-node", 14.3)
    monkeypatch.setattr(e2e, "wait_for_compile_cache", lambda *_: 214)
    monkeypatch.setattr(e2e, "spare_nodes", lambda *_: {"spare-node"})
    commands: list[list[str]] = []
    monkeypatch.setattr(e2e, "run", lambda command, **_: commands.append(command))
    monkeypatch.setattr(e2e, "record", lambda *_, **__: replica_record(node, warm_weights))
    monkeypatch.setattr(
        e2e, "container_log", lambda *_: f"compile cache: {restored} files from s3://b/compile-cache/gpt-oss-20b/\n"
    )
    monkeypatch.setattr(e2e.e2e_report, "draw_timeline", lambda path, *_, **__: path.write_bytes(b""))
    if problem is None:
        comparisons = e2e.warm_start(settings, "kubeconfig", first, tmp_path)
        # Only what a warm node leaves: the weight read and the model load, each against the warm model.
        assert [c.stretch for c in comparisons] == ["weight read", "model load"]
        assert commands[0][-2:] == ["deployment/gpt-oss-20b", "--replicas=2"]
        assert (tmp_path / "report.md").exists()
    else:
        with pytest.raises(e2e.E2eError, match=re.escape(problem)):
            e2e.warm_start(settings, "kubeconfig", first, tmp_path)


def test_the_spares_nodes_are_those_of_running_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    placeholders: dict[str, object] = {
        "items": [
            {"spec": {"nodeName": "a"}, "status": {"phase": "Running"}},
            {"spec": {"nodeName": "b"}, "status": {"phase": "Pending"}},
            {"spec": {}, "status": {"phase": "Pending"}},
        ]
    }
    asked: list[tuple[str, ...]] = []

    def kubectl_json(_: str, *args: str) -> dict[str, object]:
        asked.append(args)
        return placeholders

    monkeypatch.setattr(e2e, "kubectl_json", kubectl_json)
    assert e2e.spare_nodes("kubeconfig", load_stage_settings("dev").models[0]) == {"a"}
    assert asked[0][-2:] == ("-l", "app=gpt-oss-20b-warm-spare")
