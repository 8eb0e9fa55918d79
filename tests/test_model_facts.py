"""The models' facts: the catalog, the KV cache arithmetic held to published figures, and `make model-facts` against
a stand-in for the Hub."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from commands import model_facts_from_hub as model_facts
from commands.sizing_table import main as sizing_command
from settings import SettingsError, parse_stage_settings
from settings.model_facts import CATALOG_FILE, ModelFacts, catalog, kv_bytes_per_token, sequence_kv_bytes
from tests.conftest import stage_data
from tests.hub_stand_in import FakeHub, FakeRepo, HubHandler, hub_server, point_huggingface_hub_at

GIB = 2**30


def facts(repo: str) -> ModelFacts:
    return catalog()[repo]


# --- the arithmetic, against figures published for three models ---


def test_llama_3_1_8b_matches_vllms_log_on_a_24_gb_gpu() -> None:
    # vllm-project/vllm#10517: Llama-3.1-8B-Instruct on an RTX 3090, gpu_memory_utilization 0.90. At max_model_len
    # 29000 vLLM logged "kv_cache_size=2.89GiB ... # GPU blocks: 1478" and refused to start: "The model's max seq len
    # (29000) is larger than the maximum number of tokens that can be stored in KV cache (23648)"; at 20000, "GPU
    # blocks: 1952 ... Maximum concurrency for 20000 tokens per request: 1.56x".
    llama = facts("meta-llama/Llama-3.1-8B-Instruct")
    per_token = kv_bytes_per_token(llama)
    assert per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024  # 2 (K, V) x layers x KV heads x head_dim x 2 bytes
    block = 16 * per_token
    assert round(1478 * block / GIB, 2) == 2.89
    assert 1478 * 16 == 23648
    assert sequence_kv_bytes(llama, 29000) > 1478 * block  # vLLM refused this one
    assert round(1952 * block / GIB, 2) == 3.81
    assert round(1952 * block / sequence_kv_bytes(llama, 20000), 2) == 1.56


def test_gpt_oss_20b_keeps_its_window_in_its_sliding_layers_as_vllm_sums_them() -> None:
    # vllm/v1/kv_cache_interface.py at v0.11.2, written out for gpt-oss-20b's config.json (12 full-attention layers,
    # 12 with a 128-token window, 8 KV heads of 64): a block is 2 x 16 x 8 x 64 x 2 bytes = 32 KiB per layer;
    # FullAttentionSpec takes ceil(20000 / 16) = 1250 blocks, SlidingWindowSpec ceil((128 - 1 + 2048) / 16) + 1 = 137.
    gpt_oss = facts("openai/gpt-oss-20b")
    assert kv_bytes_per_token(gpt_oss) == 12 * 2 * 8 * 64 * 2 == 24 * 1024
    assert sequence_kv_bytes(gpt_oss, 20000, batched_tokens=2048) == (12 * 1250 + 12 * 137) * 32 * 1024
    assert round(sequence_kv_bytes(gpt_oss, 20000, batched_tokens=2048) / GIB, 3) == 0.508
    assert round(sequence_kv_bytes(gpt_oss, 131072, batched_tokens=2048) / GIB, 2) == 3.05
    # The heuristic it replaced gave 134 KiB per token: more than five times too much.


def test_qwen3_8b_and_30b_a3b_per_token_as_their_configs_give_them() -> None:
    # 2 x 36 layers x 8 KV heads x 128 x 2 bytes; the MoE model: 2 x 48 x 4 x 128 x 2 (its experts hold no KV).
    assert kv_bytes_per_token(facts("Qwen/Qwen3-8B")) == 147456
    assert kv_bytes_per_token(facts("Qwen/Qwen3-30B-A3B")) == 98304


def test_tensor_parallelism_splits_the_kv_heads_and_replicates_them_past_their_number() -> None:
    llama = facts("meta-llama/Llama-3.1-70B-Instruct")  # 8 KV heads
    assert kv_bytes_per_token(llama, 4) == kv_bytes_per_token(llama) // 4
    assert kv_bytes_per_token(llama, 8) == kv_bytes_per_token(llama, 16)  # one head per GPU at least


def test_fp8_kv_cache_halves_it_quantized_weights_do_not() -> None:
    data = stage_data()
    data["models"][0]["extra_args"] = ["--kv-cache-dtype", "fp8"]
    assert parse_stage_settings("dev", data).models[0].kv_cache_dtype_bytes == 1
    assert facts("openai/gpt-oss-20b").quantization == "mxfp4"
    assert parse_stage_settings("dev", stage_data()).models[0].kv_cache_dtype_bytes == 2


# --- the catalog ---


def test_the_catalog_covers_the_families_people_run_on_one_node() -> None:
    types = {facts.model_type for facts in catalog().values()}
    assert {"gpt_oss", "llama", "qwen3", "qwen3_moe", "qwen2", "mistral3"} <= types
    for repo, entry in catalog().items():
        assert entry.source, repo
        assert entry.full_attention_layers + entry.sliding_window_layers == entry.layers


def test_a_catalogued_models_context_bounds_max_model_len(tmp_path: Path) -> None:
    for repo, entry in catalog().items():
        data = stage_data()
        data["models"][0] |= {"model": repo, "max_model_len": entry.context_tokens + 1, "max_request_seconds": 60}
        with pytest.raises(SettingsError, match=f"is more than {repo}'s context of {entry.context_tokens} tokens"):
            parse_stage_settings("dev", data)


def test_writing_an_entry_leaves_the_others_as_they_are(tmp_path: Path) -> None:
    copy = tmp_path / "models.yaml"
    shutil.copy(CATALOG_FILE, copy)
    for repo, entry in catalog().items():
        model_facts.write_entry(copy, repo, entry)
    assert copy.read_text() == CATALOG_FILE.read_text()


def test_sizing_prints_each_models_kv_bytes_per_token_and_its_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m commands.sizing_table", "--stage", "dev"])
    sizing_command()
    out = capsys.readouterr().out
    assert "(24,576 bytes per token in 12 full-attention layers, 12 sliding-window layers of 128 tokens)" in out
    assert "The model's facts: config.json at the Hub commit" in out
    assert "(Hub commit 6cee5e81ee83917806bbde320786a8fb61efebee)" in out


# --- make model-facts, against the stand-in Hub ---


@pytest.fixture(scope="module")
def hub_running() -> Iterator[tuple[ThreadingHTTPServer, type[HubHandler]]]:
    with hub_server() as running:
        yield running


@pytest.fixture
def hub(
    hub_running: tuple[ThreadingHTTPServer, type[HubHandler]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> FakeHub:
    server, handler = hub_running
    handler.hub = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    point_huggingface_hub_at(handler.hub.url, monkeypatch, tmp_path / "hf-home")
    return handler.hub


def repo_of(repo_id: str, config: dict[str, Any], index: dict[str, Any] | None, weights: int = 0) -> FakeRepo:
    files = {"config.json": json.dumps(config).encode()}
    if index is not None:
        files["model.safetensors.index.json"] = json.dumps(index).encode()
    if weights:
        files["model.safetensors"] = b"\0" * weights
    return FakeRepo(repo_id, files, lfs={"model.safetensors"} if weights else set())


GPT_OSS_LIKE = {
    "model_type": "gpt_oss",
    "num_hidden_layers": 4,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_local_experts": 32,
    "num_experts_per_tok": 4,
    "vocab_size": 201088,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "max_position_embeddings": 131072,
    "quantization_config": {"quant_method": "mxfp4"},
}
GPT_OSS_INDEX = {
    "metadata": {"total_size": 13761264768},
    "weight_map": {"model.layers.0.self_attn.sinks": "model-00000-of-00002.safetensors"},
}


def test_model_facts_reads_the_config_and_index_at_the_commit_and_writes_the_entry(
    hub: FakeHub, tmp_path: Path
) -> None:
    repo = hub.add(repo_of("example-org/oss-like", GPT_OSS_LIKE, GPT_OSS_INDEX))
    catalog_file = tmp_path / "models.yaml"
    shutil.copy(CATALOG_FILE, catalog_file)

    assert model_facts.main(["--model", repo.repo_id, "--revision", "main", "--catalog", str(catalog_file)]) == 0

    written = model_facts.load_yaml(catalog_file.read_text())["models"]
    assert written[repo.repo_id] == {
        "model_type": "gpt_oss",
        "layers": 4,
        "sliding_window_layers": 2,
        "sliding_window": 128,
        "kv_heads": 8,
        "head_dim": 64,
        "attention_sinks": True,
        "weight_bytes": 13761264768,
        "hidden_size": 2880,
        "attention_heads": 64,
        "intermediate_size": 2880,
        "experts": 32,
        "experts_per_token": 4,
        "vocab_size": 201088,
        "dtype": "bfloat16",
        "quantization": "mxfp4",
        "context_tokens": 131072,
        "hub_commit": repo.commit,  # "main", resolved
        "source": written[repo.repo_id]["source"],
    }
    assert written[repo.repo_id]["source"].startswith(f"config.json and model.safetensors.index.json of {repo.repo_id}")
    assert "openai/gpt-oss-20b" in written  # the others stay


def test_model_facts_of_a_single_file_model_with_a_window_it_does_not_use(hub: FakeHub, tmp_path: Path) -> None:
    # Qwen's configs carry a sliding_window that use_sliding_window false turns off; a small model has one file.
    config = {
        "model_type": "qwen3",
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "hidden_size": 1024,
        "head_dim": 128,
        "sliding_window": 4096,
        "use_sliding_window": False,
        "max_window_layers": 28,
        "max_position_embeddings": 40960,
        "torch_dtype": "bfloat16",
    }
    repo = hub.add(repo_of("example-org/small-qwen", config, None, weights=12_345))
    catalog_file = tmp_path / "models.yaml"
    shutil.copy(CATALOG_FILE, catalog_file)
    assert model_facts.main(["--model", repo.repo_id, "--revision", repo.commit, "--catalog", str(catalog_file)]) == 0
    written = model_facts.load_yaml(catalog_file.read_text())["models"][repo.repo_id]
    assert (written["layers"], written.get("sliding_window_layers", 0), written["weight_bytes"]) == (28, 0, 12_345)
    # Without intermediate_size and vocab_size in its config, its LoRA slots cannot be sized: left out, not guessed.
    assert (written["hidden_size"], "intermediate_size" in written, "vocab_size" in written) == (1024, False, False)


def test_a_mixture_of_experts_gives_each_experts_width_and_their_number() -> None:
    # Qwen3-MoE's config gives the dense width beside the experts' (Qwen/Qwen3-30B-A3B's config.json).
    config = {
        "model_type": "qwen3_moe",
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "vocab_size": 151936,
        "use_sliding_window": False,
        "max_position_embeddings": 40960,
    }
    found = model_facts.facts_from(config, None, 1, commit="a" * 40, source="test")
    assert (found.intermediate_size, found.experts, found.vocab_size) == (768, 128, 151936)
    assert found == catalog()["Qwen/Qwen3-30B-A3B"].model_copy(
        update={"weight_bytes": 1, "hub_commit": "a" * 40, "source": "test"}
    )


def test_model_facts_of_an_unknown_repository_says_so(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_facts.main(["--model", "example-org/missing", "--revision", "main"]) == 1
    assert "could not read example-org/missing@main: RepositoryNotFoundError" in capsys.readouterr().err


def test_a_multimodal_models_architecture_is_its_text_models() -> None:
    config: dict[str, Any] = {
        "model_type": "mistral3",
        "text_config": {**GPT_OSS_LIKE, "model_type": "mistral", "sliding_window": None},
    }
    del config["text_config"]["layer_types"]
    found = model_facts.facts_from(config, None, 100, commit="a" * 40, source="test")
    assert (found.model_type, found.layers, found.sliding_window_layers) == ("mistral3", 4, 0)
    assert math.isclose(found.weights_gb, 1e-7)
