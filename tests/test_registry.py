"""RegistryStack: the in-region pull-through cache of ECR Public (stateful)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
import yaml
from aws_cdk.assertions import Template

from app import project_app
from charts.images import pulled_image
from settings import (
    STAGES_DIR,
    SettingsError,
    StageSettings,
    check_shared_registries,
    load_stage_settings,
    parse_stage_settings,
)
from stacks.registry import RegistryStack
from tests.conftest import Assembly, resources, stage_data
from tests.scanners import cloudformation_problems
from tests.test_settings import rejected


def registry_resources(assembly: Assembly, kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in assembly.template("Registry")["Resources"].values() if r["Type"] == kind]


def test_pull_through_cache_mirrors_ecr_public_under_the_stages_prefix(dev: Assembly) -> None:
    Template.from_json(dev.template("Registry")).has_resource_properties(
        "AWS::ECR::PullThroughCacheRule",
        {
            "EcrRepositoryPrefix": "ecr-public/dev",
            "UpstreamRegistry": "ecr-public",
            "UpstreamRegistryUrl": "public.ecr.aws",
        },
    )


def test_cached_repositories_are_encrypted_immutable_and_expire_old_images(dev: Assembly) -> None:
    (template,) = registry_resources(dev, "AWS::ECR::RepositoryCreationTemplate")
    assert template["Prefix"] == "ecr-public/dev"
    assert template["AppliedFor"] == ["PULL_THROUGH_CACHE"]
    assert template["EncryptionConfiguration"] == {"EncryptionType": "AES256"}
    assert template["ImageTagMutability"] == "IMMUTABLE"
    (rule,) = json.loads(template["LifecyclePolicy"])["rules"]
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}
    assert rule["action"] == {"type": "expire"}


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_repository_template_needs_no_role_that_ecr_would_assume(assemblies: dict[str, Assembly], stage: str) -> None:
    # A template with KMS encryption or resource tags needs a customRoleArn; without one the
    # first pull through the cache answers "not found" (ECR User Guide, "Repository creation
    # templates"; aws/containers-roadmap#2398).
    for template in registry_resources(assemblies[stage], "AWS::ECR::RepositoryCreationTemplate"):
        needs_role = template["EncryptionConfiguration"]["EncryptionType"] == "KMS" or template.get("ResourceTags")
        assert not needs_role or template.get("CustomRoleArn")


def test_only_a_stage_that_owns_it_sets_the_accounts_scanning_configuration(dev: Assembly) -> None:
    # Setting it replaces the account's (an account on Amazon Inspector's enhanced scanning would go back to basic):
    # a stage's template holds one only when its settings take ownership, which dev's file leaves unsaid.
    data = stage_data()
    assert "registry" not in data
    assert parse_stage_settings("dev", data).registry.owns_scanning_configuration is False
    assert registry_resources(dev, "AWS::ECR::RegistryScanningConfiguration") == []


def test_the_old_scan_on_push_says_what_it_became() -> None:
    data = stage_data()
    data["registry"] = {"scan_on_push": True}
    with pytest.raises(SettingsError, match=r"registry: scan_on_push: now owns_scanning_configuration, false unless"):
        parse_stage_settings("dev", data)


def test_cached_images_of_every_stage_are_scanned_on_push_by_one_stage(dev: Assembly, prod: Assembly) -> None:
    # One scanning configuration per registry: prod's, which prod.yaml owns explicitly, whose filter covers dev's
    # prefix too.
    assert load_stage_settings("prod").registry.owns_scanning_configuration is True
    assert registry_resources(dev, "AWS::ECR::RegistryScanningConfiguration") == []
    (scanning,) = registry_resources(prod, "AWS::ECR::RegistryScanningConfiguration")
    assert scanning["ScanType"] == "BASIC"
    (rule,) = scanning["Rules"]
    assert rule["ScanFrequency"] == "SCAN_ON_PUSH"
    # Every stage's repositories, of ECR Public, of Docker Hub and of registry.k8s.io.
    assert rule["RepositoryFilters"] == [
        {"Filter": "ecr-public/*", "FilterType": "WILDCARD"},
        {"Filter": "docker-hub/*", "FilterType": "WILDCARD"},
        {"Filter": "k8s/*", "FilterType": "WILDCARD"},
    ]
    for assembly in (dev, prod):
        cache, *others = registry_resources(assembly, "AWS::ECR::PullThroughCacheRule")
        assert fnmatch.fnmatch(cache["EcrRepositoryPrefix"] + "/deep-learning-containers/vllm", "ecr-public/*")
    # prod's gateway: its endpoint picker's image from registry.k8s.io, cached without credentials.
    (kubernetes,) = others
    assert kubernetes == {
        "EcrRepositoryPrefix": "k8s/prod",
        "UpstreamRegistry": "k8s",
        "UpstreamRegistryUrl": "registry.k8s.io",
    }


def test_two_stages_in_one_account_claim_nothing_twice(dev: Assembly, prod: Assembly) -> None:
    # Neither stage names its account, so both may deploy into one: every registry-wide or
    # per-prefix resource must be claimed once. (Unique per prefix: the cache rule and the
    # creation template; one per registry: the scanning configuration.)
    claims: list[tuple[str, str]] = []
    for assembly in (dev, prod):
        assert {a["environment"] for a in assembly.stacks().values()} == {"aws://unknown-account/us-west-2"}
        for kind, key in (
            ("AWS::ECR::PullThroughCacheRule", "EcrRepositoryPrefix"),
            ("AWS::ECR::RepositoryCreationTemplate", "Prefix"),
            ("AWS::ECR::RegistryScanningConfiguration", None),
        ):
            claims += [(kind, r[key] if key else "registry") for r in registry_resources(assembly, kind)]
    # dev: ECR Public's rule and template; prod: those, registry.k8s.io's (its gateway) and the scanning.
    assert len(claims) == len(set(claims)) == 7


def stage_in(account: str | None, *, name: str, scan: bool, region: str = "us-west-2") -> StageSettings:
    data = stage_data()
    data["region"], data["availability_zones"] = region, [f"{region}a", f"{region}b"]
    data["registry"] = {"owns_scanning_configuration": scan}
    if account:
        data["account"] = account
    return parse_stage_settings(name, data)


@pytest.mark.parametrize(
    ("first", "second"),
    [("111111111111", "111111111111"), (None, "111111111111"), (None, None)],
)
def test_two_stages_that_may_share_a_registry_may_not_both_scan(first: str | None, second: str | None) -> None:
    with pytest.raises(SettingsError) as caught:
        check_shared_registries([stage_in(first, name="qa", scan=True), stage_in(second, name="staging", scan=True)])
    assert str(caught.value).startswith(
        "stage 'qa' has invalid settings:\n  registry.owns_scanning_configuration: stages qa and staging may deploy "
        "into one account and region (us-west-2"
    )
    assert "set owns_scanning_configuration: false in all but one of them" in str(caught.value)


def test_stages_in_other_accounts_or_regions_each_scan_their_own_registry() -> None:
    check_shared_registries(
        [
            stage_in("111111111111", name="qa", scan=True),
            stage_in("222222222222", name="staging", scan=True),
            stage_in(None, name="eu", scan=True, region="eu-west-1"),
        ]
    )


def test_a_stage_file_that_would_collide_with_another_stops_its_synth(tmp_path: Path) -> None:
    for name in ("dev", "prod"):
        (tmp_path / f"{name}.yaml").write_text((STAGES_DIR / f"{name}.yaml").read_text())
    data = yaml.safe_load((tmp_path / "dev.yaml").read_text())
    data["registry"] = {"owns_scanning_configuration": True}
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SettingsError, match=r"registry\.owns_scanning_configuration: stages dev and prod may"):
        load_stage_settings("dev", tmp_path)


def test_the_stages_cache_prefix_must_fit_ecrs_limit() -> None:
    data = stage_data()
    data["registry"] = {"cache_prefix": "a-very-long-cache-prefix-xx"}
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings("dev", data)
    assert (
        "registry.cache_prefix: the stage's cache prefix 'a-very-long-cache-prefix-xx/dev' (<cache_prefix>/<stage>) "
        "is 31 characters; ECR allows at most 30: shorten cache_prefix to at most 26"
    ) in str(caught.value)


def test_registry_depends_on_nothing_else_in_the_stage(dev: Assembly) -> None:
    assert [d for d in dev.stacks()["Registry"]["dependencies"] if not d.endswith(".assets")] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "pull_through_cache",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ecr-public/dev/deep-learning-containers/vllm:1",
        ),
        ("public", "public.ecr.aws/deep-learning-containers/vllm:1"),
    ],
)
def test_image_source_setting_chooses_the_registry(source: str, expected: str) -> None:
    settings = stage_in(None, name="dev", scan=False, region="eu-west-1")
    settings = settings.model_copy(update={"registry": settings.registry.model_copy(update={"image_source": source})})
    image = "public.ecr.aws/deep-learning-containers/vllm:1"
    assert pulled_image(image, settings=settings, account="123456789012") == expected


def test_images_from_other_registries_are_pulled_as_given() -> None:
    settings = parse_stage_settings("dev", stage_data())
    for image in (
        "docker.io/vllm/vllm-openai:v0.11.2",
        "quay.io/prometheus/busybox:1.36",
        "localhost:5000/vllm:0.33.0",
    ):
        assert pulled_image(image, settings=settings, account="123456789012") == image


DOCKER_HUB_SECRET = "arn:aws:secretsmanager:us-west-2:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"


def signed_in_to_docker_hub(image: str = "docker.io/vllm/vllm-openai:v0.33.0") -> dict[str, Any]:
    data = stage_data()
    data["registry"] = {**data.get("registry", {}), "docker_hub_credential_arn": DOCKER_HUB_SECRET}
    data["models"][0]["image"] = image
    return data


@pytest.mark.parametrize(
    ("image", "pulled"),
    [
        ("docker.io/vllm/vllm-openai:v0.33.0", "docker-hub/dev/vllm/vllm-openai:v0.33.0"),
        ("vllm/vllm-openai:v0.33.0@sha256:" + "a" * 64, "docker-hub/dev/vllm/vllm-openai:v0.33.0@sha256:" + "a" * 64),
    ],
)
def test_a_docker_hub_image_comes_through_the_cache_once_the_stage_signs_in(image: str, pulled: str) -> None:
    settings = parse_stage_settings("dev", signed_in_to_docker_hub(image))
    cache = "123456789012.dkr.ecr.us-west-2.amazonaws.com/"
    assert pulled_image(image, settings=settings, account="123456789012") == cache + pulled
    assert pulled_image("ubuntu:24.04", settings=settings, account="123456789012") == (
        cache + "docker-hub/dev/library/ubuntu:24.04"  # an official image, under library/
    )


def test_the_docker_hub_rule_signs_in_with_the_secret_and_its_repositories_are_made_like_the_others() -> None:
    settings = parse_stage_settings("dev", signed_in_to_docker_hub())
    stack = RegistryStack(project_app(), "Registry", settings=settings, env=cdk.Environment(region="us-west-2"))
    template = Template.from_stack(stack).to_json()
    rules = {
        r["Properties"]["UpstreamRegistry"]: r["Properties"]
        for r in resources(template, "AWS::ECR::PullThroughCacheRule")
    }
    assert rules["docker-hub"] == {
        "EcrRepositoryPrefix": "docker-hub/dev",
        "UpstreamRegistry": "docker-hub",
        "UpstreamRegistryUrl": "registry-1.docker.io",
        "CredentialArn": DOCKER_HUB_SECRET,
    }
    made = {
        t["Properties"]["Prefix"]: t["Properties"] for t in resources(template, "AWS::ECR::RepositoryCreationTemplate")
    }
    assert set(made) == {"ecr-public/dev", "docker-hub/dev"}
    ignoring = {"Prefix", "Description"}
    assert {k: v for k, v in made["docker-hub/dev"].items() if k not in ignoring} == {
        k: v for k, v in made["ecr-public/dev"].items() if k not in ignoring
    }
    for resource in resources(template, "AWS::ECR::PullThroughCacheRule"):
        assert cloudformation_problems("AWS::ECR::PullThroughCacheRule", resource["Properties"]) == []


def test_a_docker_hub_model_image_without_signing_in_is_refused_with_the_way_to() -> None:
    data = signed_in_to_docker_hub()
    del data["registry"]["docker_hub_credential_arn"]
    assert "models[0].image (docker.io/vllm/vllm-openai:v0.33.0) comes from Docker Hub" in rejected(data)
    assert "set registry.docker_hub_credential_arn" in rejected(data)
    data["registry"]["image_source"] = "public"
    assert parse_stage_settings("dev", data).models[0].image == "docker.io/vllm/vllm-openai:v0.33.0"


@pytest.mark.parametrize(
    ("arn", "problem"),
    [
        (DOCKER_HUB_SECRET.replace("us-west-2", "us-east-1"), "the secret is in 123456789012/us-east-1"),
        (DOCKER_HUB_SECRET.replace("ecr-pullthroughcache/", "docker/"), "is not the full ARN of a secret named"),
        (DOCKER_HUB_SECRET.removesuffix("-AbCdEf"), "is not the full ARN of a secret named"),
    ],
)
def test_a_credential_ecr_cannot_read_is_refused(arn: str, problem: str) -> None:
    data = signed_in_to_docker_hub()
    data["registry"]["docker_hub_credential_arn"] = arn
    assert problem in rejected(data)
