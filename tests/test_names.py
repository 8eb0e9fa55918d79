"""Names derived from the settings: as the charts and stacks spell them, and within their systems' limits."""

from __future__ import annotations

import re

import pytest

from settings import names
from settings.schema import MAX_CLUSTER_NAME_LENGTH, MAX_MODEL_NAME_LENGTH
from tests.scanners import resource_property_schema


def test_names_derived_from_a_model_name() -> None:
    assert names.namespace("gpt-oss-20b") == "gpt-oss-20b"
    assert names.app_label("gpt-oss-20b") == "vllm-gpt-oss-20b"
    assert names.import_job_name("gpt-oss-20b", "0123abcd") == "import-gpt-oss-20b-0123abcd"
    assert names.weights_volume_name("gpt-oss-20b") == "model-weights-gpt-oss-20b"
    assert names.output_id("gpt-oss-20b") == "GptOss20b"


def test_names_derived_from_a_cluster_name() -> None:
    assert names.smoke_test_project_name("gpu-inference-dev") == "gpu-inference-dev-smoke-test"
    assert names.smoke_test_trigger_role_name("gpu-inference-dev") == "gpu-inference-dev-smoke-test-trigger"
    assert names.prometheus_data_source_name("gpu-inference-dev") == "gpu-inference-dev-prometheus"
    assert names.dashboard_name("gpu-inference-dev") == "gpu-inference-dev-serving"


def test_the_longest_data_source_name_matches_the_lambda_schemas_pattern() -> None:
    pattern = resource_property_schema("AWS::Lambda::Function", "FunctionName")["pattern"]
    assert re.fullmatch(pattern, names.prometheus_data_source_name("a" * MAX_CLUSTER_NAME_LENGTH))
    assert not re.fullmatch(pattern, names.prometheus_data_source_name("a" * (MAX_CLUSTER_NAME_LENGTH + 9)))


def test_longest_names_allowed() -> None:
    # import-<name>-<8 hex> must fit a label value (63); <cluster>-smoke-test-trigger an IAM role name (64).
    assert (MAX_MODEL_NAME_LENGTH, MAX_CLUSTER_NAME_LENGTH) == (47, 45)


@pytest.mark.parametrize(
    ("limits", "longest"),
    [(names.MODEL_NAME_LIMITS, MAX_MODEL_NAME_LENGTH), (names.CLUSTER_NAME_LIMITS, MAX_CLUSTER_NAME_LENGTH)],
)
def test_every_derived_name_of_the_longest_allowed_name_fits(limits: tuple[names.NameLimit, ...], longest: int) -> None:
    for limit in limits:
        assert len(limit.derive("a" * longest)) <= limit.limit, limit.what
    assert any(len(limit.derive("a" * (longest + 1))) > limit.limit for limit in limits)


def test_import_key_example_has_the_keys_shape() -> None:
    assert re.fullmatch(r"[0-9a-f]{8}", names.IMPORT_KEY_EXAMPLE)


@pytest.mark.parametrize(
    ("name", "reserved"),
    [("default", True), ("kube-system", True), ("kube-node-lease", True), ("kubeflow", False), ("qwen3-8b", False)],
)
def test_reserved_namespaces(name: str, reserved: bool) -> None:
    assert names.is_reserved_namespace(name) is reserved


def test_a_model_stack_name_of_the_longest_stage_and_model_fits_cloudformation() -> None:
    # CloudFormation: a stack name starts with a letter, holds letters, digits and hyphens, at most 128
    # characters (AWS::CloudFormation::Stack, StackName; CloudFormation User Guide, "Quotas").
    from settings.schema import MAX_STAGE_NAME_LENGTH

    name = names.stack_name("s" * MAX_STAGE_NAME_LENGTH, names.model_stack_id("m" * MAX_MODEL_NAME_LENGTH))
    assert len(name) <= names.STACK_NAME_MAX
    assert re.fullmatch(r"[A-Za-z][-A-Za-z0-9]*", name)
