"""The report of an end-to-end run: one replica's cold start, step by step, and the load test's figures.

    kubectl get events -n gpt-oss-20b -o json > events.json
    kubectl get pods -n gpt-oss-20b -o json > pods.json
    kubectl get nodeclaims -o json > nodeclaims.json
    vllm bench serve ... --save-result --result-filename bench.json
    python -m commands.e2e_report --events events.json --pods pods.json --nodeclaims nodeclaims.json \\
        --load-test bench.json --stage e2e --model gpt-oss-20b --outdir e2e-report

From the recorded Kubernetes objects it takes the first replica of the model's Deployment (label
app=vllm-<model>) and dates its cold start: pod created, node launched, pod scheduled, weights ready
(the `wait-for-weights` init container done), image pull started and ended, container started,
Ready. What the records do not show is left out, never guessed. It writes report.json (everything,
machine readable), report.md (the tables) and timeline.png (the steps as a Gantt chart), and prints
the Markdown and the paths. docs/models.md, "Cold start", has the estimates these measurements check.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from settings.names import app_label

# The containers of a replica (charts/vllm_server.py).
SERVER_CONTAINER = "inference-server"
WAIT_CONTAINER = "wait-for-weights"

# Each milestone's key and label, in the order a cold start passes them.
MILESTONES = {
    "pod_created": "pod created",
    "node_launched": "node launched",
    "pod_scheduled": "pod scheduled",
    "weights_ready": "weights ready",
    "image_pull_started": "image pull started",
    "image_pull_ended": "image pull ended",
    "container_started": "container started",
    "ready": "Ready",
}

# Events a node autoscaler records on a pod it is bringing a node up for: Karpenter's
# "Pod should schedule on: nodeclaim/<name>" and the cluster autoscaler's "pod triggered scale-up".
SCALE_UP_EVENTS = ("Nominated", "TriggeredScaleUp")
NODECLAIM_IN_MESSAGE = re.compile(r"\bnodeclaim/([a-z0-9][a-z0-9.-]*)")

# kubelet (pkg/kubelet/images/image_manager.go): `Successfully pulled image %q in %v (%v including waiting).
# Image size: %v bytes.`, the durations in Go's time.Duration format; older kubelets stop after the first.
PULLED_MESSAGE = re.compile(
    r'Successfully pulled image "(?P<image>[^"]+)" in (?P<pull>[0-9.a-zµ]+)'
    r"(?: \((?P<waiting>[0-9.a-zµ]+) including waiting\))?"
    r"(?:\. Image size: (?P<size>\d+) bytes)?"
)
PULLING_MESSAGE = re.compile(r'Pulling image "(?P<image>[^"]+)"')
GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
GO_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# A milestone before its place in the timeline is known: when, read from where, and what else it said.
Step = tuple[datetime, str, dict[str, Any]]


@dataclass(frozen=True)
class Milestone:
    """A moment of the replica's cold start: `seconds` since the pod was created, `step_seconds` since the
    milestone before it (None for the first), where the time was read (`source`) and what else it said."""

    key: str
    label: str
    at: datetime
    seconds: float
    step_seconds: float | None
    source: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "at": iso(self.at),
            "seconds": self.seconds,
            "step_seconds": self.step_seconds,
            "source": self.source,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Milestone:
        return cls(
            key=data["key"],
            label=data["label"],
            at=parse_time(data["at"]),
            seconds=data["seconds"],
            step_seconds=data["step_seconds"],
            source=data["source"],
            detail=dict(data.get("detail") or {}),
        )


# --- time ---


def parse_time(value: str) -> datetime:
    """Kubernetes' RFC 3339 times ("2026-11-28T10:00:00Z"; MicroTime "2026-11-28T10:01:04.123456Z"), in UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def go_duration_seconds(text: str) -> float | None:
    """Go's time.Duration.String() ("1m27.666s", "870ms", "1h2m3.5s") in seconds; None if it is not one."""
    parts = GO_DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return round(sum(float(number) * GO_DURATION_UNITS[unit] for number, unit in parts), 9)


# --- the records ---


def _items(listing: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The objects of a `kubectl get -o json` List (or of a plain list of objects)."""
    if listing is None:
        return []
    if isinstance(listing, Mapping):
        return list(listing.get("items") or [])
    return list(listing)


def _condition(obj: Mapping[str, Any], kind: str) -> datetime | None:
    """When a status condition last turned True, or None while it is not True."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True" and condition.get("lastTransitionTime"):
            return parse_time(condition["lastTransitionTime"])
    return None


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    """When an event first happened: eventTime (events.k8s.io recorders such as the scheduler), else
    firstTimestamp (the core/v1 recorders: kubelet, Karpenter), else lastTimestamp."""
    for key in ("eventTime", "firstTimestamp", "lastTimestamp"):
        if event.get(key):
            return parse_time(event[key])
    return None


def _when(event: Mapping[str, Any]) -> datetime:
    """The time of one of the pod's events, which keep only those that have one (_pod_events)."""
    time = _event_time(event)
    if time is None:
        raise ValueError(f"event {event.get('reason')} has no time")
    return time


def select_pod(
    pods: Iterable[Mapping[str, Any]], *, app: str | None = None, name: str | None = None
) -> Mapping[str, Any]:
    """The pod named `name`, or the first created (then by name) of those labelled app=`app`; without
    either, of the vLLM replicas (app=vllm-..., a container named inference-server)."""
    pods = list(pods)
    if name is not None:
        candidates = [pod for pod in pods if pod["metadata"]["name"] == name]
    elif app is not None:
        candidates = [pod for pod in pods if (pod["metadata"].get("labels") or {}).get("app") == app]
    else:
        candidates = [
            pod
            for pod in pods
            if (pod["metadata"].get("labels") or {}).get("app", "").startswith("vllm-")
            and any(c.get("name") == SERVER_CONTAINER for c in (pod.get("spec") or {}).get("containers") or [])
        ]
    if not candidates:
        seen = sorted({(pod["metadata"].get("labels") or {}).get("app", "-") for pod in pods})
        wanted = f"named {name}" if name is not None else f"labelled app={app or 'vllm-...'}"
        raise ValueError(f"no pod {wanted} among {len(pods)} pod(s) (their app labels: {', '.join(seen) or 'none'})")
    return min(candidates, key=lambda pod: (parse_time(pod["metadata"]["creationTimestamp"]), pod["metadata"]["name"]))


def _pod_events(events: Iterable[Mapping[str, Any]], pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod's own events, earliest first: same kind, name and namespace, and uid where both have one."""
    meta = pod["metadata"]
    mine = []
    for event in events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") != "Pod" or involved.get("name") != meta["name"]:
            continue
        if involved.get("namespace") and meta.get("namespace") and involved["namespace"] != meta["namespace"]:
            continue
        if involved.get("uid") and meta.get("uid") and involved["uid"] != meta["uid"]:
            continue
        if _event_time(event) is not None:
            mine.append(event)
    return sorted(mine, key=_when)


def _container(pod: Mapping[str, Any], name: str, *, init: bool = False) -> Mapping[str, Any]:
    key = "initContainers" if init else "containers"
    return next((c for c in (pod.get("spec") or {}).get(key) or [] if c.get("name") == name), {})


def _container_status(pod: Mapping[str, Any], name: str, *, init: bool = False) -> Mapping[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next((c for c in (pod.get("status") or {}).get(key) or [] if c.get("name") == name), {})


def _about_server(event: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether a kubelet event is about the inference-server container: its fieldPath says so, or, without
    one, its message names that container's image."""
    field_path = (event.get("involvedObject") or event.get("regarding") or {}).get("fieldPath")
    if field_path:
        return field_path == f"spec.containers{{{SERVER_CONTAINER}}}"
    image = _container(pod, SERVER_CONTAINER).get("image")
    return bool(image) and f'"{image}"' in (event.get("message") or event.get("note") or "")


def _message(event: Mapping[str, Any]) -> str:
    return event.get("message") or event.get("note") or ""


def _first(events: Iterable[Mapping[str, Any]], reason: str, pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((e for e in events if e.get("reason") == reason and _about_server(e, pod)), None)


def _node_launch(
    pod: Mapping[str, Any], events: list[Mapping[str, Any]], nodeclaims: list[Mapping[str, Any]], created: datetime
) -> Step | None:
    """When the pod's node launched: its NodeClaim's Launched condition (the claim holding the pod's node,
    or the one the autoscaler nominated), if that came after the pod was created (before it, the pod found
    the node already there); without NodeClaim data, the autoscaler's first scale-up event for the pod."""
    scale_ups = [e for e in events if e.get("reason") in SCALE_UP_EVENTS]
    node_name = (pod.get("spec") or {}).get("nodeName")
    claim = next((c for c in nodeclaims if node_name and (c.get("status") or {}).get("nodeName") == node_name), None)
    if claim is None:
        nominated = {m.group(1) for e in scale_ups for m in NODECLAIM_IN_MESSAGE.finditer(_message(e))}
        claim = next((c for c in nodeclaims if c["metadata"]["name"] in nominated), None)
    if claim is not None:
        launched = _condition(claim, "Launched")
        if launched is None or launched < created:
            return None
        labels = claim["metadata"].get("labels") or {}
        detail = {
            "nodeclaim": claim["metadata"]["name"],
            "node": (claim.get("status") or {}).get("nodeName"),
            "instance_type": labels.get("node.kubernetes.io/instance-type"),
            "capacity_type": labels.get("karpenter.sh/capacity-type"),
            "zone": labels.get("topology.kubernetes.io/zone"),
        }
        return launched, "NodeClaim condition Launched", {k: v for k, v in detail.items() if v is not None}
    if nodeclaims or not scale_ups:
        # NodeClaims were recorded and none is the pod's (an existing node), or nothing says a node came up.
        return None
    event = scale_ups[0]
    return _when(event), f"event {event['reason']} (a node was asked for)", {"message": _message(event)}


def _scheduled(pod: Mapping[str, Any], events: list[Mapping[str, Any]]) -> Step | None:
    """The PodScheduled condition; without it, the scheduler's Scheduled event."""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None:
        return scheduled, "pod condition PodScheduled", {}
    event = next((e for e in events if e.get("reason") == "Scheduled"), None)
    if event is None:
        return None
    return _when(event), "event Scheduled", {"message": _message(event)}


def _weights_ready(pod: Mapping[str, Any]) -> Step | None:
    """When wait-for-weights finished (exit code 0); without its status, the Initialized condition."""
    terminated = (_container_status(pod, WAIT_CONTAINER, init=True).get("state") or {}).get("terminated") or {}
    if terminated.get("exitCode") == 0 and terminated.get("finishedAt"):
        finished = parse_time(terminated["finishedAt"])
        detail = {}
        if terminated.get("startedAt"):
            detail["waited_seconds"] = (finished - parse_time(terminated["startedAt"])).total_seconds()
        return finished, f"init container {WAIT_CONTAINER} finished", detail
    initialized = _condition(pod, "Initialized")
    return None if initialized is None else (initialized, "pod condition Initialized", {})


def _image_pull(pod: Mapping[str, Any], events: list[Mapping[str, Any]]) -> dict[str, Step | None]:
    """The inference-server image's Pulling and Pulled events (kubelet's pull time, the image's size). An
    image already on the node ("Container image ... already present on machine") has neither."""
    result: dict[str, Step | None] = {}
    pulling = _first(events, "Pulling", pod)
    if pulling is not None:
        match = PULLING_MESSAGE.search(_message(pulling))
        result["image_pull_started"] = (
            _when(pulling),
            "event Pulling",
            {"image": match["image"]} if match else {},
        )
    pulled = next(
        (
            e
            for e in events
            if e.get("reason") == "Pulled" and _about_server(e, pod) and PULLED_MESSAGE.search(_message(e))
        ),
        None,
    )
    match = None if pulled is None else PULLED_MESSAGE.search(_message(pulled))
    if pulled is not None and match is not None:
        detail = {
            "image": match["image"],
            "pull_seconds": go_duration_seconds(match["pull"]),
            "pull_seconds_including_waiting": go_duration_seconds(match["waiting"]) if match["waiting"] else None,
            "image_size_bytes": int(match["size"]) if match["size"] else None,
        }
        result["image_pull_ended"] = (
            _when(pulled),
            "event Pulled",
            {k: v for k, v in detail.items() if v is not None},
        )
    return result


def _container_started(pod: Mapping[str, Any], events: list[Mapping[str, Any]]) -> Step | None:
    """The inference-server's first Started event; without it, its status: an earlier run's start after a
    restart, else the running one's."""
    started = _first(events, "Started", pod)
    if started is not None:
        return _when(started), "event Started", {}
    status = _container_status(pod, SERVER_CONTAINER)
    runs = (
        ("lastState.terminated", (status.get("lastState") or {}).get("terminated")),
        ("state.running", (status.get("state") or {}).get("running")),
    )
    for source, run in runs:
        if run and run.get("startedAt"):
            return parse_time(run["startedAt"]), f"container status {source}.startedAt", {}
    return None


def _ready(pod: Mapping[str, Any]) -> Step | None:
    ready = _condition(pod, "Ready")
    if ready is None:
        return None
    return ready, "pod condition Ready", {"restarts": _container_status(pod, SERVER_CONTAINER).get("restartCount", 0)}


def timeline(
    events: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    pods: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    nodeclaims: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
    *,
    app: str | None = None,
    pod: str | None = None,
) -> list[Milestone]:
    """The cold start of one replica, from `kubectl get events|pods -n <ns> -o json` and `kubectl get
    nodeclaims -o json` (each a List, or its items): the first vLLM pod (or app=`app`, or the pod named
    `pod`), its milestones earliest first. A milestone the records do not show is left out."""
    chosen = select_pod(_items(pods), app=app, name=pod)
    meta = chosen["metadata"]
    created = parse_time(meta["creationTimestamp"])
    mine = _pod_events(_items(events), chosen)
    found: dict[str, Step] = {
        "pod_created": (
            created,
            "pod metadata.creationTimestamp",
            {
                k: v
                for k, v in {
                    "pod": meta["name"],
                    "namespace": meta.get("namespace"),
                    "node": (chosen.get("spec") or {}).get("nodeName"),
                }.items()
                if v is not None
            },
        )
    }

    steps = {
        "node_launched": _node_launch(chosen, mine, _items(nodeclaims), created),
        "pod_scheduled": _scheduled(chosen, mine),
        "weights_ready": _weights_ready(chosen),
        **_image_pull(chosen, mine),
        "container_started": _container_started(chosen, mine),
        "ready": _ready(chosen),
    }
    found |= {key: step for key, step in steps.items() if step is not None}

    order = list(MILESTONES)
    milestones: list[Milestone] = []
    previous: datetime | None = None
    for key, (at, source, detail) in sorted(found.items(), key=lambda item: (item[1][0], order.index(item[0]))):
        milestones.append(
            Milestone(
                key=key,
                label=MILESTONES[key],
                at=at,
                seconds=(at - created).total_seconds(),
                step_seconds=None if previous is None else (at - previous).total_seconds(),
                source=source,
                detail=detail,
            )
        )
        previous = at
    return milestones


# --- the load test ---

# vLLM 0.11.2's `vllm bench serve --save-result` (vllm/benchmarks/serve.py, benchmark(): the `result`
# dict, merged into `result_json`): percentiles are keyed p<P>_<metric>_ms, for --metric-percentiles
# (default "99") and --percentile-metrics (default "ttft,tpot,itl").
REQUIRED_RESULT_KEYS = (
    "completed",
    "duration",
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "mean_itl_ms",
    "median_itl_ms",
)


def _read_result(result_json: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(result_json, Mapping):
        return result_json
    text = Path(result_json).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # --append-result: one JSON object a line; the last run is the last line.
        lines = [line for line in text.splitlines() if line.strip()]
        return json.loads(lines[-1])


def load_test_summary(result_json: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The figures of a `vllm bench serve --save-result` run (its JSON, or the path of its file):
    completed requests, TTFT and ITL (mean, median, p99; ms), throughput (output tokens/s, requests/s)."""
    result = _read_result(result_json)
    missing = [key for key in REQUIRED_RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"not a `vllm bench serve` result of a generation model: no {', '.join(missing)}")

    def latency(metric: str) -> dict[str, float | None]:
        # p99 is there unless the run chose other --metric-percentiles.
        return {stat: result.get(f"{stat}_{metric}_ms") for stat in ("mean", "median", "p99")}

    return {
        "model_id": result.get("model_id"),
        "date": result.get("date"),
        "num_prompts": result.get("num_prompts"),
        "max_concurrency": result.get("max_concurrency"),
        "request_rate": result.get("request_rate"),
        "duration_s": result["duration"],
        "completed": result["completed"],
        "failed": result.get("failed"),
        "total_input_tokens": result.get("total_input_tokens"),
        "total_output_tokens": result.get("total_output_tokens"),
        "ttft_ms": latency("ttft"),
        "itl_ms": latency("itl"),
        "tpot_ms": latency("tpot"),
        "output_throughput_tok_s": result["output_throughput"],
        "request_throughput_req_s": result["request_throughput"],
    }


# --- the report ---


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _figure(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# A measured step more than this many times its model fails the run: the model (settings/cold_start.py), from which
# the probes, deadlines and cooldowns are derived, is then wrong.
TOLERANCE = 1.5


@dataclass(frozen=True)
class Comparison:
    """One stretch of the cold start, as measured and as modeled (seconds), with the model's steps it covers."""

    stretch: str
    measured: float
    modeled: float
    steps: tuple[str, ...]

    @property
    def over(self) -> bool:
        return self.measured > TOLERANCE * self.modeled


# Each measured stretch (from one milestone to another) and the modeled steps (settings/cold_start.py) it covers.
STRETCHES = (
    ("node launch", "pod_created", "node_launched", ("node launch",)),
    ("image pull", "image_pull_started", "image_pull_ended", ("first pull through the cache", "image pull")),
    ("weights and model load", "container_started", "ready", ("weight read", "model load")),
    ("the whole cold start", "pod_created", "ready", ()),
)


# vLLM's worker logs how long it took to load the weights (vllm/v1/worker/gpu_model_runner.py, load_model, from
# 0.11.2 to 0.33.0; vllm/v1/worker/gpu/model_runner.py in 0.34.0): "Model loading took %s GiB memory and %.6f
# seconds". With tensor parallelism each worker logs its own.
WEIGHT_LOAD_LINE = re.compile(r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds")


def weight_load_seconds(server_log: str) -> float | None:
    """How long the replica's vLLM took to load its weights, by its own log (the slowest worker's); None without."""
    found = [float(match.group(1)) for match in WEIGHT_LOAD_LINE.finditer(server_log)]
    return max(found) if found else None


def compare(
    milestones: list[Milestone], modeled: Mapping[str, float], *, weight_load: float | None = None
) -> list[Comparison]:
    """Each stretch the records show, against the modeled steps it covers (all of them for the whole). A first pull
    through the cache shows in the kubelet's pull only the first time an image version is pulled: the model's first
    pull counts only when the measured pull is longer than the plain pull's model. With `weight_load` (vLLM's log),
    the stretch from the container's start to Ready splits into the weight read and the model load."""
    at = {m.key: m.at for m in milestones}
    found = []
    for stretch, start, end, steps in STRETCHES:
        if start not in at or end not in at:
            continue
        measured = (at[end] - at[start]).total_seconds()
        if steps == ("weight read", "model load") and weight_load is not None:
            found.append(Comparison("weight read", weight_load, modeled.get("weight read", 0), ("weight read",)))
            found.append(
                Comparison("model load", measured - weight_load, modeled.get("model load", 0), ("model load",))
            )
            continue
        covered = steps or tuple(modeled)
        expected = sum(modeled.get(step, 0) for step in covered)
        if "first pull through the cache" in covered and measured <= modeled.get("image pull", 0):
            expected -= modeled.get("first pull through the cache", 0)
        found.append(Comparison(stretch, measured, expected, covered))
    return found


def render_markdown(*, stage: str, model: str, milestones: list[Milestone], load_test: Mapping[str, Any] | None) -> str:
    lines = [f"# End-to-end run: {model} on stage {stage}", ""]
    created = next((m for m in milestones if m.key == "pod_created"), None)
    if created is not None:
        where = f" on node {created.detail['node']}" if created.detail.get("node") else ""
        lines += [f"Replica `{created.detail.get('pod', '?')}`{where}, created {iso(created.at)}.", ""]
    lines += ["## Cold start", ""]
    ready = next((m for m in milestones if m.key == "ready"), None)
    if ready is not None:
        lines += [f"Ready {_seconds(ready.seconds)} s after the pod was created.", ""]
    else:
        lines += ["The pod did not turn Ready in these records.", ""]
    lines += [
        "| milestone | time (UTC) | s since pod created | step (s) | source |",
        "|---|---|---:|---:|---|",
    ]
    for m in milestones:
        lines.append(f"| {m.label} | {iso(m.at)} | {_seconds(m.seconds)} | {_seconds(m.step_seconds)} | {m.source} |")
    pulled = next((m for m in milestones if m.key == "image_pull_ended"), None)
    if pulled is not None and "pull_seconds" in pulled.detail:
        size = pulled.detail.get("image_size_bytes")
        lines += [
            "",
            f"kubelet's own pull time: {_seconds(pulled.detail['pull_seconds'])} s"
            + (f" for {size / 1e9:.1f} GB" if size else "")
            + f" (`{pulled.detail['image']}`).",
        ]
    lines += ["", "![Cold-start timeline](timeline.png)", "", "## Load test", ""]
    if load_test is None:
        lines.append("No load test ran.")
    else:
        rows = [
            ("model", load_test.get("model_id")),
            ("prompts", load_test.get("num_prompts")),
            ("max concurrency", load_test.get("max_concurrency")),
            ("completed requests", load_test["completed"]),
            ("failed requests", load_test.get("failed")),
            ("duration (s)", load_test["duration_s"]),
            ("input tokens", load_test.get("total_input_tokens")),
            ("output tokens", load_test.get("total_output_tokens")),
            ("request throughput (req/s)", load_test["request_throughput_req_s"]),
            ("output throughput (tok/s)", load_test["output_throughput_tok_s"]),
        ]
        for metric, name in (("ttft_ms", "TTFT"), ("itl_ms", "ITL")):
            rows += [(f"{name} {stat} (ms)", load_test[metric][stat]) for stat in ("mean", "median", "p99")]
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {name} | {_figure(value)} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def draw_timeline(path: Path, milestones: list[Milestone], *, title: str) -> None:
    """A Gantt chart of the steps between consecutive milestones, seconds since the pod was created."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = list(itertools.pairwise(milestones))
    figure = Figure(figsize=(10, 1.2 + 0.45 * max(len(steps), 1)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row, (before, after) in enumerate(steps):
        width = after.seconds - before.seconds
        axes.barh(row, width, left=before.seconds, height=0.6, color=f"C{row % 10}")
        axes.text(after.seconds, row, f" {_seconds(width)} s", va="center", fontsize=8)
    axes.set_yticks(range(len(steps)), [f"{b.label} → {a.label}" for b, a in steps], fontsize=8)
    axes.invert_yaxis()
    if not steps:
        axes.text(0.5, 0.5, "fewer than two milestones recorded", ha="center", va="center", transform=axes.transAxes)
    ready = next((m for m in milestones if m.key == "ready"), None)
    if ready is not None:
        axes.axvline(ready.seconds, color="0.3", linestyle="--", linewidth=1)
    end = max((m.seconds for m in milestones), default=0.0)
    axes.set_xlim(min([0.0, *(m.seconds for m in milestones)]), end * 1.12 + 1)
    axes.set_xlabel("seconds since the pod was created")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.savefig(path, format="png")


def comparison_markdown(comparisons: list[Comparison]) -> str:
    lines = [
        "## Measured against the model",
        "",
        f"A stretch over {TOLERANCE}x its model fails the run (settings/cold_start.py; `make cold-start`).",
        "",
        "| stretch | measured (s) | modeled (s) | ratio | modeled steps |",
        "|---|---:|---:|---:|---|",
    ]
    for c in comparisons:
        ratio = f"{c.measured / c.modeled:.2f}" if c.modeled else "n/a"
        flag = " **over**" if c.over else ""
        lines.append(f"| {c.stretch} | {c.measured:.0f} | {c.modeled:.0f} | {ratio}{flag} | {', '.join(c.steps)} |")
    return "\n".join(lines) + "\n"


def write_report(
    outdir: str | os.PathLike[str],
    *,
    stage: str,
    model: str,
    milestones: list[Milestone],
    load_test: Mapping[str, Any] | None,
    comparisons: list[Comparison] | None = None,
) -> list[Path]:
    """Write report.json, report.md and timeline.png into `outdir` (created if need be); their paths. With
    `comparisons`, the measured stretches against the model, in both."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    ready = next((m for m in milestones if m.key == "ready"), None)
    data = {
        "stage": stage,
        "model": model,
        "cold_start_seconds": ready.seconds if ready is not None else None,
        "milestones": [m.to_dict() for m in milestones],
        "load_test": dict(load_test) if load_test is not None else None,
        "against_the_model": [
            {"stretch": c.stretch, "measured": c.measured, "modeled": c.modeled, "over": c.over}
            for c in comparisons or []
        ],
        "files": {"markdown": "report.md", "timeline": "timeline.png"},
    }
    json_path, md_path, png_path = out / "report.json", out / "report.md", out / "timeline.png"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    markdown = render_markdown(stage=stage, model=model, milestones=milestones, load_test=load_test)
    md_path.write_text(markdown + ("\n" + comparison_markdown(comparisons) if comparisons else ""))
    draw_timeline(png_path, milestones, title=f"Cold start of a {model} replica (stage {stage})")
    return [json_path, md_path, png_path]


def _load(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m commands.e2e_report", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="kubectl get events -n <namespace> -o json")
    parser.add_argument("--pods", required=True, help="kubectl get pods -n <namespace> -o json")
    parser.add_argument("--nodeclaims", help="kubectl get nodeclaims -o json")
    parser.add_argument("--load-test", required=True, help="the JSON of vllm bench serve --save-result")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--model", required=True, help="the model's name in the stage's settings (models[].name)")
    parser.add_argument("--pod", help="this pod rather than the model's first replica")
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)
    try:
        milestones = timeline(
            _load(args.events),
            _load(args.pods),
            _load(args.nodeclaims) if args.nodeclaims else None,
            app=app_label(args.model),
            pod=args.pod,
        )
        load_test = load_test_summary(_load(args.load_test))
    except ValueError as error:
        sys.exit(f"e2e_report: {error}")
    paths = write_report(args.outdir, stage=args.stage, model=args.model, milestones=milestones, load_test=load_test)
    print(paths[1].read_text())
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
