"""What `make e2e GATEWAY=1` proves through a stage's inference gateway (docs/gateway.md), given its address.

- every model and adapter answers by its name, and `GET /v1/models` lists each;
- a client's token quota is answered with 429 and Envoy's rate-limit headers once spent;
- requests that share a long prefix reach the replica that holds it: the endpoint picker's mean prefix hit ratio
  (inference_extension_prefix_indexer_hit_ratio, a histogram of the share of each prompt's prefix found in a
  replica's cache, kubernetes-sigs/gateway-api-inference-extension pkg/epp/metrics/metrics.go at v1.0.2).

Standard library and prometheus_client's text parser only; every call names what it found when it fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from workloads.smoke_test import ask

PREFIX_HIT_RATIO = "inference_extension_prefix_indexer_hit_ratio"
# Envoy's rate limit answer (Envoy Gateway internal/xds/translator/ratelimit.go: X-RateLimit-* by default).
RATE_LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
# A shared prefix long enough to span several of the picker's blocks (it hashes prompts in 64-byte blocks by default).
SHARED_PREFIX = "You are the support assistant of an example company. " * 40


class GatewayCheckError(Exception):
    """The gateway did not behave as documented; the message says how."""


@dataclass(frozen=True)
class QuotaAnswer:
    requests_before: int
    headers: dict[str, str]


def listed_models(base_url: str, key: str, *, timeout: float = 30) -> list[str]:
    request = urllib.request.Request(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return [entry["id"] for entry in json.loads(response.read())["data"]]


def every_name_answers(base_url: str, key: str, names: list[str], *, timeout: float = 120) -> None:
    """Each model and adapter is listed, and answers the test prompt by its name."""
    listed = listed_models(base_url, key)
    if missing := [name for name in names if name not in listed]:
        raise GatewayCheckError(f"GET /v1/models lists {listed}, not {missing}")
    for name in names:
        ask(base_url, name, timeout=timeout, api_key=key)


def chat(base_url: str, key: str, model: str, prompt: str, *, timeout: float) -> tuple[int, dict[str, str]]:
    """A short chat completion: its status and headers (lower-case names), whatever the status."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def quota_is_enforced(base_url: str, key: str, model: str, *, most: int = 50, timeout: float = 120) -> QuotaAnswer:
    """Asks until the client's quota is spent: the refusal must be a 429 with the rate-limit headers, and come
    within `most` requests (tokens are counted once each answer ends, so the request that spends it passes)."""
    for sent in range(most):
        status, headers = chat(base_url, key, model, f"Count to {sent}.", timeout=timeout)
        if status == 429:
            if missing := [name for name in RATE_LIMIT_HEADERS if name not in headers]:
                raise GatewayCheckError(f"the 429 lacks {', '.join(missing)}: {headers}")
            return QuotaAnswer(sent, {name: headers[name] for name in RATE_LIMIT_HEADERS})
        if status != 200:
            raise GatewayCheckError(f"request {sent + 1} against the quota got HTTP {status}")
    raise GatewayCheckError(f"{most} requests passed: the quota was never enforced")


def send_prefix_pairs(base_url: str, key: str, model: str, pairs: int, *, timeout: float = 120) -> None:
    """`pairs` distinct prompt prefixes, each sent twice in a row, as two turns of a conversation. Each begins with
    its own number, so no block of one matches another's (the picker chains each block's hash to the previous)."""
    for conversation in range(pairs):
        for turn in range(2):
            prompt = f"Conversation {conversation}. {SHARED_PREFIX}\nQuestion {turn}: what is {turn} + {turn}?"
            status, _ = chat(base_url, key, model, prompt, timeout=timeout)
            if status != 200:
                raise GatewayCheckError(f"a request of conversation {conversation} got HTTP {status}")


def hit_ratio_totals(metrics_text: str) -> tuple[float, float] | None:
    """The picker's prefix hit ratio histogram since it started, (sum, count); None while it has none: a histogram
    vector is exported from its first observation on (pkg/epp/metrics/metrics.go at v1.0.2, NewHistogramVec)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == PREFIX_HIT_RATIO:
            samples = {sample.name: sample.value for sample in family.samples if not sample.labels.get("le")}
            return samples.get(f"{PREFIX_HIT_RATIO}_sum", 0.0), samples.get(f"{PREFIX_HIT_RATIO}_count", 0.0)
    return None


def prefix_hit_ratio(after: str, before: str | None = None) -> float:
    """The picker's mean prefix hit ratio over the requests between two readings of its metrics (without `before`,
    since it started): the share of each prompt's prefix the chosen replica held (the prefix plugin's PreRequest,
    pkg/epp/scheduling/framework/plugins/multi/prefix/plugin.go at v1.0.2, records it for the target pod)."""
    now = hit_ratio_totals(after)
    if now is None:
        raise GatewayCheckError(f"the picker's metrics have no {PREFIX_HIT_RATIO}")
    then = (hit_ratio_totals(before) if before is not None else None) or (0.0, 0.0)
    if now[1] <= then[1]:
        raise GatewayCheckError("the picker has looked up no prefix since the first reading")
    return (now[0] - then[0]) / (now[1] - then[1])


# Pairs of requests over two replicas. The picker records a prompt's blocks for the replica it chose (the prefix
# plugin's PreRequest), so a pair's first request finds nothing and its second finds nearly the whole prefix on the
# replica that holds it, when the picker routes by prefix: a mean of about 0.49. Routing that ignores the prefix
# sends the second to the other replica half the time (random: about 0.24) or every time (round robin: 0). Below the
# floor, the picker is not routing by prefix.
PREFIX_ROUTING_FLOOR = 0.4


def prefix_routing_holds(ratio: float) -> None:
    """Fail unless the requests that shared a prefix found most of it on the replica chosen for them."""
    if ratio < PREFIX_ROUTING_FLOOR:
        raise GatewayCheckError(
            f"requests sharing a prefix found {ratio:.2f} of it on the replica chosen for them, below "
            f"{PREFIX_ROUTING_FLOOR}: the endpoint picker is not routing by prefix"
        )


def picker_metrics(base_url: str, token: str, *, timeout: float = 30) -> str:
    """The picker's metrics page; it admits a bearer token allowed to get /metrics (filters.WithAuthentication
    AndAuthorization, cmd/epp/runner/runner.go at v1.0.2): a cluster admin's."""
    request = urllib.request.Request(f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(response.read().decode())
