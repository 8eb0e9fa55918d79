"""How a replica goes away without cutting a request short: a preStop drain and a grace period that covers it.

From vLLM 0.18 the server drains by itself: on SIGTERM it stops the engine with `--shutdown-timeout` seconds for the
requests in flight to finish (vllm/entrypoints/launchers/launcher.py, serve_http's signal handler, in vLLM 0.33.0;
vllm-project/vllm#34730). For such a version (its profile has the flag, settings/vllm_profiles.py) the preStop hook
only waits until every proxy has stopped sending the replica requests, and vLLM is given the longest request the
model allows as its timeout; the vLLM Kubernetes guide gives the same order: a preStop sleep, then SIGTERM, within
the grace period.

Older versions such as 0.11.2 do not drain by themselves: on SIGTERM its HTTP server task is cancelled at once
(vllm/entrypoints/launcher.py, serve_http: `signal_handler` calls `server_task.cancel()`), so a
request still being generated is cut off. Kubernetes runs a container's preStop hook before it
sends SIGTERM, so the replica drains there:

1. When the pod starts terminating, the EndpointSlice controller marks it not ready at once, so
   the Service (and any load balancer) stops sending it new requests; the hook first keeps serving
   until every proxy has caught up: a few seconds, or for an exposed model until its load balancer
   has deregistered the replica (settings/drain.py, endpoint_removal_seconds).
2. It then polls vLLM's own gauges of requests in progress, vllm:num_requests_running and
   vllm:num_requests_waiting (vllm/v1/metrics/loggers.py), on /metrics, until both are 0.
3. Only then does Kubernetes send SIGTERM. The pod's grace period, which also bounds the hook,
   covers the longest request the model allows: max_model_len tokens at a floor of generation
   speed, or models[].max_request_seconds (settings/drain.py).
"""

from __future__ import annotations

from settings.drain import endpoint_removal_seconds, max_request_seconds
from settings.schema import ModelSettings

# The preStop hook (python3 is in the vLLM image): wait for the proxies, then for vLLM's requests.
DRAIN_SCRIPT = """
import os, time, urllib.request
time.sleep(float(os.environ.get("DRAIN_DELAY", "10")))
deadline = time.monotonic() + float(os.environ["DRAIN_SECONDS"])
metrics = "http://127.0.0.1:%s/metrics" % os.environ["DRAIN_PORT"]
gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
while time.monotonic() < deadline:
    try:
        text = urllib.request.urlopen(metrics, timeout=5).read().decode()
    except OSError:
        break  # the server is gone: nothing left to wait for
    busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(gauges))
    if busy == 0:
        break
    time.sleep(1)
"""


def drain_args(model: ModelSettings) -> list[str]:
    """The server's own drain, where its version has one: up to the longest request the model allows."""
    return [f"--shutdown-timeout={max_request_seconds(model)}"] if model.profile.drains_itself else []


def drain_command(model: ModelSettings, port: int) -> list[str]:
    """The preStop hook's command, its bounds spelled out on it: a wait for the proxies where vLLM drains by itself,
    the wait and then the poll of vLLM's gauges where it does not."""
    if model.profile.drains_itself:
        return ["sleep", str(endpoint_removal_seconds(model))]
    return [
        "env",
        f"DRAIN_DELAY={endpoint_removal_seconds(model)}",
        f"DRAIN_SECONDS={max_request_seconds(model)}",
        f"DRAIN_PORT={port}",
        "python3",
        "-c",
        DRAIN_SCRIPT,
    ]
