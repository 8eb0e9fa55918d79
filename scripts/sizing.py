"""Which GPU instances can run each model of a stage, cheapest first: `make sizing STAGE=dev`.

For every model: the candidates (the GPU pool admits them, they have the model's GPU count,
each GPU holds its shard of the weights and KV cache, the replica's requests fit what Karpenter
leaves to pods), their on-demand price, GPU memory headroom, the one Karpenter would likely
launch and the replica's cold start; then the pool's limits. Prices come from
settings/catalog/on_demand_prices.yaml (with its source and date); spot prices vary and are not kept.
"""

from __future__ import annotations

from charts.cold_start import cold_start_steps
from scripts import stage_from_command_line
from settings.sizing import candidates, gpu_memory_needed_mib, on_demand_prices, pool_limits, requests


def main() -> None:
    settings = stage_from_command_line("python -m scripts.sizing", __doc__)
    priced_region, prices = on_demand_prices(settings.region)
    where = (
        settings.region
        if priced_region == settings.region
        else f"{priced_region} prices: the table has no {settings.region}"
    )
    spot = "spot" in settings.gpu_node_pool.capacity_types
    for model in settings.models:
        needed = gpu_memory_needed_mib(model)
        wanted = requests(settings, model)
        options = candidates(settings, model)
        print(f"## {model.model} ({model.name}): {model.gpus} GPU(s) with at least {needed} MiB each\n")
        print(
            f"requests: {wanted.cpu_millis}m CPU, {wanted.memory_mib} MiB memory ({wanted.shared_memory_mib} MiB "
            f"of it /dev/shm), {wanted.ephemeral_storage_mib} MiB node disk; {model.replicas} replica(s)\n"
        )
        print(f"| instance | on-demand $/h ({where}) | spot | GPUs | GPU memory headroom | vCPUs | memory |")
        print("|---|---:|---|---|---:|---:|---:|")
        for option in options:
            price = f"${prices[option.type]:.3f}" if option.type in prices else "n/a"
            print(
                f"| {option.type} | {price} | {'variable' if spot else 'not used'} | {option.gpus} x "
                f"{option.gpu_model} | {option.gpu_memory_mib - needed} MiB | {option.vcpus} | "
                f"{option.memory_mib // 1024} GiB |"
            )
        cold_start = sum(step.seconds for step in cold_start_steps(settings, model))
        pick = options[0].type
        print(
            f"\nKarpenter's likely pick: {pick} (the cheapest that fits; with spot: variable, Karpenter's "
            f"price-capacity-optimized choice among these); cold start on it: {cold_start:.0f} s\n"
        )
    limits = pool_limits(settings)
    given = settings.gpu_node_pool.limits.model_fields_set
    print(
        f"pool limits: cpu {limits['cpu']}, memory {limits['memory']}, nvidia.com/gpu {limits['nvidia.com/gpu']} "
        f"({'derived from the models' if not given else 'from the settings where given, derived elsewhere'}: "
        "every model's replicas plus one rollout surge)"
    )


if __name__ == "__main__":
    main()
