"""Stage settings: the defaults reproduce the walkthrough, and bad input is refused with a clear message."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel

from settings import (
    DEFAULT_STAGE,
    PIPELINE_FILE,
    STAGES_DIR,
    SettingsError,
    load_stage_settings,
    parse_pipeline_settings,
    parse_stage_settings,
    stage_names,
)
from settings.schema import SUPPORTED_KUBERNETES_VERSIONS, PipelineSettings, StageSettings
from settings.yaml_files import FAST_LOADER, load_yaml
from stacks.cluster import KUBECTL_LAYERS
from tests.conftest import ROOT, gateway_data, stage_data
from tests.scanners import is_dns1035_label


def rejected(data: dict[str, Any], stage: str = "dev") -> str:
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings(stage, data)
    return str(caught.value)


def test_every_stage_file_is_valid() -> None:
    assert {"dev", "prod"} <= set(stage_names())  # the stages the project ships, and any added beside them
    for stage in stage_names():
        assert isinstance(load_stage_settings(stage), StageSettings)


def test_default_stage_is_dev() -> None:
    assert DEFAULT_STAGE == "dev"


def test_gpu_node_pool_defaults_are_the_walkthroughs() -> None:
    data = stage_data()
    del data["gpu_node_pools"]
    (pool,) = parse_stage_settings("dev", data).gpu_node_pools
    assert pool.name == "gpu-node-pool"
    assert pool.instance_categories == ("g",)
    assert pool.instance_generation_greater_than == 4
    assert pool.capacity_types == ("spot", "on-demand")
    assert pool.architectures == ("amd64",)
    assert (pool.limits.cpu, pool.limits.memory, pool.limits.gpu) == (None, None, None)  # derived from the models


def test_model_defaults_are_the_walkthroughs() -> None:
    data = stage_data()
    data["models"] = [
        {
            "name": "gpt-oss-20b",
            "model": "openai/gpt-oss-20b",
            "service_name": "gptoss-service",
            "image": "public.ecr.aws/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2-soci",
        }
    ]
    model = parse_stage_settings("dev", data).models[0]
    assert (model.gpus, model.replicas, model.tensor_parallel_size, model.max_model_len) == (1, 1, 1, 20000)
    assert str(model.gpu_memory_utilization) == "0.90"
    assert (model.env, model.attention_backend) == ({}, "TRITON_ATTN")


def test_default_kubernetes_version_is_the_newest_supported() -> None:
    data = stage_data()
    del data["cluster"]["kubernetes_version"]
    assert parse_stage_settings("dev", data).cluster.kubernetes_version == "1.36" == SUPPORTED_KUBERNETES_VERSIONS[-1]


def test_every_supported_kubernetes_version_has_a_kubectl_layer() -> None:
    assert set(KUBECTL_LAYERS) == set(SUPPORTED_KUBERNETES_VERSIONS)


def test_production_stage_restricts_capacity_to_on_demand() -> None:
    prod = load_stage_settings("prod")
    assert prod.production
    assert prod.gpu_node_pools[0].capacity_types == ("on-demand",)
    assert all(model.replicas >= 2 for model in prod.models)


# --- bad input: each names the stage, the field and what is allowed ---


def test_unknown_stage_lists_the_stages() -> None:
    with pytest.raises(SettingsError, match=r"unknown stage 'qa'; stages: dev, prod"):
        load_stage_settings("qa")


def test_unknown_field_lists_the_allowed_fields() -> None:
    data = stage_data()
    data["models"][0]["replica"] = 2
    message = rejected(data)
    assert "stage 'dev'" in message
    assert "models[0].replica: unknown field" in message
    assert "replicas" in message.split("allowed fields here:")[1]


def test_unknown_top_level_field_is_refused() -> None:
    data = stage_data()
    data["regoin"] = "eu-west-1"
    assert "regoin: unknown field; allowed fields here: region, account, availability_zones" in rejected(data)


def test_missing_required_field_is_named() -> None:
    data = stage_data()
    del data["cluster"]["name"]
    assert "stage 'dev' has invalid settings:\n  cluster.name: required field is missing" in rejected(data)


def test_replicas_below_one_are_refused() -> None:
    data = stage_data()
    data["models"][0]["replicas"] = 0
    assert "models[0].replicas: Input should be greater than or equal to 1 (got 0)" in rejected(data)


@pytest.mark.parametrize(
    ("value", "expected"), [(0, "greater than 0"), (1.5, "less than or equal to 1"), (-0.1, "greater than 0")]
)
def test_gpu_memory_utilization_outside_zero_to_one_is_refused(value: float, expected: str) -> None:
    data = stage_data()
    data["models"][0]["gpu_memory_utilization"] = value
    message = rejected(data)
    assert "models[0].gpu_memory_utilization" in message
    assert expected in message


def test_gpu_memory_utilization_of_one_is_allowed() -> None:
    data = stage_data()
    data["models"][0]["gpu_memory_utilization"] = 1
    assert parse_stage_settings("dev", data).models[0].gpu_memory_utilization == 1


def test_tensor_parallel_size_must_equal_gpu_count() -> None:
    data = stage_data()
    data["models"][0]["tensor_parallel_size"] = 2
    assert "models[0]: tensor_parallel_size (2) must equal gpus (1)" in rejected(data)


@pytest.mark.parametrize("version", ["1.37", "1.33", "2.0"])
def test_kubernetes_version_without_kubectl_layer_is_refused(version: str) -> None:
    data = stage_data()
    data["cluster"]["kubernetes_version"] = version
    assert (
        f"cluster.kubernetes_version: '{version}' has no matching kubectl layer in this project; "
        "allowed: 1.34, 1.35, 1.36"
    ) in rejected(data)


def test_empty_availability_zones_are_refused() -> None:
    data = stage_data()
    data["availability_zones"] = []
    assert "availability_zones: should have at least 2 items, got 0" in rejected(data)


def test_repeated_availability_zone_is_refused() -> None:
    data = stage_data()
    data["availability_zones"] = ["us-west-2a", "us-west-2b", "us-west-2a"]
    assert "availability_zones: each zone may appear once; repeated: us-west-2a" in rejected(data)


def test_availability_zone_outside_the_region_is_refused() -> None:
    data = stage_data()
    data["availability_zones"] = ["us-west-2a", "us-east-1b"]
    assert "availability_zones: us-east-1b not in region us-west-2" in rejected(data)


def test_production_stage_needs_two_replicas_per_model() -> None:
    data = stage_data("prod")
    data["models"][0]["replicas"] = 1
    message = rejected(data, stage="prod")
    assert "stage 'prod'" in message
    assert "gpt-oss-20b run(s) fewer than 2 replicas; a production stage runs at least 2 per model" in message


@pytest.mark.parametrize("image", ["vllm/vllm-openai", "vllm/vllm-openai:latest", "registry:5000/vllm"])
def test_unpinned_image_is_refused(image: str) -> None:
    data = stage_data()
    data["models"][0]["image"] = image
    assert f"models[0].image: {image!r} is not pinned" in rejected(data)


def test_image_pinned_by_digest_is_allowed() -> None:
    data = stage_data()
    data["models"][0]["image"] = "vllm/vllm-openai:v0.33.0@sha256:" + "a" * 64
    data["registry"] = {"image_source": "public"}
    assert parse_stage_settings("dev", data).models[0].image.endswith("a" * 64)


def test_extra_args_may_not_repeat_a_managed_flag() -> None:
    data = stage_data()
    data["models"][0]["extra_args"] = ["--max-model-len=8192"]
    assert "models[0].extra_args: '--max-model-len=8192' is set by the project (by its own field" in rejected(data)


@pytest.mark.parametrize(
    ("arg", "read_as"),
    [
        # vLLM reads underscores as dashes, and argparse a prefix as the whole flag.
        ("--disable_log_stats", "--disable-log-stats"),
        ("--api_key=sk-in-the-template", "--api-key"),
        ("--max_model_len=200000", "--max-model-len"),
        ("--gpu_memory_utilization=0.99", "--gpu-memory-utilization"),
        ("--max-model=8192", "--max-model-len"),
        # The short forms, and the parallel sizes that would ask for more GPUs than the pod has.
        ("-tp", "--tensor-parallel-size"),
        ("-t", "--tensor-parallel-size"),
        ("-p", "--pipeline-parallel-size"),
        ("-pp=2", "--pipeline-parallel-size"),
        ("--pipeline-parallel-size=2", None),
        ("-dp", "--data-parallel-size"),
        ("--data_parallel_size_local=2", "--data-parallel-size-local"),
    ],
)
def test_extra_args_refuse_a_managed_flag_in_any_spelling_vllm_reads(arg: str, read_as: str | None) -> None:
    data = stage_data()
    data["models"][0]["extra_args"] = [arg, "2"]
    named = f" (a spelling of {read_as} to vLLM)" if read_as else ""
    assert f"models[0].extra_args: {arg!r}{named} is set by the project" in rejected(data)


def test_extra_args_take_flags_the_project_does_not_set() -> None:
    data = stage_data()
    args = ["--max-num-seqs=64", "--enable-prefix-caching", "--compilation-config.level=3", "-O3", "-q", "fp8"]
    args += ["--model-impl=vllm", "--config-format=auto", "--api-server-count=2", "-dcp", "1", "--dtype", "auto"]
    data["models"][0]["extra_args"] = args
    assert parse_stage_settings("dev", data).models[0].extra_args == tuple(args)


@pytest.mark.parametrize(
    ("max_model_len", "env", "accepted"),
    [
        (131_072, {}, True),
        (131_073, {}, False),
        (131_073, {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}, True),
        (131_073, {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "True"}, True),
        (131_073, {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "0"}, False),  # vLLM takes only 1 or true as on
    ],
)
def test_max_model_len_within_a_known_models_context(max_model_len: int, env: dict[str, str], accepted: bool) -> None:
    data = stage_data()
    data["models"][0] |= {"max_model_len": max_model_len, "env": {**data["models"][0].get("env", {}), **env}}
    data["models"][0]["max_request_seconds"] = 600  # the drain of a full-context request is not what is tested
    if accepted:
        assert parse_stage_settings("dev", data).models[0].max_model_len == max_model_len
    else:
        assert (
            "models[0]: max_model_len: 131073 is more than openai/gpt-oss-20b's context of 131072 tokens, and vLLM "
            "refuses to start with it"
        ) in rejected(data)


def test_gpu_limit_below_what_the_replicas_need_is_refused() -> None:
    data = stage_data("prod")
    data["gpu_node_pools"][0]["limits"] = {"gpu": 2}
    assert (
        "gpu_node_pools[0].limits.gpu: 2 is less than every replica it can run plus one rollout surge and the warm "
        "spares per model, each on the cheapest instance that fits: at least 5"  # autoscaling's 4 replicas and a surge
    ) in rejected(data, "prod")


@pytest.mark.parametrize(("gpu_limit", "refused"), [(5, True), (6, False)])
def test_a_gpu_limit_must_hold_the_warm_spares_too(gpu_limit: int, refused: bool) -> None:
    # prod's 4 replicas at most, a surge and one warm spare: 6 GPU nodes of one GPU each.
    data = stage_data("prod")
    data["models"][0]["warm_spares"] = 1
    data["gpu_node_pools"][0]["limits"] = {"gpu": gpu_limit}
    problem = (
        "gpu_node_pools[0].limits.gpu: 5 is less than every replica it can run plus one rollout surge and the warm"
    )
    if refused:
        assert problem in rejected(data, "prod")
        assert "spares per model, each on the cheapest instance that fits: at least 6" in rejected(data, "prod")
    else:
        parse_stage_settings("prod", data)


def test_unknown_capacity_type_lists_the_allowed_ones() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["capacity_types"] = ["dedicated"]
    assert (
        "gpu_node_pools[0].capacity_types[0]: Input should be 'spot', 'on-demand' or 'reserved' (got 'dedicated')"
    ) in rejected(data)


def test_pool_without_instance_categories_or_families_is_refused() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["instance_categories"] = []
    assert "give instance_categories, instance_families or both" in rejected(data)


def test_restricted_public_endpoint_needs_private_access_too() -> None:
    data = stage_data()
    data["cluster"]["endpoint_access"] = "public"
    data["cluster"]["public_access_cidrs"] = ["203.0.113.0/24"]
    assert "can narrow the endpoint only with endpoint_access public_and_private" in rejected(data)


def test_more_nat_gateways_than_zones_are_refused() -> None:
    data = stage_data()
    data["network"]["nat_gateways"] = 4
    assert "network.nat_gateways: 4 is more than the 3 availability zones" in rejected(data)


def test_admin_principal_must_be_an_iam_role_or_user_arn() -> None:
    data = stage_data()
    data["cluster"]["admin_principal_arns"] = ["arn:aws:iam::123456789012:group/Admins"]
    assert (
        "cluster.admin_principal_arns[0]: 'arn:aws:iam::123456789012:group/Admins' is not an IAM role or user ARN"
    ) in rejected(data)


def test_model_names_must_be_unique() -> None:
    data = stage_data()
    data["models"].append({**data["models"][0], "service_name": "other-service"})
    assert "models: name must be unique; repeated: gpt-oss-20b" in rejected(data)


def test_settings_that_are_not_a_mapping_are_refused() -> None:
    assert "stage 'dev': settings must be a mapping of fields, got a list; expected the stage's settings" in (
        rejected([1, 2])  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("throughput", [50, 200, 2000])
def test_per_unit_throughput_fsx_does_not_offer_is_refused(throughput: int) -> None:
    data = stage_data()
    data["model_store"] = {"throughput_per_tib": throughput}
    message = rejected(data)
    assert "model_store.throughput_per_tib: Input should be 125, 250, 500 or 1000" in message


@pytest.mark.parametrize("capacity", [1000, 1800, 3600, 0])
def test_storage_capacity_that_is_not_a_valid_step_is_refused(capacity: int) -> None:
    data = stage_data()
    data["model_store"] = {"storage_capacity_gib": capacity}
    assert f"model_store.storage_capacity_gib: {capacity} GiB is not a capacity FSx for Lustre PERSISTENT_2 offers" in (
        rejected(data)
    )


@pytest.mark.parametrize("capacity", [1200, 2400, 4800])
def test_valid_storage_capacities_are_allowed(capacity: int) -> None:
    data = stage_data()
    data["model_store"] = {"storage_capacity_gib": capacity}
    assert parse_stage_settings("dev", data).model_store.storage_capacity_gib == capacity


def test_file_system_zone_outside_the_vpcs_zones_is_refused() -> None:
    data = stage_data()
    data["model_store"] = {"availability_zone": "us-west-2d"}
    assert "model_store.availability_zone: us-west-2d is not one of the stage's availability_zones" in rejected(data)


def test_file_system_zone_defaults_to_the_first_zone() -> None:
    assert load_stage_settings("dev").model_store_zone == "us-west-2a"


@pytest.mark.parametrize("name", ["../etc", "gpt/oss", "GPT", "models dir", ""])
def test_model_name_that_cannot_be_a_path_is_refused(name: str) -> None:
    data = stage_data()
    data["models"][0]["name"] = name
    assert f"models[0].name: {name!r} is not a name of lower-case letters, digits and '-'" in rejected(data)


def test_unknown_image_source_lists_the_allowed_ones() -> None:
    data = stage_data()
    data["registry"] = {"image_source": "docker-hub"}
    assert "registry.image_source: Input should be 'pull_through_cache' or 'public'" in rejected(data)


# --- names derived from the settings: too long, reserved or colliding names are refused before the deploy ---


def test_model_name_too_long_for_the_weights_import_job_is_refused() -> None:
    data = stage_data()
    data["models"][0]["name"] = "m" * 48
    message = rejected(data)
    assert f"models[0].name: '{'m' * 48}' is 48 characters; at most 47 fit the weights import Job name " in message
    assert message.endswith("(63 characters)")


def test_model_name_longer_than_a_namespace_names_the_tightest_limit() -> None:
    data = stage_data()
    data["models"][0]["name"] = "m" * 70
    assert "is 70 characters; at most 47 fit the weights import Job name" in rejected(data)


def test_longest_model_name_is_allowed() -> None:
    data = stage_data()
    data["models"][0]["name"] = "m" * 47
    assert parse_stage_settings("dev", data).models[0].name == "m" * 47


KUBERNETES_RESERVES = (
    "is a namespace Kubernetes reserves; the model gets a namespace of its own, named after it, so its name may be "
    "neither 'default' nor start with 'kube-'"
)
THE_STAGE_MAKES = (
    "is a namespace the stage makes for its own parts; the model gets a namespace of its own, named after it, so "
    "its name may not be any of: keda, gpu-node-rotation, amazon-cloudwatch"
)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        *((name, KUBERNETES_RESERVES) for name in ("default", "kube-system", "kube-public", "kube-node-lease")),
        ("kube-models", KUBERNETES_RESERVES),
        *((name, THE_STAGE_MAKES) for name in ("keda", "gpu-node-rotation", "amazon-cloudwatch")),
    ],
)
def test_model_named_after_a_namespace_taken_is_refused(name: str, why: str) -> None:
    data = stage_data()
    data["models"][0]["name"] = name
    assert f"models[0].name: {name!r} {why}" in rejected(data)


@pytest.mark.parametrize("service_name", ["20b-gptoss", "9service", "a" * 64, "a", "s" + "-0" * 31])
def test_service_name_is_what_kubernetes_takes_for_a_service(service_name: str) -> None:
    data = stage_data()
    data["models"][0]["service_name"] = service_name
    if is_dns1035_label(service_name):
        assert parse_stage_settings("dev", data).models[0].service_name == service_name
    elif len(service_name) > 63:
        assert f"models[0].service_name: String should have at most 63 characters (got {service_name!r})" in (
            rejected(data)
        )
    else:
        assert (
            f"models[0].service_name: {service_name!r} is not a DNS-1035 label: lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        ) in rejected(data)


def test_models_whose_output_ids_collide_are_refused() -> None:
    data = stage_data()
    model = data["models"][0]
    data["models"] = [
        {**model, "name": "qwen3-8b", "service_name": "qwen-service"},
        {**model, "name": "qwen38b", "service_name": "other-service"},
    ]
    assert "models: qwen3-8b and qwen38b both give the stack output id Qwen38b" in rejected(data)


def test_cluster_name_too_long_for_the_smoke_test_role_is_refused() -> None:
    data = stage_data()
    data["cluster"]["name"] = "c" * 46
    assert (
        f"cluster.name: '{'c' * 46}' is 46 characters; at most 45 fit the IAM role name "
        "<cluster>-smoke-test-trigger (64 characters)"
    ) in rejected(data)


def test_longest_cluster_name_is_allowed() -> None:
    data = stage_data()
    data["cluster"]["name"] = "c" * 45
    assert parse_stage_settings("dev", data).cluster.name == "c" * 45


# --- the stage's name: checked before its file is read, and kept on its settings ---

INVALID_STAGE_NAMES = ["Dev", "dev_1", "my stage", "1dev", "-dev", "d" * 20, "../dev", ""]


@pytest.mark.parametrize("stage", INVALID_STAGE_NAMES)
def test_invalid_stage_name_is_refused(stage: str) -> None:
    assert (
        f"stage {stage!r} is not a valid stage name: expected a name of lower-case letters, digits and '-', "
        "starting with a letter, at most 19 characters (so that the ECR cache prefix (with the default "
        "registry.cache_prefix) ecr-public/<stage> fits its 30) (it prefixes the stack names, as in <stage>-ModelStore)"
    ) in rejected(stage_data(), stage)


def test_the_longest_stage_name_leaves_the_default_cache_prefix_room() -> None:
    # 19 characters: ecr-public/<stage> is then exactly ECR's 30 (the scenario stage in conftest, which is
    # synthesized, has such a name).
    settings = parse_stage_settings("s" * 19, stage_data())
    assert len(settings.image_cache_prefix) == 30


@pytest.mark.parametrize("stage", INVALID_STAGE_NAMES)
def test_invalid_stage_name_is_refused_before_its_file_is_read(stage: str, tmp_path: Path) -> None:
    (tmp_path / "Dev.yaml").write_text((STAGES_DIR / "dev.yaml").read_text())
    with pytest.raises(SettingsError, match=r"is not a valid stage name: expected a name of lower-case letters"):
        load_stage_settings(stage, tmp_path)


def test_stage_settings_carry_the_stage_name() -> None:
    assert [load_stage_settings(stage).name for stage in stage_names()] == stage_names()
    assert parse_stage_settings("scenario", stage_data()).name == "scenario"


def test_stage_file_may_not_name_its_stage() -> None:
    data = stage_data()
    data["name"] = "dev"
    assert rejected(data) == (
        "stage 'dev' has invalid settings:\n  name: set by the file name settings/stages/dev.yaml; remove it"
    )


def test_name_is_not_offered_among_a_stage_files_fields() -> None:
    data = stage_data()
    data["regoin"] = "eu-west-1"
    assert "allowed fields here: region," in rejected(data)


def test_pipeline_stages_keep_their_names_and_get_the_pipelines_accounts() -> None:
    _, stages = parse_pipeline_settings(yaml.safe_load(PIPELINE_FILE.read_text()))
    assert [(name, stage.name, stage.account) for name, stage in stages.items()] == [
        ("dev", "dev", "222222222222"),
        ("prod", "prod", "333333333333"),
    ]


def test_pipeline_stage_with_an_invalid_stage_name_is_refused() -> None:
    data = yaml.safe_load(PIPELINE_FILE.read_text())
    data["stages"][0]["name"] = "Dev"
    with pytest.raises(SettingsError) as caught:
        parse_pipeline_settings(data)
    assert "stages[0].name: 'Dev' is not a name of lower-case letters, digits and '-', starting with a letter" in str(
        caught.value
    )


# --- resources that fit nodes and volumes ---


@pytest.mark.parametrize("gpus", [0, 3, 6, 16])
def test_gpu_count_no_instance_has_is_refused(gpus: int) -> None:
    data = stage_data()
    data["models"][0]["gpus"] = data["models"][0]["tensor_parallel_size"] = gpus
    assert f"models[0].gpus: {gpus} GPUs cannot be on one node; allowed: 1, 2, 4, 8" in rejected(data)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_gpu_counts_of_gpu_instances_are_allowed(gpus: int) -> None:
    data = stage_data()
    data["models"][0]["gpus"] = data["models"][0]["tensor_parallel_size"] = gpus
    if gpus == 2:  # the 2-GPU family of the catalog, g7e, is offered in us-east-1, not in us-west-2
        data |= {"region": "us-east-1", "availability_zones": ["us-east-1a", "us-east-1b"]}
    assert parse_stage_settings("dev", data).models[0].gpus == gpus


@pytest.mark.parametrize(("memory", "shared_memory"), [("16Gi", "20Gi"), ("16Gi", "16385Mi"), ("512Mi", "1Gi")])
def test_shared_memory_above_memory_is_refused(memory: str, shared_memory: str) -> None:
    data = stage_data()
    data["models"][0]["resources"] = {"memory": memory, "shared_memory": shared_memory}
    assert (
        f"models[0].resources: shared_memory ({shared_memory}) is more than memory ({memory}): the memory-backed "
        "/dev/shm counts against the pod's memory limit"
    ) in rejected(data)


def test_shared_memory_equal_to_memory_is_allowed() -> None:
    data = stage_data()
    data["models"][0]["resources"] = {"memory": "16Gi", "shared_memory": "16384Mi"}
    assert parse_stage_settings("dev", data).models[0].resources.shared_memory == "16384Mi"


def test_disk_throughput_above_what_the_iops_allow_is_refused() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["disk"] = {"iops": 3000, "throughput_mib": 1000}
    assert (
        "gpu_node_pools[0].disk: throughput_mib 1000 needs iops of at least 4000 (gp3 gives at most 0.25 MiB/s per "
        "provisioned IOPS); iops 3000 allow throughput_mib up to 750"
    ) in rejected(data)


def test_disk_throughput_of_a_quarter_of_the_iops_is_allowed() -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["disk"] = {"iops": 4000, "throughput_mib": 1000}
    assert parse_stage_settings("dev", data).gpu_node_pools[0].disk.throughput_mib == 1000


# --- messages in words: no regular expressions, no Python type names ---


def test_empty_settings_file_says_what_it_should_hold(tmp_path: Path) -> None:
    (tmp_path / "dev.yaml").write_text("# nothing yet\n")
    with pytest.raises(SettingsError) as caught:
        load_stage_settings("dev", tmp_path)
    assert str(caught.value) == (
        "stage 'dev': the file is empty; expected the stage's settings (region, availability_zones, cluster, models, …)"
    )


def test_settings_that_are_a_string_are_refused() -> None:
    assert "settings must be a mapping of fields, got a string" in rejected("region: us-west-2")  # type: ignore[arg-type]


def test_size_in_other_units_says_which_units_are_allowed() -> None:
    data = stage_data()
    data["models"][0]["resources"] = {"memory": "100GB"}
    assert "models[0].resources.memory: '100GB' is not a size such as 512Mi or 24Gi (units Ki, Mi, Gi, Ti)" in (
        rejected(data)
    )


def test_availability_zones_that_are_not_a_list_are_refused() -> None:
    data = stage_data()
    data["availability_zones"] = "us-west-2a"
    assert "availability_zones: should be a list, got a string" in rejected(data)


KEY = "<key>"  # a mapping's key, in a field's location below


def pattern_constrained(model: type[BaseModel], path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The location of every string a pattern constrains, in a model and the models inside it."""
    for name, field in model.model_fields.items():
        yield from _pattern_constrained(field.annotation, field.metadata, (*path, name))


def _pattern_constrained(declared: Any, metadata: list[Any], path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if any(getattr(item, "pattern", None) for item in metadata):
        yield path
    elif origin is Annotated:
        yield from _pattern_constrained(args[0], list(args[1:]), path)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _pattern_constrained(arg, [], path)
    elif origin is tuple:
        yield from _pattern_constrained(args[0], [], (*path, 0))
    elif origin is dict:
        yield from _pattern_constrained(args[0], [], (*path, KEY))
        yield from _pattern_constrained(args[1], [], (*path, "some-key"))
    elif isinstance(declared, type) and issubclass(declared, BaseModel):
        yield from pattern_constrained(declared, path)


def with_invalid_value(data: dict[str, Any], path: tuple[Any, ...]) -> str:
    """Puts a value no pattern accepts at `path` (a list's first item, a mapping's key); returns the field's path."""
    value: Any = "!!"
    if path[-1] == KEY:
        path, value = path[:-1], {"!!": "x"}
    elif path[-1] == 0:
        path, value = path[:-1], ["!!"]
    node: Any = data
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    shown = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return shown.lstrip(".") + ("[0]" if isinstance(value, list) else ".!!" if isinstance(value, dict) else "")


STAGE_PATTERNS = list(pattern_constrained(StageSettings))
PIPELINE_PATTERNS = list(pattern_constrained(PipelineSettings))


def test_pattern_constrained_fields_are_all_found() -> None:
    assert {("region",), ("models", 0, "resources", "memory"), ("cluster", "admin_principal_arns", 0)} <= set(
        STAGE_PATTERNS
    )
    assert ("models", 0, "env", KEY) in STAGE_PATTERNS
    assert {("connection_arn",), ("stages", 0, "name")} <= set(PIPELINE_PATTERNS)


def assert_in_words(message: str, field: str) -> None:
    assert f"{field}: '!!' is not " in message
    explanation = message.split(f"{field}: ", 1)[1].splitlines()[0]
    for programmers_words in ("^", "$", "[", "String should match pattern", "NoneType", "Tuple"):
        assert programmers_words not in explanation, explanation


@pytest.mark.parametrize("path", STAGE_PATTERNS, ids=lambda path: ".".join(map(str, path)))
def test_invalid_value_of_a_stage_pattern_is_explained_in_words(path: tuple[Any, ...]) -> None:
    if path == ("name",):  # the stage's name comes from its file's name
        message = rejected(stage_data(), "!!")
        assert message.startswith("stage '!!' is not a valid stage name: expected a name of")
        assert not any(words in message for words in ("^", "$", "[", "NoneType", "Tuple"))
        return
    # The gateway's fields in a stage that has one (its lists are not in the stage files).
    data = gateway_data() if path[0] == "gateway" else stage_data()
    if "adapters" in path:  # a valid adapter first (the stage files have none)
        data["models"][0]["adapters"] = [{"name": "support", "s3_prefix": "adapters/support", "rank": 8}]
    field = with_invalid_value(data, path)
    assert_in_words(rejected(data), field)


@pytest.mark.parametrize("path", PIPELINE_PATTERNS, ids=lambda path: ".".join(map(str, path)))
def test_invalid_value_of_a_pipeline_pattern_is_explained_in_words(path: tuple[Any, ...]) -> None:
    data = yaml.safe_load(PIPELINE_FILE.read_text())
    field = with_invalid_value(data, path)
    with pytest.raises(SettingsError) as caught:
        parse_pipeline_settings(data)
    assert_in_words(str(caught.value), field)


# --- GPU pools and capacity reservations ---


@pytest.mark.parametrize(
    ("count", "message"),
    # Karpenter's weights run from 1 to 100: ten pools, 10 apart.
    [(0, "should have at least 1 item, got 0"), (11, "should have at most 10 items, got 11")],
)
def test_an_empty_pool_list_and_more_pools_than_weights_are_refused(count: int, message: str) -> None:
    data = stage_data()
    data["gpu_node_pools"] = [{"name": f"pool-{index}"} for index in range(count)]
    assert f"gpu_node_pools: {message}" in rejected(data)


def test_the_single_pool_of_older_settings_says_where_it_went() -> None:
    data = stage_data()
    data["gpu_node_pool"] = data.pop("gpu_node_pools")[0]
    assert "gpu_node_pool: now gpu_node_pools, a list of pools in order of preference" in rejected(data)


def test_pool_names_are_unique() -> None:
    data = stage_data()
    data["gpu_node_pools"].append(dict(data["gpu_node_pools"][0]))
    assert (
        "gpu_node_pools: each pool needs a name of its own (its NodePool and NodeClass); repeated: gpu-node-pool"
        in (rejected(data))
    )


def test_a_pool_that_can_run_no_model_is_refused() -> None:
    data = stage_data()
    # g4dn's T4 has 16 GB: less than gpt-oss-20b's 18947 MiB per GPU. The first pool still runs it.
    data["gpu_node_pools"].append(
        {"name": "old-t4", "instance_families": ["g4dn"], "instance_generation_greater_than": 3}
    )
    assert (
        "gpu_node_pools[1] (old-t4): none of its instances can run any model (gpt-oss-20b needs 1 GPU(s) with "
        "18947 MiB each); widen its instance settings or remove it"
    ) in rejected(data)


@pytest.mark.parametrize("reservation", ["cr-123", "cr-0123456789ABCDEF0", "0123456789abcdef0", "cb-0123456789abcdef0"])
def test_a_reservation_id_not_of_the_form_cr_is_refused(reservation: str) -> None:
    data = stage_data()
    data["cluster"]["open_reservations_unused"] = True
    data["gpu_node_pools"][0] |= {"capacity_types": ["reserved"], "capacity_reservations": [reservation]}
    assert (
        f"gpu_node_pools[0].capacity_reservations[0]: {reservation!r} is not a capacity reservation id: cr- and 17 "
        "lower-case hex digits, as in cr-0123456789abcdef0"
    ) in rejected(data)


def test_reservations_and_the_reserved_capacity_type_come_together() -> None:
    data = stage_data()
    data["cluster"]["open_reservations_unused"] = True
    data["gpu_node_pools"][0]["capacity_reservations"] = ["cr-0123456789abcdef0"]
    assert "gpu_node_pools[0]: capacity_reservations: add reserved to capacity_types" in rejected(data)
    data["gpu_node_pools"][0] |= {"capacity_types": ["reserved"], "capacity_reservations": []}
    assert "gpu_node_pools[0]: capacity_types: reserved needs capacity_reservations (cr-... ids)" in rejected(data)


def test_selecting_reservations_must_accept_that_open_ones_go_unused() -> None:
    # EKS User Guide (auto-odcr): selector terms on any NodeClass stop open ODCRs for every NodeClass.
    data = stage_data()
    data["gpu_node_pools"].insert(
        0, {"name": "reserved", "capacity_types": ["reserved"], "capacity_reservations": ["cr-0123456789abcdef0"]}
    )
    message = rejected(data)
    assert (
        "gpu_node_pools[0] (reserved) select(s) capacity reservations: from then on EKS Auto Mode no longer" in message
    )
    assert "set cluster.open_reservations_unused: true to accept this" in message
    data["cluster"]["open_reservations_unused"] = True
    settings = parse_stage_settings("dev", data)
    assert [pool.name for pool in settings.gpu_node_pools] == ["reserved", "gpu-node-pool"]


def test_the_operations_guides_pool_examples_are_valid_settings() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    section = readme[
        readme.index("### GPU capacity you can count on") : readme.index("### GPU pods waiting for capacity")
    ]
    examples = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert len(examples) == 2
    for example in examples:
        data = stage_data() | yaml.safe_load(example)
        data["cluster"] = stage_data()["cluster"] | (yaml.safe_load(example).get("cluster") or {})
        settings = parse_stage_settings("dev", data)
        assert len(settings.gpu_node_pools) >= 2


@pytest.mark.parametrize("name", ["default", "general-purpose", "system"])
def test_a_pool_named_like_auto_modes_own_is_refused(name: str) -> None:
    data = stage_data()
    data["gpu_node_pools"][0]["name"] = name
    assert f"gpu_node_pools[0].name: {name!r} is a NodeClass or NodePool of EKS Auto Mode itself" in rejected(data)


def test_yaml_is_read_by_libyaml_as_pyyaml_reads_it() -> None:
    """The fast loader is libyaml's, and reads every stage and catalog file as yaml.safe_load does."""
    assert FAST_LOADER is yaml.CSafeLoader
    files = [*STAGES_DIR.glob("*.yaml"), *(ROOT / "settings" / "catalog").glob("*.yaml")]
    assert len(files) >= 4
    for path in files:
        assert load_yaml(path.read_text()) == yaml.safe_load(path.read_text()), path


def test_yaml_that_libyaml_refuses_is_explained_with_the_line_and_a_caret() -> None:
    with pytest.raises(yaml.YAMLError) as refused:
        load_yaml("models: [unclosed\n")
    assert "line 1, column 9:\n    models: [unclosed\n            ^" in str(refused.value)
