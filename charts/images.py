"""Which registry nodes pull an image from: the in-region pull-through cache, or the upstream registry itself."""

from __future__ import annotations

from settings.schema import StageSettings, docker_hub_path

UPSTREAM_REGISTRY = "public.ecr.aws"
# Docker Hub's registry, as a pull-through cache rule names it (ECR API Reference, CreatePullThroughCacheRule).
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
KUBERNETES_REGISTRY = "registry.k8s.io"


def pulled_image(image: str, *, settings: StageSettings, account: str) -> str:
    """The reference nodes pull for `image`: through the cache when it comes from ECR Public or Docker Hub.

    `account` may be a CDK token; the cache's repositories are named <stage's prefix>/<upstream path>.
    """
    if settings.registry.image_source == "public":
        return image
    cache = f"{account}.dkr.ecr.{settings.region}.amazonaws.com"
    if image.startswith(f"{UPSTREAM_REGISTRY}/"):
        return f"{cache}/{settings.image_cache_prefix}/{image.removeprefix(f'{UPSTREAM_REGISTRY}/')}"
    if image.startswith(f"{KUBERNETES_REGISTRY}/") and settings.gateway is not None:
        return f"{cache}/{settings.kubernetes_cache_prefix}/{image.removeprefix(f'{KUBERNETES_REGISTRY}/')}"
    docker_hub = docker_hub_path(image)
    # Docker Hub through the cache only where the stage signs in to it (the settings refuse a model's image of
    # Docker Hub otherwise); without, a helper image of Docker Hub is pulled as given.
    if docker_hub is not None and settings.registry.docker_hub_credential_arn is not None:
        return f"{cache}/{settings.docker_hub_cache_prefix}/{docker_hub}{image[len(image.split('@')[0]) :]}"
    return image
