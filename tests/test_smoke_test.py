"""scripts/smoke_test.py against a real HTTP server on 127.0.0.1 that answers like an OpenAI-compatible API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from scripts.smoke_test import MAX_TOKENS, PROMPT, SmokeTestError, ask
from tests.conftest import ROOT

MODEL = "openai/gpt-oss-20b"


def completion(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


BEHAVIOURS: dict[str, tuple[int, bytes]] = {
    "good": (200, completion("Machine learning is a branch of computer science.")),
    "empty": (200, completion("   ")),
    "error": (500, b'{"error": "CUDA out of memory"}'),
    "malformed": (200, b"<html>not json</html>"),
}


class FakeVllm(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions the way the server's `behaviour` says; records what it was asked."""

    behaviour = "good"
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        FakeVllm.requests.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
        if self.behaviour == "silent":
            time.sleep(5)  # longer than the client waits
            return
        status, body = BEHAVIOURS[self.behaviour]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (FakeVllm,), {"behaviour": request.param})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeVllm.requests.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("server", ["good"], indirect=True)
def test_a_good_answer_passes_and_the_request_is_the_walkthroughs(server: str) -> None:
    assert ask(server, MODEL, timeout=5) == "Machine learning is a branch of computer science."
    (sent,) = FakeVllm.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == MODEL
    assert (
        sent["body"]["messages"]
        == [{"role": "user", "content": PROMPT}]
        == [{"role": "user", "content": "What is machine learning?"}]
    )
    assert sent["body"]["max_tokens"] == MAX_TOKENS == 100


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("empty", "openai/gpt-oss-20b: the answer is empty"),
        ("error", "openai/gpt-oss-20b: HTTP 500 from http://127.0.0.1:"),
        ("malformed", "openai/gpt-oss-20b: the answer is not an OpenAI chat completion: b'<html>not json</html>'"),
    ],
    indirect=["server"],
)
def test_a_bad_answer_fails_with_a_clear_message(server: str, message: str) -> None:
    with pytest.raises(SmokeTestError) as failure:
        ask(server, MODEL, timeout=5)
    assert str(failure.value).startswith(message)


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_server_that_never_answers_fails_within_the_timeout(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(SmokeTestError, match=r"no answer from http://127\.0\.0\.1:\d+/v1/chat/completions within 1 s"):
        ask(server, MODEL, timeout=1)
    assert time.monotonic() - started < 3


def test_nothing_listening_fails_with_a_clear_message() -> None:
    with pytest.raises(SmokeTestError, match=r"cannot reach http://127\.0\.0\.1:9/v1/chat/completions"):
        ask("http://127.0.0.1:9", MODEL, timeout=2)


@pytest.mark.parametrize(("server", "exit_code"), [("good", 0), ("error", 1)], indirect=["server"])
def test_command_exits_zero_only_when_the_model_answers(server: str, exit_code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.smoke_test", "--url", server, "--model", MODEL, "--request-timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == exit_code
    if exit_code:
        assert result.stderr.startswith("smoke test failed: openai/gpt-oss-20b: HTTP 500")
    else:
        assert result.stdout.startswith("openai/gpt-oss-20b answered: Machine learning")
