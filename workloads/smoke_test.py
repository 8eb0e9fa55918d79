"""A real inference request against a deployed model: the walkthrough's port-forward and curl, scripted.

    python -m workloads.smoke_test --namespace gpt-oss-20b --service gptoss-service --model openai/gpt-oss-20b

waits for the Job importing the model's weights (--import-job; a failed import fails the test with
the Job's own reason) and for the model's Deployment to finish rolling out (polling it, past its
progress deadline if need be, for up to --rollout-timeout seconds in all), forwards a local port to
its Service, sends "What is machine learning?" to /v1/chat/completions and fails, with a message
that says why, on anything but a 200 whose content or reasoning text is non-empty within the time
allowed. It prints the answer's finish_reason ("length": cut off at max_tokens) and its beginning,
or the reasoning's when the content is empty. With --url it skips kubectl and asks an endpoint that
is already reachable. With --api-key-secret (a model that requires API keys) it reads the first key
of that Secrets Manager secret with the AWS CLI, checks that a request without a key is refused
(401), and sends the prompt with the key. With --ingress and --hostname (a model exposed through an
internal load balancer) it waits for the load balancer's address, then asks through https://HOSTNAME
instead of a port-forward, and also checks that /metrics is not routed there (404). With
--checks-from PATH it runs, one after the other, the checks each model's stack stored under that SSM
Parameter Store path (--only NAME: one model's). With --vllm-version it first asks a replica's /version
(through the Service, or --url) and fails unless it serves the vLLM release the stage pins. Standard library
only, so it runs on a bare CodeBuild image (the pipeline's post-deploy step) as on a laptop. Exit 0:
the model answered.
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
from dataclasses import dataclass
from typing import Any

PROMPT = "What is machine learning?"
# gpt-oss reasons before it answers: with little effort and room for both, the reply has content, not only
# reasoning (at 100 tokens it could spend them all reasoning and answer with a null content).
REASONING_EFFORT = "low"
MAX_TOKENS = 512
SERVICE_PORT = 8000
ROLLOUT_POLL_SECONDS = 10.0
# Auto Mode provisions the load balancer of a new Ingress in a few minutes.
LOAD_BALANCER_WAIT_SECONDS = 900


class SmokeTestError(Exception):
    """The model did not answer as a serving model must; the message says how."""


class NotReadyError(SmokeTestError):
    """No answer yet from something that may still be coming up (a new load balancer, its name)."""


# What a load balancer answers while its targets are not yet healthy.
COMING_UP = (502, 503, 504)


@dataclass(frozen=True)
class Answer:
    """What the model replied: its content and reasoning ("" when null) and why it stopped ("length": cut off)."""

    text: str
    reasoning: str
    finish_reason: str | None


def chat_request(model: str) -> dict[str, object]:
    """The walkthrough's chat completion request: the one prompt every check of this project sends."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.7,
        "reasoning_effort": REASONING_EFFORT,
        "max_tokens": MAX_TOKENS,
    }


def api_key_from_secret(secret: str) -> str:
    """The first API key of a model's secret ({"api-key": ["<key>", ...]}), read with the AWS CLI."""
    command = ["aws", "secretsmanager", "get-secret-value", "--secret-id", secret, "--query", "SecretString"]
    result = subprocess.run([*command, "--output", "text"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SmokeTestError(f"cannot read the API keys secret {secret}: {result.stderr.strip()}")
    try:
        keys = json.loads(result.stdout)["api-key"]
        if not isinstance(keys, list) or not keys or not all(isinstance(key, str) and key for key in keys):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise SmokeTestError(
            f'the API keys secret {secret} is not {{"api-key": ["<key>", ...]}} (docs/access.md, "API keys")'
        ) from None
    return keys[0]


def gateway_key(secret: str, client: str) -> str:
    """The key of one client of the gateway's clients secret ({"<client id>": "<key>", ...}), read with the AWS CLI."""
    command = ["aws", "secretsmanager", "get-secret-value", "--secret-id", secret, "--query", "SecretString"]
    result = subprocess.run([*command, "--output", "text"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SmokeTestError(f"cannot read the gateway's clients secret {secret}: {result.stderr.strip()}")
    try:
        key = json.loads(result.stdout)[client]
        if not isinstance(key, str) or not key.strip():
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise SmokeTestError(
            f'the clients secret {secret} has no key for {client} ({{"{client}": "<key>", ...}}, docs/gateway.md)'
        ) from None
    return key.strip()


def lists_model(base_url: str, model: str, api_key: str, *, timeout: float) -> None:
    """The gateway's GET /v1/models must name the model (Envoy AI Gateway answers it from the routes)."""
    request = urllib.request.Request(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listed = [entry.get("id") for entry in json.loads(response.read()).get("data", [])]
    except urllib.error.HTTPError as error:
        failure = NotReadyError if error.code in COMING_UP else SmokeTestError
        raise failure(f"{base_url}/v1/models answered HTTP {error.code}") from None
    except (urllib.error.URLError, TimeoutError, ValueError, AttributeError) as error:
        raise NotReadyError(f"cannot list the gateway's models at {base_url}: {error}") from None
    if model not in listed:
        raise SmokeTestError(f"the gateway's /v1/models does not list {model}: {listed}")


def http_status(url: str, *, timeout: float) -> int:
    """The status of a GET without credentials; an unreachable server raises SmokeTestError."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        if error.code in COMING_UP:
            raise NotReadyError(f"{url} answered HTTP {error.code}") from None
        return error.code
    except (urllib.error.URLError, TimeoutError) as error:
        raise NotReadyError(f"cannot reach {url}: {error}") from None


def not_routed(base_url: str, path: str, *, timeout: float) -> None:
    """The load balancer must answer 404 for a path it does not route to vLLM; raise SmokeTestError if not."""
    status = http_status(f"{base_url}{path}", timeout=timeout)
    if status != 404:
        raise SmokeTestError(f"{base_url}{path} answered HTTP {status}: the load balancer must not route {path}")


def wait_for_load_balancer(namespace: str, ingress: str, *, timeout: float, interval: float = 15.0) -> str:
    """The address Auto Mode gave the Ingress's load balancer, once it has one (it takes minutes)."""
    started = time.monotonic()
    while True:
        state = _kubectl_json(namespace, "ingress", ingress)
        addresses = state.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        if addresses and addresses[0].get("hostname"):
            return addresses[0]["hostname"]
        waited = time.monotonic() - started
        if waited >= timeout:
            raise SmokeTestError(f"ingress {namespace}/{ingress} has no load balancer address after {waited:.0f} s")
        time.sleep(min(interval, timeout - waited))


def resolves(hostname: str) -> bool:
    try:
        socket.getaddrinfo(hostname, 443)
    except socket.gaierror:
        return False
    return True


def refuses_without_key(base_url: str, model: str, *, timeout: float) -> None:
    """A model that requires API keys must answer 401 to a request that has none; raise SmokeTestError if not."""
    status = http_status(f"{base_url}/v1/models", timeout=timeout)
    if status != 401:
        raise SmokeTestError(f"{model}: a request without an API key got HTTP {status}, not 401")


def ask(base_url: str, model: str, *, timeout: float, api_key: str | None = None) -> Answer:
    """Send the test prompt (with the API key, if given); return the answer, or raise SmokeTestError."""
    body = json.dumps(chat_request(model)).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        failure = NotReadyError if error.code in COMING_UP else SmokeTestError
        raise failure(f"{model}: HTTP {error.code} from {request.full_url}: {error.read()[:300]!r}") from None
    except TimeoutError:
        raise SmokeTestError(f"{model}: no answer from {request.full_url} within {timeout:g} s") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise SmokeTestError(f"{model}: no answer from {request.full_url} within {timeout:g} s") from None
        raise NotReadyError(f"{model}: cannot reach {request.full_url}: {error.reason}") from None
    try:
        choice = json.loads(payload)["choices"][0]
        message = choice["message"]
        content = message.get("content")
        # A reasoning model that runs out of tokens before it answers has only reasoning: vLLM 0.11.2 returns
        # it as reasoning_content, newer versions as reasoning.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        finish_reason = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise SmokeTestError(f"{model}: the answer is not an OpenAI chat completion: {payload[:300]!r}") from None
    if not all(isinstance(value, str | None) for value in (content, reasoning, finish_reason)):
        raise SmokeTestError(f"{model}: the answer is not an OpenAI chat completion: {payload[:300]!r}")
    answer = Answer(text=content or "", reasoning=reasoning or "", finish_reason=finish_reason)
    if not answer.text.strip() and not answer.reasoning.strip():
        raise SmokeTestError(f"{model}: the answer is empty: {json.dumps(choice)[:300]}")
    return answer


def rollout_complete(deployment: dict[str, Any]) -> bool:
    """Whether the Deployment's rollout is done, by the rule `kubectl rollout status` applies."""
    status = deployment.get("status", {})  # the API server leaves out the counts that are 0
    updated = status.get("updatedReplicas", 0)
    return (
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and updated >= deployment["spec"].get("replicas", 1)  # 1: the API server's default
        and status.get("replicas", 0) <= updated  # no old replicas left
        and status.get("availableReplicas", 0) >= updated
    )


def _progressing(deployment: dict[str, Any]) -> dict[str, Any]:
    return _condition(deployment, "Progressing")


def _rollout_status(deployment: dict[str, Any]) -> str:
    status, progressing = deployment.get("status", {}), _progressing(deployment)
    return (
        f"{deployment['spec'].get('replicas', 1)} wanted, {status.get('replicas', 0)} present, "
        f"{status.get('updatedReplicas', 0)} updated, {status.get('availableReplicas', 0)} available; "
        f"Progressing {progressing.get('status', '?')} ({progressing.get('reason', '?')}): "
        f"{progressing.get('message', '')}"
    )


def _kubectl_json(namespace: str, *args: str) -> dict[str, Any]:
    """`kubectl -n NAMESPACE get ARGS -o json`; an error (no such object, no access) will not go away by waiting."""
    result = subprocess.run(["kubectl", "-n", namespace, "get", *args, "-o", "json"], capture_output=True, text=True)
    what = f"{args[0]} {namespace}/{' '.join(args[1:])}"
    if result.returncode:
        raise SmokeTestError(f"cannot read {what}: {result.stderr.strip()}")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise SmokeTestError(f"kubectl printed no JSON for {what}: {result.stdout[:300]!r}") from None


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((condition for condition in conditions if condition.get("type") == kind), {})


def _failure_message(namespace: str, job: str) -> str:
    """Why an import failed, as its last pod said in its termination message (or log tail): an adapter's import
    (an init container) or the weights'."""
    pods = _kubectl_json(namespace, "pods", "-l", f"job-name={job}")["items"]
    for pod in sorted(pods, key=lambda pod: pod["metadata"].get("creationTimestamp", ""), reverse=True):
        status = pod.get("status", {})
        for container in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
            terminated = container.get("state", {}).get("terminated", {})
            if terminated.get("message"):
                return terminated["message"].strip()
    return "no pod said why; see kubectl logs"


def wait_for_import(namespace: str, job: str, *, timeout: float, interval: float = ROLLOUT_POLL_SECONDS) -> None:
    """Wait for the Job that imports the model's weights: done, failed (with its reason), or out of time."""
    name = f"{namespace}/{job}"
    started = time.monotonic()
    noted = False
    while True:
        state = _kubectl_json(namespace, "job", job)
        if state.get("status", {}).get("succeeded", 0) >= 1 or _condition(state, "Complete").get("status") == "True":
            return
        if _condition(state, "Failed").get("status") == "True":
            raise SmokeTestError(f"the weights import {name} failed: {_failure_message(namespace, job)}")
        waited = time.monotonic() - started
        if not noted:
            noted = True
            print(f"waiting for the weights import {name} (kubectl -n {namespace} logs -f job/{job})", file=sys.stderr)
        if waited >= timeout:
            raise SmokeTestError(f"the weights import {name} did not finish within {waited:.0f} s")
        time.sleep(min(interval, timeout - waited))


def wait_for_rollout(
    namespace: str, deployment: str, *, timeout: float, interval: float = ROLLOUT_POLL_SECONDS
) -> None:
    """Poll the Deployment every `interval` seconds until its rollout is complete, for up to `timeout` seconds.

    Not `kubectl rollout status`: that gives up as soon as the Deployment passes its progressDeadlineSeconds,
    whatever its --timeout, and a first start (the first image pull through the registry cache, a scarce GPU
    instance) can be slow without being stuck.
    """
    name = f"{namespace}/{deployment}"
    started = time.monotonic()
    noted_deadline = False
    while True:
        state = _kubectl_json(namespace, "deployment", deployment)
        if rollout_complete(state):
            return
        waited = time.monotonic() - started
        if not noted_deadline and _progressing(state).get("reason") == "ProgressDeadlineExceeded":
            noted_deadline = True
            print(
                f"deployment {name} is past the Deployment's progress deadline; "
                f"still waiting up to {max(timeout - waited, 0):.0f} s",
                file=sys.stderr,
            )
        if waited >= timeout:
            raise SmokeTestError(
                f"deployment {name} did not roll out within {waited:.0f} s; last status: {_rollout_status(state)}"
            )
        time.sleep(min(interval, timeout - waited))


@contextmanager
def port_forward(namespace: str, service: str, *, timeout: float, port: int = SERVICE_PORT) -> Iterator[str]:
    """Forward a free local port to the Service's `port`, as the walkthrough does; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["kubectl", "-n", namespace, "port-forward", f"service/{service}", f"{local_port}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                said = process.stderr.read() if process.stderr else ""
                raise SmokeTestError(f"kubectl port-forward to {namespace}/{service} ended: {said}")
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


def through_load_balancer(
    args: argparse.Namespace, api_key: str | None, *, interval: float = 15.0, url: str | None = None
) -> Answer:
    """Ask through `url` (https://HOSTNAME) once the load balancer has an address, checking that /metrics is
    not routed; a new load balancer, its targets and its name take minutes, so what is not there yet is
    asked again until LOAD_BALANCER_WAIT_SECONDS have passed."""
    started = time.monotonic()
    namespace = args.ingress_namespace or args.namespace
    address = wait_for_load_balancer(namespace, args.ingress, timeout=LOAD_BALANCER_WAIT_SECONDS)
    url = url or f"https://{args.hostname}"
    while True:
        try:
            if not resolves(args.hostname):
                raise NotReadyError(f"{args.hostname} does not resolve: point it at the load balancer, {address}")
            not_routed(url, "/metrics", timeout=args.request_timeout)
            return checked_ask(url, args, api_key)
        except NotReadyError as failure:
            waited = time.monotonic() - started
            if waited >= LOAD_BALANCER_WAIT_SECONDS:
                raise SmokeTestError(f"{failure} (still, {waited:.0f} s after the Ingress was applied)") from None
            time.sleep(min(interval, LOAD_BALANCER_WAIT_SECONDS - waited))


def served_version(base_url: str, *, timeout: float) -> str:
    """The vLLM release a server reports on /version: {"version": "0.31.0"} (vllm/entrypoints/serve/instrumentator/
    basic.py at v0.31.0, show_version; vllm/entrypoints/openai/api_server.py at v0.11.2), without a local suffix
    such as +cu130."""
    try:
        with urllib.request.urlopen(f"{base_url}/version", timeout=timeout) as response:
            version = json.loads(response.read())["version"]
    except urllib.error.HTTPError as error:
        raise SmokeTestError(f"{base_url}/version answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise SmokeTestError(f"cannot reach {base_url}/version: {error.reason}") from None
    except (ValueError, KeyError, TypeError):
        raise SmokeTestError(f'{base_url}/version did not answer vLLM\'s {{"version": ...}}') from None
    return str(version).split("+", 1)[0]


def check_version(args: argparse.Namespace) -> None:
    """The replicas serve the release the stage pins (their image's tag names it): asked of one replica through its
    Service (vLLM's port, not the gateway's or the load balancer's, which route /v1 only), or of --url."""
    if args.url:
        served = served_version(args.url, timeout=args.request_timeout)
    else:
        with port_forward(args.namespace, args.service, timeout=60) as url:
            served = served_version(url, timeout=args.request_timeout)
    if served != args.vllm_version:
        raise SmokeTestError(
            f"{args.model}: a replica serves vLLM {served}, the stage pins {args.vllm_version}: does the image's tag "
            f"name another release, or is an old replica still serving? (kubectl -n {args.namespace} get pods)"
        )
    print(f"{args.model}: serves vLLM {served}, as pinned")


def checked_ask(base_url: str, args: argparse.Namespace, api_key: str | None) -> Answer:
    """With a key: first check that a request without one is refused (and through the gateway, that it lists the
    model); then ask."""
    if api_key:
        refuses_without_key(base_url, args.model, timeout=args.request_timeout)
    if args.gateway:
        assert api_key is not None  # the gateway always asks for a key
        lists_model(base_url, args.model, api_key, timeout=args.request_timeout)
    return ask(base_url, args.model, timeout=args.request_timeout, api_key=api_key)


def served_answer(args: argparse.Namespace, api_key: str | None) -> Answer:
    """Once the model is rolled out: ask it through its load balancer, the gateway, or its own Service."""
    if args.ingress:
        return through_load_balancer(args, api_key)
    namespace, service, port = (
        (*args.gateway.split("/", 1), 80) if args.gateway else (args.namespace, args.service, SERVICE_PORT)
    )
    with port_forward(namespace, service, timeout=60, port=port) as url:
        return checked_ask(url, args, api_key)


def stored_checks(path: str) -> dict[str, list[str]]:
    """The checks stored under an SSM Parameter Store path, by model: each parameter, one model's, holds this script's
    arguments for it as a JSON list (its model's stack writes it, stacks/model_serving.py). Read with the AWS CLI."""
    command = ["aws", "ssm", "get-parameters-by-path", "--path", path, "--output", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SmokeTestError(f"could not read the checks under {path}: {result.stderr.strip()}")
    parameters = json.loads(result.stdout)["Parameters"]
    return {parameter["Name"].rsplit("/", 1)[1]: json.loads(parameter["Value"]) for parameter in parameters}


def run_stored_checks(path: str, only: str | None) -> int:
    """Every model's check stored under `path` (or only the model `only`), one after the other: 0 if all passed."""
    try:
        checks = stored_checks(path)
    except SmokeTestError as failure:
        print(f"smoke test failed: {failure}", file=sys.stderr)
        return 1
    if only is not None:
        checks = {only: checks[only]} if only in checks else {}
    if not checks:
        print(f"smoke test failed: no check under {path}" + (f" for {only}" if only else ""), file=sys.stderr)
        return 1
    failed = [model for model, arguments in sorted(checks.items()) if main(arguments) != 0]
    if failed:
        print(f"smoke test failed for {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--checks-from"]:
        stored = argparse.ArgumentParser(prog="python -m workloads.smoke_test --checks-from")
        stored.add_argument("--checks-from", required=True, help="the SSM parameter path every model's check is under")
        stored.add_argument("--only", help="check this model alone (its name)")
        options = stored.parse_args(arguments)
        return run_stored_checks(options.checks_from, options.only or None)
    parser = argparse.ArgumentParser(prog="python -m workloads.smoke_test", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the served model name, e.g. openai/gpt-oss-20b")
    parser.add_argument("--url", help="ask this base URL instead of port-forwarding (e.g. http://localhost:8000)")
    parser.add_argument("--namespace", help="the model's namespace (with port-forwarding)")
    parser.add_argument("--service", help="the model's Service (with port-forwarding)")
    parser.add_argument("--deployment", help="the Deployment to wait for (default: the namespace's name)")
    parser.add_argument(
        "--rollout-timeout",
        type=float,
        default=1800,
        help="seconds to wait for the weights import and the rollout, past its progress deadline",
    )
    parser.add_argument("--import-job", help="the Job importing the model's weights, to wait for first")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds to wait for the answer")
    parser.add_argument("--api-key-secret", help="the Secrets Manager secret of the model's API keys, if it has any")
    parser.add_argument("--ingress", help="the Ingress of a model exposed through a load balancer (with --hostname)")
    parser.add_argument("--hostname", help="the name clients use for that load balancer, which its certificate covers")
    parser.add_argument("--ingress-namespace", help="the Ingress's namespace, when not the model's (the gateway's)")
    parser.add_argument("--gateway", help="ask through the stage's gateway: its NAMESPACE/SERVICE (port 80)")
    parser.add_argument("--clients-secret", help="the gateway's clients secret (with --gateway and --client)")
    parser.add_argument("--client", help="the gateway client whose key the smoke test asks with")
    parser.add_argument("--vllm-version", help="the vLLM release the stage pins: a replica's /version must report it")
    args = parser.parse_args(arguments)
    if not args.url and not (args.namespace and args.service):
        parser.error("give --url, or --namespace and --service")
    if bool(args.ingress) != bool(args.hostname):
        parser.error("give --ingress and --hostname together")
    if bool(args.gateway) != bool(args.clients_secret and args.client):
        parser.error("give --gateway, --clients-secret and --client together")
    try:
        if args.gateway:
            api_key: str | None = gateway_key(args.clients_secret, args.client)
        else:
            api_key = api_key_from_secret(args.api_key_secret) if args.api_key_secret else None
        if args.url:
            if args.vllm_version:
                check_version(args)
            answer = checked_ask(args.url, args, api_key)
        else:
            started = time.monotonic()
            if args.import_job:
                wait_for_import(args.namespace, args.import_job, timeout=args.rollout_timeout)
            remaining = max(args.rollout_timeout - (time.monotonic() - started), 0)
            wait_for_rollout(args.namespace, args.deployment or args.namespace, timeout=remaining)
            if args.vllm_version:
                check_version(args)
            answer = served_answer(args, api_key)
    except SmokeTestError as failure:
        print(f"smoke test failed: {failure}", file=sys.stderr)
        return 1
    stopped = f"finish_reason {answer.finish_reason}"
    if answer.finish_reason == "length":
        stopped += f": cut off at {MAX_TOKENS} tokens"
    if answer.text.strip():
        print(f"{args.model} answered ({stopped}): {answer.text.strip()[:200]}")
    else:
        print(f"{args.model} answered only in its reasoning ({stopped}): {answer.reasoning.strip()[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
