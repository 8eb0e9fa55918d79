"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints and headers huggingface_hub uses (model info at a
revision, resolve with LFS redirects and Range resumes, gated repositories), serving repositories held in memory."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import huggingface_hub.file_download
import pytest

from tests.stand_ins import serving


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha256 = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()


@dataclass
class FakeRepo:
    """A repository at one commit; `token` makes it gated (downloads need `Authorization: Bearer <token>`)."""

    repo_id: str
    files: dict[str, bytes]
    lfs: set[str]
    commit: str = field(default_factory=lambda: secrets.token_hex(20))
    token: str | None = None
    gate_api: bool = False  # the real Hub lists a gated repo's files to anyone; some setups may not

    def resolve(self, revision: str) -> str | None:
        return self.commit if revision in ("main", self.commit) else None

    def sibling(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        if path not in self.lfs:
            return {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        pointer = lfs_pointer(data)
        lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
        return {"rfilename": path, "size": len(data), "blobId": git_blob_id(pointer), "lfs": lfs}


@dataclass
class Request:
    method: str
    kind: str  # api, resolve, lfs, encodings
    file: str | None
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    """What the stand-in serves, what it is told to do wrong, and every request it answered."""

    url: str = ""
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    encodings: dict[str, bytes] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)  # cut the body of this file short, this many times
    served_instead: dict[str, bytes] = field(default_factory=dict)  # corrupt a file in transit
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def take_cut(self, path: str) -> bool:
        with self.lock:
            if self.cuts.get(path, 0) <= 0:
                return False
            self.cuts[path] -= 1
            return True

    def touched(self) -> set[str]:
        """Repo files the client asked about or downloaded."""
        return {r.file for r in self.requests if r.file and r.kind in ("resolve", "lfs")}

    def downloads(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.kind in ("resolve", "lfs") and r.file == path]


class HubHandler(BaseHTTPRequestHandler):
    """GET /api/models/{repo}/revision/{rev}; HEAD and GET /{repo}/resolve/{rev}/{path}; GET /lfs/{sha256}."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    hub: ClassVar[FakeHub]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def answer(self, *, head: bool) -> None:
        # Split before unquoting: model_info quotes the revision with safe="" ("refs/pr/1" -> "refs%2Fpr%2F1").
        parts = [unquote(part) for part in urlsplit(self.path).path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            self.model_info(f"{parts[2]}/{parts[3]}", parts[5], head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self.resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
        elif len(parts) == 2 and parts[0] == "lfs":
            self.lfs_object(parts[1], head)
        elif len(parts) == 2 and parts[0] == "encodings" and parts[1] in self.hub.encodings:
            self.log("encodings", parts[1])
            self.send_body(parts[1], self.hub.encodings[parts[1]], head, {})
        else:
            self.log("other", None)
            self.error(404, None, "Not found", head)

    def log(self, kind: str, file: str | None) -> None:
        request = Request(self.command, kind, file, self.headers.get("Range"), self.headers.get("Authorization"))
        with self.hub.lock:
            self.hub.requests.append(request)

    def error(self, status: int, code: str | None, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def gate(self, repo: FakeRepo, head: bool) -> bool:
        """Answer like the Hub for a gated repo: 401 without a token, 403 with one that has no access."""
        authorization = self.headers.get("Authorization")
        if repo.token is None or authorization == f"Bearer {repo.token}":
            return True
        if authorization is None:
            message = f"Access to model {repo.repo_id} is restricted. You must be authenticated to access it."
            self.error(401, "GatedRepo", message, head)
        else:
            message = f"Access to model {repo.repo_id} is restricted and you are not in the authorized list."
            self.error(403, "GatedRepo", message, head)
        return False

    def find(self, repo_id: str, revision: str, head: bool) -> tuple[FakeRepo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.error(404, "RepoNotFound", "Repository not found", head)
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None
        return repo, commit

    def model_info(self, repo_id: str, revision: str, head: bool) -> None:
        self.log("api", None)
        repo = self.hub.repos.get(repo_id)
        if repo is not None and repo.gate_api and not self.gate(repo, head):
            return
        found = self.find(repo_id, revision, head)
        if found is None:
            return
        repo, commit = found
        info = {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": commit,
            "private": False,
            "gated": "manual" if repo.token else False,
            "siblings": [repo.sibling(path) for path in sorted(repo.files)],
        }
        self.send_body(None, json.dumps(info).encode(), head, {"Content-Type": "application/json"})

    def resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        self.log("resolve", path)
        found = self.find(repo_id, revision, head)
        if found is None:
            return
        repo, commit = found
        if not self.gate(repo, head):
            return
        if path not in repo.files:
            self.error(404, "EntryNotFound", f"{path} does not exist on {commit}", head)
            return
        data = repo.files[path]
        if path in repo.lfs:
            # LFS files redirect to the CDN, another host (here: /lfs/<sha256> on this server, named localhost), and
            # describe the linked blob. huggingface_hub 1.x follows a redirect to the same host before it reads these
            # headers (utils/_http.py, _httpx_follow_hub_redirects_with_backoff), so the host must differ as the real
            # Hub's does.
            sha256 = hashlib.sha256(data).hexdigest()
            cdn = "localhost:" + self.headers["Host"].rpartition(":")[2]
            self.send_response(302)
            self.send_header("Location", f"http://{cdn}/lfs/{sha256}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_blob_id(lfs_pointer(data))}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        self.send_body(path, self.hub.served_instead.get(path, data), head, headers)

    def lfs_object(self, sha256: str, head: bool) -> None:
        for repo in self.hub.repos.values():
            for path in repo.lfs:
                if hashlib.sha256(repo.files[path]).hexdigest() == sha256:
                    self.log("lfs", path)
                    self.send_body(path, self.hub.served_instead.get(path, repo.files[path]), head, {})
                    return
        self.log("lfs", None)
        self.error(404, None, "Not found", head)

    def send_body(self, path: str | None, data: bytes, head: bool, headers: dict[str, str]) -> None:
        """200, or 206 from the offset of a `Range: bytes=N-` (how huggingface_hub resumes a partial file)."""
        start = 0
        requested = self.headers.get("Range", "")
        if requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes=") : -1])
        body = data[start:]
        self.send_response(206 if start else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if path is not None and self.hub.take_cut(path):
            # Half the body, then hang up: the client sees the connection end before Content-Length.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def hub_server() -> Iterator[tuple[ThreadingHTTPServer, type[HubHandler]]]:
    """The stand-in on a free port, answering until the block ends; set `handler.hub` to what it serves."""
    handler = type("Handler", (HubHandler,), {"hub": FakeHub()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server):
        yield server, handler


def point_huggingface_hub_at(url: str, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point huggingface_hub, already imported, at the stand-in: constants read HF_ENDPOINT at import, and
    file_download copied the URL template before 1.0. No token from the environment or ~/.cache, no user cache."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ENABLE_HF_TRANSFER", False, raising=False)  # before 1.0
    # A run that fell back to plain HTTP sets it for the rest of its process: each test starts with hf_xet allowed.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET"):
        monkeypatch.delenv(name, raising=False)
