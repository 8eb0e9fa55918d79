"""Plain `pytest` finds the project's tools: the plugin that puts them first on PATH."""

from __future__ import annotations

import os
import shutil

from tests.project_path import ROOT, TOOLS, put_project_tools_first


def test_the_project_tools_come_first_and_once() -> None:
    cli, venv = (str(folder) for folder in TOOLS)
    assert put_project_tools_first(os.pathsep.join(["/usr/bin", cli, "", "/bin"])) == os.pathsep.join(
        [cli, venv, "/usr/bin", "/bin"]
    )


def test_this_session_runs_the_pinned_cli_and_node() -> None:
    # Whatever PATH pytest was started with, the CLI and the Node.js the synths run are the project's.
    assert shutil.which("cdk") == str(ROOT / "node_modules" / ".bin" / "cdk")
    assert shutil.which("node") == str(ROOT / "node_modules" / ".bin" / "node")
