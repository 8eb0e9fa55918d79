"""LoRA adapters (models[].adapters): what synth refuses as vLLM would, the flags vLLM gets, their import beside the
weights, the replicas' wait, and their routes through the gateway."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from charts.gateway_model import route_spec
from charts.model_loader import COMPLETION_MARKER
from charts.vllm_server import vllm_args
from settings import parse_stage_settings
from settings.schema import MAX_LORA_RANKS
from tests.conftest import GATEWAY_DEFINITIONS, charts_of, find, gateway_data, stage_data
from tests.crd_cel import cel_problems
from tests.scanners import crd_problems
from tests.test_settings import rejected
from tests.test_vllm_profiles import CURRENT, WALKTHROUGH, model_on

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB = {"name": "support-bot", "repository": "example-org/gpt-oss-20b-support-lora", "revision": COMMIT, "rank": 16}
UPLOADED = {"name": "team-a/summaries", "s3_prefix": "adapters/summaries/v1", "rank": 24}


def with_adapters(*adapters: dict[str, Any], stage: str = "dev") -> dict[str, Any]:
    data = gateway_data() if stage == "gateway" else stage_data(stage)
    data["models"][0]["adapters"] = [copy.deepcopy(a) for a in adapters]
    return data


@pytest.mark.parametrize(
    ("adapters", "problem"),
    [
        ([{**HUB, "name": "openai/gpt-oss-20b"}], "adapters: openai/gpt-oss-20b named twice"),
        ([HUB, {**UPLOADED, "name": "support-bot"}], "adapters: support-bot named twice"),
        ([{**HUB, "s3_prefix": "adapters/x"}], "give repository (with its revision) or s3_prefix, one of them"),
        ([{"name": "x", "rank": 8}], "give repository (with its revision) or s3_prefix, one of them"),
        ([{k: v for k, v in HUB.items() if k != "revision"}], "revision: missing; an adapter comes from the Hub at a"),
        ([{**HUB, "revision": "main"}], "adapters[0].revision: 'main' is not a commit of the repository"),
        ([{**HUB, "rank": 513}], "adapters[0].rank: Input should be less than or equal to 512 (got 513)"),
        ([{**HUB, "name": "a=b"}], "adapters[0].name: 'a=b' is not the name clients send as `model`"),
        ([{**UPLOADED, "name": f"a{i}"} for i in range(15)], "adapters: should have at most 14 items, got 15"),
    ],
)
def test_synth_refuses_what_vllm_would(adapters: list[dict[str, Any]], problem: str) -> None:
    assert problem in rejected(with_adapters(*adapters))


def test_a_model_whose_class_takes_no_lora_is_refused() -> None:
    data = with_adapters(UPLOADED)
    model = data["models"][0]
    model.update(model="mistralai/Magistral-Small-2509", name="magistral", service_name="magistral")
    assert "adapters: vLLM serves no LoRA adapter on a mistral3 model" in rejected(data)


def test_uploaded_weights_take_uploaded_adapters_only() -> None:
    data = with_adapters(HUB)
    data["models"][0]["weights_s3_prefix"] = "models/gpt-oss-20b"
    assert "a model whose weights you upload (weights_s3_prefix) takes adapters you upload too" in rejected(data)


def test_behind_the_gateway_an_adapter_may_not_take_another_models_name() -> None:
    data = with_adapters({**UPLOADED, "name": "meta-llama/Llama-3.2-3B-Instruct"}, stage="gateway")
    other = {**copy.deepcopy(data["models"][0]), "name": "llama", "service_name": "llama"}
    other.update(model="meta-llama/Llama-3.2-3B-Instruct", adapters=[])
    data["models"].append(other)
    assert "meta-llama/Llama-3.2-3B-Instruct served by more than one model or adapter" in rejected(data)


@pytest.mark.parametrize(("ranks", "max_lora_rank"), [((8,), 8), ((16, 24), 32), ((300,), 320), ((321,), 512)])
def test_the_max_lora_rank_is_the_smallest_vllm_takes_that_holds_every_adapter(
    ranks: tuple[int, ...], max_lora_rank: int
) -> None:
    adapters = [{**UPLOADED, "name": f"a{i}", "rank": rank} for i, rank in enumerate(ranks)]
    model = parse_stage_settings("dev", with_adapters(*adapters)).models[0]
    assert model.max_lora_rank == max_lora_rank
    assert max_lora_rank in MAX_LORA_RANKS


def test_vllm_serves_each_adapter_by_name_from_its_folder() -> None:
    model = parse_stage_settings("dev", with_adapters(HUB, UPLOADED)).models[0]
    args = vllm_args(model)
    start = args.index("--enable-lora")
    assert args[start : start + 7] == [
        "--enable-lora",
        "--max-lora-rank=32",
        "--max-loras=2",  # a batch holds up to 2 adapters
        "--max-cpu-loras=2",  # and every adapter stays loaded
        "--lora-modules",
        f"support-bot=/models/gpt-oss-20b/adapters/support-bot/{COMMIT}",
        "team-a/summaries=/models/adapters/summaries/v1",
    ]


@pytest.mark.parametrize("image", [WALKTHROUGH, CURRENT])
def test_the_lora_flags_are_each_versions(image: str) -> None:
    model = model_on(image, adapters=[UPLOADED])
    flags = {arg.split("=", 1)[0] for arg in vllm_args(model) if arg.startswith("--")}
    assert (
        {"--enable-lora", "--max-lora-rank", "--max-loras", "--lora-modules"} <= flags <= model.profile.extracted.flags
    )


def rendered_model(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        obj
        for chart_id, objects in charts_of(data, "dev").items()
        if chart_id.endswith("gpt-oss-20b")
        for obj in objects
    ]


def test_hub_adapters_are_imported_before_the_weights_and_the_replicas_wait_for_every_adapter() -> None:
    objects = rendered_model(with_adapters(HUB, UPLOADED))
    pod = find(objects, "Job")["spec"]["template"]["spec"]
    (adapter,) = pod["initContainers"]
    assert adapter["name"] == "adapter-0"
    assert adapter["command"][2:5] == [
        "--repo=example-org/gpt-oss-20b-support-lora",
        f"--revision={COMMIT}",
        f"--prefix=gpt-oss-20b/adapters/support-bot/{COMMIT}",
    ]
    files = ["adapter_config.json", "adapter_model.safetensors"]
    # The adapters' ranks are 16 and 24: vLLM gets --max-lora-rank 32, and the import refuses an adapter above it.
    assert adapter["command"][-7:] == ["--include", *files, "--require", *files, "--max-lora-rank=32"]
    assert adapter["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert [c["name"] for c in pod["containers"]] == ["import"]
    assert {m["name"] for m in adapter["volumeMounts"]} == {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    replica = find(objects, "Deployment")["spec"]["template"]["spec"]
    (wait,) = [c for c in replica["initContainers"] if c["name"] == "wait-for-weights"]
    waited = {e["name"]: e.get("value") for e in wait["env"]}["ENCODINGS"].split()
    assert f"/models/gpt-oss-20b/adapters/support-bot/{COMMIT}/{COMPLETION_MARKER}" in waited
    assert f"/models/adapters/summaries/v1/{COMPLETION_MARKER}" in waited


def test_a_model_without_adapters_renders_as_before() -> None:
    objects = rendered_model(stage_data("dev"))
    assert "initContainers" not in find(objects, "Job")["spec"]["template"]["spec"]
    assert not [
        arg for arg in find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"] if "lora" in arg
    ]


def test_the_gateway_routes_each_adapter_by_name_to_the_models_pool() -> None:
    data = with_adapters(HUB, UPLOADED, stage="gateway")
    data["gateway"]["quotas"] = [{"client": "team-a", "model": "support-bot", "limit": 1000}]
    model = parse_stage_settings("dev", data).models[0]
    rules: Any = route_spec(model)["rules"]
    assert [rule["matches"][0]["headers"][0]["value"] for rule in rules] == [
        "openai/gpt-oss-20b",
        "support-bot",
        "team-a/summaries",
    ]
    assert all(rule["backendRefs"] == rules[0]["backendRefs"] for rule in rules)


def test_a_route_with_adapters_passes_its_definition() -> None:
    route = find(
        charts_of(with_adapters(HUB, UPLOADED, stage="gateway"), "dev")["Gateway-gpt-oss-20b"], "AIGatewayRoute"
    )
    assert len(route["spec"]["rules"]) == 3
    definition = GATEWAY_DEFINITIONS["AIGatewayRoute"]
    assert crd_problems(route, definition) == []
    assert cel_problems(route, definition) == []
