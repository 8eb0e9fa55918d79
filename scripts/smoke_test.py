"""A real inference request against a deployed model: the walkthrough's port-forward and curl, scripted.

    python -m scripts.smoke_test --namespace gpt-oss-20b --service gptoss-service --model openai/gpt-oss-20b

waits for the model's Deployment to finish rolling out, forwards a local port to its Service,
sends "What is machine learning?" to /v1/chat/completions and fails, with a message that says
why, on anything but a 200 with a non-empty answer within the time allowed. With --url it skips
kubectl and asks an endpoint that is already reachable. Standard library only, so it runs on a
bare CodeBuild image (the pipeline's post-deploy step) as on a laptop. Exit 0: the model answered.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

PROMPT = "What is machine learning?"
MAX_TOKENS = 100
SERVICE_PORT = 8000


class SmokeTestError(Exception):
    """The model did not answer as a serving model must; the message says how."""


def chat_request(model: str) -> dict[str, object]:
    """The walkthrough's chat completion request: the one prompt every check of this project sends."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.7,
        "max_tokens": MAX_TOKENS,
    }


def ask(base_url: str, model: str, *, timeout: float) -> str:
    """Send the test prompt; return the answer's text, or raise SmokeTestError."""
    body = json.dumps(chat_request(model)).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise SmokeTestError(f"{model}: HTTP {error.code} from {request.full_url}: {error.read()[:300]!r}") from None
    except TimeoutError:
        raise SmokeTestError(f"{model}: no answer from {request.full_url} within {timeout:.0f} s") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise SmokeTestError(f"{model}: no answer from {request.full_url} within {timeout:.0f} s") from None
        raise SmokeTestError(f"{model}: cannot reach {request.full_url}: {error.reason}") from None
    try:
        answer = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SmokeTestError(f"{model}: the answer is not an OpenAI chat completion: {payload[:300]!r}") from None
    if not isinstance(answer, str) or not answer.strip():
        raise SmokeTestError(f"{model}: the answer is empty")
    return answer


def wait_for_rollout(namespace: str, deployment: str, *, timeout: float) -> None:
    result = subprocess.run(
        ["kubectl", "-n", namespace, "rollout", "status", f"deployment/{deployment}", f"--timeout={int(timeout)}s"],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SmokeTestError(f"deployment {namespace}/{deployment} did not roll out: {result.stderr.strip()}")


@contextmanager
def port_forward(namespace: str, service: str, *, timeout: float) -> Iterator[str]:
    """Forward a free local port to the Service, as the walkthrough does; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["kubectl", "-n", namespace, "port-forward", f"service/{service}", f"{local_port}:{SERVICE_PORT}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise SmokeTestError(f"kubectl port-forward to {namespace}/{service} ended: {process.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", local_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SmokeTestError(
                        f"port-forward to {namespace}/{service} not ready in {timeout:.0f} s"
                    ) from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{local_port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.smoke_test", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the served model name, e.g. openai/gpt-oss-20b")
    parser.add_argument("--url", help="ask this base URL instead of port-forwarding (e.g. http://localhost:8000)")
    parser.add_argument("--namespace", help="the model's namespace (with port-forwarding)")
    parser.add_argument("--service", help="the model's Service (with port-forwarding)")
    parser.add_argument("--deployment", help="the Deployment to wait for (default: the namespace's name)")
    parser.add_argument("--rollout-timeout", type=float, default=1800, help="seconds to wait for the rollout")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if not args.url and not (args.namespace and args.service):
        parser.error("give --url, or --namespace and --service")
    try:
        if args.url:
            answer = ask(args.url, args.model, timeout=args.request_timeout)
        else:
            wait_for_rollout(args.namespace, args.deployment or args.namespace, timeout=args.rollout_timeout)
            with port_forward(args.namespace, args.service, timeout=60) as url:
                answer = ask(url, args.model, timeout=args.request_timeout)
    except SmokeTestError as failure:
        print(f"smoke test failed: {failure}", file=sys.stderr)
        return 1
    print(f"{args.model} answered: {answer.strip()[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
