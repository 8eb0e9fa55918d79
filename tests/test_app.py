"""The app as users run it: `cdk synth` through the CLI, with and without valid settings."""

from __future__ import annotations

import functools
from pathlib import Path

import aws_cdk as cdk
import pytest
from jsii.errors import JavaScriptError

import app
from settings import parse_stage_settings
from tests.conftest import Assembly, StoppedSynth, stage_data


def test_default_stage_synthesizes_without_credentials_or_lookups(dev: Assembly) -> None:
    # The fixture ran `cdk synth` with no -c stage and every AWS_* variable removed.
    assert sorted(dev.stacks()) == ["Cluster", "Model-gpt-oss-20b", "ModelStore", "Network", "Registry", "Serving"]
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
        stacks = ("Network", "Registry", "ModelStore", "Cluster", "Serving", "Model-gpt-oss-20b")
        assert names == {f"{assembly.stage}-{stack}" for stack in stacks}


def test_production_stacks_have_termination_protection(dev: Assembly, prod: Assembly) -> None:
    assert all(a["properties"].get("terminationProtection") for a in prod.stacks().values())
    assert not any(a["properties"].get("terminationProtection") for a in dev.stacks().values())


def wrote_no_template(outdir: Path) -> bool:
    return not list(outdir.glob("**/*.template.json"))


def run_main_with_context(monkeypatch: pytest.MonkeyPatch, outdir: Path, **context: str) -> str:
    """app.main() as `cdk synth -c key=value` runs it, in this process; what it exits with."""
    monkeypatch.setattr(app.cdk, "App", functools.partial(cdk.App, context=context, outdir=str(outdir)))
    with pytest.raises(SystemExit) as stopped:
        app.main()
    return str(stopped.value)


def test_unknown_stage_stops_before_synthesis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = run_main_with_context(monkeypatch, tmp_path, stage="qa")
    assert message.startswith("synth stopped, nothing was written: unknown stage 'qa'; stages: dev, prod")
    assert wrote_no_template(tmp_path)


def test_stage_name_cdk_would_reject_stops_before_synthesis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = run_main_with_context(monkeypatch, tmp_path, stage="Dev Stage")
    assert message.startswith("synth stopped, nothing was written: stage 'Dev Stage' is not a valid stage name")
    assert wrote_no_template(tmp_path)


def test_invalid_stage_file_stops_with_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = stage_data()
    data["models"][0]["replicas"] = 0
    monkeypatch.setattr(app, "load_stage_settings", lambda stage: parse_stage_settings(stage, data))
    message = run_main_with_context(monkeypatch, tmp_path, stage="dev")
    assert message.startswith(
        "synth stopped, nothing was written: stage 'dev' has invalid settings:\n"
        "  models[0].replicas: Input should be greater than or equal to 1"
    )
    assert wrote_no_template(tmp_path)


def test_cli_synth_stops_on_an_unacknowledged_cdk_nag_finding(unacknowledged_synth: StoppedSynth) -> None:
    run = unacknowledged_synth
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
