"""A pytest plugin loaded before the conftest (pyproject.toml, `-p tests.project_path`): the project's own tools
first on PATH, as the Makefile puts them, so plain `pytest` from the virtual environment (or an IDE's run of one
test) finds the pinned CDK CLI and the Node.js that jsii supports before anything starts the jsii runtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = (ROOT / "node_modules" / ".bin", ROOT / ".venv" / "bin")


def put_project_tools_first(path: str) -> str:
    """PATH with the project's tool folders first, each once."""
    ours = [str(folder) for folder in TOOLS]
    return os.pathsep.join([*ours, *(entry for entry in path.split(os.pathsep) if entry and entry not in ours)])


def pytest_load_initial_conftests() -> None:
    if not (TOOLS[0] / "cdk").exists():
        raise pytest.UsageError("the CDK CLI is not installed in node_modules: run `make setup` once, then pytest")
    os.environ["PATH"] = put_project_tools_first(os.environ.get("PATH", ""))
