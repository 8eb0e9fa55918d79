"""Read a model's architecture from the Hub at a commit and write its catalog entry:
`make model-facts MODEL=Qwen/Qwen3-8B REVISION=<commit>`.

It reads the repository's config.json and safetensors index (or, for a single-file model, the size of its
model.safetensors) at the revision, resolved to its commit, from the Hub or HF_ENDPOINT, with the token in HF_TOKEN
for a gated model, and writes the facts vLLM sizes it by (settings/model_facts.py) into settings/catalog/models.yaml,
replacing any entry of the same repository. The fields, as vLLM reads them:

- model_type: config.json's (a multimodal model's architecture is its text_config's);
- layers, kv_heads, head_dim: num_hidden_layers, num_key_value_heads (else num_attention_heads), head_dim (else
  hidden_size / num_attention_heads);
- sliding_window_layers and sliding_window: layer_types' sliding_attention layers (gpt-oss); with
  use_sliding_window (Qwen2, Qwen3), the layers from max_window_layers on (vllm/model_executor/models/qwen2.py);
  none when use_sliding_window is false; every layer when only sliding_window is given (Mistral 7B);
- attention_sinks: the index names a self_attn.sinks tensor;
- weight_bytes: the index's metadata.total_size, else the root *.safetensors files' sizes;
- hidden_size, attention_heads (num_attention_heads), vocab_size; intermediate_size: moe_intermediate_size where given
  (each expert's), else intermediate_size; experts: num_local_experts (gpt-oss) or num_experts (Qwen3-MoE), else 0;
  experts_per_token: num_experts_per_tok: the widths a LoRA slot is sized by (settings/lora_slots.py), left out where
  the config lacks them;
- dtype: torch_dtype or dtype (bfloat16 when the config gives none, as gpt-oss's);
- quantization: quantization_config.quant_method; context_tokens: max_position_embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, constants, hf_hub_download

from settings.model_facts import CATALOG_FILE, ModelFacts
from settings.yaml_files import load_yaml

CONFIG, INDEX, SINGLE_FILE = "config.json", "model.safetensors.index.json", "model.safetensors"


def sliding_layers(config: dict[str, Any], layers: int) -> int:
    if "layer_types" in config:
        return sum(kind == "sliding_attention" for kind in config["layer_types"])
    if "use_sliding_window" in config:
        return layers - int(config.get("max_window_layers", layers)) if config["use_sliding_window"] else 0
    return layers if config.get("sliding_window") else 0


def width(config: dict[str, Any], key: str) -> int | None:
    """A width the config may leave out: a model without it can be sized, but not its LoRA slots."""
    return int(config[key]) if config.get(key) else None


def facts_from(
    config: dict[str, Any], index: dict[str, Any] | None, root_weights: int, *, commit: str, source: str
) -> ModelFacts:
    """The facts of a model from its config.json, its safetensors index (None: a single file) and the size of its
    root *.safetensors files."""
    text = config.get("text_config", config)
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    sliding = sliding_layers(text, layers)
    quantization = config.get("quantization_config") or text.get("quantization_config") or {}
    dtype = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or "bfloat16"
    return ModelFacts(
        model_type=config["model_type"],
        layers=layers,
        sliding_window_layers=sliding,
        sliding_window=int(text["sliding_window"]) if sliding else None,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or int(text["hidden_size"]) // heads),
        attention_sinks=any(name.endswith("self_attn.sinks") for name in (index or {}).get("weight_map", {})),
        weight_bytes=int(index["metadata"]["total_size"]) if index else root_weights,
        hidden_size=width(text, "hidden_size"),
        attention_heads=heads,
        intermediate_size=width(text, "moe_intermediate_size") or width(text, "intermediate_size"),
        experts=width(text, "num_local_experts") or width(text, "num_experts") or 0,
        experts_per_token=width(text, "num_experts_per_tok") or 0,
        vocab_size=width(text, "vocab_size"),
        dtype="float16" if dtype == "float16" else "bfloat16",
        quantization=quantization.get("quant_method"),
        context_tokens=int(text["max_position_embeddings"]),
        hub_commit=commit,
        source=source,
    )


def read_facts(repo: str, revision: str) -> ModelFacts:
    """The facts of `repo` at `revision`, read from the Hub (or HF_ENDPOINT)."""
    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    commit = str(info.sha)
    files = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}

    def read(name: str) -> dict[str, Any]:
        return json.loads(Path(hf_hub_download(repo, name, revision=commit)).read_text())

    index = read(INDEX) if INDEX in files else None
    root_weights = sum(size for name, size in files.items() if "/" not in name and name.endswith(".safetensors"))
    read_from = f"{INDEX}" if index else f"the root *.safetensors sizes ({SINGLE_FILE})"
    source = (
        f"{CONFIG} and {read_from} of {repo} at its commit, read from {constants.ENDPOINT} on "
        f"{datetime.now(UTC).date().isoformat()} by `make model-facts`"
    )
    return facts_from(read(CONFIG), index, root_weights, commit=commit, source=source)


def write_entry(catalog_file: Path, repo: str, facts: ModelFacts) -> None:
    """Put the entry in the catalog, in place of any earlier one, keeping the file's header comment."""
    text = catalog_file.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    data = load_yaml(text)
    data["models"][repo] = facts.model_dump(exclude_defaults=True)
    catalog_file.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m commands.model_facts_from_hub", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", required=True, help="the Hub repository, e.g. Qwen/Qwen3-8B")
    parser.add_argument("--revision", required=True, help="a commit (or branch or tag, resolved to its commit)")
    parser.add_argument("--catalog", type=Path, default=CATALOG_FILE)
    args = parser.parse_args(argv)
    try:
        facts = read_facts(args.model, args.revision)
    except Exception as error:  # the Hub's own errors name the repository, revision or access that failed
        print(f"could not read {args.model}@{args.revision}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    write_entry(args.catalog, args.model, facts)
    print(f"{args.catalog}: {args.model} at {facts.hub_commit}")
    print(yaml.safe_dump(facts.model_dump(exclude_defaults=True), sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
