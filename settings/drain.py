"""How long a replica going away may take: the longest request it must finish, and the pod's grace period.

charts/pre_stop_drain.py drains a replica within these bounds. A GPU node going away waits for a replacement to start
and the old replica to drain: each pool's termination_grace_period must cover that for every model it runs.
"""

from __future__ import annotations

import math

from settings.cold_start import progress_deadline_seconds
from settings.schema import ModelSettings, StageSettings, as_duration, duration_seconds
from settings.sizing import pool_path, pools_for

# The slowest generation a replica is expected to keep up per request under load (tokens/s): a
# floor, well below what one L4 serves gpt-oss-20b a single user at. A request of max_model_len
# tokens then takes at most max_model_len / this; a setting overrides it per model.
GENERATION_FLOOR_TOKENS_PER_SECOND = 20
# For every kube-proxy to stop sending new requests to a terminating pod.
ENDPOINT_PROPAGATION_SECONDS = 10
# For an exposed model's load balancer to stop sending them: Auto Mode's load balancing has no pod readiness
# gates (not in the EKS User Guide's Auto Mode pages; aws/containers-roadmap#2511 asks for them), so a terminating
# replica keeps serving until its target has been deregistered, which follows the endpoint's removal by up to
# about two minutes (kubernetes-sigs/aws-load-balancer-controller#3270; the EKS Best Practices Guide, "Avoiding
# Errors & Timeouts with Kubernetes Applications and AWS Load Balancers", delays SIGTERM with a preStop for this).
LOAD_BALANCER_DEREGISTRATION_SECONDS = 120
# What vLLM itself takes to stop once SIGTERM comes (freeing the GPU and its workers).
SHUTDOWN_SECONDS = 30


def max_request_seconds(model: ModelSettings) -> int:
    """The longest a request to this model may take: the setting, or max_model_len at the floor speed."""
    if model.max_request_seconds is not None:
        return model.max_request_seconds
    return math.ceil(model.max_model_len / GENERATION_FLOOR_TOKENS_PER_SECOND)


def endpoint_removal_seconds(model: ModelSettings) -> int:
    """How long a terminating replica keeps serving new requests: until the proxies, and for an exposed model the
    load balancer, stop sending them."""
    return LOAD_BALANCER_DEREGISTRATION_SECONDS if model.exposure is not None else ENDPOINT_PROPAGATION_SECONDS


def minimum_grace_seconds(model: ModelSettings) -> int:
    """The shortest grace period that drains a replica: the endpoint's removal, the longest request, then vLLM's
    own stop."""
    return endpoint_removal_seconds(model) + max_request_seconds(model) + SHUTDOWN_SECONDS


def termination_grace_seconds(model: ModelSettings) -> int:
    """The pod's grace period: the setting, or the shortest that drains a replica."""
    if model.termination_grace_seconds is not None:
        return model.termination_grace_seconds
    return minimum_grace_seconds(model)


def node_drain_seconds(settings: StageSettings, model: ModelSettings) -> int:
    """How long a GPU node going away must wait for a replica of this model: its replacement's start (the
    rollout's progress deadline, since the disruption budget holds the old one until then) and its drain."""
    return progress_deadline_seconds(settings, model) + termination_grace_seconds(model)


def _stopping_senders(model: ModelSettings) -> str:
    return "proxies and the load balancer" if model.exposure is not None else "proxies"


def drain_problems(settings: StageSettings) -> list[str]:
    """Every model whose grace period cannot cover its longest request, and every pool whose nodes would not wait
    for a model's replica to be replaced and drained: one line each."""
    problems = [
        f"models[{index}].termination_grace_seconds: {model.termination_grace_seconds} is shorter than draining "
        f"the replica takes: {endpoint_removal_seconds(model)} s for the {_stopping_senders(model)}, "
        f"{max_request_seconds(model)} s for "
        f"the longest request (max_request_seconds, or max_model_len at {GENERATION_FLOOR_TOKENS_PER_SECOND} "
        f"tokens/s) and {SHUTDOWN_SECONDS} s for vLLM to stop; at least {minimum_grace_seconds(model)}, or leave it "
        "unset"
        for index, model in enumerate(settings.models)
        if model.termination_grace_seconds is not None
        and model.termination_grace_seconds < minimum_grace_seconds(model)
    ]
    for index, model in enumerate(settings.models):
        needed = node_drain_seconds(settings, model)
        for pool in pools_for(settings, model):
            given, grace = pool.termination_grace_period, duration_seconds(pool.termination_grace_period)
            if grace < needed:
                problems.append(
                    f"{pool_path(settings, pool)}.termination_grace_period: {given} ({grace} s) "
                    f"is shorter than a node must wait for a replica of models[{index}] ({model.name}): its "
                    f"replacement's start ({progress_deadline_seconds(settings, model)} s, the rollout's progress "
                    f"deadline) and its drain ({termination_grace_seconds(model)} s); give at least "
                    f"{as_duration(needed)} (a change replaces the pool's nodes)"
                )
    return problems
