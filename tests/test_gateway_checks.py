"""`make e2e --gateway`'s checks (commands/gateway_checks.py) against a stand-in gateway, and its throwaway stage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar
from unittest.mock import ANY

import pytest

from commands import e2e
from commands.gateway_checks import (
    PREFIX_HIT_RATIO,
    GatewayCheckError,
    every_name_answers,
    prefix_hit_ratio,
    prefix_routing_holds,
    quota_is_enforced,
    send_prefix_pairs,
)
from settings import parse_stage_settings
from tests.aws_stubs import StubbedClients
from tests.stand_ins import QuietHandler, serving

KEY = "client-key"
ANSWER = {"choices": [{"message": {"content": "Four.", "role": "assistant"}, "finish_reason": "stop"}]}


class StandInGateway(QuietHandler):
    """Lists `served`; answers chats with 200 until `quota` were answered, then 429 with `limit_headers`."""

    served: ClassVar[list[str]] = []
    quota = 3
    limit_headers: ClassVar[dict[str, str]] = {}
    asked: ClassVar[list[str]] = []
    prompts: ClassVar[list[str]] = []

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.served]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandInGateway.asked.append(body["model"])
        StandInGateway.prompts.append(body["messages"][-1]["content"])
        if len(StandInGateway.asked) > self.quota:
            self._send(429, {"error": "over quota"}, self.limit_headers)
        else:
            self._send(200, ANSWER)


@contextmanager
def gateway(**behaviour: Any) -> Iterator[str]:
    StandInGateway.asked, StandInGateway.prompts = [], []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), type("Gateway", (StandInGateway,), behaviour))) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def test_every_model_and_adapter_must_be_listed_and_answer_by_name() -> None:
    names = ["openai/gpt-oss-20b", "Qwen/Qwen3-8B", "e2e-adapter"]
    with gateway(served=names, quota=10) as url:
        every_name_answers(url, KEY, names)
        assert StandInGateway.asked == names
    with gateway(served=names[:2], quota=10) as url, pytest.raises(GatewayCheckError, match=r"not \['e2e-adapter'\]"):
        every_name_answers(url, KEY, names)  # the adapter is not listed


LIMITS = {"X-RateLimit-Limit": "300, 300;w=3600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1800"}


def test_a_spent_quota_is_a_429_with_the_rate_limit_headers() -> None:
    with gateway(quota=3, limit_headers=LIMITS) as url:
        answer = quota_is_enforced(url, KEY, "openai/gpt-oss-20b")
    assert answer.requests_before == 3
    assert answer.headers == {
        "x-ratelimit-limit": "300, 300;w=3600",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1800",
    }


def test_a_429_without_the_headers_or_no_429_at_all_fails() -> None:
    with gateway(quota=1, limit_headers={}) as url, pytest.raises(GatewayCheckError, match="the 429 lacks x-ratelimit"):
        quota_is_enforced(url, KEY, "openai/gpt-oss-20b")
    with gateway(quota=100) as url, pytest.raises(GatewayCheckError, match="5 requests passed"):
        quota_is_enforced(url, KEY, "openai/gpt-oss-20b", most=5)


def test_each_prefix_is_sent_twice_and_differs_from_the_others_from_its_first_block() -> None:
    with gateway(quota=100) as url:
        send_prefix_pairs(url, KEY, "openai/gpt-oss-20b", 3)
    assert StandInGateway.asked == ["openai/gpt-oss-20b"] * 6
    first, second, other = StandInGateway.prompts[0], StandInGateway.prompts[1], StandInGateway.prompts[2]
    shared = first.split("\nQuestion")[0]
    assert second.startswith(shared)
    assert len(shared) > 2000  # many of the picker's 64-byte blocks
    assert other[:64] != first[:64]  # the next conversation shares not even the first block


PICKER_METRICS = f"""# HELP {PREFIX_HIT_RATIO} Ratio of prefix length matched to total prefix length.
# TYPE {PREFIX_HIT_RATIO} histogram
{PREFIX_HIT_RATIO}_bucket{{le="0.5"}} 1
{PREFIX_HIT_RATIO}_bucket{{le="1"}} 20
{PREFIX_HIT_RATIO}_bucket{{le="+Inf"}} 20
{PREFIX_HIT_RATIO}_sum 17.5
{PREFIX_HIT_RATIO}_count 20
"""


def test_the_prefix_hit_ratio_is_the_pickers_mean() -> None:
    assert prefix_hit_ratio(PICKER_METRICS) == pytest.approx(0.875)
    with pytest.raises(GatewayCheckError, match="no inference_extension_prefix_indexer_hit_ratio"):
        prefix_hit_ratio("# TYPE other gauge\nother 1\n")
    with pytest.raises(GatewayCheckError, match="looked up no prefix since the first reading"):
        prefix_hit_ratio(PICKER_METRICS.replace("_count 20", "_count 0"))


def test_the_ratio_is_over_the_pairs_requests_alone() -> None:
    # Before them, 4 lookups that found nothing (the names answering); then 20 that found 17.5 in all.
    before = PICKER_METRICS.replace("_sum 17.5", "_sum 0").replace("_count 20", "_count 4")
    after = PICKER_METRICS.replace("_count 20", "_count 24")
    assert prefix_hit_ratio(after, before) == pytest.approx(17.5 / 20)
    # A picker that has looked nothing up yet exports no histogram at all (a vector's first observation makes it).
    assert prefix_hit_ratio(PICKER_METRICS, "# TYPE other gauge\nother 1\n") == pytest.approx(0.875)
    with pytest.raises(GatewayCheckError, match="looked up no prefix since the first reading"):
        prefix_hit_ratio(before, before)


@pytest.mark.parametrize(("ratio", "holds"), [(0.49, True), (0.4, True), (0.24, False), (0.0, False)])
def test_prefix_routing_fails_below_what_two_replicas_without_it_would_give(ratio: float, holds: bool) -> None:
    if holds:
        prefix_routing_holds(ratio)
    else:
        with pytest.raises(GatewayCheckError, match="the endpoint picker is not routing by prefix"):
            prefix_routing_holds(ratio)


def test_the_throwaway_stage_behind_the_gateway_is_valid_and_has_two_models_an_adapter_and_a_quota() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    data = e2e.with_gateway(
        e2e.throwaway_stage_data("e2e-0a1b2c", "arn:aws:iam::123456789012:role/Admin"),
        "e2e-0a1b2c",
        f"example-org/gpt-oss-20b-lora@{commit}:16",
    )
    settings = parse_stage_settings("e2e-0a1b2c", data)
    assert [m.model for m in settings.models] == ["openai/gpt-oss-20b", "Qwen/Qwen3-8B"]
    # Two replicas of the first model: routing by prefix has replicas to choose among.
    assert [m.replicas for m in settings.models] == [2, 1]
    (adapter,) = settings.models[0].adapters
    assert (adapter.name, adapter.repository, adapter.revision, adapter.rank) == (
        "e2e-adapter",
        "example-org/gpt-oss-20b-lora",
        commit,
        16,
    )
    assert settings.gateway is not None
    assert [(q.client, q.limit) for q in settings.gateway.quotas] == [("e2e-quota", e2e.QUOTA_TOKENS)]
    with StubbedClients(["secretsmanager"]) as stubs:
        stubs.stubbers["secretsmanager"].add_response(
            "create_secret",
            {"Name": "e2e-0a1b2c/gateway-clients"},
            {
                "Name": "e2e-0a1b2c/gateway-clients",
                "SecretString": ANY,
                "Tags": [{"Key": "stage", "Value": "e2e-0a1b2c"}],
            },
        )
        keys = e2e.create_clients_secret(settings, stubs.client("secretsmanager"))
    assert set(keys) == {"e2e", "e2e-quota", "smoke-test"}
    assert len(set(keys.values())) == 3
