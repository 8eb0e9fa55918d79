"""`make pin-images` against a stand-in registry that answers as the OCI Distribution API does, behind Docker's bearer
token challenge: the stage file gains the digest on each image line, and nothing else."""

from __future__ import annotations

import difflib
import hashlib
import urllib.parse
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from commands.pin_images import PinError, Reference, anonymous_token, main, manifest_digest, pin_stage
from settings import STAGES_DIR, parse_stage_settings
from settings.yaml_files import load_yaml
from tests.stand_ins import QuietHandler, serving

DIGEST = "sha256:" + "4f" * 32
TOKEN = "anonymous-pull-token"
IMAGE = "public.ecr.aws/deep-learning-containers/vllm:0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'


class Registry(QuietHandler):
    """Manifests by name and tag; a request without the token gets the challenge that points to /token."""

    manifests: ClassVar[dict[tuple[str, str], str]] = {
        ("deep-learning-containers/vllm", "0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"): DIGEST
    }
    token_queries: ClassVar[list[dict[str, list[str]]]] = []
    # Whether a manifest's answer carries its digest, which the specification only recommends.
    says_digest = True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/token":
            Registry.token_queries.append(urllib.parse.parse_qs(url.query))
            self.answer(200, b'{"token": "' + TOKEN.encode() + b'"}')
            return
        if "/manifests/" in url.path and self.headers.get("Authorization") == f"Bearer {TOKEN}":
            self.answer(200, MANIFEST)
            return
        self.answer(404, b"")

    def do_HEAD(self) -> None:
        name, _, tag = self.path.removeprefix("/v2/").rpartition("/manifests/")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            host = self.headers["Host"]
            challenge = f'Bearer realm="http://{host}/token",service="registry.test",scope="repository:{name}:pull"'
            self.send_response(401)
            self.send_header("WWW-Authenticate", challenge)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        assert "application/vnd.oci.image.index.v1+json" in self.headers["Accept"]
        digest = self.manifests.get((name, tag))
        self.send_response(200 if digest else 404)
        if digest and self.says_digest:
            self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def registry() -> Iterator[str]:
    Registry.token_queries.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def stage_file(tmp_path: Path) -> Path:
    path = tmp_path / "dev.yaml"
    path.write_text((STAGES_DIR / "dev.yaml").read_text())
    return path


def test_the_stage_file_gains_the_digest_on_its_image_line_and_nothing_else(registry: str, stage_file: Path) -> None:
    before = stage_file.read_text()
    assert pin_stage(stage_file, endpoint=registry) == {IMAGE: DIGEST}
    after = stage_file.read_text()
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]
    assert changed == [f"-     image: {IMAGE}", f"+     image: {IMAGE}@{DIGEST}"]
    # The settings take it, and the tag still names the version.
    model = parse_stage_settings("dev", load_yaml(after)).models[0]
    assert (model.image, model.profile.version) == (f"{IMAGE}@{DIGEST}", "0.31.0")
    # Anonymously, with the token the challenge's realm gave for the challenge's scope and service.
    assert Registry.token_queries == [
        {"scope": ["repository:deep-learning-containers/vllm:pull"], "service": ["registry.test"]}
    ]


def test_a_registry_that_names_no_digest_gives_the_digest_of_its_manifest(registry: str) -> None:
    Registry.says_digest = False
    try:
        assert manifest_digest(IMAGE, endpoint=registry) == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    finally:
        Registry.says_digest = True


def test_a_pin_another_model_has_stays_as_it_is(registry: str, tmp_path: Path) -> None:
    other = "sha256:" + "1" * 64
    path = tmp_path / "stage.yaml"
    path.write_text(f"models:\n  - name: a\n    image: {IMAGE}@{other}\n  - name: b\n    image: {IMAGE}  # b's\n")
    assert pin_stage(path, endpoint=registry) == {IMAGE: DIGEST}
    assert path.read_text() == (
        f"models:\n  - name: a\n    image: {IMAGE}@{other}\n  - name: b\n    image: {IMAGE}@{DIGEST}  # b's\n"
    )


def test_a_pinned_image_is_left_alone_unless_refreshed(registry: str, stage_file: Path) -> None:
    pin_stage(stage_file, endpoint=registry)
    pinned = stage_file.read_text()
    assert pin_stage(stage_file, endpoint=registry) == {}
    Registry.manifests[("deep-learning-containers/vllm", "0.31.0-gpu-py312-cu130-ubuntu24.04-ec2")] = (
        "sha256:" + "0" * 64
    )
    try:
        assert pin_stage(stage_file, endpoint=registry, refresh=True) == {IMAGE: "sha256:" + "0" * 64}
    finally:
        Registry.manifests[("deep-learning-containers/vllm", "0.31.0-gpu-py312-cu130-ubuntu24.04-ec2")] = DIGEST
    assert stage_file.read_text() == pinned.replace(DIGEST, "sha256:" + "0" * 64)


def test_a_tag_the_registry_lacks_fails_naming_it_and_leaves_the_file(registry: str, stage_file: Path) -> None:
    text = stage_file.read_text().replace("0.31.0-gpu-py312-cu130-ubuntu24.04-ec2", "0.31.0-gpu-py312-ec2")
    stage_file.write_text(text)
    with pytest.raises(PinError, match=r"vllm:0.31.0-gpu-py312-ec2: the registry has no such tag"):
        pin_stage(stage_file, endpoint=registry)
    assert stage_file.read_text() == text


def test_an_unreachable_registry_fails_the_command_and_leaves_the_file(
    stage_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("commands.pin_images.STAGES_DIR", stage_file.parent)
    before = stage_file.read_text()
    monkeypatch.setattr(
        "commands.pin_images.manifest_digest",
        lambda image, endpoint=None: manifest_digest(image, endpoint="http://127.0.0.1:9"),
    )
    assert main(["--stage", "dev"]) == 1
    assert "cannot reach http://127.0.0.1:9/v2/deep-learning-containers/vllm/manifests/" in capsys.readouterr().err
    assert stage_file.read_text() == before


@pytest.mark.parametrize(
    ("image", "registry", "name", "tag"),
    [
        (IMAGE, "public.ecr.aws", "deep-learning-containers/vllm", "0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"),
        ("docker.io/vllm/vllm-openai:v0.34.0", "registry-1.docker.io", "vllm/vllm-openai", "v0.34.0"),
        ("vllm/vllm-openai:v0.34.0", "registry-1.docker.io", "vllm/vllm-openai", "v0.34.0"),
        ("busybox:1.37.0", "registry-1.docker.io", "library/busybox", "1.37.0"),
        ("localhost:5000/vllm:0.31.0", "localhost:5000", "vllm", "0.31.0"),
    ],
)
def test_an_image_reference_splits_as_a_registry_reads_it(image: str, registry: str, name: str, tag: str) -> None:
    assert Reference.parse(image) == Reference(registry, name, tag)


def test_an_image_without_a_tag_is_refused() -> None:
    with pytest.raises(PinError, match="names no tag"):
        Reference.parse("public.ecr.aws/deep-learning-containers/vllm")


def test_a_challenge_of_another_scope_asks_for_it_and_the_pull_both(registry: str) -> None:
    # A challenge whose scope names something else than the repository: both are asked for.
    challenge = {"realm": f"{registry}/token", "service": "public.ecr.aws", "scope": "aws"}
    assert anonymous_token(challenge, "deep-learning-containers/vllm") == TOKEN
    assert Registry.token_queries[-1] == {
        "scope": ["aws", "repository:deep-learning-containers/vllm:pull"],
        "service": ["public.ecr.aws"],
    }
