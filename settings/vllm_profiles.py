"""What each supported vLLM version offers and needs, in one place: its profile.

A profile joins two files. settings/catalog/vllm/<version>.yaml holds what the release's wheel states (its flags,
environment variables, metrics, attention backends, torch, the CUDA major its kernels link), written whole by
`make vllm-profile` (tools/vllm_profile.py). settings/catalog/vllm_profiles.yaml holds what a person reviews, each
with its source: the images built from the version and their CUDA, the NVIDIA driver EKS Auto Mode's GPU nodes run,
the driver each CUDA needs, and the published advisories with the versions they affect.

A stage's vLLM version is read from its image's tag (a digest pins the bytes, the tag names the version); an image
whose version has no profile is refused, naming the versions that have one.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from settings.yaml_files import load_yaml

CATALOG_DIR = Path(__file__).parent / "catalog"
PROFILES_FILE = CATALOG_DIR / "vllm_profiles.yaml"
EXTRACTED_DIR = CATALOG_DIR / "vllm"
# A release's version at the start of its image tag: 0.11.2-gpu-py312-ec2-soci (Deep Learning Containers),
# v0.33.0 or v0.33.0-cu129 (vllm/vllm-openai).
TAG_VERSION = re.compile(r"^v?(\d+\.\d+\.\d+)(?:[-+.]|$)")
# Flags the drain and the attention backend use, where the version has them.
SHUTDOWN_TIMEOUT = "--shutdown-timeout"
ATTENTION_BACKEND_FLAG = "--attention-backend"
ATTENTION_BACKEND_ENV = "VLLM_ATTENTION_BACKEND"


def release(version: str) -> tuple[int, ...]:
    """A release number (0.11.2, 0.10.1.1, 0.5.0.post1) as a tuple that orders releases as PEP 440 does: a post
    release after its base, before the next."""
    if not re.fullmatch(r"\d+(\.\d+)*(\.post\d+)?", version):
        raise ValueError(f"{version!r} is not a release number such as 0.11.2")
    return tuple(int(part.removeprefix("post")) for part in version.split("."))


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExtractedFacts(Frozen):
    """What tools/vllm_profile.py read from the wheel."""

    source: dict[str, str]
    version: str
    torch: str | None
    harmony: str | None
    cuda_major: int
    flags: frozenset[str]
    environment_variables: frozenset[str]
    metrics: frozenset[str]
    attention_backends: frozenset[str]
    # The largest max_num_batched_tokens `vllm serve` defaults to on any GPU: what a sliding-window layer may hold
    # beyond its window (settings/model_facts.py, sequence_kv_bytes).
    serve_batched_tokens_default: int


class ImageBuild(Frozen):
    """An image of the version: its repository and tag, the CUDA it is built with, and where that is stated."""

    image: str = Field(description="repository:tag, without a digest")
    cuda: str = Field(pattern=r"^\d+\.\d+$")
    source: str


class Advisory(Frozen):
    """A published advisory on vLLM: the versions it affects, and the surface an attacker reaches it through."""

    id: str
    aliases: tuple[str, ...] = ()
    summary: str
    kind: Literal["denial-of-service", "code-execution", "other"]
    # openai-server: an HTTP route every replica serves; the others need a feature a flag turns on.
    surface: Literal["openai-server", "multimodal", "lora", "distributed", "model-loading", "other"]
    feature: str = Field(description="the route, parameter or flag it is reached through")
    introduced: str = "0"
    fixed: str | None = None
    last_affected: str | None = None
    source: str

    def affects(self, version: str) -> bool:
        """Whether `version` lies in the advisory's affected range."""
        if release(version) < release(self.introduced):
            return False
        if self.fixed is not None:
            return release(version) < release(self.fixed)
        return self.last_affected is None or release(version) <= release(self.last_affected)


class Driver(Frozen):
    version: str
    source: str


class VllmProfile(Frozen):
    """One supported version: what its wheel states, and its reviewed images."""

    extracted: ExtractedFacts
    images: tuple[ImageBuild, ...]
    # Whether vLLM masks --api-key in the non-default flags it logs at start; without it the project hides that log
    # line (charts/api_keys.py). Reviewed, with its source in the notes.
    redacts_api_keys: bool = False
    # How the version lays out the GPU buffers of its LoRA slots (settings/lora_slots.py), named by the first
    # supported version read with that layout. From each version's wheel: v0.11 keeps gpt-oss's expert gate and up
    # projections apart, wraps no router, and gives only Llama a vocabulary LoRA, with 256 extra tokens; v0.27 fuses
    # gpt-oss's (FusedMoE3DWithLoRA), wraps its router, and gives Llama, Qwen3 and Qwen3-MoE a vocabulary LoRA.
    lora_layout: Literal["v0.11", "v0.27"]
    # How health and readiness behave, and anything else about the version a reader of the charts needs, cited.
    notes: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        return self.extracted.version

    @property
    def drains_itself(self) -> bool:
        """vLLM finishes in-flight requests on SIGTERM, for up to --shutdown-timeout seconds (vLLM >= 0.18,
        vllm/entrypoints/launchers/launcher.py: the SIGTERM handler shuts the engine down with the timeout)."""
        return SHUTDOWN_TIMEOUT in self.extracted.flags

    @property
    def attention_backend_by_flag(self) -> bool:
        """The backend is chosen by --attention-backend; versions that have no such flag read the variable."""
        return ATTENTION_BACKEND_ENV not in self.extracted.environment_variables

    def cuda_of(self, image: str) -> str:
        """The CUDA the image is built with: as reviewed for a listed image, else the wheel's CUDA major (<major>.0)."""
        reference = image.split("@", 1)[0]
        build = next((build for build in self.images if reference.endswith(build.image)), None)
        return build.cuda if build else f"{self.extracted.cuda_major}.0"


class Catalog(Frozen):
    """settings/catalog/vllm_profiles.yaml."""

    auto_mode_nvidia_driver: Driver
    # The oldest Linux driver each CUDA toolkit release runs on (NVIDIA, CUDA Toolkit release notes, table 3).
    cuda_minimum_driver: dict[str, str]
    cuda_minimum_driver_source: str
    advisories: tuple[Advisory, ...]
    profiles: dict[str, VllmProfile]


@cache
def vllm_catalog() -> Catalog:
    data = load_yaml(PROFILES_FILE.read_text())
    for version, profile in data["profiles"].items():
        profile["extracted"] = load_yaml((EXTRACTED_DIR / f"{version}.yaml").read_text())
    return Catalog.model_validate(data)


def supported_versions() -> list[str]:
    return sorted(vllm_catalog().profiles, key=release)


def vllm_version(image: str) -> str | None:
    """The vLLM version an image's tag names, if it names one."""
    name = image.split("@", 1)[0]
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
    match = TAG_VERSION.match(tag)
    return match.group(1) if match else None


@cache
def profile_of(image: str) -> VllmProfile:
    """The profile of the version the image serves; a ValueError naming the supported versions if it has none.
    Asked for on every sizing of every model, so kept by image."""
    version = vllm_version(image)
    if version is None:
        supported = ", ".join(supported_versions())
        raise ValueError(
            f"{image!r} names no vLLM version in its tag (such as 0.11.2-gpu-py312-ec2-soci or v0.33.0); keep the "
            f"version tag beside a digest (repository:tag@sha256:...). Supported versions: {supported}"
        )
    profile = vllm_catalog().profiles.get(version)
    if profile is None:
        supported = ", ".join(supported_versions())
        raise ValueError(
            f"{image!r} serves vLLM {version}, which has no profile; supported versions: {supported} "
            f"(settings/catalog/vllm_profiles.yaml; `make vllm-profile VERSION={version}` starts one)"
        )
    return profile


def minimum_driver(cuda: str) -> str:
    """The oldest NVIDIA driver that runs `cuda` (its major.minor)."""
    table = vllm_catalog().cuda_minimum_driver
    if cuda not in table:
        raise ValueError(f"CUDA {cuda} is not in cuda_minimum_driver ({', '.join(table)}) in {PROFILES_FILE.name}")
    return table[cuda]


def driver_problem(image: str) -> str | None:
    """Why EKS Auto Mode's GPU nodes cannot run the image's CUDA, if they cannot."""
    catalog = vllm_catalog()
    cuda = profile_of(image).cuda_of(image)
    needed, available = minimum_driver(cuda), catalog.auto_mode_nvidia_driver.version
    if release(needed) > release(available):
        return (
            f"{image!r} is built with CUDA {cuda}, which needs NVIDIA driver {needed} or newer; EKS Auto Mode's GPU "
            f"nodes run {available} ({catalog.auto_mode_nvidia_driver.source}): serve an image built for an older CUDA"
        )
    return None


def advisories_affecting(version: str) -> list[Advisory]:
    """The published advisories whose affected range holds `version`."""
    return [advisory for advisory in vllm_catalog().advisories if advisory.affects(version)]


# The flags that turn on the features a non-HTTP advisory is reached through.
FEATURE_FLAGS = {
    "lora": ("--enable-lora",),
    "model-loading": ("--trust-remote-code",),
    "distributed": ("--kv-transfer-config", "--kv-events-config", "--data-parallel-address", "--headless"),
}


def reachable(advisory: Advisory, extra_args: tuple[str, ...]) -> bool:
    """Whether a replica with these extra flags exposes the advisory's surface.

    Every replica serves vLLM's HTTP routes to whatever reaches its port (multimodal inputs among them: whether a
    model takes images is not known here, so they count); LoRA, remote code and the distributed transports (KV
    transfer, data parallelism across nodes, which the project does not set up) only when a flag turns them on.
    """
    flags = FEATURE_FLAGS.get(advisory.surface)
    if flags is None:
        return True
    return any(arg.split("=", 1)[0] in flags for arg in extra_args)


def advisory_warning(name: str, image: str, extra_args: tuple[str, ...]) -> str | None:
    """What synth says about a model whose vLLM version published advisories affect, if any do."""
    version = profile_of(image).version
    found = [advisory for advisory in advisories_affecting(version) if reachable(advisory, extra_args)]
    if not found:
        return None
    clean = [other for other in supported_versions() if not advisories_affecting(other)]
    return (
        f"{name}: vLLM {version} ({image}) is affected by {len(found)} published advisories its replicas expose: "
        f"{', '.join(advisory.id for advisory in found)} (settings/catalog/vllm_profiles.yaml). "
        + (f"Supported versions affected by none: {', '.join(clean)}." if clean else "")
    )


DEEP_LEARNING_CONTAINERS = "public.ecr.aws/deep-learning-containers/"


def recommended_image() -> ImageBuild:
    """The image a new stage should serve: of the supported versions no published advisory affects (whatever a
    stage turns on) and whose CUDA Auto Mode's driver runs, the newest one AWS builds as a Deep Learning Container
    (pulled through the stage's ECR Public cache, no credential needed); the newest upstream image only where no
    such Deep Learning Container exists (it comes from Docker Hub, which the cache reaches signed in)."""
    catalog = vllm_catalog()
    available = release(catalog.auto_mode_nvidia_driver.version)
    candidates = [
        (build.image.startswith(DEEP_LEARNING_CONTAINERS), release(version), build)
        for version, profile in catalog.profiles.items()
        if not advisories_affecting(version)
        for build in profile.images
        if release(minimum_driver(build.cuda)) <= available
    ]
    if not candidates:
        raise ValueError("no supported vLLM version is free of published advisories: add a newer one's profile")
    # The first image listed for a version is its most specific tag, so max() keeps it among equals.
    return max(candidates, key=lambda candidate: (candidate[0], candidate[1]))[2]
