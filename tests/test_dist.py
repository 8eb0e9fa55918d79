"""`python -m charts`: every chart of a stage written as YAML for review, without CDK."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from charts.__main__ import main, write_manifests
from tests.conftest import render_charts


def test_every_chart_is_written_as_yaml(tmp_path: Path) -> None:
    written = write_manifests("dev", tmp_path)
    assert [path.name for path in written] == [
        "gpu-node-pool-gpu-node-pool.k8s.yaml",
        "gpu-node-pools.k8s.yaml",
        "network-policy-controller.k8s.yaml",
        "vllm-gpt-oss-20b.k8s.yaml",
    ]
    on_disk = sorted((list(yaml.safe_load_all(path.read_text())) for path in written), key=len)
    assert on_disk == sorted(render_charts("dev").values(), key=len)


def test_a_new_run_replaces_the_previous_files(tmp_path: Path) -> None:
    stale = tmp_path / "dev" / "removed-model.k8s.yaml"
    stale.parent.mkdir()
    stale.write_text("kind: Deployment\n")
    write_manifests("dev", tmp_path)
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dev"]  # no staging folder left behind


def run_charts_command(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """`python -m charts ARGS`, in this process; what it exits with."""
    monkeypatch.setattr(sys, "argv", ["python -m charts", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    return str(stopped.value)


def test_unknown_stage_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = run_charts_command(monkeypatch, "--stage", "qa", "--outdir", str(tmp_path))
    assert message.startswith("manifests not written: unknown stage 'qa'; stages: dev, prod")
    assert not any(tmp_path.iterdir())


def test_a_stage_name_cdk_would_reject_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outdir = tmp_path / "dist"
    message = run_charts_command(monkeypatch, "--stage", "my_stage", "--outdir", str(outdir))
    assert message.startswith(
        "manifests not written: stage 'my_stage' is not a valid stage name: expected a name of lower-case"
    )
    assert not outdir.exists()
