"""A replica goes away without cutting a request short: the preStop drain and the grace periods around it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import cdk8s
import pytest

from charts import DeployedResources, build_charts
from charts.gpu_node_pool import disruption_budgets
from charts.pre_stop_drain import DRAIN_SCRIPT
from settings import SettingsError, load_stage_settings, parse_stage_settings
from settings.cold_start import progress_deadline_seconds
from settings.drain import max_request_seconds, termination_grace_seconds
from settings.schema import duration_seconds
from tests.conftest import WALKTHROUGH_IMAGE, charts_of, find, find_all, gpu_pool_objects, render_charts, stage_data
from tests.stand_ins import QuietHandler, serving


class FakeVllm(ThreadingHTTPServer):
    """A server that holds /v1/slow open for `hold` seconds and counts it in vLLM's gauge on /metrics."""

    def __init__(self, hold: float) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hold, self.in_flight, self.finished_at = hold, 0, 0.0


class Handler(QuietHandler):
    server: FakeVllm

    def do_GET(self) -> None:
        if self.path == "/v1/slow":
            self.server.in_flight += 1
            time.sleep(self.server.hold)
            self.server.in_flight -= 1
            self.server.finished_at = time.monotonic()
            body = b"the whole answer"
        else:
            body = (
                f'vllm:num_requests_running{{engine="0",model_name="m"}} {self.server.in_flight}.0\n'
                'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
            ).encode()
        self.answer(200, body)


@pytest.fixture
def vllm(request: pytest.FixtureRequest) -> Iterator[FakeVllm]:
    with serving(FakeVllm(hold=getattr(request, "param", 0.8))) as server:
        yield server


def drain(port: int, seconds: float) -> float:
    """Runs the preStop hook as Kubernetes would (no propagation wait here); returns when it ended."""
    env = {"DRAIN_DELAY": "0", "DRAIN_SECONDS": str(seconds), "DRAIN_PORT": str(port), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", DRAIN_SCRIPT], env=env, check=True, timeout=30)
    return time.monotonic()


def test_the_drain_waits_for_a_request_in_progress_to_finish(vllm: FakeVllm) -> None:
    answers: list[bytes] = []
    client = threading.Thread(
        target=lambda: answers.append(urllib.request.urlopen(f"http://127.0.0.1:{vllm.server_port}/v1/slow").read())
    )
    client.start()
    while vllm.in_flight == 0:
        time.sleep(0.01)
    ended = drain(vllm.server_port, seconds=10)  # the pod "terminates" while the request runs
    client.join()
    assert ended >= vllm.finished_at  # SIGTERM would come only now
    assert answers == [b"the whole answer"]


@pytest.mark.parametrize("vllm", [5.0], indirect=True)
def test_the_drain_gives_up_at_its_bound(vllm: FakeVllm) -> None:
    threading.Thread(
        target=lambda: urllib.request.urlopen(f"http://127.0.0.1:{vllm.server_port}/v1/slow").read(), daemon=True
    ).start()
    while vllm.in_flight == 0:
        time.sleep(0.01)
    started = time.monotonic()
    drain(vllm.server_port, seconds=1)
    assert 1 <= time.monotonic() - started < 3


def test_the_drain_ends_at_once_when_the_server_is_gone() -> None:
    started = time.monotonic()
    drain(9, seconds=10)  # nothing listens on port 9
    assert time.monotonic() - started < 2


def test_an_idle_replica_drains_at_once(vllm: FakeVllm) -> None:
    started = time.monotonic()
    drain(vllm.server_port, seconds=10)
    assert time.monotonic() - started < 2


# vLLM from 0.18 on SIGTERM (vllm/entrypoints/launchers/launcher.py at v0.31.0, serve_http's signal handler): the
# engine shuts down with --shutdown-timeout seconds for the requests in flight, aborting what is left, then the
# server exits. This stand-in does the same, with one slow route; it reads the flag from the rendered arguments.
SELF_DRAINING_VLLM = """
import argparse, os, signal, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
parser = argparse.ArgumentParser()
parser.add_argument("--shutdown-timeout", type=int, default=0)
parser.add_argument("--hold", type=float, required=True)
args, _ = parser.parse_known_args()
active, lock, stop = [0], threading.Lock(), threading.Event()
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass
    def do_GET(self):
        with lock:
            active[0] += 1
        time.sleep(args.hold)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"the whole answer")
        with lock:
            active[0] -= 1
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("port", server.server_address[1], flush=True)
stop.wait()
deadline = time.monotonic() + args.shutdown_timeout
while active[0] and time.monotonic() < deadline:
    time.sleep(0.05)
os._exit(0)
"""


def terminated_mid_request(vllm_args: list[str], hold: float) -> tuple[list[bytes], float]:
    """Start the stand-in with a replica's arguments, send it a request that takes `hold` seconds, SIGTERM it while
    the request runs (the preStop hook has ended); what the client got, and how long the server took to exit."""
    command = [sys.executable, "-c", SELF_DRAINING_VLLM, *vllm_args, "--hold", str(hold)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    answers: list[bytes] = []

    def client() -> None:
        with contextlib.suppress(OSError):
            answers.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/slow", timeout=30).read())

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.1)  # the request is in flight
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    exited = time.monotonic() - started
    thread.join()
    return answers, exited


def test_a_version_that_drains_itself_finishes_the_request_in_flight_within_the_grace_period() -> None:
    pod = find(render_charts("dev")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    answers, exited = terminated_mid_request(pod["containers"][0]["args"], hold=0.4)
    assert answers == [b"the whole answer"]
    assert exited < pod["terminationGracePeriodSeconds"]


def test_a_version_that_drains_itself_stops_at_the_longest_request_the_model_allows() -> None:
    data = stage_data("dev")
    data["models"][0]["max_request_seconds"] = 1
    pod = find(charts_of(data, "dev")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    answers, exited = terminated_mid_request(pod["containers"][0]["args"], hold=3.0)
    assert answers == []  # aborted at the timeout, as vLLM aborts what is left
    assert 1 <= exited < 3
    assert pod["terminationGracePeriodSeconds"] == 10 + 1 + 30  # the kubelet's SIGKILL comes only after


# --- the rendered values ---


def test_the_grace_period_covers_the_longest_request_the_model_allows() -> None:
    model = load_stage_settings("dev").models[0]
    assert max_request_seconds(model) == 20000 // 20  # max_model_len at 20 tokens/s
    pod = find(render_charts("dev")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == termination_grace_seconds(model) == 10 + 1000 + 30
    # dev's vLLM drains by itself: the hook waits for the proxies, then vLLM has the longest request to finish.
    (server,) = pod["containers"]
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert "--shutdown-timeout=1000" in server["args"]
    # The walkthrough's 0.11.2 does not: the hook waits, then polls its gauges for as long.
    data = stage_data("dev")
    data["models"][0]["image"] = WALKTHROUGH_IMAGE
    pod = find(charts_of(data, "dev")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10 + 1000 + 30
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:5] == ["env", "DRAIN_DELAY=10", "DRAIN_SECONDS=1000", "DRAIN_PORT=8000", "python3"]
    assert command[-1] == DRAIN_SCRIPT
    assert not any(arg.startswith("--shutdown-timeout") for arg in pod["containers"][0]["args"])


def test_a_setting_sets_the_longest_request() -> None:
    data = stage_data()
    data["models"][0]["max_request_seconds"] = 120
    assert termination_grace_seconds(parse_stage_settings("dev", data).models[0]) == 160


def test_a_node_going_away_waits_for_a_replacement_to_serve_and_its_replicas_to_drain() -> None:
    # Past the node's grace period Karpenter deletes its pods whatever the PodDisruptionBudget says,
    # so it covers a replacement's whole start (the rollout's progress deadline) and the drain.
    settings = load_stage_settings("prod")
    model = settings.models[0]
    pools = find_all(gpu_pool_objects(render_charts("prod")), "NodePool")
    (node_grace,) = {pool["spec"]["template"]["spec"]["terminationGracePeriod"] for pool in pools}
    pod_grace = find(render_charts("prod")["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert node_grace == "1h"  # the pools' setting
    # prod's deadline: every replica of the model may start at once, sharing the file system's throughput.
    assert duration_seconds(node_grace) - pod_grace >= progress_deadline_seconds(settings, model) == 1260


def test_a_pool_whose_nodes_would_not_wait_for_a_replica_is_refused() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["termination_grace_period"] = "33m"
    assert (
        "gpu_node_pools[0].termination_grace_period: 33m (1980 s) is shorter than a node must wait for a replica of "
        "models[0] (gpt-oss-20b): its replacement's start (960 s, the rollout's progress deadline) and its drain "
        "(1040 s); give at least 34m (a change replaces the pool's nodes)"
    ) in rejected(data, "dev")
    data["gpu_node_pools"][0]["termination_grace_period"] = "2000s"  # exactly enough
    parse_stage_settings("dev", data)


def test_model_changes_leave_the_pools_hashed_template_alone() -> None:
    # Karpenter hashes a NodePool's template (terminationGracePeriod included) for drift: a model's settings must not
    # reach it, or every GPU node would be replaced (kubernetes-sigs/karpenter pkg/apis/v1/nodepool.go, Hash).
    def templates(data: dict[str, Any]) -> list[dict[str, Any]]:
        settings = parse_stage_settings("dev", data)
        charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
        templates = [
            pool["spec"]["template"]
            for pool in find_all(gpu_pool_objects({key: chart.to_json() for key, chart in charts.items()}), "NodePool")
        ]
        for template in templates:
            # Hash ignores the requirements: they drift on their own, only when an instance no longer matches.
            template["spec"].pop("requirements")
        return templates

    data = stage_data()
    before = templates(data)
    data["models"][0].update(max_model_len=16000, max_request_seconds=1200, load_seconds=240)
    assert templates(data) == before


def test_a_flag_that_would_hide_vllms_request_gauges_is_refused() -> None:
    data = stage_data()
    data["models"][0]["extra_args"] = ["--disable-log-stats"]
    assert "models[0].extra_args: '--disable-log-stats' is set by the project" in rejected(data, "dev")


def test_production_replaces_drifted_nodes_only_in_its_maintenance_window() -> None:
    # 03:00-06:00 UTC: no drifted node is disrupted from 06:00 for 21 hours, in any pool.
    for pool in find_all(gpu_pool_objects(render_charts("prod")), "NodePool"):
        assert pool["spec"]["disruption"]["budgets"] == [
            {"nodes": "1"},
            {"nodes": "0", "reasons": ["Drifted"], "schedule": "0 6 * * *", "duration": "21h"},
        ]
    dev = find(gpu_pool_objects(render_charts("dev")), "NodePool")["spec"]["disruption"]["budgets"]
    assert dev == [{"nodes": "1"}]  # no window: at any time, one node at a time


def test_a_window_that_crosses_midnight_wraps_the_schedule() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["maintenance_window"] = {"start": "22:30", "hours": 4}
    settings = parse_stage_settings("dev", data)
    assert disruption_budgets(settings.gpu_node_pools[0])[1] == {
        "nodes": "0",
        "reasons": ["Drifted"],
        "schedule": "30 2 * * *",
        "duration": "20h",
    }


def rejected(data: dict[str, Any], stage: str) -> str:
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings(stage, data)
    return str(caught.value)


def test_production_needs_a_maintenance_window() -> None:
    data = stage_data("prod")
    del data["gpu_node_pools"][0]["maintenance_window"]
    assert "gpu_node_pools[0].maintenance_window: a production stage sets one" in rejected(data, "prod")


@pytest.mark.parametrize(
    ("window", "field"), [({"start": "25:00", "hours": 3}, "start"), ({"start": "03:00", "hours": 0}, "hours")]
)
def test_a_maintenance_window_that_does_not_parse_is_refused(window: dict[str, Any], field: str) -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["maintenance_window"] = window
    assert f"gpu_node_pools[0].maintenance_window.{field}" in rejected(data, "dev")


@pytest.mark.parametrize(("grace", "accepted"), [(1040, True), (1039, False)])
def test_a_grace_period_shorter_than_the_drain_is_refused(grace: int, accepted: bool) -> None:
    data = stage_data()
    data["models"][0]["termination_grace_seconds"] = grace
    if accepted:
        model = parse_stage_settings("dev", data).models[0]
        assert termination_grace_seconds(model) == 1040
        return
    assert (
        "models[0].termination_grace_seconds: 1039 is shorter than draining the replica takes: 10 s for the "
        "proxies, 1000 s for the longest request (max_request_seconds, or max_model_len at 20 tokens/s) and 30 s "
        "for vLLM to stop; at least 1040, or leave it unset"
    ) in rejected(data, "dev")


def test_a_longer_grace_period_is_rendered() -> None:
    data = stage_data()
    data["models"][0]["termination_grace_seconds"] = 1800
    settings = parse_stage_settings("dev", data)
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    pod = find(charts["Model-gpt-oss-20b"].to_json(), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 1800
