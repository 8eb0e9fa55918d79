"""`python -m charts`: every chart of a stage written as YAML for review, without CDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from charts.__main__ import write_manifests
from tests.conftest import ROOT, render_charts


def test_every_chart_is_written_as_yaml(tmp_path: Path) -> None:
    written = write_manifests("dev", tmp_path)
    assert [path.name for path in written] == ["gpu-node-pool.k8s.yaml", "vllm-gpt-oss-20b.k8s.yaml"]
    on_disk = sorted((list(yaml.safe_load_all(path.read_text())) for path in written), key=len)
    assert on_disk == sorted(render_charts("dev").values(), key=len)


def test_a_new_run_replaces_the_previous_files(tmp_path: Path) -> None:
    stale = tmp_path / "dev" / "removed-model.k8s.yaml"
    stale.parent.mkdir()
    stale.write_text("kind: Deployment\n")
    write_manifests("dev", tmp_path)
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dev"]  # no staging folder left behind


def test_unknown_stage_writes_nothing(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "charts", "--stage", "qa", "--outdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1
    assert "manifests not written: unknown stage 'qa'" in process.stderr
    assert not any(tmp_path.iterdir())


def test_a_stage_name_cdk_would_reject_writes_nothing(tmp_path: Path) -> None:
    outdir = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "charts", "--stage", "my_stage", "--outdir", str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "manifests not written: stage 'my_stage' is not a valid stage name: expected a name of lower-case" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not outdir.exists()
