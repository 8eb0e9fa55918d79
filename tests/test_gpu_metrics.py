"""Each replica's GPU reader (workloads/gpu_reader.py): run with NVIDIA's real binding over a stand-in NVML
library (tests/fixtures/fake_nvml), started the way the rendered container starts it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from charts.gpu_metrics import GPU_METRICS_PORT, RESTART_SECONDS, SCRIPT, SCRIPT_HASH_ANNOTATION, SCRIPT_NAME
from tests.conftest import find, render_charts
from tests.scanners import (
    is_config_map_key,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_port_name,
    is_qualified_name,
)
from tests.test_autoscaling import GPU_READER_SERIES
from workloads import gpu_reader as gpu_metrics

FAKE_NVML = Path(__file__).resolve().parent / "fixtures" / "fake_nvml"
GIB = 1024**3
# Two GPUs of 24 GiB: one 40 % busy, one fully; vLLM has reserved 90 % of each.
GPUS = [
    {"utilization": 40, "used": int(21.6 * GIB), "total": 24 * GIB},
    {"utilization": 100, "used": int(21.6 * GIB), "total": 24 * GIB},
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vllm_package(folder: Path) -> Path:
    """A vLLM package as the reader finds it in the image: NVIDIA's binding in vllm/third_party/pynvml.py (the
    same release vLLM copies), and an __init__ that fails, as importing vLLM must not happen."""
    package = folder / "vllm"
    (package / "third_party").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('vLLM, and torch with it, must not be imported')\n")
    (package / "third_party" / "pynvml.py").write_text(Path(pynvml.__file__).read_text())
    return package / "third_party" / "pynvml.py"


def start_reader(port: int, site: Path, sample_seconds: float = 0.05, **fake: str) -> subprocess.Popen[str]:
    """The reader as the container runs it, with `site` (holding a vLLM package) on its path."""
    env = {**os.environ, "PYTHONPATH": f"{FAKE_NVML}:{site}", **fake}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), f"--port={port}", f"--sample-seconds={sample_seconds}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scrape(port: int, wait_seconds: float = 10) -> dict[str, dict[tuple[str, str], float]]:
    """The page's samples, {sample name: {(gpu, uuid): value}}, once the reader answers; each family's type is
    under "<family>:type"."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                page = response.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(page):
        samples[f"{family.name}:type"] = family.type  # type: ignore[assignment]
        for sample in family.samples:
            samples.setdefault(sample.name, {})[(sample.labels["gpu"], sample.labels["uuid"])] = sample.value
    return samples


@pytest.fixture
def site(tmp_path: Path) -> Path:
    vllm_package(tmp_path)
    return tmp_path


@pytest.fixture
def reader(site: Path) -> Iterator[int]:
    port = free_port()
    process = start_reader(port, site, FAKE_NVML_GPUS=json.dumps(GPUS))
    try:
        yield port
    finally:
        process.kill()
        process.communicate()


def test_the_page_has_each_gpus_busy_seconds_and_memory_and_nothing_else(reader: int) -> None:
    first = scrape(reader)
    types = {name: first.pop(name) for name in list(first) if name.endswith(":type")}
    assert set(first) == GPU_READER_SERIES  # what the rules may read (tests/test_autoscaling.py)
    assert types == {
        "gpu_busy_seconds:type": "counter",
        **dict.fromkeys(["gpu_memory_used_bytes:type", "gpu_memory_total_bytes:type"], "gauge"),
    }
    gpus = [("0", "GPU-00000000-fake"), ("1", "GPU-00000001-fake")]
    assert first["gpu_memory_used_bytes"] == {gpus[0]: GPUS[0]["used"], gpus[1]: GPUS[1]["used"]}
    assert first["gpu_memory_total_bytes"] == dict.fromkeys(gpus, 24 * GIB)
    started = time.monotonic()
    before = scrape(reader)["gpu_busy_seconds_total"]
    time.sleep(0.6)
    after = scrape(reader)["gpu_busy_seconds_total"]
    elapsed = time.monotonic() - started
    # Both GPUs are sampled at the same moments, so their busy seconds keep the ratio of their utilizations,
    # and rate() of the fully busy one is about one second per second.
    assert after[gpus[1]] / after[gpus[0]] == pytest.approx(100 / 40)
    busy_rate = (after[gpus[1]] - before[gpus[1]]) / elapsed
    assert 0.6 < busy_rate <= 1.1


def test_a_lost_gpu_stops_the_reader_so_its_target_goes_down(site: Path) -> None:
    port = free_port()
    process = start_reader(port, site, FAKE_NVML_GPUS=json.dumps(GPUS), FAKE_NVML_LOST_AFTER="6")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode != 0
    assert "GPU is lost" in stderr
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_a_scrape_that_nvml_fails_answers_500_and_the_reader_stays(site: Path) -> None:
    port = free_port()
    # No sampling within the test: the two GPUs' memory reads of the first scrape are all NVML answers.
    process = start_reader(port, site, sample_seconds=60, FAKE_NVML_GPUS=json.dumps(GPUS), FAKE_NVML_LOST_AFTER="2")
    try:
        scrape(port)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        assert refused.value.code == 500
        assert process.poll() is None
    finally:
        process.kill()
        process.communicate()


def test_without_nvml_the_reader_stops_at_once_and_says_why(site: Path) -> None:
    process = start_reader(free_port(), site)  # no FAKE_NVML_GPUS: no libnvidia-ml.so.1
    _, stderr = process.communicate(timeout=20)
    assert process.returncode != 0
    assert "NVML Shared Library Not Found" in stderr


def test_vllms_copy_of_the_binding_is_loaded_without_importing_vllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = vllm_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml")  # as in the image, where nothing imported it
    monkeypatch.delitem(sys.modules, gpu_metrics.VENDORED_BINDING, raising=False)
    loaded = gpu_metrics.load_nvml()
    assert loaded.__file__ == str(copy)
    assert "vllm" not in sys.modules
    assert "pynvml" not in sys.modules
    # Its error classes are its own, made as it loaded (it looks itself up in sys.modules for that).
    assert issubclass(loaded.NVMLError_GpuIsLost, loaded.NVMLError)


def test_without_vllm_the_binding_is_nvidia_ml_pys() -> None:
    assert "vllm" not in sys.modules
    assert gpu_metrics.load_nvml() is pynvml


# --- how the replica runs it ---


@pytest.fixture(scope="module")
def prod_objects() -> list[dict[str, Any]]:
    """prod's model chart (prod has metrics)."""
    return render_charts("prod")["Model-gpt-oss-20b"]


@pytest.fixture(scope="module")
def prod_container(prod_objects: list[dict[str, Any]]) -> dict[str, Any]:
    """prod's vLLM container, with the pod's volumes."""
    pod = find(prod_objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {**container, "volumes": pod["volumes"]}


def readers_config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "gpu-metrics")


def test_the_container_starts_the_reader_then_becomes_vllm_with_its_args(
    prod_container: dict[str, Any], tmp_path: Path
) -> None:
    """The rendered command, run by sh with stand-ins for python3, sleep and vllm: vLLM takes the shell's
    process (the one SIGTERM reaches) and exactly the container's args; the reader gets the scraped port,
    and is started again after the pause when it stops."""
    real_sleep = shutil.which("sleep")
    for name, script in {
        "python3": 'echo "$@" >> "$RECORD/reader"; exit 1',
        # The second pause lasts: two starts of the reader are enough to see.
        "sleep": f'echo "$@" >> "$RECORD/pauses"; [ "$(wc -l < "$RECORD/pauses")" -lt 2 ] || exec {real_sleep} 30',
        "vllm": 'echo $$ > "$RECORD/vllm.pid"; printf "%s\\n" "$@" > "$RECORD/vllm.args"; '
        f'while [ ! -e "$RECORD/stop" ]; do {real_sleep} 0.02; done',
    }.items():
        stand_in = tmp_path / name
        stand_in.write_text(f"#!/bin/sh\n{script}\n")
        stand_in.chmod(0o755)
    command = [*prod_container["command"], *prod_container["args"]]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RECORD": str(tmp_path)}
    shell = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "pauses").exists() or len((tmp_path / "pauses").read_text().split()) < 2:
            assert time.monotonic() < deadline, "the reader was not started twice"
            time.sleep(0.02)
        assert int((tmp_path / "vllm.pid").read_text()) == shell.pid
        assert (tmp_path / "vllm.args").read_text().splitlines() == ["serve", *prod_container["args"]]
        mount = next(m["mountPath"] for m in prod_container["volumeMounts"] if m["name"] == "gpu-metrics")
        reader = [f"{mount}/{SCRIPT_NAME}", f"--port={GPU_METRICS_PORT}"]
        assert [line.split() for line in (tmp_path / "reader").read_text().splitlines()] == [reader, reader]
        assert (tmp_path / "pauses").read_text().split() == [str(RESTART_SECONDS)] * 2
        (tmp_path / "stop").touch()
        assert shell.wait(timeout=10) == 0
    finally:
        os.killpg(shell.pid, signal.SIGKILL)  # the loop, which the container's end would take with it
        shell.wait()


def test_the_pod_rolls_when_the_reader_changes(prod_objects: list[dict[str, Any]]) -> None:
    deployment = find(prod_objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[SCRIPT_HASH_ANNOTATION] == hashlib.sha256(SCRIPT.read_bytes()).hexdigest()


def test_the_reader_is_mounted_from_its_configmap_and_its_port_is_declared(
    prod_objects: list[dict[str, Any]], prod_container: dict[str, Any]
) -> None:
    config_map = readers_config_map(prod_objects)
    assert config_map["data"] == {SCRIPT_NAME: SCRIPT.read_text()}
    volume = next(v for v in prod_container["volumes"] if v["name"] == "gpu-metrics")
    assert volume["configMap"]["name"] == "gpu-metrics"
    mount = next(m for m in prod_container["volumeMounts"] if m["name"] == "gpu-metrics")
    assert mount["readOnly"] is True
    assert {"containerPort": GPU_METRICS_PORT, "name": "gpu-metrics"} in prod_container["ports"]


def test_the_names_the_reader_hands_kubernetes_are_ones_it_takes(
    prod_objects: list[dict[str, Any]], prod_container: dict[str, Any]
) -> None:
    config_map = readers_config_map(prod_objects)
    assert is_dns1123_subdomain(config_map["metadata"]["name"])
    assert all(is_config_map_key(key) for key in config_map["data"])
    volume = next(v for v in prod_container["volumes"] if v.get("configMap", {}).get("name") == "gpu-metrics")
    assert is_dns1123_label(volume["name"])
    assert is_port_name(next(p["name"] for p in prod_container["ports"] if p["containerPort"] == GPU_METRICS_PORT))
    assert is_qualified_name(SCRIPT_HASH_ANNOTATION)
    annotations = find(prod_objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations[SCRIPT_HASH_ANNOTATION]) == 64  # a value has no rule but the annotations' total size


def test_without_metrics_vllm_runs_alone() -> None:
    objects = render_charts("dev")["Model-gpt-oss-20b"]  # dev has no metrics
    (container,) = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"]
    assert container["ports"] == [{"containerPort": 8000}]
    assert not [o for o in objects if o["metadata"]["name"] == "gpu-metrics"]
