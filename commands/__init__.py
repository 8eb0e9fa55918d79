"""Commands a person runs by hand: sizing, the cold-start budget, smoke and end-to-end tests, benchmarks."""

from __future__ import annotations

import argparse
import sys

from settings import DEFAULT_STAGE, SettingsError, StageSettings, load_stage_settings


def stage_from_command_line(prog: str, doc: str) -> StageSettings:
    """`--stage NAME` (default: the default stage), loaded and checked; bad settings end the command, saying why."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    return stage_settings_or_exit(parser.parse_args().stage)


def stage_settings_or_exit(stage: str) -> StageSettings:
    """A stage's settings, loaded and checked; bad settings end the command with status 2, saying why."""
    try:
        return load_stage_settings(stage)
    except SettingsError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
