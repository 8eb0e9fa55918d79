"""workloads/smoke_test.py against a real HTTP server on 127.0.0.1 that answers like an OpenAI-compatible API,
and against a fake kubectl (first on PATH) that prints the Deployment's successive states."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests import stand_ins
from tests.conftest import ROOT
from tests.stand_ins import QuietHandler
from workloads import smoke_test
from workloads.smoke_test import (
    MAX_TOKENS,
    PROMPT,
    Answer,
    SmokeTestError,
    ask,
    chat_request,
    main,
    not_routed,
    rollout_complete,
    wait_for_import,
    wait_for_load_balancer,
    wait_for_rollout,
)

MODEL = "openai/gpt-oss-20b"
REASONING = "The user asks what machine learning is. I should explain briefly."


JSON = "application/json"


def completion(content: str | None, finish_reason: str | None = "stop", **reasoning: str | None) -> bytes:
    """A vLLM chat completion; `reasoning` is vLLM 0.11.2's reasoning_content or newer versions' reasoning."""
    message = {"role": "assistant", "content": content, **reasoning}
    return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}).encode()


BEHAVIOURS: dict[str, tuple[int, bytes]] = {
    "good": (200, completion("Machine learning is a branch of computer science.", reasoning_content=REASONING)),
    "reasoning only": (200, completion(None, "length", reasoning_content=REASONING)),
    "newer reasoning field": (200, completion(None, "length", reasoning=REASONING)),
    "empty": (200, completion("   ")),
    "null": (200, completion(None, "length", reasoning_content=None)),
    "error": (500, b'{"error": "CUDA out of memory"}'),
    "malformed": (200, b"<html>not json</html>"),
}


class FakeVllm(QuietHandler):
    """Answers /v1/chat/completions the way the server's `behaviour` says; records what it was asked."""

    behaviour = "good"
    version = "0.31.0"
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        # vLLM's /version (vllm/entrypoints/serve/instrumentator/basic.py at v0.31.0, show_version).
        FakeVllm.requests.append({"path": self.path})
        self.answer(200, json.dumps({"version": self.version}).encode(), content_type=JSON)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        FakeVllm.requests.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
        if self.behaviour == "silent":
            time.sleep(5)  # longer than the client waits
            return
        self.answer(*BEHAVIOURS[self.behaviour], content_type=JSON)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server with this handler, in a thread; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True  # a silent server's request must not hold up its shutdown
    with stand_ins.serving(httpd):
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    FakeVllm.requests.clear()
    with serving(type("Handler", (FakeVllm,), {"behaviour": request.param})) as url:
        yield url


@pytest.mark.parametrize(
    ("served", "pinned", "exit_code"),
    [("0.31.0", "0.31.0", 0), ("0.31.0+cu130", "0.31.0", 0), ("0.11.2", "0.31.0", 1), ("0.31.0", "0.31.1", 1)],
)
def test_the_replicas_must_serve_the_pinned_vllm_release(
    served: str, pinned: str, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeVllm.requests.clear()
    with serving(type("Handler", (FakeVllm,), {"version": served})) as url:
        assert main(["--url", url, "--model", MODEL, "--vllm-version", pinned, "--request-timeout", "5"]) == exit_code
    said = capsys.readouterr()
    if exit_code:
        assert f"a replica serves vLLM {served}, the stage pins {pinned}" in said.err
        assert [r["path"] for r in FakeVllm.requests] == ["/version"]  # no prompt once the version is wrong
    else:
        assert f"serves vLLM {pinned}, as pinned" in said.out
        assert [r["path"] for r in FakeVllm.requests] == ["/version", "/v1/chat/completions"]


@pytest.mark.parametrize("server", ["good"], indirect=True)
def test_a_good_answer_passes_and_the_request_is_the_walkthroughs(server: str) -> None:
    assert ask(server, MODEL, timeout=5) == Answer(
        text="Machine learning is a branch of computer science.", reasoning=REASONING, finish_reason="stop"
    )
    (sent,) = FakeVllm.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == chat_request(MODEL)
    assert sent["body"]["model"] == MODEL
    assert (
        sent["body"]["messages"]
        == [{"role": "user", "content": PROMPT}]
        == [{"role": "user", "content": "What is machine learning?"}]
    )
    assert sent["body"]["temperature"] == 0.7


def test_the_request_leaves_gpt_oss_room_to_answer_after_reasoning() -> None:
    request = chat_request(MODEL)
    assert request["reasoning_effort"] == "low"
    assert request["max_tokens"] == MAX_TOKENS == 512


@pytest.mark.parametrize("server", ["reasoning only", "newer reasoning field"], indirect=True)
def test_an_answer_with_only_reasoning_passes_and_says_it_was_cut_off(server: str) -> None:
    assert ask(server, MODEL, timeout=5) == Answer(text="", reasoning=REASONING, finish_reason="length")


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            "empty",
            'openai/gpt-oss-20b: the answer is empty: {"index": 0, "message": {"role": "assistant", "content": "   "}',
        ),
        (
            "null",
            'openai/gpt-oss-20b: the answer is empty: {"index": 0, "message": {"role": "assistant", "content": null, '
            '"reasoning_content": null}, "finish_reason": "length"}',
        ),
        ("error", "openai/gpt-oss-20b: HTTP 500 from http://127.0.0.1:"),
        ("malformed", "openai/gpt-oss-20b: the answer is not an OpenAI chat completion: b'<html>not json</html>'"),
    ],
    indirect=["server"],
)
def test_a_bad_answer_fails_with_a_clear_message(server: str, message: str) -> None:
    with pytest.raises(SmokeTestError) as failure:
        ask(server, MODEL, timeout=5)
    assert str(failure.value).startswith(message)


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_server_that_never_answers_fails_within_the_timeout(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(
        SmokeTestError, match=r"no answer from http://127\.0\.0\.1:\d+/v1/chat/completions within 0\.2 s"
    ):
        ask(server, MODEL, timeout=0.2)
    assert time.monotonic() - started < 2


def test_nothing_listening_fails_with_a_clear_message() -> None:
    with pytest.raises(SmokeTestError, match=r"cannot reach http://127\.0\.0\.1:9/v1/chat/completions"):
        ask("http://127.0.0.1:9", MODEL, timeout=2)


@pytest.mark.parametrize(("server", "exit_code"), [("good", 0), ("error", 1)], indirect=["server"])
def test_command_exits_zero_only_when_the_model_answers(server: str, exit_code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workloads.smoke_test", "--url", server, "--model", MODEL, "--request-timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == exit_code
    if exit_code:
        assert result.stderr.startswith("smoke test failed: openai/gpt-oss-20b: HTTP 500")
    else:
        assert result.stdout.startswith("openai/gpt-oss-20b answered (finish_reason stop): Machine learning")


@pytest.mark.parametrize("server", ["reasoning only"], indirect=True)
def test_command_prints_the_reasoning_and_the_finish_reason_when_the_content_is_empty(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", server, "--model", MODEL, "--request-timeout", "5"]) == 0
    assert capsys.readouterr().out == (
        f"openai/gpt-oss-20b answered only in its reasoning (finish_reason length: cut off at 512 tokens): "
        f"{REASONING}\n"
    )


@pytest.mark.parametrize("server", ["null"], indirect=True)
def test_command_fails_when_neither_content_nor_reasoning_came_back(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", server, "--model", MODEL, "--request-timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith('smoke test failed: openai/gpt-oss-20b: the answer is empty: {"index"')


# The rollout wait, against a fake kubectl and a fake clock: no real waiting.

NAMESPACE = "gpt-oss-20b"
TIMED_OUT = ("False", "ProgressDeadlineExceeded", 'ReplicaSet "gpt-oss-20b-6d4f" has timed out progressing.')
PROGRESSING = ("True", "ReplicaSetUpdated", 'ReplicaSet "gpt-oss-20b-6d4f" is progressing.')
AVAILABLE = ("True", "NewReplicaSetAvailable", 'ReplicaSet "gpt-oss-20b-6d4f" has successfully progressed.')


def deployment(
    *,
    generation: int = 2,
    observed: int = 2,
    wanted: int = 1,
    present: int = 1,
    updated: int = 1,
    available: int = 1,
    progressing: tuple[str, str, str] = AVAILABLE,
) -> dict[str, Any]:
    """`kubectl get deployment -o json`, as the API server writes it: counts that are 0 left out."""
    counts = {"observedGeneration": observed, "replicas": present, "updatedReplicas": updated}
    status, reason, message = progressing
    return {
        "metadata": {"name": NAMESPACE, "namespace": NAMESPACE, "generation": generation},
        "spec": {"replicas": wanted, "progressDeadlineSeconds": 660},
        "status": {
            **{key: value for key, value in counts.items() if value},
            **({"availableReplicas": available} if available else {}),
            "conditions": [
                {"type": "Available", "status": "True" if available else "False"},
                {"type": "Progressing", "status": status, "reason": reason, "message": message},
            ],
        },
    }


class FakeKubectl:
    """An executable named kubectl that logs its arguments and answers with the next of `answers` (then the last)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        script = directory / "kubectl"
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, pathlib, sys\n"
            "here = pathlib.Path(__file__).parent\n"
            "with (here / 'calls.jsonl').open('a') as log:\n"
            "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            "answers = json.loads((here / 'answers.json').read_text())\n"
            "calls = len((here / 'calls.jsonl').read_text().splitlines())\n"
            "returncode, stdout, stderr = answers[min(calls, len(answers)) - 1]\n"
            "sys.stdout.write(stdout)\n"
            "sys.stderr.write(stderr)\n"
            "sys.exit(returncode)\n"
        )
        script.chmod(0o755)

    def answer(self, *states: dict[str, Any]) -> None:
        (self.directory / "answers.json").write_text(json.dumps([[0, json.dumps(state), ""] for state in states]))

    def fail(self, returncode: int, stderr: str) -> None:
        (self.directory / "answers.json").write_text(json.dumps([[returncode, "", stderr]]))

    @property
    def calls(self) -> list[list[str]]:
        log = self.directory / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class FakeClock:
    """Stands in for the time module in workloads.smoke_test: sleeping only moves the clock on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKubectl:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return FakeKubectl(tmp_path)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(smoke_test, "time", fake)
    return fake


GET_DEPLOYMENT = ["-n", NAMESPACE, "get", "deployment", NAMESPACE, "-o", "json"]


def test_the_rollout_wait_goes_on_past_the_progress_deadline(
    kubectl: FakeKubectl, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    kubectl.answer(
        deployment(updated=1, available=0, progressing=PROGRESSING),
        deployment(updated=1, available=0, progressing=TIMED_OUT),
        deployment(updated=1, available=0, progressing=TIMED_OUT),
        deployment(),
    )
    wait_for_rollout(NAMESPACE, NAMESPACE, timeout=1800, interval=10)
    assert kubectl.calls == [GET_DEPLOYMENT] * 4
    assert clock.sleeps == [10, 10, 10]
    # Noted once, with the time left, and no failure.
    assert capsys.readouterr().err == (
        "deployment gpt-oss-20b/gpt-oss-20b is past the Deployment's progress deadline; still waiting up to 1790 s\n"
    )


def test_a_rollout_that_never_completes_fails_after_the_timeout_with_the_last_status(
    kubectl: FakeKubectl, clock: FakeClock
) -> None:
    kubectl.answer(
        deployment(present=0, updated=0, available=0, progressing=PROGRESSING),
        deployment(updated=1, available=0, progressing=TIMED_OUT),
    )
    with pytest.raises(SmokeTestError) as failure:
        wait_for_rollout(NAMESPACE, NAMESPACE, timeout=25, interval=10)
    assert str(failure.value) == (
        "deployment gpt-oss-20b/gpt-oss-20b did not roll out within 25 s; last status: 1 wanted, 1 present, "
        '1 updated, 0 available; Progressing False (ProgressDeadlineExceeded): ReplicaSet "gpt-oss-20b-6d4f" '
        "has timed out progressing."
    )
    # Polled at 0, 10, 20 and 25 s: not a moment past the timeout.
    assert len(kubectl.calls) == 4
    assert clock.sleeps == [10, 10, 5]


def test_a_kubectl_error_fails_the_rollout_wait_at_once(kubectl: FakeKubectl, clock: FakeClock) -> None:
    kubectl.fail(1, 'Error from server (NotFound): deployments.apps "gpt-oss-20b" not found\n')
    with pytest.raises(SmokeTestError) as failure:
        wait_for_rollout(NAMESPACE, NAMESPACE, timeout=1800, interval=10)
    assert str(failure.value) == (
        'cannot read deployment gpt-oss-20b/gpt-oss-20b: Error from server (NotFound): deployments.apps "gpt-oss-20b" '
        "not found"
    )
    assert len(kubectl.calls) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("state", "complete"),
    [
        (deployment(), True),
        (deployment(wanted=2, present=2, updated=2, available=2), True),
        (deployment(progressing=TIMED_OUT), True),  # what counts is the replicas, as for kubectl
        (deployment(observed=1), False),  # the new spec not yet seen by the controller
        (deployment(updated=0, available=1), False),  # the old replica still serves
        (deployment(present=2, updated=1, available=1), False),  # an old replica still to go
        (deployment(available=0), False),  # the new replica not yet ready
        (deployment(wanted=2, present=2, updated=2, available=1), False),
    ],
)
def test_a_rollout_is_complete_by_kubectls_rule(state: dict[str, Any], complete: bool) -> None:
    assert rollout_complete(state) is complete


IMPORT_JOB = "import-gpt-oss-20b-0123abcd"


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": IMPORT_JOB}, "status": status}


def test_the_import_wait_goes_on_while_the_job_runs(
    kubectl: FakeKubectl, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    kubectl.answer(job(active=1), job(active=1), job(succeeded=1))
    wait_for_import(NAMESPACE, IMPORT_JOB, timeout=600, interval=10)
    assert kubectl.calls == [["-n", NAMESPACE, "get", "job", IMPORT_JOB, "-o", "json"]] * 3
    assert f"kubectl -n {NAMESPACE} logs -f job/{IMPORT_JOB}" in capsys.readouterr().err


def test_a_failed_import_fails_with_the_jobs_own_reason(kubectl: FakeKubectl, clock: FakeClock) -> None:
    failed = job(failed=4, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    reason = "openai/gpt-oss-20b at main is gated: accept its licence on the Hub and give a token"
    pods = {
        "items": [
            {
                "metadata": {"creationTimestamp": "2026-11-28T10:00:00Z"},
                "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1, "message": reason}}}]},
            }
        ]
    }
    kubectl.answer(failed, pods)
    with pytest.raises(SmokeTestError) as failure:
        wait_for_import(NAMESPACE, IMPORT_JOB, timeout=600, interval=10)
    assert str(failure.value) == f"the weights import {NAMESPACE}/{IMPORT_JOB} failed: {reason}"
    assert kubectl.calls[1] == ["-n", NAMESPACE, "get", "pods", "-l", f"job-name={IMPORT_JOB}", "-o", "json"]


def test_a_failed_adapter_import_fails_with_its_init_containers_reason(kubectl: FakeKubectl, clock: FakeClock) -> None:
    failed = job(failed=4, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    reason = "the repo has no adapter_model.safetensors at 0123, which the model's replicas need (--require)"
    status = {
        "initContainerStatuses": [{"state": {"terminated": {"exitCode": 1, "message": reason}}}],
        "containerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}],
    }
    kubectl.answer(failed, {"items": [{"metadata": {"creationTimestamp": "2026-11-28T10:00:00Z"}, "status": status}]})
    with pytest.raises(SmokeTestError) as failure:
        wait_for_import(NAMESPACE, IMPORT_JOB, timeout=600, interval=10)
    assert str(failure.value) == f"the weights import {NAMESPACE}/{IMPORT_JOB} failed: {reason}"


def test_an_import_that_outlasts_the_wait_fails_saying_so(kubectl: FakeKubectl, clock: FakeClock) -> None:
    kubectl.answer(job(active=1), job(active=1), job(active=1))
    with pytest.raises(SmokeTestError, match=r"did not finish within 20 s"):
        wait_for_import(NAMESPACE, IMPORT_JOB, timeout=20, interval=10)


# A model that requires API keys: vLLM's AuthenticationMiddleware answers 401 on /v1 without one.

KEYS = ["key-one", "key-two"]


class KeyedVllm(QuietHandler):
    """/v1 answers only with `Authorization: Bearer <one of KEYS>` when `requires_key`, as vLLM's middleware does."""

    requires_key = True
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _refused(self) -> bool:
        KeyedVllm.seen.append((self.command, self.path, self.headers.get("Authorization")))
        keyed = self.requires_key and self.path.startswith("/v1")  # vLLM's middleware guards /v1 only
        if keyed and self.headers.get("Authorization") not in [f"Bearer {key}" for key in KEYS]:
            self.answer(401, b'{"error": "Unauthorized"}', content_type=JSON)
            return True
        return False

    def do_GET(self) -> None:
        if not self._refused():
            self.answer(200, b'{"data": []}', content_type=JSON)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self._refused():
            self.answer(*BEHAVIOURS["good"], content_type=JSON)


@pytest.fixture
def keyed_server(request: pytest.FixtureRequest) -> Iterator[str]:
    KeyedVllm.seen.clear()
    with serving(type("Handler", (KeyedVllm,), {"requires_key": request.param})) as url:
        yield url


@pytest.fixture
def fake_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `aws` on PATH that prints secret.txt for `secretsmanager get-secret-value --query SecretString`."""
    script = tmp_path / "aws"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "assert sys.argv[1:4] == ['secretsmanager', 'get-secret-value', '--secret-id'], sys.argv\n"
        "print((pathlib.Path(__file__).parent / 'secret.txt').read_text())\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "secret.txt"


@pytest.mark.parametrize("keyed_server", [True], indirect=True)
def test_a_keyed_model_is_asked_with_the_first_key_after_a_request_without_one_is_refused(
    keyed_server: str, fake_aws: Path
) -> None:
    fake_aws.write_text(json.dumps({"api-key": KEYS}))
    assert main(["--url", keyed_server, "--model", MODEL, "--api-key-secret", "gpt-oss-20b/api-keys"]) == 0
    assert KeyedVllm.seen == [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", "Bearer key-one"),
    ]


@pytest.mark.parametrize("keyed_server", [False], indirect=True)
def test_a_model_that_answers_without_a_key_fails(
    keyed_server: str, fake_aws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_aws.write_text(json.dumps({"api-key": KEYS}))
    assert main(["--url", keyed_server, "--model", MODEL, "--api-key-secret", "gpt-oss-20b/api-keys"]) == 1
    assert "a request without an API key got HTTP 200, not 401" in capsys.readouterr().err


@pytest.mark.parametrize("secret", ["key-one", '{"api-key": []}', '{"api-key": "key-one"}'])
def test_a_secret_not_in_the_documented_form_fails_saying_so(
    secret: str, fake_aws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_aws.write_text(secret)
    assert main(["--url", "http://127.0.0.1:9", "--model", MODEL, "--api-key-secret", "s"]) == 1
    assert 'the API keys secret s is not {"api-key": ["<key>", ...]}' in capsys.readouterr().err


# A model exposed through an internal load balancer: only /v1 is routed; /metrics gets the default 404.


class LoadBalancedVllm(KeyedVllm):
    """KeyedVllm behind a load balancer that routes /v1 only, unless `routes_everything`."""

    routes_everything = False

    def do_GET(self) -> None:
        if not self.path.startswith("/v1") and not self.routes_everything:
            KeyedVllm.seen.append((self.command, self.path, None))
            self.answer(404, b"", content_type=JSON)
            return
        super().do_GET()


@pytest.fixture
def load_balancer(request: pytest.FixtureRequest) -> Iterator[str]:
    KeyedVllm.seen.clear()
    with serving(type("Handler", (LoadBalancedVllm,), {"routes_everything": request.param})) as url:
        yield url


@pytest.mark.parametrize(("load_balancer", "routed"), [(False, True), (True, False)], indirect=["load_balancer"])
def test_metrics_must_not_be_routed_through_the_load_balancer(load_balancer: str, routed: bool) -> None:
    if routed:
        not_routed(load_balancer, "/metrics", timeout=5)
        assert KeyedVllm.seen == [("GET", "/metrics", None)]
    else:
        with pytest.raises(SmokeTestError, match=r"/metrics answered HTTP 200: the load balancer must not route"):
            not_routed(load_balancer, "/metrics", timeout=5)


def test_the_wait_for_the_load_balancer_returns_its_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubectl = FakeKubectl(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    address = "internal-k8s-gptoss20-0123456789.us-west-2.elb.amazonaws.com"
    kubectl.answer({"status": {"loadBalancer": {}}}, {"status": {"loadBalancer": {"ingress": [{"hostname": address}]}}})
    assert wait_for_load_balancer(NAMESPACE, "gpt-oss-20b", timeout=5, interval=0.01) == address


def test_a_load_balancer_that_never_comes_fails_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubectl = FakeKubectl(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    kubectl.answer({"status": {"loadBalancer": {}}})
    with pytest.raises(SmokeTestError, match=r"ingress gpt-oss-20b/gpt-oss-20b has no load balancer address after"):
        wait_for_load_balancer(NAMESPACE, "gpt-oss-20b", timeout=0.05, interval=0.01)


def test_ingress_and_hostname_come_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--namespace", NAMESPACE, "--service", "s", "--model", MODEL, "--ingress", "gpt-oss-20b"])
    assert "give --ingress and --hostname together" in capsys.readouterr().err


class ComingUp(LoadBalancedVllm):
    """A load balancer whose targets are still registering: 503 for the first `warming` requests."""

    warming = 2

    def do_GET(self) -> None:
        if ComingUp.warming > 0:
            ComingUp.warming -= 1
            KeyedVllm.seen.append((self.command, self.path, None))
            self.answer(503, b"", content_type=JSON)
            return
        super().do_GET()


def test_a_new_load_balancer_is_asked_again_until_its_targets_answer(
    fake_aws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_aws.write_text(json.dumps({"api-key": KEYS}))
    KeyedVllm.seen.clear()
    ComingUp.warming = 2
    with serving(ComingUp) as url:
        monkeypatch.setattr(smoke_test, "wait_for_load_balancer", lambda *args, **kwargs: "internal-alb")
        monkeypatch.setattr(smoke_test, "resolves", lambda hostname: True)
        args = argparse.Namespace(
            namespace=NAMESPACE,
            ingress="gpt-oss-20b",
            ingress_namespace=None,
            hostname="llm.example.com",
            model=MODEL,
            request_timeout=5,
            gateway=None,
        )
        answer = smoke_test.through_load_balancer(args, KEYS[0], interval=0.01, url=url)
    assert answer.text.startswith("Machine learning")
    paths = [path for _, path, _ in KeyedVllm.seen]
    assert paths == ["/metrics", "/metrics", "/metrics", "/v1/models", "/v1/chat/completions"]


# --- the stage's project: every model's stored check ---


def parameter_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checks: dict[str, list[str]]) -> None:
    """An `aws` on PATH that answers `ssm get-parameters-by-path` with `checks`, one parameter a model."""
    parameters = [{"Name": f"/gpu-inference-dev/smoke-test/{m}", "Value": json.dumps(a)} for m, a in checks.items()]
    script = tmp_path / "aws"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "assert sys.argv[1:5] == ['ssm', 'get-parameters-by-path', '--path', '/gpu-inference-dev/smoke-test'], "
        "sys.argv\n"
        f"print({json.dumps(json.dumps({'Parameters': parameters}))})\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


STORED = ["--checks-from", "/gpu-inference-dev/smoke-test"]


@pytest.mark.parametrize("server", ["good"], indirect=True)
def test_the_project_runs_every_stored_check_and_fails_if_one_fails(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ["--url", server, "--model", MODEL]
    unreachable = ["--url", "http://127.0.0.1:9", "--model", MODEL, "--request-timeout", "1"]
    parameter_store(tmp_path, monkeypatch, {"gpt-oss-20b": good, "qwen3-8b": unreachable})
    assert main(STORED) == 1
    assert len(FakeVllm.requests) == 1  # gpt-oss-20b was asked, and qwen3-8b's failure is reported
    assert "smoke test failed for qwen3-8b" in capsys.readouterr().err
    FakeVllm.requests.clear()
    assert main([*STORED, "--only", "gpt-oss-20b"]) == 0
    assert len(FakeVllm.requests) == 1
    assert main([*STORED, "--only", ""]) == 1  # an empty $MODEL: every check, qwen3-8b's failing again


def test_a_model_with_no_stored_check_fails_rather_than_passing_unseen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parameter_store(tmp_path, monkeypatch, {})
    assert main([*STORED, "--only", "gpt-oss-20b"]) == 1
    assert "no check under /gpu-inference-dev/smoke-test for gpt-oss-20b" in capsys.readouterr().err


# Through the stage's inference gateway: Envoy refuses a request without a client's key, and GET /v1/models lists
# the routed models (docs/gateway.md).


class FakeGateway(QuietHandler):
    listed: ClassVar[list[str]] = [MODEL]
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _refused(self) -> bool:
        FakeGateway.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer gateway-key":
            self.answer(401, b"", content_type=JSON)
            return True
        return False

    def do_GET(self) -> None:
        if not self._refused():
            models = {"object": "list", "data": [{"id": name, "object": "model"} for name in self.listed]}
            self.answer(200, json.dumps(models).encode(), content_type=JSON)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self._refused():
            self.answer(*BEHAVIOURS["good"], content_type=JSON)


GATEWAY_ARGS = ["--gateway", "inference-gateway/inference-gateway", "--clients-secret", "llm/clients"]


@pytest.mark.parametrize(("listed", "exit_code"), [([MODEL, "other/model"], 0), (["other/model"], 1)])
def test_through_the_gateway_the_model_must_be_listed_and_answer_the_clients_key(
    fake_aws: Path, capsys: pytest.CaptureFixture[str], listed: list[str], exit_code: int
) -> None:
    fake_aws.write_text(json.dumps({"smoke-test": "gateway-key", "team-a": "other-key"}))
    FakeGateway.seen.clear()
    with serving(type("Handler", (FakeGateway,), {"listed": listed})) as url:
        assert main(["--url", url, "--model", MODEL, *GATEWAY_ARGS, "--client", "smoke-test"]) == exit_code
    expected = [("GET", "/v1/models", None), ("GET", "/v1/models", "Bearer gateway-key")]
    if exit_code == 0:
        assert FakeGateway.seen == [*expected, ("POST", "/v1/chat/completions", "Bearer gateway-key")]
    else:
        assert FakeGateway.seen == expected
        assert f"the gateway's /v1/models does not list {MODEL}: ['other/model']" in capsys.readouterr().err


def test_a_gateway_client_without_a_key_fails_naming_it(fake_aws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_aws.write_text(json.dumps({"team-a": "other-key"}))
    assert main(["--url", "http://127.0.0.1:9", "--model", MODEL, *GATEWAY_ARGS, "--client", "smoke-test"]) == 1
    assert 'the clients secret llm/clients has no key for smoke-test ({"smoke-test": "<key>", ...}' in (
        capsys.readouterr().err
    )


def test_gateway_its_secret_and_client_come_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--url", "http://127.0.0.1:9", "--model", MODEL, *GATEWAY_ARGS])
    assert "give --gateway, --clients-secret and --client together" in capsys.readouterr().err
