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
  and the down projection. gpt-oss's experts are padded to MXFP4 Marlin's sizes, the MXFP4 kernel vLLM picks when
  LoRA is on (hidden_size to a multiple of 256, intermediate_size / TP to a multiple of 128:
  vllm/model_executor/layers/quantization/mxfp4.py at v0.11.2, fused_moe/oracle/mxfp4.py from v0.27.1; the other
  kernels with LoRA pad as much or less), and the version's layout (its profile's lora_layout) says whether their
  gate and up projections share an A (v0.27: FusedMoE3DWithLoRA, unless --enable-mixed-moe-lora-format) and whether
  the router is wrapped;
- once per model, where the version gives the model class a vocabulary LoRA: the embedding (A of the vocabulary,
  B of hidden_size) and the LM head (A of hidden_size, B of the vocabulary), neither split over the GPUs.

v0.11 also takes, for Llama, 256 extra tokens per slot (--lora-extra-vocab-size) into the embedding and the LM head
themselves (vllm/model_executor/models/llama.py at v0.11.2), and its MoE LoRA kernel allocates two caches in each
forward pass, the profiling run's included, sized by the tokens of the pass (vllm/lora/ops/triton_ops/
fused_moe_lora_op.py at v0.11.2): counted too.

Not counted: the kernels' index buffers (a few megabytes at most: tens of bytes per batched token, more with many
slots of a mixture of experts), PyTorch's allocator rounding, and the
CUDA graphs vLLM from 0.27 captures twice with LoRA on, with and without adapters (vllm/v1/cudagraph_dispatcher.py),
whose memory it estimates at start and takes from the KV cache. Every layer of a mixture of experts is taken as an
expert layer: a model with dense layers among them (Qwen3-MoE's mlp_only_layers) is over-counted, never under; so
are the flags that shrink the slots (--fully-sharded-loras, --lora-target-modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from settings.model_facts import ModelFacts, kv_heads_per_gpu

LoraLayout = Literal["v0.11", "v0.27"]
# Bytes per element of the slots: lora_dtype "auto" is the model's dtype, 16-bit for every model sized here
# (vllm/config/lora.py, verify_with_model_config).
SLOT_DTYPE_BYTES = 2
# The int32 flag each expert layer keeps per slot and one more (fused_moe.py, adapter_enabled).
ADAPTER_FLAG_BYTES = 4
# v0.11's extra tokens per adapter, unless --lora-extra-vocab-size says otherwise (vllm/config/lora.py), and the
# padding of its LM head with LoRA (vllm/platforms/interface.py, get_lora_vocab_padding_size) and without it
# (vllm/model_executor/layers/vocab_parallel_embedding.py, DEFAULT_VOCAB_PADDING_SIZE).
EXTRA_VOCAB = 256
LORA_VOCAB_PADDING = 256
VOCAB_PADDING = 64
# The model classes given a vocabulary LoRA (their embedding_modules), by layout.
VOCABULARY_LORA = {"v0.11": ("llama",), "v0.27": ("llama", "qwen3", "qwen3_moe")}
# The model types whose vLLM classes with LoRA are mixtures of experts: their facts must count the experts.
EXPERT_MODEL_TYPES = ("gpt_oss", "qwen3_moe")
# The widths a model's facts must give for its slots to be sized.
WIDTHS = ("hidden_size", "attention_heads", "intermediate_size", "vocab_size")
EXPERT_WIDTHS = ("experts", "experts_per_token")


@dataclass(frozen=True)
class LoraSlots:
    """What vLLM is told of LoRA that the slots' buffers depend on."""

    max_loras: int
    max_rank: int
    layout: LoraLayout
    # --enable-mixed-moe-lora-format: gpt-oss's experts take the two-slice wrapper in a v0.27 layout too.
    two_slice_experts: bool = False
    # v0.11's --lora-extra-vocab-size.
    extra_vocab: int = EXTRA_VOCAB
    # The tokens of a forward pass (max_num_batched_tokens), which v0.11's MoE LoRA kernel sizes its caches by.
    batched_tokens: int = 0


def missing_widths(facts: ModelFacts) -> list[str]:
    """The widths the facts lack that sizing a LoRA slot needs."""
    missing = [name for name in WIDTHS if getattr(facts, name) is None]
    if facts.model_type in EXPERT_MODEL_TYPES:
        missing += [name for name in EXPERT_WIDTHS if not getattr(facts, name)]
    return missing


def widths(facts: ModelFacts) -> tuple[int, int, int, int]:
    """hidden_size, attention_heads, intermediate_size and vocab_size; a ValueError naming those the facts lack."""
    hidden, heads, inner, vocab = facts.hidden_size, facts.attention_heads, facts.intermediate_size, facts.vocab_size
    if hidden is None or heads is None or inner is None or vocab is None:
        raise ValueError(f"the model's facts lack {', '.join(missing_widths(facts))}, which LoRA slots are sized by")
    return hidden, heads, inner, vocab


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def expert_widths(facts: ModelFacts, tensor_parallel_size: int) -> tuple[int, int]:
    """An expert's hidden and intermediate widths on one GPU, as its LoRA wrapper sees them: the intermediate split
    over the GPUs, and gpt-oss's both padded to MXFP4 Marlin's sizes."""
    hidden, _, inner, _ = widths(facts)
    if facts.model_type == "gpt_oss":
        return round_up(hidden, 256), round_up(inner // tensor_parallel_size, 128)
    return hidden, inner // tensor_parallel_size


def layer_elements(facts: ModelFacts, tensor_parallel_size: int, slots: LoraSlots) -> int:
    """One decoder layer's slot elements per slot-rank on one GPU."""
    hidden, heads, inner, _ = widths(facts)
    query = heads // tensor_parallel_size * facts.head_dim
    kv = kv_heads_per_gpu(facts, tensor_parallel_size) * facts.head_dim
    attention = (3 * hidden + query + 2 * kv) + (query + hidden)
    if not facts.experts:
        shard = inner // tensor_parallel_size
        return attention + (2 * hidden + 2 * shard) + (shard + hidden)
    router = hidden + facts.experts
    expert_hidden, expert_inner = expert_widths(facts, tensor_parallel_size)
    if facts.model_type == "gpt_oss" and slots.layout == "v0.11":
        return attention + facts.experts * (3 * expert_hidden + 3 * expert_inner)
    gate_up_slices = 1 if facts.model_type == "gpt_oss" and not slots.two_slice_experts else 2
    return attention + router + facts.experts * ((gate_up_slices + 1) * expert_hidden + 3 * expert_inner)


def vocabulary_elements(facts: ModelFacts, slots: LoraSlots) -> tuple[int, int]:
    """The embedding's and LM head's slot elements per slot-rank, and v0.11's per slot (its extra tokens'
    embeddings, whatever the rank)."""
    if facts.model_type not in VOCABULARY_LORA[slots.layout]:
        return 0, 0
    hidden, _, _, vocab = widths(facts)
    if slots.layout == "v0.27":
        return 2 * vocab + 2 * hidden, 0
    extended = vocab + slots.extra_vocab
    return extended + 2 * hidden + round_up(extended, LORA_VOCAB_PADDING), 2 * slots.extra_vocab * hidden


def slot_bytes(facts: ModelFacts, tensor_parallel_size: int, slots: LoraSlots) -> int:
    """The bytes each GPU of a replica gives its LoRA slots."""
    per_rank, per_slot = vocabulary_elements(facts, slots)
    per_rank += facts.layers * layer_elements(facts, tensor_parallel_size, slots)
    elements = slots.max_loras * (slots.max_rank * per_rank + per_slot)
    flags = facts.layers * (slots.max_loras + 1) * ADAPTER_FLAG_BYTES if facts.experts else 0
    return (
        SLOT_DTYPE_BYTES * elements
        + flags
        + logits_map_bytes(facts, tensor_parallel_size, slots)
        + extra_vocabulary_bytes(facts, tensor_parallel_size, slots)
        + moe_kernel_cache_bytes(facts, tensor_parallel_size, slots)
    )


def logits_map_bytes(facts: ModelFacts, tensor_parallel_size: int, slots: LoraSlots) -> int:
    """Split over GPUs, an LM head with LoRA maps each GPU's vocabulary rows to the whole's: an int64 per padded row
    (vllm/lora/layers/logits_processor.py, sharded_to_full_mapping)."""
    if tensor_parallel_size < 2 or facts.model_type not in VOCABULARY_LORA[slots.layout]:
        return 0
    vocab = widths(facts)[3]
    if slots.layout == "v0.11":
        return 8 * round_up(vocab + slots.extra_vocab, LORA_VOCAB_PADDING)
    return 8 * round_up(vocab, VOCAB_PADDING)


def extra_vocabulary_bytes(facts: ModelFacts, tensor_parallel_size: int, slots: LoraSlots) -> int:
    """v0.11's Llama with LoRA: its embedding takes extra_vocab rows per slot, its LM head extra_vocab rows padded to
    256, both split over the GPUs (a tied LM head shares the embedding's and is over-counted)."""
    if slots.layout != "v0.11" or facts.model_type not in VOCABULARY_LORA["v0.11"]:
        return 0
    hidden, _, _, vocab = widths(facts)
    base = round_up(vocab, VOCAB_PADDING)
    embedding = round_up(base + slots.extra_vocab * slots.max_loras, VOCAB_PADDING) - base
    head = round_up(round_up(vocab, LORA_VOCAB_PADDING) + slots.extra_vocab, LORA_VOCAB_PADDING) - base
    return SLOT_DTYPE_BYTES * hidden * (embedding + head) // tensor_parallel_size


def moe_kernel_cache_bytes(facts: ModelFacts, tensor_parallel_size: int, slots: LoraSlots) -> int:
    """v0.11's MoE LoRA kernel, in every forward pass: a rank-wide and an output-wide cache per slice, token and
    chosen expert (a_intermediate_cache1, b_intermediate_cache1), for the gate and up projections' two slices, then
    the down projection's one: the larger of the two."""
    if slots.layout != "v0.11" or not facts.experts:
        return 0
    expert_hidden, expert_inner = expert_widths(facts, tensor_parallel_size)
    routed = slots.batched_tokens * facts.experts_per_token
    gate_up, down = 2 * routed * (slots.max_rank + expert_inner), routed * (slots.max_rank + expert_hidden)
    return SLOT_DTYPE_BYTES * max(gate_up, down)
