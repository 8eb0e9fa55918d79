"""The operations guide's query for GPU pods waiting for capacity, run by jq on what `kubectl get pods -o json`
returns."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from settings import load_stage_settings
from settings.cold_start import cold_start_seconds
from tests.conftest import ROOT

GUIDE = (ROOT / "docs" / "operations.md").read_text()
QUERY = re.search(
    r"kubectl get pods --all-namespaces --field-selector=status\.phase=Pending -o json \| "
    r"jq -r --argjson budget (\d+) '\n(.*?)'\n",
    GUIDE,
    flags=re.DOTALL,
)


def pending_pod(name: str, waited_seconds: int, *, gpu: bool = True) -> dict[str, Any]:
    created = datetime.now(UTC) - timedelta(seconds=waited_seconds)
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpu else []
    return {
        "metadata": {
            "namespace": "gpt-oss-20b",
            "name": name,
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {"tolerations": tolerations},
        "status": {"phase": "Pending"},
    }


def test_the_budget_in_the_query_is_the_default_stages_cold_start() -> None:
    assert QUERY is not None, "the operations guide's query for pending GPU pods is gone"
    settings = load_stage_settings("dev")
    cold_start = cold_start_seconds(settings, settings.models[0], budget=True)
    assert int(QUERY.group(1)) == round(cold_start)


@pytest.mark.skipif(shutil.which("jq") is None, reason="the query runs in jq")
def test_the_query_lists_only_gpu_pods_pending_past_the_budget() -> None:
    assert QUERY is not None
    pods = {
        "items": [
            pending_pod("stuck", 900),
            pending_pod("starting", 60),
            pending_pod("not-a-gpu-pod", 900, gpu=False),
        ]
    }
    result = subprocess.run(
        ["jq", "-r", "--argjson", "budget", QUERY.group(1), QUERY.group(2)],
        input=json.dumps(pods),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    (line,) = result.stdout.splitlines()
    assert re.fullmatch(r"gpt-oss-20b/stuck pending for 9\d\d s", line)
