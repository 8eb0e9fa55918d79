"""The GPU memory a model's LoRA slots take (settings/lora_slots.py) and how sizing counts it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from commands import sizing_table
from settings import parse_stage_settings
from settings.lora_slots import LoraSlots, slot_bytes
from settings.model_facts import catalog
from settings.sizing import MIB, gpu_memory
from settings.vllm_profiles import supported_versions, vllm_catalog
from tests.conftest import stage_data
from tests.test_settings import rejected

GPT_OSS_20B = catalog()["openai/gpt-oss-20b"]
LLAMA_8B = catalog()["meta-llama/Llama-3.1-8B-Instruct"]
ADAPTER = {"name": "support-bot", "s3_prefix": "adapters/support/v1", "rank": 16}


def test_gpt_oss_20b_two_slots_at_rank_16_as_vllm_0_31_allocates_them() -> None:
    # One layer's buffers, shape by shape (vllm/lora/layers/*.py at v0.31.0), for 2 slots at rank 16 (32 slot-ranks):
    # qkv_proj: A 3 x (16 x 2880), B (4096 + 512 + 512) x 16; o_proj: A 16 x 4096, B 2880 x 16 -> 663,552 elements
    # for the 2 slots; the router: A 16 x 2880, B 32 x 16 -> 93,184; the 32 experts, padded to 3072 and 2944 for
    # MXFP4 Marlin: w13 A 16 x 3072, w13 B 5888 x 16, w2 A 16 x 2944, w2 B 3072 x 16 -> 15,335,424.
    layer = 663_552 + 93_184 + 15_335_424
    flags = 24 * 3 * 4  # an int32 per slot and one more, per expert layer
    assert slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.27")) == 2 * 24 * layer + flags
    assert round(slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.27")) / MIB) == 737


def test_gpt_oss_20b_in_vllm_0_11_keeps_gate_and_up_apart_and_wraps_no_router() -> None:
    # Per slot-rank and layer: attention 20,736; experts 32 x (3 x 3072 + 3 x 2944) = 577,536.
    assert slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.11")) == 2 * 24 * 32 * (20_736 + 577_536) + 24 * 3 * 4
    # --enable-mixed-moe-lora-format gives a v0.27 layout the two slices back, its router kept.
    mixed = slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.27", two_slice_experts=True))
    assert mixed == slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.11")) + 2 * 24 * 32 * (2880 + 32)


def test_llama_8b_carries_its_vocabulary_lora_whole_on_every_gpu() -> None:
    # A layer: qkv 3 x 4096 + 4096 + 2 x 1024, o 4096 + 4096, gate_up 2 x 4096 + 2 x 14336, down 14336 + 4096 =
    # 81,920 per slot-rank; the embedding and LM head: 2 x 128,256 + 2 x 4096.
    one_gpu = 2 * 32 * (32 * 81_920 + 2 * 128_256 + 2 * 4096)
    assert slot_bytes(LLAMA_8B, 1, LoraSlots(2, 16, "v0.27")) == one_gpu
    # Over two GPUs the layers' outputs split, the vocabulary does not, and the LM head maps each GPU's rows to the
    # whole vocabulary (an int64 per row).
    qkv, o, mlp = 3 * 4096 + 2048 + 2 * 512, 2048 + 4096, 2 * 4096 + 2 * 7168 + 7168 + 4096
    two_gpus = 2 * 32 * (32 * (qkv + o + mlp) + 2 * 128_256 + 2 * 4096) + 8 * 128_256
    assert slot_bytes(LLAMA_8B, 2, LoraSlots(2, 16, "v0.27")) == two_gpus


def test_slots_grow_with_each_slot_and_each_rank() -> None:
    for facts in (GPT_OSS_20B, LLAMA_8B):
        base = slot_bytes(facts, 1, LoraSlots(1, 8, "v0.27"))
        assert slot_bytes(facts, 1, LoraSlots(2, 8, "v0.27")) > base
        assert slot_bytes(facts, 1, LoraSlots(1, 16, "v0.27")) > base
        assert slot_bytes(facts, 2, LoraSlots(1, 8, "v0.27")) < base  # the layers' outputs split over GPUs


def test_each_profile_names_its_lora_layout_as_its_wheel_shows() -> None:
    # v0.11 is the layout with an extra LoRA vocabulary: its wheel alone has --lora-extra-vocab-size.
    for version in supported_versions():
        profile = vllm_catalog().profiles[version]
        has_extra_vocabulary = "--lora-extra-vocab-size" in profile.extracted.flags
        assert (profile.lora_layout == "v0.11") is has_extra_vocabulary, version


def with_adapters(**model: Any) -> dict[str, Any]:
    data = stage_data("dev")
    data["models"][0].update({"adapters": [copy.deepcopy(ADAPTER)], **model})
    return data


def test_sizing_counts_the_slots_as_the_weights_and_the_kv_cache_gets_less() -> None:
    plain = parse_stage_settings("dev", stage_data("dev")).models[0]
    served = parse_stage_settings("dev", with_adapters()).models[0]
    assert gpu_memory(plain).lora_slots == 0
    # dev serves vLLM 0.31.0: one adapter, one slot at rank 16, each layer's 502,880 elements per slot-rank (the
    # first test's 16,092,160 for 32 slot-ranks), and the experts' flags.
    slots = 2 * 16 * 24 * 502_880 + 24 * 2 * 4
    assert (served.adapters_per_batch, served.max_lora_rank, served.profile.lora_layout) == (1, 16, "v0.27")
    assert gpu_memory(served).lora_slots == slots
    assert gpu_memory(served).kv_room(23_034) == gpu_memory(plain).kv_room(23_034) - slots
    assert gpu_memory(served).needed_mib > gpu_memory(plain).needed_mib
    assert "MiB of LoRA slots" in gpu_memory(served).explained(23_034)


def test_slots_too_large_for_the_pools_gpus_are_refused_naming_them() -> None:
    # Two slots at rank 512 take 23 GiB of each GPU for gpt-oss-20b: no L4 holds them beside the weights.
    data = with_adapters(adapters=[{**ADAPTER, "rank": 512}, {**ADAPTER, "name": "b", "rank": 8}])
    data["gpu_node_pools"][0]["instance_families"] = ["g6"]
    message = rejected(data)
    assert "models[0] (gpt-oss-20b): no GPU instance can run one replica" in message
    assert "MiB of LoRA slots" in message


def test_adapters_on_a_model_whose_facts_lack_the_widths_are_refused() -> None:
    facts = GPT_OSS_20B.model_dump(exclude={"vocab_size", "intermediate_size"})
    message = rejected(with_adapters(model="example-org/oss-like", facts=facts))
    assert "adapters: sizing the GPU memory of the LoRA slots needs the model's intermediate_size, vocab_size" in (
        message
    )


@pytest.mark.parametrize("tensor_parallel_size", [1, 2, 4, 8])
def test_kv_heads_replicate_past_their_number_in_the_slots_as_in_the_cache(tensor_parallel_size: int) -> None:
    qwen_moe = catalog()["Qwen/Qwen3-30B-A3B"]  # 4 KV heads: at 8 GPUs each holds one
    kv_per_gpu = max(1, 4 // tensor_parallel_size) * 128
    query = 32 // tensor_parallel_size * 128
    attention = 3 * 2048 + query + 2 * kv_per_gpu + query + 2048
    experts = 2048 + 128 + 128 * (3 * 2048 + 3 * (768 // tensor_parallel_size))
    vocabulary = 2 * 151_936 + 2 * 2048
    logits_map = 8 * 151_936 if tensor_parallel_size > 1 else 0
    expected = 2 * 16 * (48 * (attention + experts) + vocabulary) + 48 * 2 * 4 + logits_map
    assert slot_bytes(qwen_moe, tensor_parallel_size, LoraSlots(1, 16, "v0.27")) == expected


def test_make_sizing_prints_the_slots_and_what_they_hold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = parse_stage_settings("dev", with_adapters())
    monkeypatch.setattr(sizing_table, "stage_from_command_line", lambda *_: settings)
    sizing_table.main()
    out = capsys.readouterr().out
    slots = gpu_memory(settings.models[0]).lora_slots
    assert f"MiB of weights, {slots / MIB:,.0f} MiB of LoRA slots (1 adapter(s) per batch at rank 16" in out


def test_gpt_oss_pads_each_gpus_share_of_its_experts_for_marlin() -> None:
    # Two GPUs: 1440 of the experts' 2880 each, padded to 1536; the hidden size to 3072 whatever the split.
    attention = (3 * 2880 + 32 * 64 + 2 * 4 * 64) + (32 * 64 + 2880)
    layer = attention + (2880 + 32) + 32 * (2 * 3072 + 3 * 1536)
    assert slot_bytes(GPT_OSS_20B, 2, LoraSlots(1, 16, "v0.27")) == 2 * 16 * 24 * layer + 24 * 2 * 4


def test_llama_in_vllm_0_11_adds_256_tokens_per_slot_to_its_vocabulary() -> None:
    # The embedding's A over 128,256 + 256 rows, the LM head's B padded to 256 (128,512), both B/A of 4096; and per
    # slot the extra tokens' embeddings, 2 x 256 x 4096, whatever the rank.
    slots = 2 * (16 * (32 * 81_920 + 128_512 + 2 * 4096 + 128_512) + 2 * 256 * 4096)
    # The model's own embedding grows by 256 rows per slot, its LM head by 256: 768 rows of 4096.
    grown = 768 * 4096
    assert slot_bytes(LLAMA_8B, 1, LoraSlots(2, 16, "v0.11")) == 2 * (slots + grown)
    assert round(2 * slots / MIB, 2) == 184.19


def test_vllm_0_11s_moe_kernel_caches_grow_with_the_tokens_of_a_pass() -> None:
    # 8,192 tokens, each routed to 4 experts: the gate and up call's caches, 2 slices x (rank 16 + 2944), outweigh
    # the down call's, 16 + 3072.
    without = slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.11"))
    with_pass = slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.11", batched_tokens=8192))
    assert with_pass - without == 2 * 2 * 8192 * 4 * (16 + 2944)
    # vLLM from 0.27 returns before those kernels when no adapter is active, as in its profiling run.
    assert slot_bytes(GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.27", batched_tokens=8192)) == slot_bytes(
        GPT_OSS_20B, 1, LoraSlots(2, 16, "v0.27")
    )


def test_a_mixture_of_experts_without_its_experts_in_its_facts_is_refused() -> None:
    facts = GPT_OSS_20B.model_dump(exclude={"experts", "experts_per_token"})
    message = rejected(with_adapters(model="example-org/oss-like", facts=facts))
    assert "LoRA slots needs the model's experts, experts_per_token in its facts" in message


@pytest.mark.parametrize("flag", ["--enable-mixed-moe-lora-format", "--enable_mixed_moe_lora_format"])
def test_the_mixed_moe_format_counts_in_any_spelling_vllm_reads(flag: str) -> None:
    served = parse_stage_settings("dev", with_adapters(extra_args=[flag])).models[0]
    plain = parse_stage_settings("dev", with_adapters()).models[0]
    # One slot at rank 16: each expert's second gate-and-up A, 3072 wide, in each of 24 layers.
    assert gpu_memory(served).lora_slots - gpu_memory(plain).lora_slots == 2 * 16 * 24 * 32 * 3072
