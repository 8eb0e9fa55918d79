"""Pin each model's image in a stage's settings to the digest its tag names now: `make pin-images STAGE=prod`.

A tag can move: AWS republishes a Deep Learning Container's tags when it patches the image, and a Docker Hub tag is
its publisher's to move. A digest pins the bytes. For each model whose `image` has no digest, this asks the image's
registry which manifest the tag names (OCI Distribution Specification, "Pulling manifests": HEAD
/v2/<name>/manifests/<reference>, whose Docker-Content-Digest header is the manifest's digest; for a multi-platform
image, its index's), anonymously with the bearer token the registry's challenge points to (Docker Registry "Token
Authentication Specification": a 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`), then writes
the image back as repository:tag@sha256:<digest> on its line of settings/stages/<stage>.yaml. The tag stays: it
names the vLLM version. Nothing else in the file changes; review the diff and commit it. An image that already has a
digest is left alone (`--refresh` asks again). Needs the internet, not AWS credentials.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import DEFAULT_STAGE, STAGES_DIR
from settings.yaml_files import load_yaml

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# What the manifest request accepts: an index (multi-platform) first, as containerd asks, then a single manifest.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
# Docker Hub's names: an image without a registry is Docker Hub's, whose API is registry-1.docker.io, and a name
# without a namespace is under library/ (as `docker pull` resolves them).
DOCKER_HUB = ("docker.io", "index.docker.io")
DOCKER_HUB_API = "registry-1.docker.io"
TIMEOUT_SECONDS = 30


class PinError(Exception):
    """A digest could not be read; the message names the image and why."""


@dataclass(frozen=True)
class Reference:
    """An image reference split as a registry reads it."""

    registry: str  # the host the API is asked at
    name: str  # the repository within it
    tag: str

    @classmethod
    def parse(cls, image: str) -> Reference:
        if "@" in image:
            raise PinError(f"{image} already has a digest")
        first, _, rest = image.partition("/")
        explicit = rest and ("." in first or ":" in first or first == "localhost")
        registry, path = (first, rest) if explicit else ("docker.io", image)
        name, colon, tag = path.rpartition(":") if ":" in path.rpartition("/")[2] else (path, "", "")
        if not colon or not tag:
            raise PinError(f"{image} names no tag: give it the tag that names its vLLM version")
        if registry in DOCKER_HUB:
            registry, name = DOCKER_HUB_API, name if "/" in name else f"library/{name}"
        return cls(registry, name, tag)


def bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v",...` challenge."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        raise PinError(f"the registry asks for {scheme or 'no'} authentication, not a bearer token")
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def anonymous_token(challenge: dict[str, str], name: str) -> str:
    """The token the challenge's realm gives anyone for pulling `name`."""
    if "realm" not in challenge:
        raise PinError("the registry's challenge names no realm to ask for a token")
    # The challenge's own scope, which may name something else than the repository, and the repository's pull: a
    # registry gives the pull when it is asked for (Docker Registry "Token Authentication Specification", scope).
    scopes = [scope for scope in (challenge.get("scope"), f"repository:{name}:pull") if scope]
    query = [("scope", scope) for scope in dict.fromkeys(scopes)]
    if "service" in challenge:
        query.append(("service", challenge["service"]))
    url = f"{challenge['realm']}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, ValueError) as error:
        raise PinError(f"no token from {challenge['realm']}: {error}") from None
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise PinError(f"{challenge['realm']} answered no token")
    return token


def manifest_digest(image: str, *, endpoint: str | None = None) -> str:
    """The digest of the manifest the image's tag names now. `endpoint` (scheme and host) replaces the registry's
    own https://<host>, for a registry on another address."""
    reference = Reference.parse(image)
    url = f"{endpoint or 'https://' + reference.registry}/v2/{reference.name}/manifests/{reference.tag}"
    headers = {"Accept": MANIFEST_TYPES}
    for attempt in ("anonymous", "token"):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                digest = response.headers.get("Docker-Content-Digest", "")
            if not digest:
                # The header is a SHOULD (OCI Distribution Specification): else the digest of the manifest's bytes.
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS
                ) as got:
                    digest = "sha256:" + hashlib.sha256(got.read()).hexdigest()
            break
        except urllib.error.HTTPError as error:
            if error.code == 401 and attempt == "anonymous":
                challenge = bearer_challenge(error.headers.get("WWW-Authenticate", ""))
                headers["Authorization"] = f"Bearer {anonymous_token(challenge, reference.name)}"
                continue
            if error.code == 404:
                raise PinError(f"{image}: the registry has no such tag ({url})") from None
            raise PinError(f"{image}: the registry answered HTTP {error.code} ({url})") from None
        except urllib.error.URLError as error:
            raise PinError(f"{image}: cannot reach {url}: {error.reason}") from None
    if not DIGEST.match(digest):
        raise PinError(f"{image}: the registry gave no sha256 digest (Docker-Content-Digest: {digest!r})")
    return digest


def pinned_text(text: str, images: dict[str, str], *, refresh: bool = False) -> str:
    """The stage file's text with each `image: <image>` line given its digest (with `refresh`, its pinned lines too),
    nothing else changed."""
    pinned = r"(?:@sha256:[0-9a-f]{64})?" if refresh else ""
    for image, digest in images.items():
        line = re.compile(r"^(\s*(?:-\s+)?image:\s*)([\"']?)" + re.escape(image) + pinned + r"\2(\s*(?:#.*)?)$", re.M)
        text, count = line.subn(rf"\g<1>\g<2>{image}@{digest}\g<2>\g<3>", text)
        if not count:
            raise PinError(f"no `image: {image}` line in the stage file to pin")
    return text


def images_to_pin(data: dict[str, Any], *, refresh: bool) -> list[str]:
    """The models' images (without any digest) that need one: those without, or all with `refresh`."""
    found: list[str] = []
    for model in data.get("models") or []:
        image = str(model.get("image", "")) if isinstance(model, dict) else ""
        if image and (refresh or "@" not in image) and image.split("@", 1)[0] not in found:
            found.append(image.split("@", 1)[0])
    return found


def pin_stage(path: Path, *, refresh: bool = False, endpoint: str | None = None) -> dict[str, str]:
    """Pin the stage file's model images in place; the digests written, by image."""
    text = path.read_text()
    digests = {
        image: manifest_digest(image, endpoint=endpoint) for image in images_to_pin(load_yaml(text), refresh=refresh)
    }
    if digests:
        path.write_text(pinned_text(text, digests, refresh=refresh))
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.pin_images", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    parser.add_argument("--refresh", action="store_true", help="ask again for images that already have a digest")
    args = parser.parse_args(argv)
    path = STAGES_DIR / f"{args.stage}.yaml"
    try:
        digests = pin_stage(path, refresh=args.refresh)
    except PinError as error:
        print(f"pin-images: {error}; {path} is unchanged", file=sys.stderr)
        return 1
    for image, digest in digests.items():
        print(f"{image} -> @{digest}")
    print(f"pinned {len(digests)} image(s) in {path}" if digests else f"every model image in {path} has a digest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
