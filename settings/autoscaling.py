"""Autoscaling's derived values: how often KEDA reads the queue, and how long before a replica goes.

A replica removed while the queue is briefly low takes a whole cold start to come back, so the
scale-down cooldown is never shorter than a cold start (settings/cold_start.py).
"""

from __future__ import annotations

import math

from settings.cold_start import cold_start_seconds
from settings.schema import MAX_STABILIZATION_SECONDS, ModelSettings, StageSettings

# How often KEDA queries the queue (its ScaledObject pollingInterval), in seconds.
POLLING_SECONDS = 15
# Beyond a cold start, before the derived cooldown removes a replica.
COOLDOWN_MARGIN_SECONDS = 60


def derived_cooldown_seconds(cold_start: int) -> int:
    """The scale-down cooldown when the settings give none: a cold start and a minute."""
    return cold_start + COOLDOWN_MARGIN_SECONDS


def scale_down_cooldown_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long the queue stays below the target before a replica goes: the setting, or the derived one."""
    assert model.autoscaling is not None
    if model.autoscaling.scale_down_cooldown_seconds is not None:
        return model.autoscaling.scale_down_cooldown_seconds
    return derived_cooldown_seconds(math.ceil(cold_start_seconds(settings, model, budget=True)))


def autoscaling_problems(settings: StageSettings) -> list[str]:
    """Every model whose scale-down cooldown is shorter than its cold start: one line each."""
    problems = []
    for index, model in enumerate(settings.models):
        if model.autoscaling is None:
            continue
        given = model.autoscaling.scale_down_cooldown_seconds
        cold_start = math.ceil(cold_start_seconds(settings, model, budget=True))
        if given is None and derived_cooldown_seconds(cold_start) > MAX_STABILIZATION_SECONDS:
            problems.append(
                f"models[{index}].autoscaling: a replica's cold start ({cold_start} s) plus a minute is longer than "
                f"the {MAX_STABILIZATION_SECONDS} s the autoscaler can wait before removing a replica; speed the "
                "cold start up (`make cold-start`), or scale this model by hand (remove autoscaling)"
            )
        if given is not None and given <= cold_start:
            problems.append(
                f"models[{index}].autoscaling.scale_down_cooldown_seconds: {given} is not longer than a cold start "
                f"({cold_start} s, `make cold-start`): a replica removed then would take longer than that to come "
                f"back; give more than {cold_start}, or leave it unset ({derived_cooldown_seconds(cold_start)})"
            )
    return problems
