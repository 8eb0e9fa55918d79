"""Node expiry kept inside the maintenance window: the rotation CronJob, run against a stand-in Kubernetes API."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import urllib.parse
import zoneinfo
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cdk8s
import pytest

from charts import DeployedResources, build_charts
from charts.node_rotation import ROTATE_WITHIN_HOURS, ROTATION_ANNOTATION
from settings import parse_stage_settings
from tests.conftest import find, find_all, gpu_pool_objects, render_charts, stage_data
from tests.scanners import is_qualified_name, karpenter_problems, kubernetes_problems
from tests.stand_ins import QuietHandler, serving

TOKEN = "a-service-account-token"


def claim(name: str, pool: str, age: datetime.timedelta, expire_after: str) -> dict[str, Any]:
    created = datetime.datetime.now(datetime.UTC) - age
    return {
        "metadata": {
            "name": name,
            "labels": {"karpenter.sh/nodepool": pool},
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {"expireAfter": expire_after},
    }


class FakeKubernetes(ThreadingHTTPServer):
    """Serves NodeClaims by their pool label and records every other request."""

    def __init__(self, claims: list[dict[str, Any]], status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), KubernetesHandler)
        self.claims, self.status = claims, status
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []


class KubernetesHandler(QuietHandler):
    server: FakeKubernetes

    def _answer(self, body: Any) -> None:
        self.answer(self.server.status, json.dumps(body).encode())

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, dict(self.headers), None))
        selector = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["labelSelector"][0]
        pool = selector.removeprefix("karpenter.sh/nodepool=")
        self._answer(
            {"items": [c for c in self.server.claims if c["metadata"]["labels"]["karpenter.sh/nodepool"] == pool]}
        )

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("PATCH", self.path, dict(self.headers), body))
        self._answer({})


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text(TOKEN + "\n")
    return tmp_path


def rotation_job(stage: str = "prod") -> dict[str, Any]:
    return find(render_charts(stage)["NodeRotation"], "CronJob")


def run_rotation(
    claims: list[dict[str, Any]], service_account: Path, status: int = 200
) -> tuple[subprocess.CompletedProcess[str], FakeKubernetes]:
    """The rendered job's own command and environment, against a stand-in API server."""
    container = rotation_job()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    with serving(FakeKubernetes(claims, status)) as server:
        env |= {"KUBERNETES_API": f"http://127.0.0.1:{server.server_port}", "SERVICE_ACCOUNT_DIR": str(service_account)}
        command = [sys.executable, *container["command"][1:]]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30), server


def test_a_pool_with_a_node_about_to_expire_is_drifted_in_the_window(service_account: Path) -> None:
    # Auto Mode's default lifetime is 14 days: this node has 30 hours left, the other 13 days.
    old = claim("gpu-a", "gpu-node-pool", datetime.timedelta(hours=336 - 30), "336h")
    young = claim("gpu-b", "gpu-node-pool", datetime.timedelta(hours=24), "336h")
    fallback = claim("gpu-c", "gpu-fallback-g5", datetime.timedelta(hours=1), "336h")
    run, server = run_rotation([old, young, fallback], service_account)
    assert run.returncode == 0, run.stderr
    (patch,) = [request for request in server.requests if request[0] == "PATCH"]
    _, path, headers, body = patch
    assert path == "/apis/karpenter.sh/v1/nodepools/gpu-node-pool"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    (stamp,) = body["spec"]["template"]["metadata"]["annotations"].values()
    assert list(body["spec"]["template"]["metadata"]["annotations"]) == [ROTATION_ANNOTATION]
    assert abs(datetime.datetime.fromisoformat(stamp) - datetime.datetime.now(datetime.UTC)).seconds < 60
    assert "gpu-node-pool: replacing its nodes now" in run.stdout
    assert "gpu-a" in run.stdout
    assert "gpu-b" not in run.stdout
    assert "gpu-fallback-g5: no node expires before" in run.stdout


def test_young_nodes_and_nodes_that_never_expire_are_left_alone(service_account: Path) -> None:
    claims = [
        claim("gpu-a", "gpu-node-pool", datetime.timedelta(hours=336 - ROTATE_WITHIN_HOURS - 2), "336h"),
        claim("gpu-b", "gpu-node-pool", datetime.timedelta(days=400), "Never"),
    ]
    run, server = run_rotation(claims, service_account)
    assert run.returncode == 0, run.stderr
    assert [request[0] for request in server.requests] == ["GET", "GET"]  # one list per pool, no patch


def test_a_rotation_still_under_way_is_not_started_again(service_account: Path) -> None:
    """Yesterday's window ended before the pool was replaced: the drifted claims wait for this one."""
    due = claim("gpu-a", "gpu-node-pool", datetime.timedelta(hours=336 - 20), "336h")
    replaced = claim("gpu-b", "gpu-node-pool", datetime.timedelta(hours=20), "336h")
    due["status"] = {"conditions": [{"type": "Drifted", "status": "True"}]}
    run, server = run_rotation([due, replaced], service_account)
    assert run.returncode == 0, run.stderr
    assert [request[0] for request in server.requests] == ["GET", "GET"]
    assert "gpu-node-pool: still replacing gpu-a" in run.stdout


def test_lifetimes_are_read_as_go_durations(service_account: Path) -> None:
    # 1h30m0s from an hour ago: due within the next 48 hours.
    run, server = run_rotation(
        [claim("gpu-a", "gpu-fallback-g5", datetime.timedelta(hours=1), "1h30m0s")], service_account
    )
    assert run.returncode == 0, run.stderr
    assert [request[1] for request in server.requests if request[0] == "PATCH"] == [
        "/apis/karpenter.sh/v1/nodepools/gpu-fallback-g5"
    ]


def test_a_refused_call_fails_the_job(service_account: Path) -> None:
    run, _ = run_rotation([], service_account, status=403)
    assert run.returncode != 0
    assert "403" in run.stderr


def test_one_job_per_window_start_in_utc_for_the_pools_with_a_window() -> None:
    objects = render_charts("prod")["NodeRotation"]
    (job,) = find_all(objects, "CronJob")  # both production pools open their window at 03:00
    assert job["spec"]["schedule"] == "0 3 * * *"
    assert job["spec"]["timeZone"] == "Etc/UTC"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "POOLS", "value": "gpu-node-pool,gpu-fallback-g5"} in container["env"]
    # Allowed to list NodeClaims and to patch its own pools, nothing else.
    role = find(objects, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["karpenter.sh"], "resources": ["nodeclaims"], "verbs": ["list"]},
        {
            "apiGroups": ["karpenter.sh"],
            "resources": ["nodepools"],
            "verbs": ["patch"],
            "resourceNames": ["gpu-fallback-g5", "gpu-node-pool"],
        },
    ]
    assert [problem for obj in objects for problem in kubernetes_problems(obj, "1.36")] == []


def test_the_names_the_job_hands_kubernetes_are_ones_it_takes() -> None:
    assert is_qualified_name(ROTATION_ANNOTATION)  # an annotation key
    job = rotation_job()
    # A CronJob's name leaves room for the 11 characters its Jobs add: at most 52 (Kubernetes docs, "CronJob").
    assert len(job["metadata"]["name"]) <= 52
    # The API server loads the zone as Go's time.LoadLocation does: a name of the IANA database.
    assert zoneinfo.ZoneInfo(job["spec"]["timeZone"]).utcoffset(datetime.datetime(2026, 1, 1)) == datetime.timedelta(0)


def test_pools_without_a_window_get_no_job() -> None:
    assert "NodeRotation" not in render_charts("dev")
    data = stage_data("dev")
    data["gpu_node_pools"] = [
        {"name": "early", "maintenance_window": {"start": "01:30", "hours": 2}},
        {"name": "late", "maintenance_window": {"start": "22:00", "hours": 4}},
        {"name": "anytime"},
    ]
    settings = parse_stage_settings("dev", data)
    objects = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))["NodeRotation"].to_json()
    jobs = {job["metadata"]["name"]: job for job in find_all(objects, "CronJob")}
    assert {name: job["spec"]["schedule"] for name, job in jobs.items()} == {
        "rotate-at-0130": "30 1 * * *",
        "rotate-at-2200": "0 22 * * *",
    }
    assert find(objects, "ClusterRole")["rules"][1]["resourceNames"] == ["early", "late"]


def test_the_patched_pool_is_still_a_valid_node_pool() -> None:
    pool = find_all(gpu_pool_objects(render_charts("prod")), "NodePool")[0]
    pool["spec"]["template"]["metadata"]["annotations"] = {ROTATION_ANNOTATION: "2026-11-28T03:00:00+00:00"}
    assert karpenter_problems([pool]) == []
