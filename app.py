#!/usr/bin/env python3
"""The CDK app: builds the stage named by `-c stage=NAME` (default dev) from its settings."""

import sys

import aws_cdk as cdk
from jsii.errors import JSIIError

from settings import DEFAULT_STAGE, SettingsError, load_stage_settings
from stacks.stage import InferencePlatformStage


def main() -> None:
    app = cdk.App()
    stage = app.node.try_get_context("stage") or DEFAULT_STAGE
    try:
        settings = load_stage_settings(stage)
    except SettingsError as error:
        sys.exit(f"synth stopped, nothing was written: {error}")
    try:
        InferencePlatformStage(app, stage, settings=settings)
        app.synth()
    except JSIIError as error:
        # A construct rejected a value the settings model let through: report it without
        # the JavaScript stack trace, which names library internals rather than the input.
        sys.exit(f"synth of stage {stage!r} stopped: {error}")


if __name__ == "__main__":
    main()
