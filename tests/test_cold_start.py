"""The cold-start budget: each step's figures follow from the settings, and the probes follow from it."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import pytest

from commands.cold_start_budget import main as cold_start_command
from settings import load_stage_settings, parse_stage_settings
from settings.autoscaling import scale_down_cooldown_seconds
from settings.cold_start import (
    ASSUMED_LOAD_SECONDS,
    CAPACITY_OPTIONS_GIB,
    IMAGE_UNPACKED_BYTES,
    MEASURED_LOAD_SOURCE,
    MEASURED_PULL_SECONDS,
    WARM_COMPILE_CACHE_SAVES_SECONDS,
    cold_start_seconds,
    cold_start_steps,
    file_system_options,
    file_system_throughput_mb_s,
    import_deadline_seconds,
    import_steps,
    levers,
    progress_deadline_seconds,
    smoke_test_wait_seconds,
    startup_probe_seconds,
    warm_start_seconds,
    weight_read_seconds,
    weights_read_at_once_gb,
    with_every_lever,
)
from tests.conftest import ROOT, keyed_prod_data, stage_data
from tests.test_settings import rejected


def settings_with(
    disk_throughput_mib: int = 1000,
    image_source: str = "pull_through_cache",
    min_network_mbps: int | None = None,
    **model_store: object,
):
    data = stage_data()
    data["model_store"] = model_store
    if min_network_mbps is not None:
        data["gpu_node_pools"][0]["min_network_mbps"] = min_network_mbps
    data["gpu_node_pools"][0]["disk"] = {
        "throughput_mib": disk_throughput_mib,
        "iops": max(3000, 4 * disk_throughput_mib),
    }
    data["registry"] = {"image_source": image_source}
    return parse_stage_settings("dev", data)


def seconds(settings, step: str) -> float:
    (found,) = [s.seconds for s in cold_start_steps(settings, settings.models[0]) if s.name == step]
    return found


def test_file_system_throughput_is_capacity_times_per_unit_throughput() -> None:
    assert (
        file_system_throughput_mb_s(settings_with(storage_capacity_gib=2400, throughput_per_tib=500))
        == 2400 / 1024 * 500
    )


def test_image_pull_is_never_shorter_than_the_walkthroughs_measured_pull() -> None:
    # A fast disk does not make the CPU-bound unpacking faster than measured.
    assert seconds(settings_with(disk_throughput_mib=1000), "image pull") == MEASURED_PULL_SECONDS == 88


def test_a_slow_node_disk_makes_the_image_pull_longer() -> None:
    # Auto Mode's default disk (125 MiB/s) writes the unpacked image in more than the measured time.
    slow = seconds(settings_with(disk_throughput_mib=125), "image pull")
    assert slow == pytest.approx(IMAGE_UNPACKED_BYTES / (125 * 2**20))
    assert slow > MEASURED_PULL_SECONDS


def test_the_first_pull_through_the_cache_is_a_step_of_its_own() -> None:
    cached = [step.name for step in cold_start_steps(settings_with(), settings_with().models[0])]
    assert cached == ["node launch", "first pull through the cache", "image pull", "weight read", "model load"]
    public = settings_with(image_source="public")
    assert "first pull through the cache" not in [step.name for step in cold_start_steps(public, public.models[0])]


def test_a_faster_file_system_shortens_the_weight_read_and_the_startup_budget() -> None:
    slow, fast = settings_with(throughput_per_tib=125), settings_with(throughput_per_tib=1000)
    # 13.76 GB at 1200 GiB x 125 MB/s per TiB: 94 s; at 1000 MB/s per TiB the file system would take 12 s, but a
    # g6.xlarge, where the replica may land, reads at its baseline network, 2.5 Gbps: 44 s.
    assert seconds(slow, "weight read") == pytest.approx(13.761264768e3 / (1200 / 1024 * 125))
    assert seconds(fast, "weight read") == pytest.approx(13.761264768 * 8 / 2.5)
    assert startup_probe_seconds(fast, fast.models[0]) < startup_probe_seconds(slow, slow.models[0])


def test_a_pool_of_faster_networks_lets_the_fastest_tier_show() -> None:
    fast = settings_with(throughput_per_tib=1000, min_network_mbps=10000)
    # A g6.4xlarge and up: 10 Gbps reads 13.76 GB in 11 s, so the file system's 12 s is the read.
    assert seconds(fast, "weight read") == pytest.approx(13.761264768e3 / (1200 / 1024 * 1000))
    assert {lever.name: lever.on for lever in levers(fast, fast.models[0])}[
        "node network (gpu_node_pools[].min_network_mbps)"
    ]


def test_budgets_are_twice_the_budgeted_time_in_whole_minutes() -> None:
    settings = settings_with()
    model = settings.models[0]
    budgeted = {step.name: step.seconds for step in cold_start_steps(settings, model, budget=True)}
    after_start = budgeted["weight read"] + budgeted["model load"]
    total = sum(budgeted.values())
    assert startup_probe_seconds(settings, model) % 60 == 0
    assert 2 * after_start <= startup_probe_seconds(settings, model) < 2 * after_start + 60
    assert 2 * total <= progress_deadline_seconds(settings, model) < 2 * total + 60


def test_the_dev_stage_budget_counts_the_image_twice_on_a_first_start() -> None:
    settings = settings_with()
    model = settings.models[0]
    # 60 launch + 88 first pull + 88 pull + 47 read + 66 measured load = 349 s expected; the budgets take the
    # walkthrough's 180 s load until one is measured for the version served: 463 s, doubled in whole minutes.
    assert sum(step.seconds for step in cold_start_steps(settings, model)) == pytest.approx(349, abs=1)
    assert sum(step.seconds for step in cold_start_steps(settings, model, budget=True)) == pytest.approx(463, abs=1)
    assert progress_deadline_seconds(settings, model) == 960


def test_the_smoke_test_waits_past_the_progress_deadline_and_the_import() -> None:
    settings = settings_with()
    model = settings.models[0]
    importing = sum(step.seconds for step in import_steps(settings, model))
    assert importing == pytest.approx(88 + 198 + 138 + 138 + 47, abs=1)
    assert smoke_test_wait_seconds(settings, model) == 2 * (progress_deadline_seconds(settings, model) + 660) == 3240


def test_the_import_is_not_part_of_a_replicas_cold_start() -> None:
    settings = settings_with()
    names = [step.name for step in cold_start_steps(settings, settings.models[0])]
    assert not [name for name in names if name.startswith("import")]


def test_weights_you_upload_need_no_import_time() -> None:
    data = stage_data()
    data["models"][0]["weights_s3_prefix"] = "mine/v1"
    settings = parse_stage_settings("dev", data)
    assert import_steps(settings, settings.models[0]) == []
    assert import_deadline_seconds(settings, settings.models[0]) == 3600


def test_a_big_model_gets_an_import_deadline_beyond_an_hour() -> None:
    data = stage_data()
    data["models"][0] |= {"model": "meta-llama/Llama-3.1-70B-Instruct", "gpus": 4, "tensor_parallel_size": 4}
    settings = parse_stage_settings("dev", data)
    # 141 GB down and up at 100 MB/s each, and read at 293 MB/s: about 50 minutes, tripled.
    assert import_deadline_seconds(settings, settings.models[0]) > 2 * 3600


def test_cold_start_command_prints_every_step_and_the_derived_probe_budget(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m commands.cold_start_budget", "--stage", "dev"])
    cold_start_command()
    stdout = capsys.readouterr().out
    for step in ("node launch", "image pull", "weight read", "model load", "**total**"):
        assert f"| {step} |" in stdout
    assert "startupProbe budget: 480 s" in stdout


def test_replicas_starting_at_once_share_the_file_systems_throughput() -> None:
    one = load_stage_settings("dev")
    model = one.models[0]
    # prod: up to 4 replicas, all of them reading at once on a first deploy or a replaced file system.
    four = load_stage_settings("prod")
    assert weights_read_at_once_gb(four) == pytest.approx(4 * model.weights_gb)
    assert weight_read_seconds(four) == pytest.approx(4 * weight_read_seconds(one))
    (read,) = [step for step in cold_start_steps(four, four.models[0]) if step.name == "weight read"]
    assert read.seconds == pytest.approx(weight_read_seconds(four))


def test_a_weight_read_slower_than_the_target_is_refused_with_what_would_meet_it() -> None:
    data = keyed_prod_data()
    data["model_store"] = {**data.get("model_store", {}), "weight_read_target_seconds": 60}
    problem = rejected(data, "prod")
    assert "model_store.weight_read_target_seconds: with every replica of a model starting at once (55.0 GB" in problem
    assert "1200 GiB at 250 MB/s per TiB reads them in 188 s, more than 60 s" in problem
    # 55.0 GB in 60 s takes 917 MB/s: 1200 GiB at 1000 (1172 MB/s), or 4800 GiB at 250, ...
    assert "1200 GiB at 1000 (47 s)" in problem
    assert "4800 GiB at 250 (47 s)" in problem
    data["model_store"] |= {"throughput_per_tib": 1000}
    assert parse_stage_settings("prod", data).model_store.throughput_per_tib == 1000


def test_the_options_meet_the_target_with_the_least_capacity_for_each_throughput() -> None:
    data = keyed_prod_data()
    data["model_store"] = {**data.get("model_store", {}), "weight_read_target_seconds": 100}
    settings = parse_stage_settings("prod", data | {"model_store": data["model_store"] | {"throughput_per_tib": 1000}})
    for capacity, per_tib, seconds in file_system_options(settings):
        assert seconds <= 100
        smaller = [c for c in CAPACITY_OPTIONS_GIB if c < capacity]
        assert all(weight_read_seconds(settings, c, per_tib) > 100 for c in smaller)


def test_a_warm_spares_node_skips_the_launch_and_the_pull_and_the_levers_say_what_each_gives() -> None:
    settings = load_stage_settings("dev")
    model = settings.models[0]
    steps = {step.name: step.seconds for step in cold_start_steps(settings, model)}
    assert warm_start_seconds(settings, model) == pytest.approx(steps["weight read"] + steps["model load"])
    by_step = {lever.step: lever for lever in levers(settings, model) if not lever.name.startswith("node network")}
    # 1000 MB/s per TiB, not 250, would take 12 s; the g6.xlarge's baseline network makes it 44 s.
    assert by_step["weight read"].seconds == pytest.approx(13.761264768 * 8 / 2.5)
    network = next(lever for lever in levers(settings, model) if lever.name.startswith("node network"))
    # On a g6.4xlarge, the cheapest that keeps up with the fastest tier, the stage's tier is the read.
    assert (network.on, network.seconds) == (False, pytest.approx(steps["weight read"]))
    assert network.source.startswith("min_network_mbps: 10000, the least baseline network that keeps up")
    assert "the cheapest it admits, a g6.4xlarge, at $1.323/h against a g6.xlarge's $0.805/h" in network.source
    assert by_step["image pull"].seconds is None  # SOCI: not offered by Auto Mode's NodeClass
    assert not by_step["node launch, first pull, image pull"].on  # dev keeps no warm spare


def test_each_model_is_budgeted_for_its_own_replicas_starting_at_once_however_many_models() -> None:
    # A stage of 30 production models: each model's rollout reads its own replicas' weights at once, and the stage
    # still loads, its deadlines those of one model.
    data = keyed_prod_data()
    data["models"] = [
        {**data["models"][0], "name": f"model-{i:02d}", "service_name": f"model-{i:02d}"} for i in range(30)
    ]
    many, one = parse_stage_settings("prod", data), load_stage_settings("prod")
    assert progress_deadline_seconds(many, many.models[7]) == progress_deadline_seconds(one, one.models[0]) == 1260


def load_of(data_model: Mapping[str, object], *, budget: bool = False) -> tuple[float, str]:
    data = stage_data()
    data["models"][0].update(data_model)
    settings = parse_stage_settings("dev", data)
    (step,) = [s for s in cold_start_steps(settings, settings.models[0], budget=budget) if s.name == "model load"]
    return step.seconds, step.source


def test_the_model_load_is_the_measured_start_the_budgets_the_walkthroughs_until_one_is_set() -> None:
    # gpt-oss-20b's measured start: 80 s from vLLM's first line to its engine, less 14.3 s of reading its weights.
    assert load_of({}) == (pytest.approx(65.7), MEASURED_LOAD_SOURCE)
    # The budgets keep the walkthrough's few minutes: the measurement is of vLLM 0.10.1, not the version served.
    assert load_of({}, budget=True)[0] == ASSUMED_LOAD_SECONDS == 180
    # A model nobody measured: the walkthrough's figure, both ways.
    unmeasured = {"model": "meta-llama/Llama-3.1-8B-Instruct", "service_name": "llama"}
    assert load_of(unmeasured)[0] == load_of(unmeasured, budget=True)[0] == 180
    # A start measured in the stage's own account (make e2e) sets both.
    assert load_of({"load_seconds": 95}) == load_of({"load_seconds": 95}, budget=True) == (95, "models[].load_seconds")


def test_the_shared_compile_cache_takes_its_measured_saving_off_the_model_load() -> None:
    settings = load_stage_settings("dev")
    model = settings.models[0]
    (cache,) = [lever for lever in levers(settings, model) if lever.step == "model load"]
    assert pytest.approx(44.46 - 14.796) == WARM_COMPILE_CACHE_SAVES_SECONDS  # cold, and warm in five runs
    assert cache.seconds == pytest.approx(65.7 - WARM_COMPILE_CACHE_SAVES_SECONDS)
    assert "upb-cn/vllm-startup-profiler" in cache.source


def test_with_every_lever_a_warm_node_starts_a_replica_in_under_a_minute_a_new_node_does_not() -> None:
    settings = load_stage_settings("dev")
    model = settings.models[0]
    steps = {step.name: step.seconds for step in cold_start_steps(settings, model)}
    read_fastest, load_cached = steps["weight read"] / 4, 65.7 - WARM_COMPILE_CACHE_SAVES_SECONDS
    new_node, warm_node = with_every_lever(settings, model)
    assert warm_node == pytest.approx(read_fastest + load_cached) == pytest.approx(47.8, abs=0.1)
    # The image in the stage's cache already: the launch and the pull stay, 148 s of them.
    assert new_node == pytest.approx(steps["node launch"] + steps["image pull"] + read_fastest + load_cached)
    assert new_node > 150


def test_the_docs_give_the_figures_the_settings_do() -> None:
    # docs/models.md's cold start of dev, and docs/operations.md's scale-down cooldown of prod, as the code has them.
    settings, prod = load_stage_settings("dev"), load_stage_settings("prod")
    model = settings.models[0]
    models_page = " ".join((ROOT / "docs" / "models.md").read_text().split())
    for step in cold_start_steps(settings, model):
        assert f"| {step.name} | {step.seconds:.0f} |" in models_page, step.name
    assert f"| **total on a new node** | **{cold_start_seconds(settings, model):.0f}** |" in models_page
    assert f"| **total on a warm spare's node** | **{warm_start_seconds(settings, model):.0f}** |" in models_page
    new_node, warm_node = with_every_lever(settings, model)
    assert f"a replica starts in {warm_node:.0f} s on a warm spare's node and in {new_node:.0f} s" in models_page
    assert "startupProbe allows twice the steps after the container starts (weight read and model load), in " in (
        models_page
    )
    assert f"whole minutes: {startup_probe_seconds(settings, model)} s;" in models_page
    assert f"progress deadline is twice the total: {progress_deadline_seconds(settings, model)} s" in models_page
    operations_page = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    cooldown = scale_down_cooldown_seconds(prod, prod.models[0])
    assert f"plus a minute: {cooldown} s for `prod`'s gpt-oss-20b" in operations_page


def test_where_every_instance_keeps_up_the_network_lever_is_in_use() -> None:
    # prod's four replicas share the fastest tier at 1171 MB/s: 47 s, slower than a g6.xlarge's 2.5 Gbps (44 s).
    prod = load_stage_settings("prod")
    network = next(lever for lever in levers(prod, prod.models[0]) if lever.name.startswith("node network"))
    assert network.on
    assert network.source.startswith("every instance a replica may land on keeps up with the fastest tier")


def test_where_no_instance_keeps_up_the_lever_names_the_most_network_there_is() -> None:
    # 48,000 GiB at 1000 MB/s per TiB would read 13.8 GB in 0.3 s: more than the network of any one-GPU G6 (25 Gbps at
    # most, a g6.8xlarge's or a g6.16xlarge's; max keeps the cheaper).
    data = stage_data()
    data["model_store"] = {"storage_capacity_gib": 48000}
    data["gpu_node_pools"][0].update(instance_categories=[], instance_families=["g6"])
    settings = parse_stage_settings("dev", data)
    network = next(lever for lever in levers(settings, settings.models[0]) if lever.name.startswith("node network"))
    assert not network.on
    assert network.source.startswith("no instance a replica may land on keeps up with the fastest tier; the most")
    assert "a g6.8xlarge's 25000 Mbps" in network.source
    # With every lever, the read is that network's: 13.8 GB at 25 Gbps.
    _, warm = with_every_lever(settings, settings.models[0])
    assert warm == pytest.approx(13.761264768 * 8 / 25 + 65.7 - WARM_COMPILE_CACHE_SAVES_SECONDS, abs=0.1)
