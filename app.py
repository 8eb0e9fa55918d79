#!/usr/bin/env python3
"""The CDK app: builds the stage named by `-c stage=NAME` (default dev) from its settings."""

import json
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from jsii.errors import JavaScriptError

from settings import DEFAULT_STAGE, SettingsError, StageSettings, load_stage_settings
from stacks.stage import InferencePlatformStage


def cdk_json_context() -> dict[str, Any]:
    """The context (feature flags) the CLI passes from cdk.json, for apps built without the CLI."""
    return json.loads((Path(__file__).parent / "cdk.json").read_text())["context"]


def build_app(app: cdk.App, stages: dict[str, StageSettings]) -> cdk.App:
    """The given stages in one app, under the AWS Solutions checks."""
    # Every stack is checked at synth; a finding not acknowledged in stacks/reviewed_findings.py
    # stops the synth with the resource, the rule and how to acknowledge it.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    for name, settings in stages.items():
        InferencePlatformStage(app, name, settings=settings)
    return app


# The CLI (2.1148) asks apps to leave validation findings to it, then ignores them, and a
# finding in a Python app only sets the exit code of jsii's Node.js process. So the app fails
# the synth itself: findings become an exception, with the report, that main() prints.
FAIL_ON_FINDINGS = {"@aws-cdk/core:failSynthOnValidationErrors": True, "@aws-cdk/core:appMode": "inmemory"}


def main() -> None:
    app = cdk.App()
    for key, value in FAIL_ON_FINDINGS.items():
        app.node.set_context(key, value)
    stage = app.node.try_get_context("stage") or DEFAULT_STAGE
    try:
        settings = load_stage_settings(stage)
    except SettingsError as error:
        sys.exit(f"synth stopped, nothing was written: {error}")
    try:
        build_app(app, {stage: settings}).synth()
    except RuntimeError as error:
        if not isinstance(error.__cause__, JavaScriptError):
            raise
        # A construct or a validation plugin (cdk-nag) rejected the stage. The JavaScript stack
        # trace names library internals, not the input, so only the message is shown.
        sys.exit(f"synth of stage {stage!r} stopped: {error}")


if __name__ == "__main__":
    main()
