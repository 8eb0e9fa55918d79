"""A model's replicas share vLLM's compile cache through the model bucket: the copy, the containers, the grant."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import cdk8s
import pytest
from aws_cdk.assertions import Template
from moto import mock_aws

from charts import DeployedResources, build_charts
from settings import parse_stage_settings
from tests.conftest import Scenario, find, keyed_prod_data, stage_data
from tests.scanners import kubernetes_problems
from workloads import compile_cache

BUCKET = "model-bucket"
PREFIX = "compile-cache/gpt-oss-20b/0.31.0/"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    with mock_aws():
        client = boto3.client("s3", region_name="us-west-2")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        yield client


def test_a_replica_saves_what_the_bucket_lacks_and_the_next_starts_from_it(s3: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "torch_aot_compile" / "abc").mkdir(parents=True)
    (first / "torch_aot_compile" / "abc" / "model.bin").write_bytes(b"compiled")
    assert compile_cache.restore(s3, BUCKET, PREFIX, first) == 0  # an empty bucket: nothing, and nothing lost
    assert compile_cache.save(s3, BUCKET, PREFIX, first) == 1
    assert compile_cache.save(s3, BUCKET, PREFIX, first) == 0  # already there
    assert compile_cache.restore(s3, BUCKET, PREFIX, second) == 1
    assert (second / "torch_aot_compile" / "abc" / "model.bin").read_bytes() == b"compiled"
    # What a pod compiled itself is kept, not overwritten by the bucket's copy.
    (second / "torch_aot_compile" / "abc" / "model.bin").write_bytes(b"mine")
    assert compile_cache.restore(s3, BUCKET, PREFIX, second) == 0
    assert (second / "torch_aot_compile" / "abc" / "model.bin").read_bytes() == b"mine"


class Health(http.server.BaseHTTPRequestHandler):
    asked = 0

    def do_GET(self) -> None:
        Health.asked += 1
        self.send_response(200 if Health.asked >= 3 else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_sidecar_saves_only_once_vllm_serves(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "entry").write_bytes(b"compiled")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    for name, value in {"BUCKET": BUCKET, "PREFIX": PREFIX, "ROOT": str(tmp_path), "HEALTH_URL": url}.items():
        monkeypatch.setenv(name, value)
    try:
        assert compile_cache.main(["save"], poll=0.01, idle=False) == 0
    finally:
        server.shutdown()
    assert Health.asked == 3  # twice 503 while vLLM loads, then 200
    assert compile_cache.keys(s3, BUCKET, PREFIX) == {PREFIX + "entry"}
    assert f"compile cache: 1 files to s3://{BUCKET}/{PREFIX}" in capsys.readouterr().out


def charts_with_cache(data: dict[str, Any], stage: str) -> dict[str, list[dict[str, Any]]]:
    data["models"][0]["compile_cache"] = True
    settings = parse_stage_settings(stage, data)
    return {
        chart_id: chart.to_json()
        for chart_id, chart in build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings)).items()
    }


def test_the_cache_is_copied_in_before_vllm_and_back_beside_it_into_the_pods_home() -> None:
    charts = charts_with_cache(stage_data(), "dev")
    feature = charts["CompileCache-gpt-oss-20b"]
    assert find(feature, "ServiceAccount")["metadata"]["name"] == "vllm-compile-cache"  # dev has no API keys
    pod = find(charts["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vllm-compile-cache"
    restore, save = (
        next(c for c in pod["initContainers"] if c["name"] == name)
        for name in ("restore-compile-cache", "save-compile-cache")
    )
    assert "restartPolicy" not in restore  # done before vLLM starts
    assert save["restartPolicy"] == "Always"  # a sidecar, beside vLLM
    env = {item["name"]: item["value"] for item in save["env"]}
    assert env["PREFIX"] == PREFIX  # one copy a model and vLLM version
    assert env["ROOT"] == "/home/vllm/.cache/vllm/torch_compile_cache"  # vLLM's default cache root under its HOME
    assert env["HEALTH_URL"] == "http://127.0.0.1:8000/health"
    server = pod["containers"][0]
    home = next(m for m in server["volumeMounts"] if m["mountPath"] == "/home/vllm")
    assert {"name": home["name"], "mountPath": "/home/vllm"} in restore["volumeMounts"]
    assert restore["securityContext"] == server["securityContext"]
    for obj in (*feature, find(charts["Model-gpt-oss-20b"], "Deployment")):
        assert kubernetes_problems(obj, "1.36") == []


def test_with_api_keys_the_replicas_keep_their_account() -> None:
    charts = charts_with_cache(keyed_prod_data(), "prod")
    assert "ServiceAccount" not in {obj["kind"] for obj in charts["CompileCache-gpt-oss-20b"]}
    pod = find(charts["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vllm-server"


def test_the_replicas_may_read_and_write_their_models_folder_and_nothing_else(gated_model_serving: Scenario) -> None:
    serving = Template.from_json(gated_model_serving.template)
    (association,) = [
        r["Properties"]
        for r in serving.find_resources("AWS::EKS::PodIdentityAssociation").values()
        if r["Properties"]["ServiceAccount"] == "vllm-compile-cache"
    ]
    role = association["RoleArn"]["Fn::GetAtt"][0]
    (policy,) = [
        p["Properties"]
        for p in serving.find_resources("AWS::IAM::Policy").values()
        if p["Properties"]["Roles"] == [{"Ref": role}]
    ]
    statements = policy["PolicyDocument"]["Statement"]
    assert [s["Action"] for s in statements] == [["s3:GetObject", "s3:PutObject"], "s3:ListBucket"]
    assert statements[0]["Resource"]["Fn::Join"][1][1] == "/compile-cache/gpt-oss-20b/*"  # after the bucket's ARN
    assert statements[1]["Condition"] == {"StringLike": {"s3:prefix": ["compile-cache/gpt-oss-20b/*"]}}


def test_the_idle_sidecar_ends_at_once_on_sigterm(tmp_path: Path) -> None:
    # As PID 1 in its container it would ignore SIGTERM without a handler: here, a plain process shows the handler.
    script = tmp_path / "run.py"
    script.write_text(
        "import signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(compile_cache.__file__).parent)!r})\n"
        "import compile_cache\n"
        "compile_cache.healthy = lambda url: True\n"
        "compile_cache.save = lambda *args: 0\n"
        "sys.modules['boto3'] = type(sys)('boto3'); sys.modules['boto3'].client = lambda name: None\n"
        "print('ready', flush=True)\n"
        "compile_cache.main(['save'])\n"
    )
    env = {
        "BUCKET": BUCKET,
        "PREFIX": PREFIX,
        "ROOT": str(tmp_path),
        "HEALTH_URL": "http://unused",
        "PATH": "/usr/bin:/bin",
    }
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0


@pytest.mark.parametrize("mode", ["restore", "save"])
def test_a_copy_that_fails_is_logged_and_neither_stops_vllm_nor_the_pods_readiness(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    # No such bucket: the copy fails either way, and the container still ends (restore) or stays (save) well.
    environment = {"BUCKET": "no-such-bucket", "PREFIX": PREFIX, "ROOT": str(tmp_path), "HEALTH_URL": "http://x"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(compile_cache, "healthy", lambda url: True)
    assert compile_cache.main([mode], poll=0.01, idle=False) == 0
    assert f"compile cache: not copied ({mode}, s3://no-such-bucket/{PREFIX})" in capsys.readouterr().err
