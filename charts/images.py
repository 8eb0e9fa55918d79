"""Which registry nodes pull an image from: the in-region pull-through cache, or ECR Public itself."""

from __future__ import annotations

from settings.schema import StageSettings

UPSTREAM_REGISTRY = "public.ecr.aws"


def pulled_image(image: str, *, settings: StageSettings, account: str) -> str:
    """The reference nodes pull for `image`: through the cache when it comes from ECR Public.

    `account` may be a CDK token; the cache's repositories are named <stage's prefix>/<upstream path>.
    """
    if settings.registry.image_source == "public" or not image.startswith(f"{UPSTREAM_REGISTRY}/"):
        return image
    path = image.removeprefix(f"{UPSTREAM_REGISTRY}/")
    return f"{account}.dkr.ecr.{settings.region}.amazonaws.com/{settings.image_cache_prefix}/{path}"
