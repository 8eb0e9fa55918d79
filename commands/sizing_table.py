"""Which GPU instances can run each model of a stage, cheapest first: `make sizing STAGE=dev`.

For every model: the candidates (a GPU pool admits them, they have the model's GPU count,
each GPU holds its shard of the weights and KV cache, the replica's requests fit what Karpenter
leaves to pods), their on-demand price, GPU memory headroom, the one Karpenter would likely
launch (the cheapest in the first pool that can run it) and the replica's cold start; then each
pool's weight and limits. Prices come from
settings/catalog/on_demand_prices.yaml (with its source and date); spot prices vary and are not kept.
"""

from __future__ import annotations

from charts.gpu_node_pool import pool_weight
from commands import stage_from_command_line
from settings.cold_start import cold_start_seconds, file_system_options, weight_read_seconds, weights_read_at_once_gb
from settings.cost import service_prices
from settings.model_facts import kv_bytes_per_token
from settings.schema import StageSettings
from settings.sizing import (
    MIB,
    candidates,
    gpu_memory,
    gpu_memory_needed_mib,
    node_daemons,
    on_demand_prices,
    pool_limits,
    pools_for,
    requests,
)


def main() -> None:
    settings = stage_from_command_line("python -m commands.sizing_table", __doc__)
    priced_region, prices = on_demand_prices(settings.region)
    where = (
        settings.region
        if priced_region == settings.region
        else f"{priced_region} prices: the table has no {settings.region}"
    )
    daemons = node_daemons(settings)
    for model in settings.models:
        needed = gpu_memory_needed_mib(model)
        wanted = requests(settings, model)
        options = candidates(settings, model)
        memory, facts = gpu_memory(model), model.architecture
        per_token = kv_bytes_per_token(facts, model.tensor_parallel_size, model.kv_cache_dtype_bytes)
        print(f"## {model.model} ({model.name}): {model.gpus} GPU(s) with at least {needed} MiB each\n")
        print(
            f"per GPU: {memory.weights / MIB:,.0f} MiB of weights, "
            + (
                f"{memory.lora_slots / MIB:,.0f} MiB of LoRA slots ({model.adapters_per_batch} adapter(s) per batch "
                f"at rank {model.max_lora_rank}, settings/lora_slots.py), "
                if memory.lora_slots
                else ""
            )
            + f"{memory.kv_cache / MIB:,.0f} MiB of KV cache for "
            f"one sequence of {model.max_model_len:,} tokens ({per_token:,} bytes per token in "
            f"{facts.full_attention_layers} full-attention layers"
            + (
                f", {facts.sliding_window_layers} sliding-window layers of {facts.sliding_window} tokens"
                if facts.sliding_window_layers
                else ""
            )
            + f"), {memory.reserve / MIB:,.0f} MiB of vLLM's reserve, within gpu_memory_utilization "
            f"{memory.utilization:.2f}. The model's facts: {facts.source}"
            + (f" (Hub commit {facts.hub_commit})" if facts.hub_commit else "")
            + "\n"
        )
        print(
            f"requests: {wanted.cpu_millis}m CPU, {wanted.memory_mib} MiB memory ({wanted.shared_memory_mib} MiB "
            f"of it /dev/shm), {wanted.ephemeral_storage_mib} MiB node disk; {model.replicas} replica(s)"
            f"{f', scaled up to {model.peak_replicas}' if model.autoscaling else ''}"
            f"{f', and {model.warm_spares} warm spare node(s) at that price too' if model.warm_spares else ''}; "
            "beside it on each node, the "
            f"DaemonSets ask {daemons.cpu_millis}m CPU, {daemons.memory_mib} MiB memory\n"
        )
        by_pool = {pool.name: candidates(settings, model, pool) for pool in settings.gpu_node_pools}
        print(f"| instance | pools | on-demand $/h ({where}) | spot | GPUs | GPU memory headroom | vCPUs | memory |")
        print("|---|---|---:|---|---|---:|---:|---:|")
        for option in options:
            admitting = [pool for pool in settings.gpu_node_pools if option in by_pool[pool.name]]
            spot = any("spot" in pool.capacity_types for pool in admitting)
            price = f"${prices[option.type]:.3f}" if option.type in prices else "n/a"
            print(
                f"| {option.type} | {', '.join(pool.name for pool in admitting)} | {price} | "
                f"{'variable' if spot else 'not used'} | {option.gpus} x {option.gpu_model} | "
                f"{option.gpu_memory_mib - needed} MiB | {option.vcpus} | {option.memory_mib // 1024} GiB |"
            )
        cold_start = cold_start_seconds(settings, model)
        first = pools_for(settings, model)[0]
        print(
            f"\nKarpenter's likely pick: {by_pool[first.name][0].type} in pool {first.name} (the first pool that "
            "can run it, the cheapest that fits there; with spot: variable, Karpenter's price-capacity-optimized "
            f"choice among these); cold start on it: {cold_start:.0f} s\n"
        )
    for index, pool in enumerate(settings.gpu_node_pools):
        limits = pool_limits(settings, pool)
        given = pool.limits.model_fields_set
        print(
            f"pool {index + 1}, {pool.name} (weight {pool_weight(index)}; {', '.join(pool.capacity_types)}): limits "
            f"cpu {limits['cpu']}, memory {limits['memory']}, nvidia.com/gpu {limits['nvidia.com/gpu']} "
            f"({'derived from the models' if not given else 'from the settings where given, derived elsewhere'}: "
            "every replica it can run plus one rollout surge and the warm spares per model)"
        )
    file_system_table(settings)


def file_system_table(settings: StageSettings) -> None:
    """The model store's throughput against the weights every replica reads at once, and what each choice costs."""
    store, prices = settings.model_store, service_prices(settings.region)
    target = store.weight_read_target_seconds
    print(
        f"\nmodel store: {weights_read_at_once_gb(settings):.1f} GB of weights read at once when every replica of a "
        "model starts (a first deploy, a scale-out to its most, a replaced file system); now "
        f"{store.storage_capacity_gib} GiB at {store.throughput_per_tib} "
        f"MB/s per TiB: {weight_read_seconds(settings):.0f} s"
        + (f" (target {target} s)" if target else " (no model_store.weight_read_target_seconds)")
    )
    print("| capacity | MB/s per TiB | weight read | a month |\n|---:|---:|---:|---:|")
    for capacity, per_tib, seconds in file_system_options(settings):
        price = prices.get(f"lustre_persistent_2_{per_tib}_gb_month")
        month = f"${capacity * 2**30 / 1e9 * price.usd:,.0f}" if price else f"no {settings.region} price (make prices)"
        print(f"| {capacity} GiB | {per_tib} | {seconds:.0f} s | {month} |")


if __name__ == "__main__":
    main()
