#!/usr/bin/env python3
"""The CDK app: builds the stage named by `-c stage=NAME` (default dev) from its settings."""

import json
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from jsii.errors import JavaScriptError

from settings import DEFAULT_STAGE, SettingsError, StageSettings, load_pipeline_settings, load_stage_settings
from stacks.pipeline import PIPELINE_STACK, PipelineStack
from stacks.stage import InferencePlatformStage
from stacks.template_size import TemplateSizeLimit


def cdk_json_context() -> dict[str, Any]:
    """The context (feature flags) the CLI passes from cdk.json, for apps built without the CLI."""
    return json.loads((Path(__file__).parent / "cdk.json").read_text())["context"]


def add_checks(app: cdk.App) -> None:
    """Every stack is checked at synth against the AWS Solutions rules; a finding not acknowledged
    in stacks/reviewed_findings.py stops the synth with the resource, the rule and how to acknowledge it.
    So does a template larger than CloudFormation takes (stacks/template_size.py)."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), TemplateSizeLimit())


def build_app(app: cdk.App, stages: dict[str, StageSettings]) -> cdk.App:
    """The given stages in one app."""
    for name, settings in stages.items():
        InferencePlatformStage(app, name, settings=settings)
    return app


# The CLI (2.1148) asks apps to leave validation findings to it, then ignores them, and a
# finding in a Python app only sets the exit code of jsii's Node.js process. So the app fails
# the synth itself: findings become an exception, with the report, that main() prints.
FAIL_ON_FINDINGS = {"@aws-cdk/core:failSynthOnValidationErrors": True, "@aws-cdk/core:appMode": "inmemory"}


def build_pipeline_app(app: cdk.App) -> cdk.App:
    """The pipeline stack, holding every stage it deploys."""
    pipeline, stages = load_pipeline_settings()
    PipelineStack(
        app,
        PIPELINE_STACK,
        env=cdk.Environment(account=pipeline.account, region=pipeline.region),
        pipeline=pipeline,
        stages=stages,
        cli_version=cdk_cli_version(),
    )
    return app


def cdk_cli_version() -> str:
    """The CDK CLI version the project pins in package.json, for the pipeline's own CLI calls."""
    return json.loads((Path(__file__).parent / "package.json").read_text())["devDependencies"]["aws-cdk"]


def project_app(**props: Any) -> cdk.App:
    """An app as this project builds them (the tests' in-process apps too). The built-in CloudFormation
    validation is off: it duplicates cfn-lint, which the test suite (and so the pipeline's synth step) runs
    on every template, and costs seconds on every synth."""
    return cdk.App(builtin_cloud_formation_validation=False, **props)


def main() -> None:
    app = project_app()
    for key, value in FAIL_ON_FINDINGS.items():
        app.node.set_context(key, value)
    pipeline = str(app.node.try_get_context("pipeline")).lower() == "true"
    add_checks(app)
    target = "the pipeline" if pipeline else f"stage {app.node.try_get_context('stage') or DEFAULT_STAGE!r}"
    try:
        if pipeline:
            build_pipeline_app(app)
        else:
            stage = app.node.try_get_context("stage") or DEFAULT_STAGE
            build_app(app, {stage: load_stage_settings(stage)})
        app.synth()
    except SettingsError as error:
        sys.exit(f"synth stopped, nothing was written: {error}")
    except RuntimeError as error:
        if not isinstance(error.__cause__, JavaScriptError):
            raise
        # A construct or a validation plugin (cdk-nag) rejected the app. The JavaScript stack
        # trace names library internals, not the input, so only the message is shown.
        sys.exit(f"synth of {target} stopped: {error}")


if __name__ == "__main__":
    main()
