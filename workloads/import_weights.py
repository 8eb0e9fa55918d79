"""Bring one model revision from the Hugging Face Hub into the model store (S3 bucket + FSx for Lustre).

A Kubernetes Job runs this file in the vLLM image (Python 3.12, boto3, huggingface_hub 0.34 or later: the 0.x
releases speak HTTP with requests, 1.x with httpx, and both are handled), with a
scratch emptyDir as the workdir and the model store's file system mounted read-only:

    python import_weights.py --repo openai/gpt-oss-20b --revision main \\
        --bucket MODEL_BUCKET --prefix gpt-oss-20b/main --workdir /scratch --mount /models \\
        --encodings o200k_base.tiktoken cl100k_base.tiktoken

It writes s3://BUCKET/PREFIX/<path in repo> for every repo file that --include selects; the data repository
association then shows each object as <mount>/PREFIX/<path> on the file system. Step by step:

1. Resolve the revision to its commit and list the repo's files with their sizes and, for LFS files, sha256.
2. Skip everything if s3://BUCKET/PREFIX/.import-complete already records this repo and revision (or commit).
3. One file at a time: skip it if S3 already holds it (same size, sha256 and git blob id in the object's
   metadata); else download it into the workdir with huggingface_hub (which resumes a cut-off transfer within
   a download and uses hf_xet when it is enabled), check its size and sha256 against the Hub's, upload it
   (multipart) and delete it. The workdir never holds more than one file, so a 150 GB model fits a small disk.
4. Store the tiktoken encodings gpt-oss's tokenizer reads (--encodings) under --encodings-prefix.
5. With --mount: wait until the file system shows every file at its full size, read each once (this pulls
   it from S3 into Lustre, so no replica waits on S3), then write the marker .import-complete LAST and wait
   for it to show too. A marker on the file system therefore means every file is there and was read.

Exit codes: 0 imported (or already complete) and, with --mount, ready on the file system; 1 failed, with one
line naming the repo, revision and cause on stderr and in the termination log (/dev/termination-log, which
Kubernetes shows in the pod status) when that file exists; 2 bad arguments.

Give the Job an HF_HOME under the workdir (hf_xet keeps its chunk cache there; the root file system may be
read-only) and an IAM role with s3:GetObject, s3:PutObject and s3:AbortMultipartUpload on PREFIX/* and
--encodings-prefix/*, s3:ListBucket for those prefixes (s3:prefix conditions are fine: what exists is learned
by listing), and secretsmanager:GetSecretValue on --token-secret. It never deletes anything.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import disable_progress_bars


def transport_errors() -> tuple[tuple[type[BaseException], ...], ...]:
    """huggingface_hub's HTTP library's errors: (any failed transfer, the server unreachable or silent, a transfer
    that broke off). huggingface_hub 0.x speaks HTTP with requests, 1.x with httpx (huggingface_hub/utils/_http.py,
    get_session); the vLLM image has one or the other, and either may pass through to here."""
    failed: list[type[BaseException]] = []
    unreachable: list[type[BaseException]] = []
    broken: list[type[BaseException]] = []
    try:
        import requests

        failed.append(requests.RequestException)
        unreachable += (requests.ConnectionError, requests.Timeout)
        broken.append(requests.exceptions.ChunkedEncodingError)
    except ImportError:
        pass
    try:
        import httpx

        failed.append(httpx.HTTPError)
        unreachable += (httpx.ConnectError, httpx.TimeoutException)
        broken += (httpx.RemoteProtocolError, httpx.ReadError)
    except ImportError:
        pass
    return tuple(failed), tuple(unreachable), tuple(broken)


TRANSFER_FAILED, HUB_UNREACHABLE, TRANSFER_BROKEN = transport_errors()

# Written last, once every file is in S3 (and, with --mount, on the file system): its presence means "complete".
MARKER = ".import-complete"
# A LoRA adapter's configuration, which vLLM validates before it loads the adapter (vllm/lora/peft_helper.py).
ADAPTER_CONFIG = "adapter_config.json"

# Root weights, configs (config.json, generation_config.json, tokenizer_config.json, the safetensors index...),
# tokenizer files (tokenizer.json, tokenizer.model, *.tiktoken, vocab/merges) and chat templates (.jinja or
# chat_template.json). Subfolders such as gpt-oss's original/ and metal/ are not vLLM's and stay out.
DEFAULT_INCLUDE = ("*.safetensors", "*.json", "*.model", "*.tiktoken", "*.jinja", "vocab.txt", "merges.txt")

DEFAULT_ENCODINGS_PREFIX = "tiktoken_encodings"
DEFAULT_ENCODINGS_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/"
# The hashes tiktoken checks when it downloads these files (tiktoken_ext/openai_public.py, expected_hash=...),
# and openai/harmony too (tiktoken_ext/public_encodings.rs).
EXPECTED_ENCODING_SHA256 = {
    "o200k_base.tiktoken": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

DEFAULT_WAIT_SECONDS = 1800.0
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

CHUNK_BYTES = 16 * 1024 * 1024
# A file whose download fails is tried again at once, then after a pause, then after a longer one: whatever failed
# (a connection, hf_xet's RuntimeError or, from hf_xet 1.5, its builtin ConnectionError or TimeoutError, which
# huggingface_hub passes on unchanged: file_download.py, xet_get). hf_xet rewrites a file from its start
# (huggingface/xet-core), so after an hf_xet failure the retries go over plain HTTP (HF_HUB_DISABLE_XET). Over plain
# HTTP, huggingface_hub 0.x resumes the next try from the partial file in the workdir (a Range request); 1.x resumes
# within one download, five times, and starts the next try afresh (file_download.py: http_get,
# _download_to_tmp_and_move, which removes its temporary file on failure).
RETRY_DELAYS_SECONDS = (0.0, 10.0, 30.0)
# Failures another try cannot mend: the repository, revision or file is not there, or not for this token.
PERMANENT = (
    EntryNotFoundError,
    GatedRepoError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def permanent(error: BaseException | None) -> bool:
    """Whether another try cannot mend the failure. LocalEntryNotFoundError, though an EntryNotFoundError, is what
    huggingface_hub raises, from the cause, when the request for a file's metadata failed and no local copy stands in
    (file_download.py, _raise_on_head_call_error): as permanent as its cause (offline mode), else passing (a timeout,
    a 5xx, a 429)."""
    if isinstance(error, LocalEntryNotFoundError):
        return permanent(error.__cause__)
    return isinstance(error, PERMANENT)


# 64 MiB parts (s3transfer grows them when a file would need more than 10,000), 8 at a time: ~512 MiB of buffers.
TRANSFER_CONFIG = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=8)
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LOG_LIMIT = 4000

SleepFn = Callable[[float], None]


class ImportWeightsError(Exception):
    """A failure whose message already says what went wrong and what to do about it."""


@dataclass(frozen=True)
class RepoFile:
    """One file of the repository at the resolved commit, as model_info(files_metadata=True) lists it."""

    path: str
    size: int | None
    sha256: str | None  # published for LFS files only
    blob_id: str | None  # git object id: changes whenever the file does, LFS or not


@dataclass(frozen=True)
class StoredFile:
    """A file in the model store, as the marker records it."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Source:
    """Where files come from and go to, and what the destination held when the run began."""

    repo: str
    commit: str
    token: str | None
    bucket: str
    prefix: str
    workdir: Path
    existing: Mapping[str, int]  # key -> size, under prefix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="import_weights.py", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo", help="Hub repo id, e.g. openai/gpt-oss-20b; without it, only the --encodings")
    parser.add_argument("--revision", help="branch, tag or 40-hex commit (with --repo)")
    parser.add_argument("--bucket", required=True, help="the model store's S3 bucket")
    parser.add_argument("--prefix", type=_prefix, help="S3 key prefix, e.g. gpt-oss-20b/main (with --repo)")
    parser.add_argument(
        "--include",
        nargs="+",
        default=list(DEFAULT_INCLUDE),
        metavar="PATTERN",
        help="repo paths to import; a pattern matches a path of the same depth (*.json: root files only)",
    )
    parser.add_argument(
        "--require",
        nargs="+",
        default=[],
        metavar="PATH",
        help="repo paths that must be among those imported (a LoRA adapter's config and weights)",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=int,
        help="an adapter's import: the model's --max-lora-rank, which its adapter_config.json must not exceed",
    )
    parser.add_argument("--token-secret", help="Secrets Manager secret (name or ARN) holding the Hugging Face token")
    parser.add_argument("--region", help="AWS region (default: the environment's)")
    parser.add_argument("--workdir", required=True, type=Path, help="scratch directory: holds one file at a time")
    parser.add_argument("--mount", type=Path, help="where the bucket's root appears on the file system, e.g. /models")
    parser.add_argument(
        "--encodings",
        nargs="*",
        default=[],
        type=_encoding_name,
        metavar="NAME",
        help="tiktoken encodings to store too, e.g. o200k_base.tiktoken (from $ENCODINGS_BASE_URL)",
    )
    parser.add_argument("--encodings-prefix", default=DEFAULT_ENCODINGS_PREFIX, type=_prefix, help="their S3 prefix")
    parser.add_argument("--wait-seconds", type=float, default=DEFAULT_WAIT_SECONDS, help="per file-system wait")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help="file-system poll interval")
    parser.add_argument(
        "--termination-log", default=DEFAULT_TERMINATION_LOG, help="where a failure is also written, if it exists"
    )
    args = parser.parse_args(argv)
    given = [name for name in ("repo", "revision", "prefix") if getattr(args, name) is not None]
    if given and len(given) < 3:
        parser.error("--repo, --revision and --prefix go together")
    if not given and not args.encodings:
        parser.error("give --repo, --revision and --prefix, or --encodings, or both")
    return args


def _prefix(value: str) -> str:
    prefix = value.strip("/")
    if not prefix:
        raise argparse.ArgumentTypeError("must not be empty")
    return prefix


def _encoding_name(value: str) -> str:
    if value not in EXPECTED_ENCODING_SHA256:
        known = ", ".join(sorted(EXPECTED_ENCODING_SHA256))
        raise argparse.ArgumentTypeError(f"{value!r} has no known sha256 (known: {known})")
    return value


def say(message: str) -> None:
    print(message, flush=True)  # a Job's log is a pipe: show progress as it happens


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def rate(size: int, seconds: float) -> str:
    return f"{size / 1e6 / max(seconds, 1e-6):.1f} MB/s"


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- Selecting files ---------------------------------------------------------------------------------------------


def matches(path: str, pattern: str) -> bool:
    """fnmatch's '*' crosses '/', so also require the same depth: '*.safetensors' is root files only."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def select_files(files: Sequence[RepoFile], patterns: Sequence[str]) -> list[RepoFile]:
    return sorted((file for file in files if any(matches(file.path, p) for p in patterns)), key=lambda f: f.path)


def resolve_revision(repo: str, revision: str, token: str | None) -> tuple[str, list[RepoFile]]:
    """The commit the revision points to now, and the repo's files there (sizes and LFS sha256 included)."""
    info = HfApi().model_info(repo, revision=revision, files_metadata=True, token=token)
    if not info.sha:
        raise ImportWeightsError(f"the Hub gave no commit for revision {revision!r}")
    files = []
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        size = sibling.size if sibling.size is not None else getattr(lfs, "size", None)
        files.append(RepoFile(sibling.rfilename, size, getattr(lfs, "sha256", None), sibling.blob_id))
    return info.sha, files


# --- AWS ---------------------------------------------------------------------------------------------------------


def read_token(secretsmanager: Any, secret: str) -> str:
    """The Hugging Face token: the secret's SecretString."""
    try:
        value = secretsmanager.get_secret_value(SecretId=secret)
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code == "ResourceNotFoundException":
            raise ImportWeightsError(
                f"the Secrets Manager secret {secret!r} does not exist in {secretsmanager.meta.region_name}: create "
                "it with the Hugging Face token as its value, or fix models[].hf_token_secret"
            ) from error
        if code == "AccessDeniedException":
            raise ImportWeightsError(
                f"the Job's role may not read the Secrets Manager secret {secret!r} (secretsmanager:GetSecretValue)"
            ) from error
        raise
    token = (value.get("SecretString") or "").strip()
    if not token:
        raise ImportWeightsError(f"the Secrets Manager secret {secret!r} has no SecretString: store the token as text")
    return token


def list_objects(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """The keys under prefix and their sizes.

    Listing, not HEAD, says whether an object exists: S3 answers HEAD of a missing key with 403 instead of 404
    unless the role may list the whole bucket, and the Job's s3:ListBucket is limited to its prefixes.
    """
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            sizes[item["Key"]] = int(item["Size"])
    return sizes


def head_object(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's HEAD (size in ContentLength, user metadata in Metadata), or None when there is none."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def read_marker(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    try:
        marker = json.loads(body)
    except ValueError:
        return {}  # unreadable: treated as another import's, and replaced
    return marker if isinstance(marker, dict) else {}


def object_metadata(file: RepoFile) -> dict[str, str]:
    """What a later run compares to decide the object is this file: S3 user metadata (x-amz-meta-*)."""
    metadata = {}
    if file.sha256:
        metadata["sha256"] = file.sha256
    if file.blob_id:
        # A moving branch can change a small non-LFS file (config.json) without changing its size.
        metadata["blob-id"] = file.blob_id
    return metadata


def already_stored(head: Mapping[str, Any] | None, file: RepoFile) -> bool:
    if head is None or (file.size is not None and head.get("ContentLength") != file.size):
        return False
    stored = head.get("Metadata") or {}
    return all(stored.get(name) == value for name, value in object_metadata(file).items())


def upload(s3: Any, local: Path, bucket: str, key: str, metadata: Mapping[str, str]) -> None:
    extra = {"Metadata": dict(metadata)} if metadata else None
    s3.upload_file(str(local), bucket, key, ExtraArgs=extra, Config=TRANSFER_CONFIG)


# --- Downloading and checking one file ---------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_free_space(workdir: Path, file: RepoFile) -> None:
    """Fail before downloading rather than after filling the disk (the size is the Hub's)."""
    free = shutil.disk_usage(workdir).free
    if file.size is not None and free < file.size:
        raise ImportWeightsError(
            f"out of space in the workdir {workdir}: {file.path} needs {human_size(file.size)}, "
            f"{human_size(free)} are free: give the scratch volume more than the largest file"
        )


def download(repo: str, commit: str, file: RepoFile, workdir: Path, token: str | None, sleep: SleepFn) -> Path:
    """Download one file into the workdir with huggingface_hub, trying again after any failure that is not permanent,
    over plain HTTP once hf_xet has failed."""
    for delay in (*RETRY_DELAYS_SECONDS, None):
        try:
            return Path(
                hf_hub_download(repo_id=repo, filename=file.path, revision=commit, local_dir=workdir, token=token)
            )
        except Exception as error:
            if delay is None or permanent(error):
                raise
            if not isinstance(error, TRANSFER_FAILED) and not use_plain_http():
                say(f"    {file.path}: {type(error).__name__} ({one_line(str(error), 120)}); again over plain HTTP")
            else:
                say(f"    {file.path}: the transfer broke off ({one_line(str(error), 120)}); trying again")
            sleep(delay)
    raise AssertionError("unreachable")


def use_plain_http() -> bool:
    """Have huggingface_hub download without hf_xet from now on; whether it already did. huggingface_hub reads
    HF_HUB_DISABLE_XET into constants at import from 0.34 (utils/_runtime.py, is_xet_available), from the
    environment before that."""
    already = bool(constants.HF_HUB_DISABLE_XET) if hasattr(constants, "HF_HUB_DISABLE_XET") else False
    constants.HF_HUB_DISABLE_XET = True
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    return already


def local_leftovers(workdir: Path, path: str) -> list[Path]:
    """The downloaded file and what huggingface_hub keeps about it in <local_dir>/.cache/huggingface/download/."""
    bookkeeping = workdir / ".cache" / "huggingface" / "download" / path
    return [
        workdir / path,
        bookkeeping.with_name(bookkeeping.name + ".metadata"),
        bookkeeping.with_name(bookkeeping.name + ".lock"),
    ]


def remove_local(workdir: Path, path: str) -> None:
    for leftover in local_leftovers(workdir, path):
        leftover.unlink(missing_ok=True)


def verify(file: RepoFile, local: Path, workdir: Path) -> None:
    """Check the download's size and, when the Hub publishes one (LFS files), its sha256 against the Hub's.

    huggingface_hub checks the size of what it receives, but not its hash.
    """
    size = local.stat().st_size
    if file.size is not None and size != file.size:
        remove_local(workdir, file.path)  # a corrupt copy must not be picked up again by the next run
        raise ImportWeightsError(
            f"{file.path} downloaded with {size} bytes, the Hub says {file.size}: run the Job again"
        )
    if file.sha256 and (digest := sha256_of(local)) != file.sha256:
        remove_local(workdir, file.path)
        raise ImportWeightsError(
            f"{file.path} downloaded with sha256 {digest}, the Hub says {file.sha256}: run the Job again"
        )


def import_file(s3: Any, source: Source, file: RepoFile, progress: str, sleep: SleepFn) -> StoredFile:
    """Make s3://bucket/prefix/<path> hold this file, downloading it only when S3 does not have it yet."""
    key = f"{source.prefix}/{file.path}"
    head = head_object(s3, source.bucket, key) if key in source.existing else None
    if already_stored(head, file):
        size = int(head["ContentLength"]) if head else 0
        say(f"{progress} {file.path} {human_size(size)} skipped: already in s3://{source.bucket}/{key}")
        return StoredFile(file.path, size, file.sha256)
    check_free_space(source.workdir, file)
    started = time.monotonic()
    local = download(source.repo, source.commit, file, source.workdir, source.token, sleep)
    downloaded = time.monotonic()
    verify(file, local, source.workdir)
    size = local.stat().st_size
    verified = time.monotonic()
    upload(s3, local, source.bucket, key, object_metadata(file))
    uploaded = time.monotonic()
    remove_local(source.workdir, file.path)
    say(
        f"{progress} {file.path} {human_size(size)} uploaded "
        f"(download {rate(size, downloaded - started)}, upload {rate(size, uploaded - verified)})"
    )
    return StoredFile(file.path, size, file.sha256)


# --- Tokenizer encodings -----------------------------------------------------------------------------------------


def fetch_encoding(url: str, local: Path, expected_sha256: str) -> None:
    """Download url to local, checking its sha256. urllib, as huggingface_hub's own session is requests' in its 0.x
    releases and httpx's in 1.x; urllib follows HTTPS_PROXY and NO_PROXY as they do."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, local.open("wb") as stream:
            while chunk := response.read(1 << 20):
                stream.write(chunk)
                digest.update(chunk)
    except urllib.error.HTTPError as error:
        raise ImportWeightsError(f"{url} answered HTTP {error.code}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise ImportWeightsError(
            f"{url} could not be reached from the VPC (a NAT gateway?): {one_line(str(error), 120)}"
        ) from error
    if digest.hexdigest() != expected_sha256:
        local.unlink(missing_ok=True)
        raise ImportWeightsError(f"{url} has sha256 {digest.hexdigest()}, expected {expected_sha256}")


def ensure_encoding(s3: Any, bucket: str, prefix: str, name: str, workdir: Path) -> StoredFile:
    """Make s3://bucket/prefix/<name> hold the tiktoken encoding with the sha256 tiktoken expects."""
    expected = EXPECTED_ENCODING_SHA256[name]
    key = f"{prefix}/{name}"
    head = head_object(s3, bucket, key) if key in list_objects(s3, bucket, key) else None
    if head is not None and (head.get("Metadata") or {}).get("sha256") == expected:
        say(f"encoding {name} {human_size(int(head['ContentLength']))} skipped: already in s3://{bucket}/{key}")
        return StoredFile(name, int(head["ContentLength"]), expected)
    url = os.environ.get("ENCODINGS_BASE_URL", DEFAULT_ENCODINGS_BASE_URL).rstrip("/") + "/" + name
    local = workdir / f"encoding-{name}"
    try:
        fetch_encoding(url, local, expected)
        size = local.stat().st_size
        upload(s3, local, bucket, key, {"sha256": expected})
    finally:
        local.unlink(missing_ok=True)
    say(f"encoding {name} {human_size(size)} uploaded to s3://{bucket}/{key}")
    return StoredFile(name, size, expected)


# --- The file system ---------------------------------------------------------------------------------------------


def not_yet_shown(expected: Mapping[Path, int]) -> list[str]:
    """The expected files the file system does not show yet at their full size."""
    problems = []
    for path, size in expected.items():
        try:
            shown = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path} (absent)")
            continue
        if shown != size:
            problems.append(f"{path} ({shown} bytes, expected {size})")
    return problems


def wait_until_shown(
    check: Callable[[], list[str]], what: str, *, wait_seconds: float, poll_seconds: float, sleep: SleepFn
) -> None:
    """Poll check() until it reports nothing missing; the association imports new objects with some delay."""
    deadline = time.monotonic() + wait_seconds
    while problems := check():
        if time.monotonic() >= deadline:
            shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise ImportWeightsError(
                f"the file system did not show {what} within {wait_seconds:g} s, missing {len(problems)}: {shown} "
                "(does the data repository association import new objects from this bucket, and is --mount where "
                "the bucket's root appears?)"
            )
        sleep(poll_seconds)


def hydrate(paths: Sequence[Path]) -> None:
    """Read every file once, end to end: Lustre then holds its data instead of fetching it from S3 on first read."""
    started, total = time.monotonic(), 0
    buffer = bytearray(CHUNK_BYTES)
    for path in paths:
        with path.open("rb", buffering=0) as stream:
            while read := stream.readinto(buffer):
                total += read
    elapsed = time.monotonic() - started
    say(f"read {len(paths)} files ({human_size(total)}) from the file system at {rate(total, elapsed)}")


def marker_shown(path: Path, commit: str) -> list[str]:
    try:
        shown = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"{path} (absent)"]
    if not isinstance(shown, dict) or shown.get("commit") != commit:
        return [f"{path} (another import's)"]
    return []


# --- The import --------------------------------------------------------------------------------------------------


def marker_matches(marker: Mapping[str, Any] | None, repo: str, revision: str, commit: str | None = None) -> bool:
    if not marker or marker.get("repo") != repo:
        return False
    return marker.get("revision") == revision or (commit is not None and marker.get("commit") == commit)


def adapter_problems(config: dict[str, Any], max_lora_rank: int) -> list[str]:
    """What in an adapter's adapter_config.json vLLM would refuse at every replica's start, with a model whose
    --max-lora-rank is `max_lora_rank` (vllm/lora/peft_helper.py, validate_legal and _validate_features, at v0.11.2
    and v0.31.0): a rank r above it (vLLM 0.34 compares rank_pattern's ranks too; a rank that is not positive vLLM
    cannot use), DoRA, a bias other than "none", or modules saved whole (0.11.2 refuses any; 0.31.0 all but a
    classifier's, which a generative model has none of)."""
    problems = []
    ranks = [int(config.get("r") or 0), *(int(rank) for rank in (config.get("rank_pattern") or {}).values())]
    if ranks[0] <= 0:
        problems.append(f"its rank r is {config.get('r')!r} in adapter_config.json, not a positive number")
    elif max(ranks) > max_lora_rank:
        problems.append(
            f"its rank is {max(ranks)} (adapter_config.json r and rank_pattern), above the model's --max-lora-rank "
            f'{max_lora_rank} ("LoRA rank ... is greater than max_lora_rank"): give models[].adapters[].rank as '
            f"{max(ranks)}"
        )
    if config.get("use_dora"):
        problems.append("it uses DoRA (use_dora), which vLLM does not load")
    if config.get("bias", "none") != "none":
        problems.append(f"it trains a bias ({config['bias']!r}), which vLLM does not load")
    if config.get("modules_to_save"):
        problems.append(f"it saves modules whole ({config['modules_to_save']}), which vLLM does not load")
    return problems


def check_adapter(s3: Any, args: argparse.Namespace, commit: str) -> None:
    """Fail the import, naming the setting to change, on an adapter every replica would refuse at its start."""
    body = s3.get_object(Bucket=args.bucket, Key=f"{args.prefix}/{ADAPTER_CONFIG}")["Body"].read()
    if problems := adapter_problems(json.loads(body), args.max_lora_rank):
        raise ImportWeightsError(f"{args.repo}@{commit} is an adapter vLLM would refuse: {'; '.join(problems)}")


def import_revision(args: argparse.Namespace, sleep: SleepFn) -> None:
    s3 = boto3.client("s3", region_name=args.region)
    marker_key = f"{args.prefix}/{MARKER}"
    args.workdir.mkdir(parents=True, exist_ok=True)

    # First: shared by every gpt-oss model, cheap when present, and a blocked download shows before the weights.
    encodings = [ensure_encoding(s3, args.bucket, args.encodings_prefix, name, args.workdir) for name in args.encodings]
    if args.repo is None:
        # Weights from the bucket, not the Hub (models[].weights_s3_prefix): the encodings are all there is to bring.
        if args.mount:
            expected = {args.mount / args.encodings_prefix / e.path: e.size for e in encodings}
            wait_until_shown(
                lambda: not_yet_shown(expected),
                "the encodings",
                wait_seconds=args.wait_seconds,
                poll_seconds=args.poll_seconds,
                sleep=sleep,
            )
            hydrate(list(expected))
            say(f"encodings ready on the file system: {args.mount / args.encodings_prefix}")
        return

    # The marker pins what this prefix holds: a complete import of the same revision name is not redone even if
    # the branch has moved since, so replicas never see files change under them.
    existing = list_objects(s3, args.bucket, f"{args.prefix}/")
    marker = read_marker(s3, args.bucket, marker_key) if marker_key in existing else None
    commit, stored, complete = settle_revision(s3, args, marker, existing, sleep)
    if args.max_lora_rank is not None:
        check_adapter(s3, args, commit)

    if args.mount:
        expected = {args.mount / args.prefix / f.path: f.size for f in stored}
        expected |= {args.mount / args.encodings_prefix / e.path: e.size for e in encodings}
        say(f"waiting for {len(expected)} files to show under {args.mount}")
        wait_until_shown(
            lambda: not_yet_shown(expected),
            f"the files of {args.repo}@{commit}",
            wait_seconds=args.wait_seconds,
            poll_seconds=args.poll_seconds,
            sleep=sleep,
        )
        hydrate(list(expected))

    if not complete:
        write_marker(s3, args, commit, stored, encodings)

    if args.mount:
        marker_path = args.mount / args.prefix / MARKER
        wait_until_shown(
            lambda: marker_shown(marker_path, commit),
            f"the marker of {args.repo}@{commit}",
            wait_seconds=args.wait_seconds,
            poll_seconds=args.poll_seconds,
            sleep=sleep,
        )
        say(f"ready on the file system: {args.mount / args.prefix}")


def settle_revision(
    s3: Any, args: argparse.Namespace, marker: Mapping[str, Any] | None, existing: Mapping[str, int], sleep: SleepFn
) -> tuple[str, list[StoredFile], bool]:
    """The revision's commit and files in the bucket, and whether a marker vouched for them already: what the
    marker records, or else the files imported now."""
    marker_key = f"{args.prefix}/{MARKER}"

    def recorded() -> tuple[str, list[StoredFile], bool]:
        assert marker is not None
        commit = str(marker.get("commit"))
        say(f"already complete: s3://{args.bucket}/{marker_key} records {args.repo}@{commit}")
        return commit, [StoredFile(f["path"], int(f["size"]), f.get("sha256")) for f in marker.get("files", [])], True

    if marker_matches(marker, args.repo, args.revision):
        return recorded()
    token = None
    if args.token_secret:
        token = read_token(boto3.client("secretsmanager", region_name=args.region), args.token_secret)
    commit, repo_files = resolve_revision(args.repo, args.revision, token)
    say(f"{args.repo}@{args.revision} is commit {commit}")
    if marker_matches(marker, args.repo, args.revision, commit):
        return recorded()
    selected = select_files(repo_files, args.include)
    if not selected:
        listing = ", ".join(sorted(f.path for f in repo_files)[:20])
        more = f" and {len(repo_files) - 20} more" if len(repo_files) > 20 else ""
        raise ImportWeightsError(
            f"no file matches --include {' '.join(args.include)} (patterns match at their own depth: "
            f"'*.safetensors' is root files only); the repo has: {listing or 'no files'}{more}"
        )
    if missing := sorted(set(args.require) - {file.path for file in selected}):
        raise ImportWeightsError(
            f"the repo has no {', '.join(missing)} at {commit}, which the model's replicas need (--require)"
        )
    if marker is not None:
        # Replicas may be serving what that marker vouches for: never overwrite it with other files.
        raise ImportWeightsError(
            f"s3://{args.bucket}/{marker_key} records another import ({marker.get('repo')}@"
            f"{marker.get('revision')}, commit {marker.get('commit')}): give this revision a prefix of its own"
        )
    source = Source(args.repo, commit, token, args.bucket, args.prefix, args.workdir, existing)
    stored = []
    for number, file in enumerate(selected, start=1):
        try:
            stored.append(import_file(s3, source, file, f"[{number}/{len(selected)}]", sleep))
        except Exception as error:
            error.add_note(f"while importing {file.path}")
            raise
    return commit, stored, False


def write_marker(
    s3: Any, args: argparse.Namespace, commit: str, stored: Sequence[StoredFile], encodings: Sequence[StoredFile]
) -> None:
    marker = {
        "repo": args.repo,
        "revision": args.revision,
        "commit": commit,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in stored],
        "encodings": [
            {"name": e.path, "key": f"{args.encodings_prefix}/{e.path}", "size": e.size, "sha256": e.sha256}
            for e in encodings
        ],
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    key = f"{args.prefix}/{MARKER}"
    body = json.dumps(marker, indent=2).encode()
    s3.put_object(Bucket=args.bucket, Key=key, Body=body, ContentType="application/json")
    say(f"wrote s3://{args.bucket}/{key}: {len(stored)} files of {args.repo}@{commit}")


# --- Failures ----------------------------------------------------------------------------------------------------


def error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def status_of(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def describe_failure(error: BaseException, args: argparse.Namespace) -> str:
    """One line saying why the import failed and what to do, from the most telling error in the chain."""
    chain = list(error_chain(error))

    def first(predicate: Callable[[BaseException], bool]) -> BaseException | None:
        return next((e for e in chain if predicate(e)), None)

    token = f"the token from {args.token_secret!r} has no access" if args.token_secret else "no token was given"
    hub = constants.ENDPOINT
    if found := first(lambda e: isinstance(e, ImportWeightsError)):
        return str(found)
    if first(lambda e: isinstance(e, GatedRepoError)) or first(
        lambda e: (
            isinstance(e, HfHubHTTPError) and not isinstance(e, RepositoryNotFoundError) and status_of(e) in (401, 403)
        )
    ):
        return (
            f"{args.repo} is gated: accept its licence on the Hub ({hub}/{args.repo}) and give a token with "
            f"models[].hf_token_secret ({token})"
        )
    if first(lambda e: isinstance(e, RevisionNotFoundError)):
        return f"revision {args.revision!r} not found in {args.repo} (a branch, tag or 40-hex commit of the repo)"
    if first(lambda e: isinstance(e, RepositoryNotFoundError)):
        return (
            f"repository {args.repo} not found on the Hub ({hub}), or private and {token}: check models[].model "
            "and models[].hf_token_secret"
        )
    if first(lambda e: isinstance(e, OfflineModeIsEnabled)) and os.environ.get("HF_HUB_OFFLINE"):
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it in the import Job"
    if first(lambda e: isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return f"out of space in the workdir {args.workdir}: give the scratch volume more than the largest file"
    if found := first(
        lambda e: isinstance(e, (*HUB_UNREACHABLE, OfflineModeIsEnabled)) and not isinstance(e, TRANSFER_BROKEN)
    ):
        return (
            f"the Hub ({hub}) could not be reached from the VPC: do the nodes' subnets route to a NAT gateway "
            f"(or does the Job need a proxy)? ({type(found).__name__}: {one_line(str(found), 160)})"
        )
    if first(lambda e: isinstance(e, TRANSFER_BROKEN)):
        return "downloads from the Hub kept breaking off: run the Job again, it skips the files already stored"
    if found := first(lambda e: isinstance(e, HfHubHTTPError) and not isinstance(e, EntryNotFoundError)):
        return f"the Hub answered HTTP {status_of(found)}: {one_line(str(found), 200)} (try again later)"
    if first(lambda e: isinstance(e, LocalEntryNotFoundError)):
        return f"the Hub ({hub}) could not be reached from the VPC (a NAT gateway?): {one_line(str(error), 160)}"
    if first(lambda e: isinstance(e, EntryNotFoundError)):
        return f"a file listed at this revision is missing on the Hub: {one_line(str(error), 200)}"
    if first(lambda e: isinstance(e, botocore.exceptions.NoCredentialsError)):
        return "no AWS credentials: link the Job's service account to an IAM role (EKS Pod Identity or IRSA)"
    if found := first(lambda e: isinstance(e, botocore.exceptions.EndpointConnectionError)):
        return f"an AWS endpoint could not be reached from the VPC: {one_line(str(found), 200)}"
    if found := first(lambda e: isinstance(e, botocore.exceptions.ClientError)):
        hint = " (missing objects read as 403 without s3:ListBucket)" if "HeadObject" in str(found) else ""
        return f"AWS refused: {one_line(str(found), 200)}{hint}"
    return f"{type(error).__name__}: {one_line(str(error))}"


def write_termination_log(path: str, message: str) -> None:
    """Kubernetes creates the file in every container and shows what it holds in the pod's status."""
    if not os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as log:
            log.write(message[:TERMINATION_LOG_LIMIT] + "\n")
    except OSError:
        pass  # reporting must not hide the failure itself


def main(argv: Sequence[str] | None = None, *, sleep: SleepFn = time.sleep) -> int:
    args = parse_args(argv)
    disable_progress_bars()  # one line per file instead of tqdm bars in the Job's log
    try:
        import_revision(args, sleep)
    except Exception as error:
        cause = describe_failure(error, args)
        notes = [note for note in getattr(error, "__notes__", []) if note not in cause]
        what = f"{args.repo}@{args.revision}" if args.repo else "the encodings"
        message = f"import of {what} failed: {cause}" + "".join(f" ({n})" for n in notes)
        print(message, file=sys.stderr, flush=True)
        write_termination_log(args.termination_log, message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
