#!/usr/bin/env python3
"""The CDK app: builds the stage named by `-c stage=NAME` (default dev) from its settings."""

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from jsii.errors import JavaScriptError

from settings import DEFAULT_STAGE, SettingsError, load_stage_settings
from stacks.stage import InferencePlatformStage


def main() -> None:
    app = cdk.App()
    # Every stack is checked against the AWS Solutions rules at synth; a finding that is not
    # acknowledged in stacks/reviewed_findings.py stops the synth with the resource and rule.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    stage = app.node.try_get_context("stage") or DEFAULT_STAGE
    try:
        settings = load_stage_settings(stage)
    except SettingsError as error:
        sys.exit(f"synth stopped, nothing was written: {error}")
    try:
        InferencePlatformStage(app, stage, settings=settings)
        app.synth()
    except RuntimeError as error:
        if not isinstance(error.__cause__, JavaScriptError):
            raise
        # A construct or a validation plugin (cdk-nag) rejected the stage; the plugin has
        # printed its findings. The JavaScript stack trace names library internals, not input.
        sys.exit(f"synth of stage {stage!r} stopped: {error}")


if __name__ == "__main__":
    main()
