"""What the project knows of a model's architecture, and the KV cache arithmetic vLLM does with it.

A model's facts come from its config.json and safetensors index at a Hub commit: the catalog holds those of the
models the project knows (settings/catalog/models.yaml, written by `make model-facts`), and a model it does not
know brings them in its settings (models[].facts). Sizing, the start-up check and the gpt-oss handling read them;
nothing is guessed from a model's name or size.

The KV cache follows vLLM's own accounting (vllm/v1/kv_cache_interface.py and vllm/v1/core/kv_cache_utils.py at
v0.11.2): a layer keeps K and V for each of its KV heads (per GPU: the heads are split over tensor parallelism,
one at least), head_dim values each, in the KV cache dtype (the model's 16-bit dtype unless the settings ask vLLM
for fp8: quantized weights do not shrink it); a full-attention layer keeps every token of a sequence, a
sliding-window layer at most its window plus the tokens scheduled at once, and memory comes in blocks of 16 tokens.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from settings.yaml_files import load_yaml

CATALOG_FILE = Path(__file__).parent / "catalog" / "models.yaml"
# vLLM's KV cache block on CUDA (vllm/config/cache.py at v0.11.2: block_size 16).
BLOCK_TOKENS = 16
# Tokens a sliding-window layer keeps beyond its window: those scheduled at once, vLLM's max_num_batched_tokens.
# vllm serve's default depends on the GPU and the version: 2048 on most GPUs and 8192 on those of 70 GiB or more
# other than an A100 (vllm/engine/arg_utils.py at v0.11.2, _set_default_args), and from 0.33.0 16384 on those of
# 160 GiB or more. Sizing takes the largest of the model's version (its profile, settings/vllm_profiles.py), so no
# GPU is admitted that vLLM would refuse, unless extra_args set it higher; this is 0.11.2's.
DEFAULT_BATCHED_TOKENS = 8192
# Bytes per KV cache element: vLLM's "auto" is the model's dtype; the fp8 kinds are 1 byte
# (vllm/utils/torch_utils.py at v0.11.2, STR_DTYPE_TO_TORCH_DTYPE).
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
CommitSha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]


class ModelFacts(BaseModel):
    """A model's architecture as vLLM sizes it, and where each fact was read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = Field(min_length=1, description="config.json model_type, such as gpt_oss or llama")
    layers: int = Field(ge=1, description="attention layers: config.json num_hidden_layers")
    sliding_window_layers: int = Field(
        default=0, ge=0, description="of those, the layers with sliding-window attention (layer_types)"
    )
    sliding_window: int | None = Field(default=None, ge=1, description="their window, in tokens")
    kv_heads: int = Field(ge=1, description="config.json num_key_value_heads")
    head_dim: int = Field(ge=1, description="config.json head_dim, or hidden_size / num_attention_heads")
    attention_sinks: bool = Field(
        default=False, description="learned attention sinks (gpt-oss): weights, no KV cache of their own"
    )
    weight_bytes: int = Field(ge=1, description="the safetensors weights vLLM reads: the index's metadata.total_size")
    # The widths vLLM sizes each LoRA slot's buffers by (settings/lora_slots.py); a model serving adapters needs them.
    hidden_size: int | None = Field(default=None, ge=1, description="config.json hidden_size")
    attention_heads: int | None = Field(default=None, ge=1, description="config.json num_attention_heads")
    intermediate_size: int | None = Field(
        default=None,
        ge=1,
        description="the MLP's width, each expert's in a mixture of experts: moe_intermediate_size, else "
        "intermediate_size",
    )
    experts: int = Field(
        default=0, ge=0, description="routed experts per layer: num_local_experts or num_experts; 0 for a dense model"
    )
    experts_per_token: int = Field(
        default=0, ge=0, description="experts each token is routed to: num_experts_per_tok; 0 for a dense model"
    )
    vocab_size: int | None = Field(default=None, ge=1, description="config.json vocab_size")
    dtype: Literal["bfloat16", "float16"] = Field(description="the 16-bit dtype of the activations and the KV cache")
    quantization: str | None = Field(default=None, description="config.json quantization_config.quant_method")
    context_tokens: int = Field(ge=1, description="the longest max_model_len vLLM takes: max_position_embeddings")
    hub_commit: CommitSha | None = Field(default=None, description="the Hub commit the facts were read at, if known")
    source: str = Field(min_length=1, description="where the facts were read: the files, their repository and commit")

    @model_validator(mode="after")
    def _sliding_layers_have_a_window(self) -> ModelFacts:
        if self.sliding_window_layers > self.layers:
            raise ValueError(f"sliding_window_layers: {self.sliding_window_layers} is more than layers ({self.layers})")
        if self.sliding_window_layers and self.sliding_window is None:
            raise ValueError("sliding_window: give the window of the sliding_window_layers")
        return self

    @property
    def full_attention_layers(self) -> int:
        return self.layers - self.sliding_window_layers

    @property
    def weights_gb(self) -> float:
        return self.weight_bytes / 1e9


@cache
def catalog() -> dict[str, ModelFacts]:
    """The catalog's models by Hub repository id."""
    data = load_yaml(CATALOG_FILE.read_text())
    return {repo: ModelFacts(**facts) for repo, facts in data["models"].items()}


def kv_heads_per_gpu(facts: ModelFacts, tensor_parallel_size: int) -> int:
    """vLLM splits the KV heads over the GPUs, and replicates them when there are more GPUs than heads
    (vllm/config/model.py at v0.11.2, get_num_kv_heads: max(1, total // tensor_parallel_size))."""
    return max(1, facts.kv_heads // tensor_parallel_size)


def page_bytes(facts: ModelFacts, tensor_parallel_size: int, kv_dtype_bytes: int) -> int:
    """One layer's block of KV cache on one GPU (AttentionSpec.page_size_bytes: 2 x block x heads x head_dim x
    dtype)."""
    return 2 * BLOCK_TOKENS * kv_heads_per_gpu(facts, tensor_parallel_size) * facts.head_dim * kv_dtype_bytes


def kv_bytes_per_token(facts: ModelFacts, tensor_parallel_size: int = 1, kv_dtype_bytes: int = 2) -> int:
    """The KV cache one token takes in the full-attention layers, on one GPU: what grows with the context."""
    return facts.full_attention_layers * page_bytes(facts, tensor_parallel_size, kv_dtype_bytes) // BLOCK_TOKENS


def sequence_kv_bytes(
    facts: ModelFacts,
    max_model_len: int,
    *,
    tensor_parallel_size: int = 1,
    kv_dtype_bytes: int = 2,
    batched_tokens: int = DEFAULT_BATCHED_TOKENS,
) -> int:
    """The KV cache of one sequence of max_model_len tokens on one GPU, as vLLM's start-up check sums it
    (max_memory_usage_bytes: FullAttentionSpec and SlidingWindowSpec)."""
    page = page_bytes(facts, tensor_parallel_size, kv_dtype_bytes)
    full = facts.full_attention_layers * math.ceil(max_model_len / BLOCK_TOKENS) * page
    if not facts.sliding_window_layers:
        return full
    assert facts.sliding_window is not None
    window_tokens = min(facts.sliding_window - 1 + batched_tokens, max_model_len)
    return full + facts.sliding_window_layers * (math.ceil(window_tokens / BLOCK_TOKENS) + 1) * page
