"""Commands a person runs by hand: sizing, the cold-start budget, smoke and end-to-end tests, benchmarks."""

from __future__ import annotations

import argparse
import sys

from settings import DEFAULT_STAGE, SettingsError, StageSettings, load_stage_settings


def stage_from_command_line(prog: str, doc: str) -> StageSettings:
    """`--stage NAME` (default: the default stage), loaded and checked; bad settings end the command, saying why."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    args = parser.parse_args()
    try:
        return load_stage_settings(args.stage)
    except SettingsError as error:
        sys.exit(str(error))
