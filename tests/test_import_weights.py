"""workloads/import_weights.py against a stand-in for the Hugging Face Hub on 127.0.0.1 (the endpoints and headers
huggingface_hub uses) and moto's server for S3 and Secrets Manager. Fully offline.

Most runs call main() in this process, with huggingface_hub's endpoint constants pointed at the stand-in and an
injected sleep (which, with --mount, also plays the data repository association); one runs the script as the
Job does, in a subprocess with HF_ENDPOINT and AWS_ENDPOINT_URL set.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.file_download
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import HUB1, ROOT
from tests.hub_stand_in import FakeHub, FakeRepo, HubHandler, Request, point_huggingface_hub_at
from tests.hub_stand_in import hub_server as stand_in_hub
from workloads import import_weights
from workloads.import_weights import ADAPTER_CONFIG, MARKER, main, matches, select_files

SCRIPT = ROOT / "workloads" / "import_weights.py"
REPO = "test-org/tiny-model"
PREFIX = "tiny-model/main"
REGION = "us-east-1"
TOKEN = "hf_test_token"
ROOT_FILES = ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json")
ENCODINGS = {"o200k_base.tiktoken": b"aGVsbG8= 0\nd29ybGQ= 1\n", "cl100k_base.tiktoken": b"IQ== 0\n"}
ENCODING_SHA256 = {name: hashlib.sha256(data).hexdigest() for name, data in ENCODINGS.items()}


def tiny_repo(**options: Any) -> FakeRepo:
    """gpt-oss's layout in miniature: root shards and configs, plus original/ and metal/ that vLLM does not use."""
    files = {
        "config.json": b'{"model_type": "tiny", "hidden_size": 8}\n',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
        "model-00001-of-00002.safetensors": os.urandom(96_000),
        "model-00002-of-00002.safetensors": os.urandom(128_000),
        "original/model.safetensors": os.urandom(50_000),
        "metal/model.bin": os.urandom(40_000),
        "README.md": b"# tiny\n",
    }
    lfs = {path for path in files if path.endswith((".safetensors", ".bin"))}
    return FakeRepo(REPO, files, lfs, **options)


@pytest.fixture(scope="module")
def hub_server() -> Iterator[tuple[ThreadingHTTPServer, type[HubHandler]]]:
    with stand_in_hub() as running:
        yield running


@pytest.fixture
def hub(hub_server: tuple[ThreadingHTTPServer, type[HubHandler]]) -> FakeHub:
    """A fresh stand-in Hub (the server is shared) serving the tiny repo and the test encodings."""
    server, handler = hub_server
    handler.hub = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}", encodings=dict(ENCODINGS))
    handler.hub.add(tiny_repo())
    return handler.hub


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # This module's runs share one boto3 default session (creating clients is slow); no other module sees it.
    outside = boto3.DEFAULT_SESSION
    boto3.DEFAULT_SESSION = None
    yield f"http://{host}:{port}"
    boto3.DEFAULT_SESSION = outside
    server.stop()


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> dict[str, str]:
    """boto3 in this process (and in subprocesses given this environment) talks to moto, with fake credentials."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3(aws: dict[str, str]) -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"models-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, tmp_path: Path) -> None:
    """huggingface_hub in this process talks to the stand-in; the encodings come from it too."""
    point_huggingface_hub_at(hub.url, monkeypatch, tmp_path / "hf-home")
    # huggingface_hub writes what it receives in chunks of this size: small, so a cut-off transfer leaves a
    # partial file to resume (urllib3 drops a chunk the connection ended in the middle of).
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    monkeypatch.setenv("ENCODINGS_BASE_URL", hub.url + "/encodings/")
    monkeypatch.setattr(import_weights, "EXPECTED_ENCODING_SHA256", dict(ENCODING_SHA256))


@pytest.fixture
def termination_log(tmp_path: Path) -> Path:
    path = tmp_path / "termination-log"
    path.touch()  # Kubernetes creates it in every container
    return path


@pytest.fixture
def args(bucket: str, tmp_path: Path, termination_log: Path) -> Callable[..., list[str]]:
    def make(*extra: str, revision: str = "main") -> list[str]:
        return [
            *("--repo", REPO, "--revision", revision, "--bucket", bucket, "--prefix", PREFIX),
            *("--region", REGION, "--workdir", str(tmp_path / "work"), "--termination-log", str(termination_log)),
            *extra,
        ]

    return make


def no_sleep(seconds: float) -> None:
    pass


def resumed_from(request: Request) -> int:
    """The offset of a `Range: bytes=N-` request (0 without one)."""
    return int(request.range.removeprefix("bytes=").removesuffix("-")) if request.range else 0


def keys(s3: Any, bucket: str) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def read(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def marker(s3: Any, bucket: str) -> dict[str, Any]:
    return json.loads(read(s3, bucket, f"{PREFIX}/{MARKER}"))


def workdir_files(workdir: Path) -> set[str]:
    return {str(path.relative_to(workdir)) for path in workdir.rglob("*") if path.is_file()}


def assert_root_files_imported(s3: Any, bucket: str, repo: FakeRepo) -> None:
    assert keys(s3, bucket) >= {f"{PREFIX}/{path}" for path in ROOT_FILES}
    assert not {key for key in keys(s3, bucket) if key.startswith((f"{PREFIX}/original/", f"{PREFIX}/metal/"))}
    for path in ROOT_FILES:
        head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{path}")
        assert read(s3, bucket, f"{PREFIX}/{path}") == repo.files[path]
        if path in repo.lfs:
            assert head["Metadata"]["sha256"] == hashlib.sha256(repo.files[path]).hexdigest()


# --- Selection -----------------------------------------------------------------------------------------------------


def test_patterns_match_at_their_own_depth() -> None:
    assert matches("model-00001-of-00002.safetensors", "*.safetensors")
    assert not matches("original/model.safetensors", "*.safetensors")
    assert matches("original/model.safetensors", "original/*")
    assert not matches("metal/model.bin", "*.bin")
    files = [import_weights.RepoFile(path, 1, None, None) for path in tiny_repo().files]
    selected = [file.path for file in select_files(files, import_weights.DEFAULT_INCLUDE)]
    assert selected == list(ROOT_FILES)


# --- A complete import, as the Job runs it -------------------------------------------------------------------------


def test_complete_import_in_a_subprocess(
    hub: FakeHub, aws: dict[str, str], s3: Any, bucket: str, args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """The script file on its own (no project imports), HF_ENDPOINT and AWS_ENDPOINT_URL in its environment; the
    test encodings' hashes replace tiktoken's through the module constant, as nothing else can."""
    repo = hub.repos[REPO]
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "HF_", "HUGGING"))}
    env |= aws | {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ENCODINGS_BASE_URL": hub.url + "/encodings/",
    }
    wrapper = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import import_weights as m; "
        "m.EXPECTED_ENCODING_SHA256.update(json.loads(sys.argv[2])); sys.exit(m.main(sys.argv[3:]))"
    )
    command = [sys.executable, "-c", wrapper, str(SCRIPT.parent), json.dumps(ENCODING_SHA256)]
    encodings = ["--encodings", *ENCODINGS]
    result = subprocess.run(
        [*command, *args(*encodings)], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert_root_files_imported(s3, bucket, repo)
    assert hub.touched() == set(ROOT_FILES), "original/ and metal/ must not be fetched"
    for name, data in ENCODINGS.items():
        assert read(s3, bucket, f"tiktoken_encodings/{name}") == data
        assert (
            s3.head_object(Bucket=bucket, Key=f"tiktoken_encodings/{name}")["Metadata"]["sha256"]
            == (ENCODING_SHA256[name])
        )
    recorded = marker(s3, bucket)
    assert (recorded["repo"], recorded["revision"], recorded["commit"]) == (REPO, "main", repo.commit)
    assert recorded["files"] == [
        {
            "path": path,
            "size": len(repo.files[path]),
            "sha256": hashlib.sha256(repo.files[path]).hexdigest() if path in repo.lfs else None,
        }
        for path in ROOT_FILES
    ]
    assert [e["key"] for e in recorded["encodings"]] == [f"tiktoken_encodings/{name}" for name in ENCODINGS]
    lines = result.stdout.splitlines()
    uploaded = [number for number, line in enumerate(lines) if " uploaded (download " in line]
    wrote = [number for number, line in enumerate(lines) if line.startswith("wrote s3://")]
    assert len(uploaded) == len(ROOT_FILES)
    assert len(wrote) == 1
    assert wrote[0] > max(uploaded), "the marker is written last"
    # One file at a time, deleted once uploaded: only huggingface_hub's .gitignore (and from 1.0 its CACHEDIR.TAG)
    # stays in the workdir.
    assert workdir_files(tmp_path / "work") - {".cache/huggingface/CACHEDIR.TAG"} == {".cache/huggingface/.gitignore"}


# --- Resuming ------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("in_process")
def test_a_transfer_cut_off_resumes_within_the_run(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]]
) -> None:
    shard = "model-00002-of-00002.safetensors"
    hub.cuts[shard] = 1

    assert main(args(), sleep=no_sleep) == 0

    gets = hub.downloads(shard)
    assert len(gets) == 2
    assert gets[0].range is None
    assert resumed_from(gets[1]) > 0, "resumed from the partial file"
    assert_root_files_imported(s3, bucket, hub.repos[REPO])
    assert marker(s3, bucket)["commit"] == hub.repos[REPO].commit


@pytest.mark.usefixtures("in_process")
def test_an_hf_xet_failure_of_a_file_is_tried_again_over_plain_http(
    hub: FakeHub,
    s3: Any,
    bucket: str,
    args: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # hf_xet's failures reach huggingface_hub's caller unchanged: a RuntimeError up to hf_xet 1.4 (xet-core,
    # hf_xet/src/lib.rs, "Data processing error: ..."), a builtin ConnectionError or TimeoutError from 1.5.
    shard = "model-00002-of-00002.safetensors"
    real = import_weights.hf_hub_download
    failures = iter([RuntimeError("Data processing error: CAS service error : ReqwestMiddlewareError"), None])
    xet_allowed = []

    def hf_xet_fails_once(**kwargs: Any) -> str:
        if kwargs["filename"] == shard:
            xet_allowed.append(not huggingface_hub.constants.HF_HUB_DISABLE_XET)
            if failure := next(failures):
                raise failure
        return real(**kwargs)

    monkeypatch.setattr(import_weights, "hf_hub_download", hf_xet_fails_once)
    sleeps: list[float] = []
    assert main(args(), sleep=sleeps.append) == 0
    assert sleeps == [0.0]  # tried again in the same run, not a new pod with an empty workdir
    assert xet_allowed == [True, False]  # the second try over plain HTTP, which resumes
    assert "RuntimeError (Data processing error: CAS service error" in capsys.readouterr().out
    assert_root_files_imported(s3, bucket, hub.repos[REPO])


@pytest.mark.usefixtures("in_process")
def test_a_missing_file_is_not_tried_again(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def not_there(**kwargs: Any) -> str:
        calls.append(kwargs["filename"])
        raise import_weights.EntryNotFoundError("gone")

    monkeypatch.setattr(import_weights, "hf_hub_download", not_there)
    sleeps: list[float] = []
    assert main(args(), sleep=sleeps.append) == 1
    assert (len(calls), sleeps) == (1, [])


@pytest.mark.usefixtures("in_process")
def test_a_file_whose_metadata_the_hub_cannot_give_for_a_while_is_tried_again(
    s3: Any, bucket: str, args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the Hub keeps failing a file's metadata request (a timeout, a 5xx, a 429) past huggingface_hub's own
    # retries, it raises LocalEntryNotFoundError (file_download.py, _raise_on_head_call_error): a passing failure.
    real, failed = import_weights.hf_hub_download, list[str]()

    def unavailable_once(**kwargs: Any) -> str:
        if not failed:
            failed.append(kwargs["filename"])
            raise import_weights.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        return real(**kwargs)

    monkeypatch.setattr(import_weights, "hf_hub_download", unavailable_once)
    sleeps: list[float] = []
    assert main(args(), sleep=sleeps.append) == 0
    assert (len(failed), sleeps) == (1, [import_weights.RETRY_DELAYS_SECONDS[0]])


# huggingface_hub's major version: 0.x in vLLM 0.11.2's image, 1.x in 0.31.0's (the second run, conftest.py).
HUB_MAJOR = int(huggingface_hub.__version__.split(".", 1)[0])


@pytest.mark.usefixtures("in_process")
@pytest.mark.skipif(
    HUB_MAJOR >= 1,
    reason="huggingface_hub 1.x resumes a broken transfer within one download, five times over with a second's pause, "
    "and removes its partial file when it gives up (file_download.py: http_get, _download_to_tmp_and_move): "
    "test_a_transfer_cut_off_resumes_within_the_run holds that",
)
def test_a_failed_run_is_resumed_by_the_next(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    shard = "model-00002-of-00002.safetensors"
    # Cut every time: more than the run retries, and than huggingface_hub 1.x resumes within one download.
    hub.cuts[shard] = 1000
    sleeps: list[float] = []

    assert main(args(), sleep=sleeps.append) == 1

    assert sleeps == list(import_weights.RETRY_DELAYS_SECONDS)
    error = capsys.readouterr().err
    assert f"import of {REPO}@main failed: downloads from the Hub kept breaking off" in error
    assert f"while importing {shard}" in error
    assert keys(s3, bucket) == {f"{PREFIX}/config.json", f"{PREFIX}/model-00001-of-00002.safetensors"}

    hub.requests.clear()
    hub.cuts.clear()
    assert main(args(), sleep=no_sleep) == 0

    assert hub.touched() == {shard, "tokenizer.json"}, "files already in S3 are not downloaded again"
    assert resumed_from(hub.downloads(shard)[0]) > 0, "the next run resumes the partial file the last one left"
    assert_root_files_imported(s3, bucket, hub.repos[REPO])
    assert "already in s3://" in capsys.readouterr().out


@pytest.mark.usefixtures("in_process")
def test_a_complete_import_is_not_redone(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(), sleep=no_sleep) == 0
    hub.requests.clear()
    capsys.readouterr()

    assert main(args(), sleep=no_sleep) == 0

    assert hub.requests == [], "no Hub request at all: the marker records this repo and revision"
    assert "already complete" in capsys.readouterr().out


@pytest.mark.usefixtures("in_process")
def test_the_same_commit_under_another_revision_name_is_complete(
    hub: FakeHub, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(), sleep=no_sleep) == 0
    hub.requests.clear()

    assert main(args(revision=hub.repos[REPO].commit), sleep=no_sleep) == 0

    assert [request.kind for request in hub.requests] == ["api"]
    assert "already complete" in capsys.readouterr().out


@pytest.mark.usefixtures("in_process")
def test_a_prefix_another_import_completed_is_left_alone(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    other = {"repo": "other-org/other-model", "revision": "main", "commit": "f" * 40, "files": []}
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{MARKER}", Body=json.dumps(other).encode())

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"s3://{bucket}/{PREFIX}/{MARKER} records another import (other-org/other-model@main" in error
    assert keys(s3, bucket) == {f"{PREFIX}/{MARKER}"}
    assert marker(s3, bucket) == other
    assert hub.touched() == set()


@pytest.mark.usefixtures("in_process")
def test_a_corrupt_download_is_refused(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    shard = "model-00001-of-00002.safetensors"
    hub.served_instead[shard] = bytes(len(hub.repos[REPO].files[shard]))  # right size, wrong bytes

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"{shard} downloaded with sha256 {hashlib.sha256(hub.served_instead[shard]).hexdigest()}" in error
    assert f"the Hub says {hashlib.sha256(hub.repos[REPO].files[shard]).hexdigest()}" in error
    assert f"{PREFIX}/{shard}" not in keys(s3, bucket)


# --- Failures ------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("gate_api", [False, True], ids=["files-gated", "listing-gated"])
def test_a_gated_repo_without_a_token_says_what_to_do(
    hub: FakeHub,
    gate_api: bool,
    args: Callable[..., list[str]],
    termination_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub.repos[REPO].token = TOKEN
    hub.repos[REPO].gate_api = gate_api

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err.strip()
    assert error.startswith(f"import of {REPO}@main failed: {REPO} is gated: accept its licence on the Hub")
    assert "give a token with models[].hf_token_secret (no token was given)" in error
    assert "\n" not in error
    assert termination_log.read_text().strip() == error


@pytest.mark.usefixtures("in_process")
def test_a_gated_repo_with_the_token_from_a_secret_imports(
    hub: FakeHub, aws: dict[str, str], s3: Any, bucket: str, args: Callable[..., list[str]]
) -> None:
    hub.repos[REPO].token = TOKEN
    secret = f"hf-token-{secrets.token_hex(4)}"
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=secret, SecretString=f"{TOKEN}\n")

    assert main(args("--token-secret", secret), sleep=no_sleep) == 0

    assert_root_files_imported(s3, bucket, hub.repos[REPO])
    assert {r.authorization for r in hub.requests if r.kind in ("api", "resolve")} == {f"Bearer {TOKEN}"}


@pytest.mark.usefixtures("in_process")
def test_a_token_without_access_is_told_apart(
    hub: FakeHub, aws: dict[str, str], args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.repos[REPO].token = TOKEN
    secret = f"hf-token-{secrets.token_hex(4)}"
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=secret, SecretString="hf_other_user")

    assert main(args("--token-secret", secret), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"{REPO} is gated" in error
    assert f"the token from {secret!r} has no access" in error


@pytest.mark.usefixtures("in_process")
def test_a_missing_secret_is_named(
    hub: FakeHub, args: Callable[..., list[str]], termination_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args("--token-secret", "no-such-secret"), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert "the Secrets Manager secret 'no-such-secret' does not exist in us-east-1" in error
    assert "no-such-secret" in termination_log.read_text()
    assert hub.requests == [], "nothing is asked of the Hub without the token"


@pytest.mark.usefixtures("in_process")
def test_an_unknown_revision_is_named(
    hub: FakeHub, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(revision="no-such-branch"), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"import of {REPO}@no-such-branch failed: revision 'no-such-branch' not found in {REPO}" in error


@pytest.mark.usefixtures("in_process")
def test_an_unknown_repository_is_named(
    hub: FakeHub, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    del hub.repos[REPO]

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"import of {REPO}@main failed: repository {REPO} not found on the Hub ({hub.url})" in error
    assert "no token was given" in error


@pytest.mark.usefixtures("in_process")
def test_patterns_matching_nothing_list_the_patterns_and_the_repo(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args("--include", "*.gguf", "weights/*.bin"), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert "no file matches --include *.gguf weights/*.bin" in error
    assert "the repo has: README.md, config.json, metal/model.bin" in error
    assert keys(s3, bucket) == set()


@pytest.mark.usefixtures("in_process")
def test_no_route_to_the_hub_points_at_the_nat_gateway(
    monkeypatch: pytest.MonkeyPatch, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:  # a port nothing listens on: connection refused at once
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"the Hub ({endpoint}) could not be reached from the VPC" in error
    assert "NAT gateway" in error


@pytest.mark.usefixtures("in_process")
def test_running_out_of_space_names_the_workdir(
    monkeypatch: pytest.MonkeyPatch, args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def full_disk(**kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(import_weights, "hf_hub_download", full_disk)

    assert main(args(), sleep=no_sleep) == 1

    error = capsys.readouterr().err
    assert f"out of space in the workdir {tmp_path / 'work'}" in error
    assert "(while importing config.json)" in error


@pytest.mark.usefixtures("in_process")
def test_an_encoding_with_the_wrong_hash_is_refused(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.encodings["o200k_base.tiktoken"] = b"tampered\n"

    assert main(args("--encodings", "o200k_base.tiktoken"), sleep=no_sleep) == 1

    assert f"{hub.url}/encodings/o200k_base.tiktoken has sha256" in capsys.readouterr().err
    assert keys(s3, bucket) == set(), "encodings come first: nothing else was imported"


# --- The file system -----------------------------------------------------------------------------------------------


class Association:
    """Plays the data repository association: every poll (the injected sleep), the mount shows what the bucket
    holds, except the hidden keys."""

    def __init__(self, s3: Any, bucket: str, mount: Path, hidden: tuple[str, ...] = ()) -> None:
        self.s3, self.bucket, self.mount, self.hidden = s3, bucket, mount, hidden
        self.polls = 0

    def __call__(self, seconds: float) -> None:
        self.polls += 1
        for key in keys(self.s3, self.bucket) - set(self.hidden):
            path = self.mount / key
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(read(self.s3, self.bucket, key))


@pytest.mark.usefixtures("in_process")
def test_the_import_waits_for_the_file_system_and_reads_it(
    hub: FakeHub,
    s3: Any,
    bucket: str,
    args: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mount = tmp_path / "models"
    association = Association(s3, bucket, mount)
    encodings = ("--encodings", *ENCODINGS)

    assert main(args("--mount", str(mount), "--poll-seconds", "0.01", *encodings), sleep=association) == 0

    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"ready on the file system: {mount / PREFIX}")
    assert out.index(f"read {len(ROOT_FILES) + len(ENCODINGS)} files") < out.index("wrote s3://"), (
        "every file is on the file system and read before the marker is written"
    )
    assert json.loads((mount / PREFIX / MARKER).read_text())["commit"] == hub.repos[REPO].commit

    # Already complete: no Hub request, and still ready only once the file system shows it all.
    hub.requests.clear()
    assert main(args("--mount", str(mount), *encodings), sleep=association) == 0
    assert hub.requests == []
    assert "ready on the file system" in capsys.readouterr().out


@pytest.mark.usefixtures("in_process")
def test_files_the_file_system_does_not_show_are_listed(
    s3: Any,
    bucket: str,
    args: Callable[..., list[str]],
    tmp_path: Path,
    termination_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mount = tmp_path / "models"
    shard = "model-00002-of-00002.safetensors"
    association = Association(s3, bucket, mount, hidden=(f"{PREFIX}/{shard}",))
    started = time.monotonic()

    wait = ("--wait-seconds", "0.2", "--poll-seconds", "0.01")
    assert main(args("--mount", str(mount), *wait), sleep=association) == 1

    assert time.monotonic() - started < 5
    error = capsys.readouterr().err
    assert "the file system did not show the files of" in error
    assert "within 0.2 s, missing 1:" in error
    assert f"{mount / PREFIX / shard} (absent)" in error
    assert termination_log.read_text().strip() == error.strip()
    assert f"{PREFIX}/{MARKER}" not in keys(s3, bucket), "no marker before the file system shows every file"


@pytest.mark.usefixtures("in_process")
def test_a_required_file_the_repo_lacks_fails_the_import_before_anything_is_written(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A LoRA adapter's import requires its config and weights (charts/model_loader.py, ADAPTER_FILES)."""
    assert (
        main(
            args(
                "--include",
                "config.json",
                "adapter_model.safetensors",
                "--require",
                "config.json",
                "adapter_model.safetensors",
            ),
            sleep=no_sleep,
        )
        == 1
    )
    assert "the repo has no adapter_model.safetensors at" in capsys.readouterr().err
    assert keys(s3, bucket) == set()


@pytest.mark.parametrize("library", ["requests", "httpx"])
def test_a_transfer_that_keeps_breaking_off_is_told_from_a_hub_out_of_reach(library: str) -> None:
    # huggingface_hub 0.x raises requests' errors, 1.x httpx's; the project's run has the one, the second run both.
    http = pytest.importorskip(library)
    args = import_weights.parse_args(
        ["--repo", REPO, "--revision", "main", "--bucket", "b", "--prefix", "p", "--workdir", "/w"]
    )
    broken, unreachable = (
        (http.exceptions.ChunkedEncodingError("Connection broken"), http.ConnectionError("Max retries exceeded"))
        if library == "requests"
        else (http.RemoteProtocolError("peer closed connection"), http.ConnectError("[Errno 111] refused"))
    )
    assert import_weights.describe_failure(broken, args).startswith("downloads from the Hub kept breaking off")
    assert "could not be reached from the VPC" in import_weights.describe_failure(unreachable, args)


def test_the_import_works_with_huggingface_hub_1(import_tests_on_hub1: Any) -> None:
    # vLLM 0.31.0's image has huggingface_hub 1.x (vLLM 0.31.0 requires >=1.31.0): every test above, again.
    result = import_tests_on_hub1.result(timeout=600)
    assert (HUB1 / "huggingface_hub").is_dir(), "make setup installs huggingface_hub 1.x into .hub1"
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
    assert "huggingface_hub 1.x resumes a broken transfer" in result.stdout  # the run's own huggingface_hub: 1.x


def test_a_metadata_failure_is_as_permanent_as_its_cause() -> None:
    passing = import_weights.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
    offline = import_weights.LocalEntryNotFoundError("cannot find the requested files in the local cache")
    offline.__cause__ = import_weights.OfflineModeIsEnabled("offline")
    assert (import_weights.permanent(passing), import_weights.permanent(offline)) == (False, True)
    assert import_weights.permanent(import_weights.OfflineModeIsEnabled("offline"))


def adapter_repo(config: dict[str, Any]) -> FakeRepo:
    files = {ADAPTER_CONFIG: json.dumps(config).encode(), "adapter_model.safetensors": os.urandom(4_000)}
    return FakeRepo(REPO, files, {"adapter_model.safetensors"})


ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")  # charts/model_loader.py, ADAPTER_FILES
ADAPTER_ARGS = ("--include", *ADAPTER_FILES, "--require", *ADAPTER_FILES, "--max-lora-rank", "16")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"r": 32, "bias": "none"}, "its rank is 32 (adapter_config.json r and rank_pattern), above the model's"),
        ({"r": 8, "rank_pattern": {"q_proj": 64}}, "its rank is 64"),
        ({"r": 16, "use_dora": True}, "it uses DoRA (use_dora), which vLLM does not load"),
        ({"r": 16, "bias": "lora_only"}, "it trains a bias ('lora_only'), which vLLM does not load"),
        ({"r": 16, "modules_to_save": ["lm_head"]}, "it saves modules whole (['lm_head'])"),
        ({"r": 16, "bias": None}, "it trains a bias (None), which vLLM does not load"),  # vLLM compares with "none"
        ({"lora_alpha": 16}, "its rank r is None in adapter_config.json, not a positive number"),
    ],
)
def test_what_vllm_refuses_in_an_adapters_config_is_named(config: dict[str, Any], problem: str) -> None:
    (found,) = import_weights.adapter_problems(config, 16)
    assert found.startswith(problem)
    assert import_weights.adapter_problems({"r": 16, "bias": "none", "modules_to_save": None}, 16) == []


@pytest.mark.usefixtures("in_process")
def test_an_adapter_vllm_would_refuse_fails_its_import_without_a_marker(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add(adapter_repo({"r": 32, "bias": "none"}))
    assert main(args(*ADAPTER_ARGS), sleep=no_sleep) == 1
    error = capsys.readouterr().err
    assert f"import of {REPO}@main failed: {REPO}@" in error
    assert "is an adapter vLLM would refuse: its rank is 32" in error
    assert f"{PREFIX}/{MARKER}" not in keys(s3, bucket), "replicas never see a marker for an adapter they refuse"


@pytest.mark.usefixtures("in_process")
def test_an_adapter_within_the_models_rank_imports(
    hub: FakeHub, s3: Any, bucket: str, args: Callable[..., list[str]]
) -> None:
    hub.add(adapter_repo({"r": 16, "bias": "none", "modules_to_save": None}))
    assert main(args(*ADAPTER_ARGS), sleep=no_sleep) == 0
    assert f"{PREFIX}/{MARKER}" in keys(s3, bucket)
