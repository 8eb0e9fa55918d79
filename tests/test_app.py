"""The app as users run it: `cdk synth` through the CLI, with and without valid settings."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from jsii.errors import JavaScriptError

import app
from tests.conftest import ROOT, Assembly, cdk_synth, stage_data


def test_default_stage_synthesizes_without_credentials_or_lookups(dev: Assembly) -> None:
    # The fixture ran `cdk synth` with no -c stage and every AWS_* variable removed.
    assert sorted(dev.stacks()) == ["Cluster", "ModelStore", "Network", "Registry", "Serving"]
    for artifact in dev.stacks().values():
        assert artifact["environment"] == "aws://unknown-account/us-west-2"
    missing = [a for a in dev.manifest["artifacts"].values() if a["type"] == "aws:cdk:missing-context"]
    assert missing == []
    assert "missing" not in dev.manifest


def test_synth_prints_no_node_end_of_life_banner(dev: Assembly) -> None:
    assert "end-of-life" not in dev.stderr
    assert "not supported" not in dev.stderr


def test_stage_stacks_are_named_after_the_stage(dev: Assembly, prod: Assembly) -> None:
    for assembly in (dev, prod):
        names = {artifact["properties"]["stackName"] for artifact in assembly.stacks().values()}
        stacks = ("Network", "Registry", "ModelStore", "Cluster", "Serving")
        assert names == {f"{assembly.stage}-{stack}" for stack in stacks}


def test_production_stacks_have_termination_protection(dev: Assembly, prod: Assembly) -> None:
    assert all(a["properties"].get("terminationProtection") for a in prod.stacks().values())
    assert not any(a["properties"].get("terminationProtection") for a in dev.stacks().values())


def copy_of_the_project(tmp_path: Path) -> Path:
    """The project's sources in a scratch folder, sharing the installed .venv and node_modules."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("app.py", "cdk.json", "package.json", "settings", "stacks", "charts", "scripts"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    for name in (".venv", "node_modules"):
        (project / name).symlink_to(ROOT / name)
    return project


@dataclass(frozen=True)
class Stopped:
    """A `cdk synth` run that should stop: its exit code, what it printed and where it would have written."""

    returncode: int
    stderr: str
    outdir: Path


@pytest.fixture(scope="module")
def stopped_synths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    """The CLI runs that must stop, started together: each spends most of its time starting Node.js and jsii."""
    invalid = copy_of_the_project(tmp_path_factory.mktemp("invalid-settings"))
    data = stage_data()
    data["models"][0]["replicas"] = 0
    (invalid / "settings" / "stages" / "dev.yaml").write_text(yaml.safe_dump(data))
    # The same project with the kubectl handler's runtime acknowledgment aimed at another rule.
    unacknowledged = copy_of_the_project(tmp_path_factory.mktemp("unacknowledged"))
    findings = unacknowledged / "stacks" / "reviewed_findings.py"
    source = findings.read_text()
    assert source.count('"AwsSolutions-L1",') == 1
    findings.write_text(source.replace('"AwsSolutions-L1",', '"AwsSolutions-L2",'))
    outdirs = {name: tmp_path_factory.mktemp(name) / "cdk.out" for name in ("unknown-stage", "bad-stage-name")}
    runs = {
        "unknown-stage": (cdk_synth("-c", "stage=qa", "-o", str(outdirs["unknown-stage"])), outdirs["unknown-stage"]),
        "bad-stage-name": (
            cdk_synth("-c", "stage=Dev Stage", "-o", str(outdirs["bad-stage-name"])),
            outdirs["bad-stage-name"],
        ),
        "invalid-settings": (cdk_synth(cwd=invalid), invalid / "cdk.out"),
        "unacknowledged": (cdk_synth(cwd=unacknowledged), unacknowledged / "cdk.out"),
    }
    stopped = {}
    for name, (process, outdir) in runs.items():
        _, stderr = process.communicate(timeout=300)
        stopped[name] = Stopped(process.returncode, stderr, outdir)
    return stopped


def wrote_no_template(outdir: Path) -> bool:
    return not list(outdir.glob("**/*.template.json"))


def test_unknown_stage_stops_before_synthesis(stopped_synths: dict[str, Stopped]) -> None:
    run = stopped_synths["unknown-stage"]
    assert run.returncode != 0
    assert "synth stopped, nothing was written: unknown stage 'qa'; stages: dev, prod" in run.stderr
    assert "Traceback" not in run.stderr
    assert wrote_no_template(run.outdir)


def test_stage_name_cdk_would_reject_stops_before_synthesis(stopped_synths: dict[str, Stopped]) -> None:
    run = stopped_synths["bad-stage-name"]
    assert run.returncode != 0
    assert "synth stopped, nothing was written: stage 'Dev Stage' is not a valid stage name" in run.stderr
    assert "Traceback" not in run.stderr
    assert wrote_no_template(run.outdir)


def test_invalid_stage_file_stops_with_the_field_and_no_traceback(stopped_synths: dict[str, Stopped]) -> None:
    run = stopped_synths["invalid-settings"]
    assert run.returncode != 0
    assert (
        "stage 'dev' has invalid settings:\n  models[0].replicas: Input should be greater than or equal to 1"
        in run.stderr
    )
    assert "Traceback" not in run.stderr
    assert wrote_no_template(run.outdir)


def test_cli_synth_stops_on_an_unacknowledged_cdk_nag_finding(stopped_synths: dict[str, Stopped]) -> None:
    run = stopped_synths["unacknowledged"]
    assert run.returncode != 0
    assert "synth of stage 'dev' stopped: ValidationFailed: ERROR The non-container Lambda function" in run.stderr
    assert "dev/Cluster/Cluster/KubectlProvider/Handler/Resource" in run.stderr
    assert "Acknowledge with 'AwsSolutions::AwsSolutions-L1'" in run.stderr
    assert "Traceback" not in run.stderr


def test_construct_errors_are_reported_without_a_javascript_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # How jsii surfaces an error thrown by a construct or a validation plugin.
    def rejecting_stage(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Invalid node pool values: gpu") from JavaScriptError("at Cluster (cluster.js:1:1)")

    monkeypatch.setattr(app, "InferencePlatformStage", rejecting_stage)
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        app.main()
    assert str(stopped.value) == "synth of stage 'dev' stopped: Invalid node pool values: gpu"
    assert not any(tmp_path.iterdir())
