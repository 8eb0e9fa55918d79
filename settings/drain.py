"""How long a replica going away may take: the longest request it must finish, and the pod's grace period.

charts/drain.py drains a replica within these bounds; the GPU pools' node grace period adds a
replacement's start to them (charts/__init__.py).
"""

from __future__ import annotations

import math

from settings.model import ModelSettings, StageSettings

# The slowest generation a replica is expected to keep up per request under load (tokens/s): a
# floor, well below what one L4 serves gpt-oss-20b a single user at. A request of max_model_len
# tokens then takes at most max_model_len / this; a setting overrides it per model.
GENERATION_FLOOR_TOKENS_PER_SECOND = 20
# For every kube-proxy and load balancer to stop sending new requests to a terminating pod.
ENDPOINT_PROPAGATION_SECONDS = 10
# What vLLM itself takes to stop once SIGTERM comes (freeing the GPU and its workers).
SHUTDOWN_SECONDS = 30


def max_request_seconds(model: ModelSettings) -> int:
    """The longest a request to this model may take: the setting, or max_model_len at the floor speed."""
    if model.max_request_seconds is not None:
        return model.max_request_seconds
    return math.ceil(model.max_model_len / GENERATION_FLOOR_TOKENS_PER_SECOND)


def minimum_grace_seconds(model: ModelSettings) -> int:
    """The shortest grace period that drains a replica: the proxies, the longest request, then vLLM's own stop."""
    return ENDPOINT_PROPAGATION_SECONDS + max_request_seconds(model) + SHUTDOWN_SECONDS


def termination_grace_seconds(model: ModelSettings) -> int:
    """The pod's grace period: the setting, or the shortest that drains a replica."""
    if model.termination_grace_seconds is not None:
        return model.termination_grace_seconds
    return minimum_grace_seconds(model)


def drain_problems(settings: StageSettings) -> list[str]:
    """Every model whose grace period cannot cover its longest request: one line each."""
    return [
        f"models[{index}].termination_grace_seconds: {model.termination_grace_seconds} is shorter than draining "
        f"the replica takes: {ENDPOINT_PROPAGATION_SECONDS} s for the proxies, {max_request_seconds(model)} s for "
        f"the longest request (max_request_seconds, or max_model_len at {GENERATION_FLOOR_TOKENS_PER_SECOND} "
        f"tokens/s) and {SHUTDOWN_SECONDS} s for vLLM to stop; at least {minimum_grace_seconds(model)}, or leave it "
        "unset"
        for index, model in enumerate(settings.models)
        if model.termination_grace_seconds is not None
        and model.termination_grace_seconds < minimum_grace_seconds(model)
    ]
