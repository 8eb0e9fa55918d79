"""Where images come from: an in-region ECR pull-through cache of ECR Public, of Docker Hub when a stage signs in to
it, and of registry.k8s.io with the inference gateway (stateful)."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ecr as ecr
from constructs import Construct

from charts.images import DOCKER_HUB_REGISTRY, KUBERNETES_REGISTRY, UPSTREAM_REGISTRY
from settings import names
from settings.schema import RegistrySettings, StageSettings


class RegistryStack(Stack):
    """The stage's pull-through cache rule and the template for the repositories it creates.

    Both are unique per prefix in a registry, so they live under the stage's own prefix
    (<cache_prefix>/<stage>): stages can share an account and region.

    The first pull of an image copies it from ECR Public into this account's registry, in the
    region; every later pull, by any node, stays inside AWS through the VPC's ECR endpoints.
    Nothing here depends on the cluster: the stack outlives cluster rebuilds, and so do the images.
    """

    def __init__(self, scope: Construct, id: str, *, settings: StageSettings, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        registry = settings.registry
        # Each upstream under the stage's own prefix, with the template for the repositories a first pull creates:
        # ECR Public's always; Docker Hub's when the stage signs in to it; registry.k8s.io's (read without
        # credentials) with the gateway, for its endpoint picker. The upstream names are the ones ECR gives them (ECR
        # API Reference, CreatePullThroughCacheRule). Construct ids stay as first deployed.
        upstreams: list[tuple[str, str, str, str, str, str | None]] = [
            (
                "EcrPublicCache",
                "CachedRepositoryTemplate",
                settings.image_cache_prefix,
                "ecr-public",
                UPSTREAM_REGISTRY,
                None,
            ),
        ]
        if registry.docker_hub_credential_arn is not None:
            upstreams.append(
                (
                    "DockerHubCache",
                    "DockerHubRepositoryTemplate",
                    settings.docker_hub_cache_prefix,
                    "docker-hub",
                    DOCKER_HUB_REGISTRY,
                    registry.docker_hub_credential_arn,
                )
            )
        if settings.gateway is not None:
            upstreams.append(
                (
                    "KubernetesRegistryCache",
                    "KubernetesRepositoryTemplate",
                    settings.kubernetes_cache_prefix,
                    "k8s",
                    KUBERNETES_REGISTRY,
                    None,
                )
            )
        for rule_id, template_id, prefix, upstream, url, credential in upstreams:
            ecr.CfnPullThroughCacheRule(
                self,
                rule_id,
                ecr_repository_prefix=prefix,
                upstream_registry=upstream,
                upstream_registry_url=url,
                credential_arn=credential,
            )
            cached_repository_template(self, template_id, prefix, url, registry)
        # One per registry, and it replaces the account's: only a stage that owns it sets it (RegistrySettings), and of
        # the stages sharing an account and region one at most (settings.check_shared_registries).
        if registry.owns_scanning_configuration:
            ecr.CfnRegistryScanningConfiguration(
                self,
                "ScanOnPush",
                scan_type="BASIC",
                rules=[
                    ecr.CfnRegistryScanningConfiguration.ScanningRuleProperty(
                        scan_frequency="SCAN_ON_PUSH",
                        repository_filters=[
                            ecr.CfnRegistryScanningConfiguration.RepositoryFilterProperty(
                                filter=f"{prefix}/*", filter_type="WILDCARD"
                            )
                            for prefix in (
                                registry.cache_prefix,
                                names.DOCKER_HUB_CACHE_PREFIX,
                                names.KUBERNETES_CACHE_PREFIX,
                            )
                        ],
                    )
                ],
            )


def cached_repository_template(
    scope: Construct, id: str, prefix: str, upstream: str, registry: RegistrySettings
) -> ecr.CfnRepositoryCreationTemplate:
    """How the cache creates a repository under `prefix`: encrypted, its tags immutable, its oldest images expiring."""
    return ecr.CfnRepositoryCreationTemplate(
        scope,
        id,
        prefix=prefix,
        applied_for=["PULL_THROUGH_CACHE"],
        description=f"Repositories the pull-through cache creates for {upstream} images",
        # AES256, not KMS: a template that sets KMS encryption (or resource tags) needs a
        # customRoleArn that ECR assumes, and without one every first pull through the cache
        # answers "not found" (aws/containers-roadmap#2398; ECR User Guide, "Repository
        # creation templates"). The images are public ones, so S3-managed keys suffice.
        encryption_configuration=ecr.CfnRepositoryCreationTemplate.EncryptionConfigurationProperty(
            encryption_type="AES256"
        ),
        # Tags are the upstream's own versions and must keep meaning the same image.
        image_tag_mutability="IMMUTABLE",
        lifecycle_policy=json.dumps(
            {
                "rules": [
                    {
                        "rulePriority": 1,
                        "description": f"Keep the {registry.keep_images} most recent images",
                        "selection": {
                            "tagStatus": "any",
                            "countType": "imageCountMoreThan",
                            "countNumber": registry.keep_images,
                        },
                        "action": {"type": "expire"},
                    }
                ]
            }
        ),
    )
