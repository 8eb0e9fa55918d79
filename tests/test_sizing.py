"""Sizing from the model: each stage is checked against the GPU instances that could run it."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any

import pytest

from commands.sizing_table import main as sizing_command
from settings import SettingsError, load_stage_settings, parse_stage_settings
from settings.cold_start import file_system_throughput_mb_s, startup_probe_seconds
from settings.schema import size_bytes
from settings.sizing import (
    CLOUDWATCH_AGENT,
    FSX_CSI_NODE,
    GIB,
    IMAGE_DISK_MIB,
    MIB,
    SECRETS_STORE_NODE,
    SIDECAR_CPU_MILLIS,
    SIDECAR_MEMORY_MIB,
    allocatable_cpu_millis,
    allocatable_disk_mib,
    allocatable_memory_mib,
    candidates,
    catalog,
    fit,
    gpu_fit,
    gpu_memory,
    gpu_memory_needed_mib,
    node_daemons,
    pool_limits,
    pool_needs,
    requests,
)
from tests.conftest import ROOT, chart_values, stage_data

LLAMA_70B = {
    "name": "llama-70b",
    "model": "meta-llama/Llama-3.1-70B-Instruct",
    "service_name": "llama-70b",
    "gpus": 4,
    "tensor_parallel_size": 4,
    "hf_token_secret": "hf-token",
}
GPT_OSS_120B = {"name": "gpt-oss-120b", "model": "openai/gpt-oss-120b", "service_name": "gpt-oss-120b"}


def stage_with(*models: dict[str, Any], stage: str = "dev", **pool: Any) -> dict[str, Any]:
    data = stage_data(stage)
    image = data["models"][0]["image"]
    data["models"] = [{"image": image, **model} for model in models] or data["models"]
    data["gpu_node_pools"][0].update(pool)
    return data


def rejected(data: dict[str, Any], stage: str = "dev") -> str:
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings(stage, data)
    return str(caught.value)


def instance(name: str):
    (found,) = [i for i in catalog() if i.type == name]
    return found


# --- Karpenter's arithmetic ---


def test_karpenter_leaves_about_13_gib_of_16_and_28_gib_of_32() -> None:
    # 16384 - ceil(7.5 %) - (255 + 11 x 110) - 100
    assert allocatable_memory_mib(16384) == 16384 - 1229 - 1465 - 100 == 13590
    assert allocatable_memory_mib(32768) == 32768 - 2458 - 1465 - 100 == 28745
    assert allocatable_memory_mib(16384, max_pods=58) == 13590 + 11 * (110 - 58)


def test_karpenter_reserves_cpu_in_steps() -> None:
    # 60m of the first core, 10m of the second, 5m each of the next two, 2.5m each above.
    assert allocatable_cpu_millis(1) == 940
    assert allocatable_cpu_millis(4) == 4000 - 60 - 10 - 10 == 3920
    assert allocatable_cpu_millis(8) == 8000 - 80 - 10 == 7910


def test_karpenter_keeps_a_gib_and_a_tenth_of_the_node_disk() -> None:
    assert allocatable_disk_mib(200 * 1024) == 204800 - 1024 - 20480


# --- what a model needs ---


def test_gpu_memory_covers_the_weights_one_sequences_kv_cache_and_vllms_reserve_within_the_utilization() -> None:
    model = load_stage_settings("dev").models[0]  # gpt-oss-20b at 0.90, 20,000 tokens
    memory = gpu_memory(model)
    assert memory.weights == 13_761_264_768  # the safetensors index's total_size
    # 12 full-attention layers x 1250 blocks + 12 sliding layers x (ceil((128 - 1 + 16384) / 16) + 1) blocks (16,384
    # tokens scheduled at once: the most vLLM 0.31.0's `vllm serve` gives itself on any GPU), each block
    # 2 x 16 x 8 heads x 64 x 2 bytes = 32 KiB.
    assert memory.kv_cache == (12 * 1250 + 12 * 1033) * 32 * 1024
    assert memory.reserve == round(0.4 * GIB) + round(2.6 * GIB)
    assert memory.needed_mib == math.ceil((memory.weights + memory.kv_cache + memory.reserve) / 0.9 / MIB) == 18947
    assert 11444 < memory.needed_mib < 22888  # more than a fraction of an L4, less than an L4


def test_a_longer_context_needs_more_gpu_memory() -> None:
    data = stage_data()
    short = parse_stage_settings("dev", data).models[0]
    data["models"][0]["max_model_len"] = 40000
    assert gpu_memory_needed_mib(parse_stage_settings("dev", data).models[0]) > gpu_memory_needed_mib(short)


def test_a_model_the_catalog_lacks_must_bring_its_facts() -> None:
    data = stage_with({"name": "mine", "model": "example-org/unknown-7b", "service_name": "mine"})
    message = rejected(data)
    assert (
        "models[0]: facts: 'example-org/unknown-7b' is not in the catalog of models (settings/catalog/models.yaml)"
        in (message)
    )
    assert "`make model-facts MODEL=example-org/unknown-7b REVISION=<commit>`" in message


def test_weights_gb_says_where_the_size_comes_from_now() -> None:
    data = stage_data()
    data["models"][0]["weights_gb"] = 13.8
    assert "models[0]: weights_gb: now read from the model's facts (weight_bytes" in rejected(data)


# --- the scenarios a new user tries ---


def test_gpt_oss_120b_on_one_h100_starts_on_the_one_gpu_p5() -> None:
    settings = parse_stage_settings("dev", stage_with(GPT_OSS_120B, instance_categories=["p"]))
    chosen = candidates(settings, settings.models[0])
    assert chosen
    assert all(i.gpus == 1 and i.gpu_memory_mib >= gpu_memory_needed_mib(settings.models[0]) for i in chosen)
    assert chosen[0].type == "p5.4xlarge"


def test_gpt_oss_120b_on_l40s_says_what_it_needs_and_why_the_closest_fail() -> None:
    message = rejected(stage_with(GPT_OSS_120B, instance_families=["g6e"]))
    assert "models[0] (gpt-oss-120b): no GPU instance can run one replica. It needs 1 GPU(s) with 73981 MiB each" in (
        message
    )
    # vLLM's start-up check with the numbers, and the settings that change them.
    assert (
        "Closest: g6e.xlarge: 45776 MiB per GPU (L40S), 73981 needed: 0.90 x 45,776 MiB = 41,198 MiB for vLLM, less "
        "62,226 MiB of weights and 3,072 MiB of vLLM's reserve, leaves -24,100 MiB of KV cache, and one sequence of "
        "max_model_len needs 1,285 MiB (models[0].max_model_len, .gpu_memory_utilization, .gpus);"
    ) in message
    assert "Change gpus, gpu_memory_utilization, max_model_len, resources or the gpu_node_pools'" in message


def test_gpt_oss_120b_at_its_full_context_starts_on_one_h100() -> None:
    # OpenAI's and vLLM's reference set-up: one H100, 131,072 tokens. Its sliding-window layers keep 128 tokens.
    settings = parse_stage_settings(
        "dev",
        stage_with(GPT_OSS_120B | {"max_model_len": 131_072, "max_request_seconds": 600}, instance_categories=["p"]),
    )
    model = settings.models[0]
    assert candidates(settings, model)[0].type == "p5.4xlarge"
    memory = gpu_memory(model)
    # 18 full layers x 8192 blocks + 18 sliding layers x (ceil((128 - 1 + 16384) / 16) + 1) blocks, of 32 KiB each.
    assert memory.kv_cache == (18 * 8192 + 18 * 1033) * 32 * 1024
    assert memory.kv_room(instance("p5.4xlarge").gpu_memory_mib) >= memory.kv_cache


def test_a_4_bit_8b_model_at_a_long_context_is_refused_on_a_24_gb_gpu() -> None:
    # Quantized weights leave the KV cache in 16 bits: 128 KiB per token of Llama 3.1 8B's architecture, 16 GiB for
    # one sequence of 131,072 tokens, more than an L4 or an A10G leaves once the 5.7 GB of weights are in.
    facts = {
        "model_type": "llama",
        "layers": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "weight_bytes": 5_700_000_000,
        "dtype": "float16",
        "quantization": "awq",
        "context_tokens": 131072,
        "source": "a test model with Llama 3.1 8B's architecture and 4-bit weights",
    }
    model = {"name": "awq-8b", "model": "example-org/llama-8b-awq", "service_name": "awq", "facts": facts}
    long_context = model | {"max_model_len": 131_072, "max_request_seconds": 600}
    message = rejected(stage_with(long_context, instance_families=["g6", "g5"]))
    assert "one sequence of max_model_len needs 16,384 MiB" in message
    short = parse_stage_settings("dev", stage_with(model | {"max_model_len": 20000}, instance_families=["g6", "g5"]))
    assert candidates(short, short.models[0])[0].gpu_memory_mib == 22888  # at 20,000 tokens an L4 holds it


def test_llama_70b_on_four_l40s_gets_a_four_gpu_node_and_requests_that_fit_it() -> None:
    settings = parse_stage_settings("dev", stage_with(LLAMA_70B, instance_families=["g6e"]))
    model = settings.models[0]
    chosen = candidates(settings, model)
    assert [i.type for i in chosen] == ["g6e.12xlarge", "g6e.24xlarge"]
    wanted = requests(settings, model)
    assert (wanted.cpu_millis, wanted.memory_mib) == (12000, 96 * 1024)  # 3 CPUs and 24 GiB per GPU
    assert wanted.shared_memory_mib == 24 * 1024
    assert wanted.cpu_millis <= allocatable_cpu_millis(chosen[0].vcpus)


def test_llama_70b_on_four_l4_is_refused_with_the_gpu_memory_it_needs() -> None:
    message = rejected(stage_with(LLAMA_70B, instance_families=["g6"]))
    assert "It needs 4 GPU(s) with 42531 MiB each" in message
    assert "Closest: g6.12xlarge: 22888 MiB per GPU (L4), 42531 needed: 0.90 x 22,888 MiB" in message


def test_explicit_requests_win_and_are_checked() -> None:
    data = stage_data()
    data["models"][0]["resources"] = {"memory": "24Gi", "cpu": 3}
    settings = parse_stage_settings("dev", data)
    assert requests(settings, settings.models[0]).memory_mib == 24 * 1024
    # 24 GiB does not fit what a 16 GiB instance leaves to pods: the cheapest becomes a 32 GiB one.
    assert candidates(settings, settings.models[0])[0].memory_mib == 32768
    data["models"][0]["resources"] = {"memory": "600Gi"}
    assert "of memory left to pods besides the DaemonSets, 614400 MiB requested" in rejected(data)


def test_a_one_gpu_model_lands_on_the_cheapest_instance_whose_gpu_holds_it() -> None:
    settings = load_stage_settings("dev")
    chosen = candidates(settings, settings.models[0])
    assert chosen[0].type == "g6.xlarge"
    assert requests(settings, settings.models[0]).memory_mib <= allocatable_memory_mib(chosen[0].memory_mib)


def test_two_models_in_one_stage_each_get_their_instances_and_the_pool_holds_both() -> None:
    data = stage_with(
        {**stage_data()["models"][0]},
        {**LLAMA_70B, "revision": "main"},
        instance_categories=["g"],
    )
    settings = parse_stage_settings("dev", data)
    small, large = settings.models
    assert candidates(settings, small)[0].gpus == 1
    assert candidates(settings, large)[0].gpus == 4
    (pool,) = settings.gpu_node_pools
    needs = pool_needs(settings, pool, "cheapest")
    assert needs.gpus == 2 * 1 + 2 * 4  # each: one replica and a rollout surge
    limits = pool_limits(settings, pool)
    assert limits["nvidia.com/gpu"] == needs.gpus
    assert limits["cpu"] >= needs.cpu


def test_production_with_three_replicas_needs_limits_for_four_nodes() -> None:
    data = stage_data("prod")
    del data["models"][0]["autoscaling"]
    data["models"][0]["replicas"] = 3
    data["gpu_node_pools"][0]["limits"] = {"cpu": 8, "memory": "32Gi", "gpu": 3}
    message = rejected(data, "prod")
    assert (
        "gpu_node_pools[0].limits.cpu: 8 is less than every replica it can run plus one rollout surge and the warm "
        "spares per model" in message
    )
    assert "at least 16" in message  # four g6.xlarge
    assert "gpu_node_pools[0].limits.memory: 32Gi is less than" in message
    assert "at least 64Gi" in message
    assert "gpu_node_pools[0].limits.gpu: 3 is less than" in message
    assert "at least 4" in message
    data["gpu_node_pools"][0]["limits"] = {"cpu": 16, "memory": "64Gi", "gpu": 4}
    assert parse_stage_settings("prod", data).gpu_node_pools[0].limits.gpu == 4


def test_unset_limits_hold_the_largest_candidates() -> None:
    settings = load_stage_settings("dev")
    largest = max(candidates(settings, settings.models[0]), key=lambda i: (i.vcpus, i.memory_mib))
    assert largest.type == "g6e.16xlarge"
    assert pool_limits(settings, settings.gpu_node_pools[0]) == {
        "cpu": 2 * largest.vcpus,
        "memory": f"{2 * largest.memory_mib // 1024}Gi",
        "nvidia.com/gpu": 2,
    }


# --- cold start from the model ---


def test_the_startup_probe_is_never_shorter_than_reading_the_weights() -> None:
    data = stage_with(LLAMA_70B, instance_families=["g6e"])
    data["models"][0]["load_seconds"] = 1
    settings = parse_stage_settings("dev", data)
    read = 141 * 1000 / file_system_throughput_mb_s(settings)
    assert startup_probe_seconds(settings, settings.models[0]) >= read
    dev = load_stage_settings("dev")
    assert startup_probe_seconds(settings, settings.models[0]) > startup_probe_seconds(dev, dev.models[0])


# --- production trade-offs ---


def test_production_chooses_between_the_file_systems_zone_and_all_zones() -> None:
    data = stage_data("prod")
    del data["gpu_node_pools"][0]["zones"]
    assert "gpu_node_pools[0].zones: a production stage chooses it: model_store_zone" in rejected(data, "prod")


def test_production_refuses_spot_only_capacity() -> None:
    data = stage_data("prod")
    for pool in data["gpu_node_pools"]:
        pool["capacity_types"] = ["spot"]
    assert "gpu_node_pools: spot only in a production stage" in rejected(data, "prod")
    # Spot first, then on-demand when spot has no capacity (or is reclaimed): a fallback, so allowed.
    data["gpu_node_pools"][1]["capacity_types"] = ["on-demand"]
    assert parse_stage_settings("prod", data).gpu_node_pools[0].capacity_types == ("spot",)


def test_production_refuses_an_api_open_to_the_internet() -> None:
    data = stage_data("prod")
    data["cluster"]["endpoint_access"] = "public_and_private"
    assert "cluster.public_access_cidrs: a production stage's Kubernetes API is not open to 0.0.0.0/0" in (
        rejected(data, "prod")
    )
    data["cluster"]["public_access_cidrs"] = ["203.0.113.0/24"]
    assert parse_stage_settings("prod", data).cluster.endpoint_access == "public_and_private"


# --- make sizing ---


def sizing_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stage: str) -> str:
    """What `make sizing STAGE=...` prints."""
    monkeypatch.setattr(sys, "argv", ["python -m commands.sizing_table", "--stage", stage])
    sizing_command()
    return capsys.readouterr().out


def test_sizing_command_prints_candidates_cheapest_first_with_headroom_and_cold_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = sizing_output(monkeypatch, capsys, "dev")
    assert "## openai/gpt-oss-20b (gpt-oss-20b): 1 GPU(s) with at least 18947 MiB each" in out
    rows = re.findall(r"^\| (g[0-9a-z.-]+) \| gpu-node-pool \| \$([0-9.]+) ", out, flags=re.MULTILINE)
    prices = [float(price) for _, price in rows]
    assert rows[0][0] == "g6.xlarge"
    assert prices == sorted(prices)
    assert "Karpenter's likely pick: g6.xlarge in pool gpu-node-pool" in out
    assert "spot: variable" in out
    assert "on-demand $/h (us-west-2)" in out  # the region's own prices
    assert "| 3941 MiB |" in out  # 22888 - 18947: the L4's headroom
    assert "cold start on it: 349 s" in out  # as expected, the measured model load (make cold-start)
    assert re.search(
        r"pool 1, gpu-node-pool \(weight 100; spot, on-demand\): limits cpu 128, memory 1024Gi, "
        r"nvidia.com/gpu 2 \(derived",
        out,
    )
    # The model store against the weights every replica reads at once, each throughput with its month's price.
    assert "now 1200 GiB at 250 MB/s per TiB: 47 s" in out
    assert "| 1200 GiB | 1000 | 12 s | no us-west-2 price (make prices) |" in out


def test_sizing_command_names_the_pool_of_each_candidate_and_each_pools_limits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = sizing_output(monkeypatch, capsys, "prod")
    pools = dict(re.findall(r"^\| (g[0-9a-z.-]+) \| ([a-z0-9-]+) \|", out, flags=re.MULTILINE))
    assert {pools["g6.xlarge"], pools["g6e.xlarge"], pools["g5.xlarge"]} == {"gpu-node-pool", "gpu-fallback-g5"}
    assert pools["g5.xlarge"] == "gpu-fallback-g5"
    assert "Karpenter's likely pick: g6.xlarge in pool gpu-node-pool" in out
    assert "2 replica(s), scaled up to 4" in out
    assert "12288 MiB memory" in out
    assert "beside it on each node, the DaemonSets ask 400m CPU, 472 MiB memory" in out
    # Autoscaling's 4 replicas and a surge, on g6e.16xlarge and g5.16xlarge (64 vCPUs; 512 and 256 GiB).
    assert "pool 1, gpu-node-pool (weight 100; on-demand): limits cpu 320, memory 2560Gi, nvidia.com/gpu 5" in out
    assert "pool 2, gpu-fallback-g5 (weight 90; on-demand): limits cpu 320, memory 1280Gi, nvidia.com/gpu 5" in out


def test_requests_must_leave_room_for_kube_reserved_not_just_capacity() -> None:
    # A request of exactly a 16 GiB instance's memory cannot fit it: Karpenter keeps 2.7 GiB back.
    data = stage_data()
    data["models"][0]["resources"] = {"memory": "16Gi", "shared_memory": "1Gi"}
    settings = parse_stage_settings("dev", data)
    assert all(i.memory_mib > 16384 for i in candidates(settings, settings.models[0]))
    assert GIB == 2**30
    assert instance("g6.xlarge").memory_mib == 16384


def test_the_deploy_guide_names_the_instance_a_replica_lands_on_and_its_requests() -> None:
    settings = load_stage_settings("dev")
    model = settings.models[0]
    readme = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    cheapest = candidates(settings, model)[0]
    wanted = requests(settings, model)
    assert f"the cheapest instance whose GPU holds it, a `{cheapest.type}`" in readme
    assert f"{wanted.cpu_millis // 1000} CPUs, {wanted.memory_mib // 1024} GiB of memory" in readme
    assert f"at least {gpu_memory_needed_mib(model):,} MiB each" in readme


@pytest.mark.parametrize(("gpu_memory_delta", "fits"), [(0, True), (-1, False)])
def test_gpu_memory_boundary(gpu_memory_delta: int, fits: bool) -> None:
    settings = load_stage_settings("dev")
    model = settings.models[0]
    exact = dataclasses.replace(instance("g6.xlarge"), gpu_memory_mib=gpu_memory_needed_mib(model) + gpu_memory_delta)
    assert (gpu_fit(settings, model, exact) == []) is fits


@pytest.mark.parametrize(("memory_delta", "fits"), [(0, True), (1, False)])
def test_memory_request_boundary(memory_delta: int, fits: bool) -> None:
    data = stage_data()
    # dev's GPU nodes run one DaemonSet pod, the FSx CSI driver's (104 MiB).
    memory = allocatable_memory_mib(16384) - FSX_CSI_NODE[1] + memory_delta
    data["models"][0]["resources"] = {"memory": f"{memory}Mi", "shared_memory": "1Gi"}
    settings = parse_stage_settings("dev", data)
    assert (fit(settings, settings.models[0], instance("g6.xlarge")) == []) is fits


@pytest.mark.parametrize(("memory_delta", "fits"), [(0, True), (1, False)])
def test_the_compile_caches_sidecar_counts_toward_the_memory_a_replica_may_ask(memory_delta: int, fits: bool) -> None:
    data = stage_data()
    memory = allocatable_memory_mib(16384) - FSX_CSI_NODE[1] - SIDECAR_MEMORY_MIB + memory_delta
    data["models"][0]["resources"] = {"memory": f"{memory}Mi", "shared_memory": "1Gi"}
    data["models"][0]["compile_cache"] = True
    settings = parse_stage_settings("dev", data)
    reasons = fit(settings, settings.models[0], instance("g6.xlarge"))
    assert (reasons == []) is fits
    if not fits:
        assert f"and {SIDECAR_MEMORY_MIB} MiB by the compile cache's sidecar (models[0].compile_cache)" in reasons[0]


def test_derived_requests_leave_room_for_the_compile_caches_sidecar() -> None:
    data = stage_data()
    data["models"][0]["compile_cache"] = True
    settings = parse_stage_settings("dev", data)
    model, daemons = settings.models[0], node_daemons(settings)
    wanted = requests(settings, model)
    cheapest = candidates(settings, model)[0]
    assert wanted.memory_mib + SIDECAR_MEMORY_MIB + daemons.memory_mib <= allocatable_memory_mib(cheapest.memory_mib)
    assert wanted.cpu_millis + SIDECAR_CPU_MILLIS + daemons.cpu_millis <= allocatable_cpu_millis(cheapest.vcpus)


@pytest.mark.parametrize(("cpu_delta", "fits"), [(0, True), (0.001, False)])
def test_cpu_request_boundary(cpu_delta: float, fits: bool) -> None:
    data = stage_data()
    data["models"][0]["resources"] = {"cpu": (allocatable_cpu_millis(4) - FSX_CSI_NODE[0]) / 1000 + cpu_delta}
    settings = parse_stage_settings("dev", data)
    assert (fit(settings, settings.models[0], instance("g6.xlarge")) == []) is fits


@pytest.mark.parametrize(("disk_delta", "fits"), [(0, True), (1, False)])
def test_node_disk_boundary_holds_the_image_pulled_and_unpacked_and_the_request(disk_delta: int, fits: bool) -> None:
    data = stage_data()
    disk = load_stage_settings("dev").gpu_node_pools[0].disk.size
    left = allocatable_disk_mib(size_bytes(disk) // MIB) - IMAGE_DISK_MIB + disk_delta
    data["models"][0]["resources"] = {"ephemeral_storage": f"{left}Mi"}
    if fits:
        assert parse_stage_settings("dev", data).models[0].resources.ephemeral_storage == f"{left}Mi"
    else:
        assert f"MiB of node disk left to pods, {left} MiB requested and {IMAGE_DISK_MIB} MiB for the vLLM image" in (
            rejected(data)
        )


def test_a_node_disk_too_small_for_the_image_is_refused() -> None:
    # 24Gi leaves 21,094 MiB to pods: enough for the 20Gi request alone, not with the 38 GB image beside it.
    data = stage_with(disk={"size": "24Gi", "iops": 4000, "throughput_mib": 1000})
    assert "21094 MiB of node disk left to pods, 20480 MiB requested and" in rejected(data)
    assert f"the vLLM image, pulled and unpacked ({IMAGE_DISK_MIB:,} MiB)" in (ROOT / "docs" / "models.md").read_text()


def test_shared_memory_beyond_the_derived_memory_is_refused() -> None:
    data = stage_data()
    memory = requests(load_stage_settings("dev"), load_stage_settings("dev").models[0]).memory_mib
    data["models"][0]["resources"] = {"shared_memory": f"{memory}Mi"}
    assert parse_stage_settings("dev", data).models[0].resources.shared_memory == f"{memory}Mi"
    data["models"][0]["resources"] = {"shared_memory": f"{memory + 1}Mi"}
    assert (
        f"models[0] (gpt-oss-20b): resources.shared_memory ({memory + 1}Mi) is more than the {memory} MiB of memory "
        "the replica requests (derived, as memory is not given)"
    ) in rejected(data)


def test_a_pool_of_one_family_hears_first_why_that_family_does_not_fit() -> None:
    # p4d is generation 4, which the default instance_generation_greater_than (4) leaves out.
    data = stage_with(
        LLAMA_70B | {"gpus": 8, "tensor_parallel_size": 8}, instance_categories=[], instance_families=["p4d"]
    )
    assert (
        "Closest: p4d.24xlarge: generation 4 is not above gpu_node_pools[0].instance_generation_greater_than (4);"
    ) in rejected(data)
    data["gpu_node_pools"][0]["instance_generation_greater_than"] = 3
    assert parse_stage_settings("dev", data).models[0].gpus == 8
    # g4dn misses in more ways (generation, GPU memory) than other families miss by family alone: still first.
    data = stage_with(instance_categories=[], instance_families=["g4dn"])
    assert re.search(
        r"Closest: g4dn\.\w+: generation 4 is not above gpu_node_pools\[0\]\.instance_generation", rejected(data)
    )


def test_an_instance_family_sizing_does_not_know_is_refused() -> None:
    data = stage_with(instance_families=["g6x", "g6e"])
    assert (
        "gpu_node_pools[0] (gpu-node-pool): instance family g6x is not one of the GPU instance families sizing knows "
        "(settings/catalog/gpu_instances.yaml): "
    ) in rejected(data)


def requested(*resources: dict[str, Any]) -> tuple[int, int]:
    """CPU millicores and memory MiB that containers' `resources` request, summed."""
    cpu = [r["requests"]["cpu"] for r in resources]
    memory = [r["requests"]["memory"] for r in resources]
    return (
        sum(int(c[:-1]) if c.endswith("m") else round(float(c) * 1000) for c in cpu),
        sum(size_bytes(m) // MIB for m in memory),
    )


def test_the_node_daemonsets_requests_are_their_charts() -> None:
    fsx = chart_values("aws-fsx-csi-driver")
    # The node pod: the plugin, and the registrar and liveness probe with their own requests.
    sidecars = fsx["sidecars"]
    node = (
        fsx["node"]["resources"],
        sidecars["nodeDriverRegistrar"]["resources"],
        sidecars["livenessProbe"]["resources"],
    )
    assert requested(*node) == FSX_CSI_NODE
    driver = chart_values("secrets-store-csi-driver")["linux"]
    provider = chart_values("secrets-store-csi-driver-provider-aws")
    secrets_store = (driver["driver"], driver["registrar"], driver["livenessProbe"], provider)
    assert requested(*(part["resources"] for part in secrets_store)) == SECRETS_STORE_NODE
    assert requested(chart_values("amazon-cloudwatch-observability")["agent"]["resources"]) == CLOUDWATCH_AGENT


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_a_replica_and_the_nodes_daemonsets_fit_the_cheapest_instance_together(stage: str) -> None:
    """A pool of that one instance type (a capacity reservation, say) must still place the replica."""
    settings = load_stage_settings(stage)
    model = settings.models[0]
    wanted, daemons = requests(settings, model), node_daemons(settings)
    cheapest = candidates(settings, model)[0]
    assert wanted.memory_mib + daemons.memory_mib <= allocatable_memory_mib(cheapest.memory_mib)
    assert wanted.cpu_millis + daemons.cpu_millis <= allocatable_cpu_millis(cheapest.vcpus)
    # prod's nodes also run the Secrets Store CSI driver and provider and the CloudWatch agent.
    expected = (30, 104) if stage == "dev" else (400, 472)
    assert (daemons.cpu_millis, daemons.memory_mib) == expected


@pytest.mark.parametrize(("limit_delta", "accepted"), [(0, True), (-1, False)])
def test_gpu_limit_boundary(limit_delta: int, accepted: bool) -> None:
    data = stage_data("prod")
    data["gpu_node_pools"][0]["limits"] = {"gpu": 5 + limit_delta}  # autoscaling's 4 replicas and a surge
    if accepted:
        assert parse_stage_settings("prod", data).gpu_node_pools[0].limits.gpu == 5
    else:
        assert "gpu_node_pools[0].limits.gpu: 4 is less than" in rejected(data, "prod")


# --- the image's architecture and the region's offerings ---

LLAMA_3B = {
    "name": "llama-3b",
    "model": "meta-llama/Llama-3.2-3B-Instruct",
    "service_name": "llama-3b",
    "max_model_len": 8192,
}


def test_a_pool_admitting_arm64_for_an_image_without_an_arm64_build_is_refused() -> None:
    # A T4g (g5g, arm64) holds a 3B model; the Deep Learning Containers' vLLM image is built for x86_64 only.
    data = stage_with(LLAMA_3B, architectures=["amd64", "arm64"])
    assert (
        "gpu_node_pools[0].architectures admits arm64 instances (g5g) that could run models[0] (llama-3b), but "
        "models[0].image (public.ecr.aws/deep-learning-containers/vllm:0.31.0-gpu-py312-cu130-ubuntu24.04-ec2) is "
        "published for amd64 only (settings/catalog/images.yaml)"
    ) in rejected(data)
    assert parse_stage_settings("dev", stage_with(LLAMA_3B)).models[0].name == "llama-3b"


def test_a_zone_the_region_does_not_have_is_refused() -> None:
    data = stage_data()
    data["availability_zones"] = ["us-west-2a", "us-west-2e"]
    assert (
        "availability_zones: us-west-2e is not a zone of us-west-2, whose zones are us-west-2a, us-west-2b, "
        "us-west-2c, us-west-2d (settings/catalog/regions.yaml)"
    ) in rejected(data)


def test_a_family_the_region_does_not_offer_is_refused_and_others_are_not_candidates() -> None:
    data = stage_with(instance_families=["g6"])
    data |= {"region": "eu-west-1", "availability_zones": ["eu-west-1a", "eu-west-1b"]}
    assert (
        "gpu_node_pools[0].instance_families: g6 is not offered in region eu-west-1 (settings/catalog/regions.yaml); "
        "the region offers g4dn, g5, p3dn, p4d"
    ) in rejected(data)
    del data["gpu_node_pools"][0]["instance_families"]
    settings = parse_stage_settings("dev", data)
    assert {i.family for i in candidates(settings, settings.models[0])} == {"g5"}


def test_a_network_floor_no_instance_of_the_pool_meets_is_refused_naming_it() -> None:
    data = stage_data()
    data["gpu_node_pools"][0].update(instance_families=["g6"], min_network_mbps=200_000)
    message = rejected(data)
    assert "models[0] (gpt-oss-20b): no GPU instance can run one replica" in message
    assert "g6.8xlarge: its 25000 Mbps of network is below gpu_node_pools[0].min_network_mbps (200000)" in message
