"""Shared fixtures. Each stage is synthesized once per session, by the real CLI, in parallel."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cdk8s
import pytest
import yaml

from charts import DeployedResources, build_charts
from charts.__main__ import write_manifests
from settings import DEFAULT_STAGE, STAGES_DIR, load_stage_settings, stage_names

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "pipeline"


def synth_env() -> dict[str, str]:
    """The caller's environment without any AWS credentials, profile or region."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CDK_DEFAULT_"))}
    env["CDK_DISABLE_CLI_TELEMETRY"] = "true"
    return env


def cdk_synth(*args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """Start `cdk synth` as a user runs it (node_modules/.bin first on PATH, see the Makefile)."""
    command = ["cdk", "--no-notices", "synth", "--quiet", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=synth_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@dataclass(frozen=True)
class Assembly:
    """One stage's synthesized cloud assembly."""

    stage: str
    directory: Path
    stderr: str
    manifest: dict[str, Any] = field(repr=False)

    def stacks(self) -> dict[str, dict[str, Any]]:
        """Stack artifacts by their short name: Network, Cluster, Serving."""
        return {
            artifact["displayName"].split("/")[-1]: artifact
            for artifact in self.manifest["artifacts"].values()
            if artifact["type"] == "aws:cloudformation:stack"
        }

    def template(self, stack: str) -> dict[str, Any]:
        artifact = self.stacks()[stack]
        return json.loads((self.directory / artifact["properties"]["templateFile"]).read_text())


# What checkov's Kubernetes checks must reject, to prove the gate can fail.
BROKEN_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "broken", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "broken"}},
        "template": {
            "metadata": {"labels": {"app": "broken"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
        },
    },
}


@pytest.fixture(scope="session", autouse=True)
def kubernetes_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.Popen[str]]:
    """checkov on every stage's manifests (<folder>/<stage>/) and on a broken Deployment (<folder>/broken/),
    in one run started with the session: it needs the charts only, so it runs while the stages
    synthesize. tests/test_gates.py reads each folder's share of the results."""
    from tests.scanners import run_checkov  # here: tests.scanners imports this module

    outdir = tmp_path_factory.mktemp("manifests")
    for stage in stage_names():
        write_manifests(stage, outdir)
    (outdir / "broken").mkdir()
    (outdir / "broken" / "deployment.yaml").write_text(yaml.safe_dump(BROKEN_DEPLOYMENT))
    return outdir, run_checkov("kubernetes", [outdir])


@pytest.fixture(scope="session")
def _synths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.Popen[str]]]:
    """Every stage and the pipeline, synthesized at once with no AWS credentials or region in the environment.

    The default stage is synthesized without `-c stage`, so it also proves what the default is.
    """
    running = {}
    for stage in stage_names():
        outdir = tmp_path_factory.mktemp(f"cdk.out-{stage}")
        stage_args = [] if stage == DEFAULT_STAGE else ["-c", f"stage={stage}"]
        running[stage] = (outdir, cdk_synth(*stage_args, "-o", str(outdir)))
    outdir = tmp_path_factory.mktemp("cdk.out-pipeline")
    running[PIPELINE] = (outdir, cdk_synth("-c", "pipeline=true", "-o", str(outdir)))
    return running


def _finished(outdir: Path, process: subprocess.Popen[str], what: str) -> tuple[str, dict[str, Any]]:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, f"cdk synth of {what} failed:\n{stderr}"
    return stderr, json.loads((outdir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def assemblies(_synths: dict[str, tuple[Path, subprocess.Popen[str]]]) -> dict[str, Assembly]:
    synthesized = {}
    for stage in stage_names():
        outdir, process = _synths[stage]
        stderr, _ = _finished(outdir, process, f"stage {stage}")
        directory = outdir / f"assembly-{stage}"
        manifest = json.loads((directory / "manifest.json").read_text())
        synthesized[stage] = Assembly(stage=stage, directory=directory, stderr=stderr, manifest=manifest)
    return synthesized


@pytest.fixture(scope="session")
def pipeline(_synths: dict[str, tuple[Path, subprocess.Popen[str]]]) -> Assembly:
    """The pipeline's cloud assembly: its stack, with each stage's stacks in a nested assembly."""
    outdir, process = _synths[PIPELINE]
    stderr, manifest = _finished(outdir, process, "the pipeline")
    return Assembly(stage=PIPELINE, directory=outdir, stderr=stderr, manifest=manifest)


def nested_stage(pipeline: Assembly, stage: str) -> Assembly:
    """One stage's stacks as the pipeline deploys them."""
    directory = pipeline.directory / f"assembly-GpuInferencePipeline-{stage}"
    manifest = json.loads((directory / "manifest.json").read_text())
    return Assembly(stage=stage, directory=directory, stderr="", manifest=manifest)


@pytest.fixture(scope="session")
def dev(assemblies: dict[str, Assembly]) -> Assembly:
    return assemblies["dev"]


@pytest.fixture(scope="session")
def prod(assemblies: dict[str, Assembly]) -> Assembly:
    return assemblies["prod"]


def stage_data(stage: str = DEFAULT_STAGE) -> dict[str, Any]:
    """A stage's settings as read from its YAML file, free to modify."""
    return copy.deepcopy(yaml.safe_load((STAGES_DIR / f"{stage}.yaml").read_text()))


def render_charts(stage: str) -> dict[str, list[dict[str, Any]]]:
    """A stage's charts rendered to Kubernetes objects, by chart id: a copy each caller may change."""
    return copy.deepcopy(_rendered(stage))


@functools.cache
def _rendered(stage: str) -> dict[str, list[dict[str, Any]]]:
    settings = load_stage_settings(stage)
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    return {chart_id: chart.to_json() for chart_id, chart in charts.items()}


def unfold_manifest(manifest: Any) -> list[dict[str, Any]]:
    """A KubernetesManifest's objects as JSON, each CloudFormation reference shown as ${...}.

    A manifest that holds deployed values (a file system id, say) is an Fn::Join in the template.
    """
    if isinstance(manifest, dict):
        manifest = "".join(part if isinstance(part, str) else _reference(part) for part in manifest["Fn::Join"][1])
    return json.loads(manifest)


def _reference(intrinsic: dict[str, Any]) -> str:
    if "Fn::GetStackOutput" in intrinsic:
        output = intrinsic["Fn::GetStackOutput"]
        return "${" + f"{output['StackName']}:{output['OutputName']}" + "}"
    if "Fn::ImportValue" in intrinsic:
        return "${" + intrinsic["Fn::ImportValue"] + "}"
    if "Ref" in intrinsic:
        return "${" + intrinsic["Ref"] + "}"
    return "${" + json.dumps(intrinsic, sort_keys=True).replace('"', "'") + "}"


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of a kind in a chart's output."""
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found
