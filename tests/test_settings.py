"""Stage settings: the defaults reproduce the walkthrough, and bad input is refused with a clear message."""

from __future__ import annotations

from typing import Any

import pytest

from settings import DEFAULT_STAGE, SettingsError, load_stage_settings, parse_stage_settings, stage_names
from settings.model import SUPPORTED_KUBERNETES_VERSIONS, StageSettings
from stacks.cluster import KUBECTL_LAYERS
from tests.conftest import stage_data


def rejected(data: dict[str, Any], stage: str = "dev") -> str:
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings(stage, data)
    return str(caught.value)


def test_every_stage_file_is_valid() -> None:
    assert stage_names() == ["dev", "prod"]
    for stage in stage_names():
        assert isinstance(load_stage_settings(stage), StageSettings)


def test_default_stage_is_dev() -> None:
    assert DEFAULT_STAGE == "dev"


def test_gpu_node_pool_defaults_are_the_walkthroughs() -> None:
    data = stage_data()
    del data["gpu_node_pool"]
    pool = parse_stage_settings("dev", data).gpu_node_pool
    assert pool.name == "gpu-node-pool"
    assert pool.instance_categories == ("g",)
    assert pool.instance_generation_greater_than == 4
    assert pool.capacity_types == ("spot", "on-demand")
    assert pool.architectures == ("amd64",)
    assert (pool.limits.cpu, pool.limits.memory, pool.limits.gpu) == (100, "100Gi", None)


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
    assert model.env == {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"}


def test_default_kubernetes_version_is_the_newest_supported() -> None:
    data = stage_data()
    del data["cluster"]["kubernetes_version"]
    assert parse_stage_settings("dev", data).cluster.kubernetes_version == "1.36" == SUPPORTED_KUBERNETES_VERSIONS[-1]


def test_every_supported_kubernetes_version_has_a_kubectl_layer() -> None:
    assert set(KUBECTL_LAYERS) == set(SUPPORTED_KUBERNETES_VERSIONS)


def test_production_stage_restricts_capacity_to_on_demand() -> None:
    prod = load_stage_settings("prod")
    assert prod.production
    assert prod.gpu_node_pool.capacity_types == ("on-demand",)
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
    assert "availability_zones: Tuple should have at least 2 items after validation, not 0" in rejected(data)


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
    data["models"][0]["image"] = "vllm/vllm-openai@sha256:" + "a" * 64
    assert parse_stage_settings("dev", data).models[0].image.endswith("a" * 64)


def test_extra_args_may_not_repeat_a_managed_flag() -> None:
    data = stage_data()
    data["models"][0]["extra_args"] = ["--max-model-len=8192"]
    assert "models[0].extra_args: '--max-model-len=8192' is set by its own field" in rejected(data)


def test_gpu_limit_below_what_the_replicas_need_is_refused() -> None:
    data = stage_data("prod")
    data["gpu_node_pool"]["limits"]["gpu"] = 1
    assert "gpu_node_pool.limits.gpu: 1 is fewer than the 2 GPUs the models' replicas need" in rejected(data, "prod")


def test_unknown_capacity_type_lists_the_allowed_ones() -> None:
    data = stage_data()
    data["gpu_node_pool"]["capacity_types"] = ["reserved"]
    assert "gpu_node_pool.capacity_types[0]: Input should be 'spot' or 'on-demand' (got 'reserved')" in rejected(data)


def test_pool_without_instance_categories_or_families_is_refused() -> None:
    data = stage_data()
    data["gpu_node_pool"]["instance_categories"] = []
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
    assert "cluster.admin_principal_arns[0]: String should match pattern" in rejected(data)


def test_model_names_must_be_unique() -> None:
    data = stage_data()
    data["models"].append({**data["models"][0], "service_name": "other-service"})
    assert "models: name must be unique; repeated: gpt-oss-20b" in rejected(data)


def test_settings_that_are_not_a_mapping_are_refused() -> None:
    assert "settings must be a mapping of fields, got list" in rejected([1, 2])  # type: ignore[arg-type]


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
    assert "models[0].name: String should" in rejected(data)


def test_unknown_image_source_lists_the_allowed_ones() -> None:
    data = stage_data()
    data["registry"] = {"image_source": "docker-hub"}
    assert "registry.image_source: Input should be 'pull_through_cache' or 'public'" in rejected(data)
