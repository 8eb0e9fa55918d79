"""The GPU memory a model's LoRA slots take: what vLLM allocates on each GPU for --max-loras adapters at
--max-lora-rank, whichever adapters are loaded.

vLLM wraps every linear and mixture-of-experts layer of a model that supports LoRA, and each wrapper allocates, at
model load, an A matrix (rank x input) and a B matrix (output x rank) per slot for each of its slices, in the model's
16-bit dtype (vllm/lora/layers/base_linear.py, column_parallel_linear.py, row_parallel_linear.py,
replicated_linear.py, fused_moe.py, create_lora_weights, at v0.11.2 and v0.31.0). The allocation is inside the load's
memory measurement (vllm/v1/worker/gpu_model_runner.py, load_model, then load_lora_model), so every byte comes off
the KV cache, as the weights do. No rank is rounded and no slot added: the buffers are max_loras x max_lora_rank
exactly (vllm/config/lora.py).

Per layer and per slot-rank (max_loras x max_lora_rank), on one of tensor_parallel_size GPUs:
- qkv_proj, three slices: A of hidden_size each, B of the GPU's query and KV widths (KV heads replicated past their
  number, as the KV cache);
- o_proj: A of the GPU's query width, B of hidden_size;
- a dense MLP: gate_up_proj, two slices (A of hidden_size, B of intermediate_size / TP), and down_proj (A of
  intermediate_size / TP, B of hidden_size);
- a mixture of experts: the router (A of hidden_size, B of the experts), and per expert the gate and up projections
  and the down projection. gpt-oss's experts are padded to MXFP4 Marlin's sizes, the one MXFP4 kernel with LoRA
  (hidden_size to a multiple of 256, intermediate_size / TP to a multiple of 128:
  vllm/model_executor/layers/quantization/mxfp4.py), and the version's layout (its profile's lora_layout) says
  whether their gate and up projections share an A (v0.27: FusedMoE3DWithLoRA) and whether the router is wrapped;
- once per model, where the version gives the model class a vocabulary LoRA: the embedding (A of the vocabulary,
  B of hidden_size) and the LM head (A of hidden_size, B of the vocabulary), neither split over the GPUs.

Not counted: the kernels' index buffers (under 1 MiB), PyTorch's allocator rounding, and, in v0.11.2, the
temporary caches its MoE LoRA kernel takes during each forward pass, which fall within the activation reserve
sizing keeps (settings/sizing.py). Every layer of a mixture of experts is taken as an expert layer: a model with
dense layers among them (Qwen3-MoE's mlp_only_layers) is over-counted, never under.
"""

from __future__ import annotations

from typing import Literal

from settings.model_facts import ModelFacts, kv_heads_per_gpu

LoraLayout = Literal["v0.11", "v0.27"]
# Bytes per element of the slots: lora_dtype "auto" is the model's dtype, 16-bit for every model sized here
# (vllm/config/lora.py, verify_with_model_config).
SLOT_DTYPE_BYTES = 2
# The int32 flag each expert layer keeps per slot and one more (fused_moe.py, adapter_enabled).
ADAPTER_FLAG_BYTES = 4
# v0.11's vocabulary LoRA: 256 extra tokens per adapter (vllm/config/lora.py, lora_extra_vocab_size) and the LM
# head's B padded to a multiple of 256 (vllm/platforms/interface.py, get_lora_vocab_padding_size).
EXTRA_VOCAB = 256
# The model classes given a vocabulary LoRA (their embedding_modules), by layout.
VOCABULARY_LORA = {"v0.11": ("llama",), "v0.27": ("llama", "qwen3", "qwen3_moe")}
# The widths a model's facts must give for its slots to be sized.
WIDTHS = ("hidden_size", "attention_heads", "intermediate_size", "vocab_size")


def missing_widths(facts: ModelFacts) -> list[str]:
    """The widths the facts lack that sizing a LoRA slot needs."""
    return [name for name in WIDTHS if getattr(facts, name) is None]


def widths(facts: ModelFacts) -> tuple[int, int, int, int]:
    """hidden_size, attention_heads, intermediate_size and vocab_size; a ValueError naming those the facts lack."""
    hidden, heads, inner, vocab = facts.hidden_size, facts.attention_heads, facts.intermediate_size, facts.vocab_size
    if hidden is None or heads is None or inner is None or vocab is None:
        raise ValueError(f"the model's facts lack {', '.join(missing_widths(facts))}, which LoRA slots are sized by")
    return hidden, heads, inner, vocab


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def layer_elements(
    facts: ModelFacts, tensor_parallel_size: int, layout: LoraLayout, *, two_slice_experts: bool = False
) -> int:
    """One decoder layer's slot elements per slot-rank on one GPU. `two_slice_experts`: gpt-oss's experts take the
    two-slice wrapper in a v0.27 layout too (--enable-mixed-moe-lora-format, vllm/config/lora.py at v0.34.0)."""
    hidden, heads, inner, _ = widths(facts)
    experts = facts.experts
    query = heads // tensor_parallel_size * facts.head_dim
    kv = kv_heads_per_gpu(facts, tensor_parallel_size) * facts.head_dim
    attention = (3 * hidden + query + 2 * kv) + (query + hidden)
    if not experts:
        shard = inner // tensor_parallel_size
        return attention + (2 * hidden + 2 * shard) + (shard + hidden)
    if facts.model_type == "gpt_oss":
        padded_hidden, padded_inner = round_up(hidden, 256), round_up(inner // tensor_parallel_size, 128)
        if layout == "v0.11":
            return attention + experts * (3 * padded_hidden + 3 * padded_inner)
        gate_up_slices = 2 if two_slice_experts else 1
        return attention + (hidden + experts) + experts * ((gate_up_slices + 1) * padded_hidden + 3 * padded_inner)
    return attention + (hidden + experts) + experts * (3 * hidden + 3 * (inner // tensor_parallel_size))


def slot_bytes(
    facts: ModelFacts,
    tensor_parallel_size: int,
    max_loras: int,
    max_rank: int,
    layout: LoraLayout,
    *,
    two_slice_experts: bool = False,
) -> int:
    """The bytes each GPU of a replica gives its LoRA slots."""
    vocabulary, per_slot = 0, 0
    hidden, _, _, vocab = widths(facts)
    if facts.model_type in VOCABULARY_LORA[layout]:
        if layout == "v0.11":
            vocabulary = (vocab + EXTRA_VOCAB) + 2 * hidden + round_up(vocab + EXTRA_VOCAB, EXTRA_VOCAB)
            per_slot = 2 * EXTRA_VOCAB * hidden  # the extra tokens' embeddings, per slot whatever the rank
        else:
            vocabulary = 2 * vocab + 2 * hidden
    layer = layer_elements(facts, tensor_parallel_size, layout, two_slice_experts=two_slice_experts)
    elements = max_loras * max_rank * (facts.layers * layer + vocabulary)
    flags = facts.layers * (max_loras + 1) * ADAPTER_FLAG_BYTES if facts.experts else 0
    return (
        SLOT_DTYPE_BYTES * (elements + max_loras * per_slot)
        + flags
        + logits_map_bytes(facts, tensor_parallel_size, layout)
    )


def logits_map_bytes(facts: ModelFacts, tensor_parallel_size: int, layout: LoraLayout) -> int:
    """Split over GPUs, an LM head with LoRA maps each GPU's vocabulary rows to the whole's: an int64 per padded row
    (vllm/lora/layers/logits_processor.py, sharded_to_full_mapping; vocabulary rows padded to 64, v0.11's to 256)."""
    if tensor_parallel_size < 2 or facts.model_type not in VOCABULARY_LORA[layout]:
        return 0
    vocab = widths(facts)[3]
    if layout == "v0.11":
        return 8 * round_up(vocab + EXTRA_VOCAB, EXTRA_VOCAB)
    return 8 * round_up(vocab, 64)
