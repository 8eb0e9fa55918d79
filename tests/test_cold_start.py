"""The cold-start budget: each step's figures follow from the settings, and the probes follow from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from charts.cold_start import (
    IMAGE_BYTES,
    cold_start_steps,
    file_system_throughput_mb_s,
    progress_deadline_seconds,
    startup_probe_seconds,
)
from settings import parse_stage_settings
from tests.conftest import ROOT, stage_data


def settings_with(**model_store: object):
    data = stage_data()
    data["model_store"] = model_store
    return parse_stage_settings("dev", data)


def seconds(settings, step: str) -> float:
    (found,) = [s.seconds for s in cold_start_steps(settings, settings.models[0]) if s.name == step]
    return found


def test_file_system_throughput_is_capacity_times_per_unit_throughput() -> None:
    assert (
        file_system_throughput_mb_s(settings_with(storage_capacity_gib=2400, throughput_per_tib=500))
        == 2400 / 1024 * 500
    )


def test_image_pull_is_the_image_at_the_node_disks_throughput() -> None:
    settings = settings_with()
    assert seconds(settings, "image pull") == pytest.approx(IMAGE_BYTES / (1000 * 2**20))


def test_a_faster_file_system_shortens_the_weight_read_and_the_startup_budget() -> None:
    slow, fast = settings_with(throughput_per_tib=125), settings_with(throughput_per_tib=1000)
    assert seconds(fast, "weight read") == pytest.approx(seconds(slow, "weight read") / 8)
    assert startup_probe_seconds(fast, fast.models[0]) < startup_probe_seconds(slow, slow.models[0])


def test_budgets_are_twice_the_expected_time_in_whole_minutes() -> None:
    settings = settings_with()
    model = settings.models[0]
    after_start = seconds(settings, "weight read") + seconds(settings, "model load")
    total = sum(step.seconds for step in cold_start_steps(settings, model))
    assert startup_probe_seconds(settings, model) % 60 == 0
    assert 2 * after_start <= startup_probe_seconds(settings, model) < 2 * after_start + 60
    assert 2 * total <= progress_deadline_seconds(settings, model) < 2 * total + 60


def test_cold_start_command_prints_every_step_and_the_derived_probe_budget() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cold_start", "--stage", "dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for step in ("node launch", "image pull", "weight read", "model load", "**total**"):
        assert f"| {step} |" in result.stdout
    assert "startupProbe budget: 480 s" in result.stdout
