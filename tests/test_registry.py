"""RegistryStack: the in-region pull-through cache of ECR Public (stateful)."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from charts.images import pulled_image
from settings import parse_stage_settings
from tests.conftest import Assembly, stage_data


def test_pull_through_cache_mirrors_ecr_public(dev: Assembly) -> None:
    Template.from_json(dev.template("Registry")).has_resource_properties(
        "AWS::ECR::PullThroughCacheRule",
        {
            "EcrRepositoryPrefix": "ecr-public",
            "UpstreamRegistry": "ecr-public",
            "UpstreamRegistryUrl": "public.ecr.aws",
        },
    )


def test_cached_repositories_are_encrypted_immutable_and_expire_old_images(dev: Assembly) -> None:
    (template,) = [
        r["Properties"]
        for r in dev.template("Registry")["Resources"].values()
        if r["Type"] == "AWS::ECR::RepositoryCreationTemplate"
    ]
    assert template["Prefix"] == "ecr-public"
    assert template["AppliedFor"] == ["PULL_THROUGH_CACHE"]
    assert template["EncryptionConfiguration"] == {"EncryptionType": "KMS"}
    assert template["ImageTagMutability"] == "IMMUTABLE"
    (rule,) = json.loads(template["LifecyclePolicy"])["rules"]
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}
    assert rule["action"] == {"type": "expire"}


def test_cached_images_are_scanned_on_push(dev: Assembly) -> None:
    Template.from_json(dev.template("Registry")).has_resource_properties(
        "AWS::ECR::RegistryScanningConfiguration",
        {
            "ScanType": "BASIC",
            "Rules": [
                {
                    "ScanFrequency": "SCAN_ON_PUSH",
                    "RepositoryFilters": [{"Filter": "ecr-public/*", "FilterType": "WILDCARD"}],
                }
            ],
        },
    )


def test_registry_depends_on_nothing_else_in_the_stage(dev: Assembly) -> None:
    assert [d for d in dev.stacks()["Registry"]["dependencies"] if not d.endswith(".assets")] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "pull_through_cache",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ecr-public/deep-learning-containers/vllm:1",
        ),
        ("public", "public.ecr.aws/deep-learning-containers/vllm:1"),
    ],
)
def test_image_source_setting_chooses_the_registry(source: str, expected: str) -> None:
    data = stage_data()
    data["registry"] = {"image_source": source}
    registry = parse_stage_settings("dev", data).registry
    image = "public.ecr.aws/deep-learning-containers/vllm:1"
    assert pulled_image(image, registry=registry, account="123456789012", region="eu-west-1") == expected


def test_images_from_other_registries_are_pulled_as_given() -> None:
    registry = parse_stage_settings("dev", stage_data()).registry
    image = "docker.io/vllm/vllm-openai:v0.11.2"
    assert pulled_image(image, registry=registry, account="123456789012", region="eu-west-1") == image
