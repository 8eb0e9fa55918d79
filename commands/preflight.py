"""Before any deploy: can the stage get its GPUs? Read-only checks of quotas, offerings and reservations.

    python -m commands.preflight --stage dev [--reservation cr-0123456789abcdef0 ...]

Run it with credentials for the stage's account; it only reads (Service Quotas and EC2 Describe calls).

1. Service Quotas, in the stage's region: the on-demand and spot vCPU quotas of the G and VT and
   of the P instance families. Each model needs its replicas (autoscaling's maximum, if it scales)
   plus one rollout surge and its warm spares, each on its own node, of the instance Karpenter would launch: the
   cheapest candidate (settings.sizing.candidates) offered in a zone GPU nodes may use. Their
   vCPUs add up per family, for on-demand if a GPU pool allows on-demand or reserved capacity
   (capacity reservations count against the on-demand quota) and for spot if one allows spot. With
   both allowed, one quota that holds them is enough. The current usage is not read, so the quota
   must also cover what already runs.
2. EC2 instance type offerings: each model needs at least one candidate offered in a zone GPU
   nodes may use (the model store's zone for a pool whose zones is model_store_zone, every zone of
   the stage for one whose zones is all_zones).
3. Capacity reservations, those the GPU pools select (gpu_node_pools[].capacity_reservations) and
   any given with --reservation: each must exist, be active and unexpired, lie in a usable zone, be
   of a type some model can run on, and have instances available.
4. The Secrets Manager secret of each model's API keys (models[].api_keys_secret) exists: a
   replica cannot start without it. So does the Docker Hub credential (registry.docker_hub_credential_arn): without
   it the cache rule cannot be created, nor an image pulled through it. With the inference gateway: its
   clients secret exists and holds a key for every client the settings name (the keys are never shown).
5. The Standard on-demand vCPU quota (A, C, D, H, I, M, R, T, Z instances): Auto Mode's built-in
   pools run on C, M and R instances, and the stage's own pods on them (the weights imports, KEDA,
   the node rotation) need at least the instance that holds their CPU requests at once.
6. With registry.owns_scanning_configuration: the account's current ECR registry scanning
   configuration, which the stage's deploy replaces; Amazon Inspector's enhanced scanning there blocks.
7. With an exposed model: the Known Bad Inputs managed rule group's current rules; one that inspects
   the body and that the web ACL does not set to count would block prompts that quote it.

It prints a Markdown table per check, then one summary line. Exit status: 0 when the stage can
start, 1 when something blocks it (the summary names what), 2 when it could not check (bad
arguments or settings, or AWS refused to answer).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from charts.gateway import ENVOY_CPU_MILLIS, KEY_SYNC_CPU_MILLIS, PROCESSOR_CPU_MILLIS
from charts.gateway_model import PICKER_CPU_MILLIS
from charts.node_rotation import ROTATION_CPU_MILLIS
from commands import stage_settings_or_exit
from settings import DEFAULT_STAGE, StageSettings
from settings.schema import RESERVATION_ID_PATTERN, GatewaySettings
from settings.sizing import IMPORT_CPU_MILLIS, GpuInstance, allocatable_cpu_millis, candidates
from settings.yaml_files import load_yaml
from stacks.inference_gateway import RATELIMIT_CPU_MILLIS, VENDOR
from stacks.serving import KEDA_CHART
from stacks.web_acl import KNOWN_BAD_INPUTS, KNOWN_BAD_INPUTS_BODY_RULES

Client = Any  # a boto3 client (botocore.client.BaseClient); the generated types are not installed
ClientFactory = Callable[[str], Client]

RESERVATION_ID = re.compile(RESERVATION_ID_PATTERN)
ON_DEMAND, SPOT, RESERVED = "on-demand", "spot", "reserved"


@dataclass(frozen=True)
class Quota:
    """An EC2 vCPU quota: its Service Quotas code and name, the catalog category and capacity type it limits."""

    code: str
    name: str
    category: str  # settings/catalog/gpu_instances.yaml `category`: g or p
    capacity_type: str  # on-demand or spot, as in gpu_node_pools[].capacity_types


# The EC2 vCPU quotas of GPU instances, in vCPUs per region (service code "ec2"). The spot quotas'
# names are those of AWS's EC2 User Guide, "Spot Instance quotas"
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html). No AWS documentation
# page found lists the codes; these are the ones the Service Quotas API and console give, the same in
# independent ListServiceQuotas outputs and quota tools (for example github.com/geyang/jaynes-starter-kit,
# 02_ec2_docker_guide/setup/spot_limit.md). The check compares the QuotaName AWS returns with the
# name here and says so when they differ.
QUOTAS = (
    Quota("L-DB2E81BA", "Running On-Demand G and VT instances", "g", ON_DEMAND),
    Quota("L-3819A6DF", "All G and VT Spot Instance Requests", "g", SPOT),
    Quota("L-417A185B", "Running On-Demand P instances", "p", ON_DEMAND),
    Quota("L-7212CCBC", "All P Spot Instance Requests", "p", SPOT),
)
FAMILIES = {"g": "G and VT", "p": "P"}
# The Standard instances' on-demand vCPU quota (AWS CLI User Guide, Service Quotas examples: L-1216C47A, "Running
# On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", in vCPUs).
STANDARD_QUOTA = Quota(
    "L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", "standard", ON_DEMAND
)
# KEDA's parts and their requests in its chart's values (charts/vendor/keda/values.yaml, resources.<part>).
KEDA_PARTS = {"operator": "operator", "metricServer": "metricsServer", "webhooks": "webhooks"}


def request_url(region: str, code: str) -> str:
    """The Service Quotas console page of an EC2 quota in a region, where an increase is requested."""
    return f"https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}"


# --- results ---


@dataclass(frozen=True)
class Node:
    """What one model takes from the quotas: `count` nodes (replicas, one surge, warm spares) of `instance`."""

    model: str
    instance: GpuInstance
    count: int

    @property
    def vcpus(self) -> int:
        return self.count * self.instance.vcpus


@dataclass(frozen=True)
class QuotaResult:
    quota: Quota
    value: float
    source: str  # "applied", or "AWS default" when the account has no applied value
    needed: int  # 0 when the pool does not use the quota's capacity type
    used: bool  # a GPU pool allows the quota's capacity type
    aws_name: str
    url: str

    @property
    def enough(self) -> bool:
        return self.value >= self.needed


@dataclass(frozen=True)
class OfferingResult:
    """Which of a model's candidates EC2 offers in each zone of the stage, cheapest first."""

    model: str
    candidates: tuple[str, ...]
    offered: dict[str, tuple[str, ...]]
    usable_zones: tuple[str, ...]

    @property
    def usable(self) -> dict[str, tuple[str, ...]]:
        return {zone: self.offered.get(zone, ()) for zone in self.usable_zones}

    @property
    def ok(self) -> bool:
        return any(self.usable.values())


@dataclass(frozen=True)
class ReservationResult:
    id: str
    found: bool
    state: str = ""
    zone: str = ""
    instance_type: str = ""
    available: int = 0
    total: int = 0
    end: str = ""
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    stage: str
    region: str
    capacity_types: tuple[str, ...]
    usable_zones: tuple[str, ...]
    zones_reason: str
    nodes: list[Node]
    quotas: list[QuotaResult]
    offerings: list[OfferingResult]
    reservations: list[ReservationResult]
    blockers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blockers

    def summary(self) -> str:
        if self.ok:
            return f"stage {self.stage} can start: quotas, offerings and reservations allow its GPU nodes"
        return f"stage {self.stage} cannot start: " + "; ".join(self.blockers)

    def markdown(self) -> str:
        return "\n".join(
            [
                f"# Preflight of stage {self.stage} ({self.region})",
                "",
                *self._quota_section(),
                "",
                *self._offering_section(),
                "",
                *self._reservation_section(),
                *(["", "## Notes", "", *(f"- {note}" for note in self.notes)] if self.notes else []),
                "",
                self.summary(),
            ]
        )

    def _quota_section(self) -> list[str]:
        lines = [
            f"## Service Quotas: EC2 vCPUs in {self.region}",
            "",
            "| quota | code | value | needed | status | request more |",
            "|---|---|---:|---:|---|---|",
        ]
        for row in self.quotas:
            needed = str(row.needed) if row.used else f"0 ({row.quota.capacity_type} in no pool's capacity_types)"
            lines.append(
                f"| {row.quota.name} | {row.quota.code} | {row.value:g} ({row.source}) | {needed} | "
                f"{self._status(row)} | {'' if row.enough else row.url} |"
            )
        lines.append("")
        lines.append(
            "Needed: each model's replicas (at most, if it scales) plus one rollout surge and its warm spares, on the "
            "instance "
            "Karpenter would launch: "
            + ", ".join(
                f"{node.model} {node.count} x {node.instance.type} ({node.instance.vcpus} vCPUs, "
                f"{FAMILIES[node.instance.category]}) = {node.vcpus}"
                for node in self.nodes
            )
            + "."
        )
        lines.append(
            "Current usage is not read here: the quota must also cover the instances already running "
            f"(and, for spot, the open requests) of its family in {self.region}; the Service Quotas console "
            "shows their utilization."
        )
        return lines

    def _status(self, row: QuotaResult) -> str:
        if row.enough:
            return "OK"
        others = [
            other
            for other in self.quotas
            if other.quota.category == row.quota.category and other is not row and other.used and other.enough
        ]
        return f"SHORT, {others[0].quota.capacity_type} is enough" if others else "SHORT"

    def _offering_section(self) -> list[str]:
        lines = [
            f"## Instance type offerings (GPU nodes may use {', '.join(self.usable_zones)}: {self.zones_reason})",
            "",
            "| model | zone | GPU nodes may use it | candidates offered, cheapest first | status |",
            "|---|---|---|---|---|",
        ]
        for result in self.offerings:
            for zone, offered in result.offered.items():
                usable = zone in result.usable_zones
                status = ("OK" if offered else "NONE OFFERED") if usable else "not used"
                lines.append(
                    f"| {result.model} | {zone} | {'yes' if usable else 'no'} | "
                    f"{', '.join(offered) or '—'} | {status} |"
                )
        return lines

    def _reservation_section(self) -> list[str]:
        lines = ["## Capacity reservations", ""]
        if not self.reservations:
            return [*lines, "None given (--reservation cr-...)."]
        lines += [
            "| reservation | state | zone | instance type | available | ends | status |",
            "|---|---|---|---|---:|---|---|",
        ]
        for result in self.reservations:
            available = f"{result.available} of {result.total}" if result.found else "—"
            status = "OK" if result.ok else "FAILED: " + "; ".join(result.problems)
            lines.append(
                f"| {result.id} | {result.state or '—'} | {result.zone or '—'} | {result.instance_type or '—'} | "
                f"{available} | {result.end or '—'} | {status} |"
            )
        notes = [f"- {result.id}: {note}" for result in self.reservations for note in result.notes]
        return [*lines, "", *notes] if notes else lines


# --- the checks ---


def cpu_millis(quantity: str | int | float) -> int:
    """A Kubernetes CPU quantity in millicores: 100 for "100m", 1000 for 1."""
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def general_purpose_requests(settings: StageSettings) -> dict[str, int]:
    """The CPU (millicores) the stage's own pods may ask of Auto Mode's built-in pools at once, by what asks it:
    every imported model's weights import (a new revision each), KEDA's parts, the node rotation."""
    asked = {f"weights import of {m.name}": IMPORT_CPU_MILLIS for m in settings.models if m.imported}
    if settings.keda:
        values = load_yaml((KEDA_CHART / "values.yaml").read_text())
        for part, replicas in KEDA_PARTS.items():
            count = int(values[replicas]["replicaCount"])
            asked[f"KEDA {part}"] = count * cpu_millis(values["resources"][part]["requests"]["cpu"])
    if any(pool.maintenance_window for pool in settings.gpu_node_pools):
        asked["GPU node rotation"] = ROTATION_CPU_MILLIS
    if settings.gateway is not None:
        asked.update(gateway_requests(settings))
    return asked


def gateway_requests(settings: StageSettings) -> dict[str, int]:
    """The inference gateway's pods on the built-in pools: its proxies, each model's endpoint pickers, Envoy
    Gateway's controller (its chart's default requests) and the key sync (charts/gateway.py)."""
    assert settings.gateway is not None
    values = load_yaml((VENDOR / "envoy-gateway" / "values.yaml").read_text())
    controllers = 2 if settings.production else 1
    pickers = len(settings.models) * (2 if settings.production else 1)
    controller = controllers * cpu_millis(values["deployment"]["envoyGateway"]["resources"]["requests"]["cpu"])
    if settings.routed is None:  # the controllers alone, until the gateway is removed
        return {"gateway rate limit service": controllers * RATELIMIT_CPU_MILLIS, "Envoy Gateway": controller}
    return {
        "gateway proxies": settings.gateway.replicas * (ENVOY_CPU_MILLIS + PROCESSOR_CPU_MILLIS),
        "gateway rate limit service": controllers * RATELIMIT_CPU_MILLIS,
        "endpoint pickers": pickers * PICKER_CPU_MILLIS,
        "Envoy Gateway": controller,
        "gateway key sync": KEY_SYNC_CPU_MILLIS,
    }


def standard_vcpus_needed(settings: StageSettings) -> int:
    """The least vCPUs of a Standard instance that leaves to pods (Karpenter's kube-reserved) what they ask."""
    millis = sum(general_purpose_requests(settings).values())
    return next(v for v in (2, 4, 8, 16, 32, 48, 64, 96, 192) if allocatable_cpu_millis(v) >= millis)


def scanning_problem(ecr: Client) -> tuple[str | None, str]:
    """What replacing the account's registry scanning configuration would lose (a blocker), and what it is now."""
    configuration = ecr.get_registry_scanning_configuration()["scanningConfiguration"]
    scan_type = configuration.get("scanType", "BASIC")
    rules = [
        f"{rule['scanFrequency']} of {', '.join(f['filter'] for f in rule.get('repositoryFilters', []))}"
        for rule in configuration.get("rules", [])
    ]
    now = f"{scan_type} scanning" + (f" ({'; '.join(rules)})" if rules else ", no rules")
    if scan_type == "ENHANCED":
        return (
            "the account's ECR registry scanning is ENHANCED (Amazon Inspector): the stage's deploy would replace it "
            "with basic scanning; set registry.owns_scanning_configuration: false",
            now,
        )
    return None, now


def unhandled_body_rules(wafv2: Client) -> list[str]:
    """The Known Bad Inputs rule group's rules that inspect the body and that the web ACL does not set to count."""
    group = wafv2.describe_managed_rule_group(VendorName="AWS", Name=KNOWN_BAD_INPUTS, Scope="REGIONAL")
    return [
        rule["Name"]
        for rule in group.get("Rules", [])
        if rule["Name"].upper().endswith("_BODY") and rule["Name"] not in KNOWN_BAD_INPUTS_BODY_RULES
    ]


def check_reservation_ids(reservations: Sequence[str]) -> None:
    """Every id must look like a capacity reservation's; raises ValueError naming those that do not."""
    bad = [reservation for reservation in reservations if not RESERVATION_ID.fullmatch(reservation)]
    if bad:
        raise ValueError(
            f"not a capacity reservation id: {', '.join(repr(b) for b in bad)}; "
            "expected cr- and 17 lower-case hex digits, as in cr-0123456789abcdef0"
        )


def usable_zones(settings: StageSettings) -> tuple[tuple[str, ...], str]:
    """The zones GPU nodes may use, in any pool, and why."""
    spread = [pool.name for pool in settings.gpu_node_pools if pool.zones == "all_zones"]
    if spread:
        return tuple(settings.availability_zones), f"every zone of the stage (zones: all_zones in {', '.join(spread)})"
    return (settings.model_store_zone,), "the model store's zone (every GPU pool's zones: model_store_zone)"


def capacity_types(settings: StageSettings) -> tuple[str, ...]:
    """Every capacity type a GPU pool allows, in the pools' order."""
    return tuple(dict.fromkeys(kind for pool in settings.gpu_node_pools for kind in pool.capacity_types))


def selected_reservations(settings: StageSettings) -> tuple[str, ...]:
    """The capacity reservations the GPU pools' NodeClasses select."""
    return tuple(dict.fromkeys(r for pool in settings.gpu_node_pools for r in pool.capacity_reservations))


def instance_offerings(ec2: Client, types: Sequence[str], zones: Sequence[str]) -> dict[str, set[str]]:
    """The given instance types EC2 offers in each of the given zones."""
    offered: dict[str, set[str]] = {zone: set() for zone in zones}
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    pages = paginator.paginate(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": list(types)}, {"Name": "location", "Values": list(zones)}],
    )
    for page in pages:
        for offering in page.get("InstanceTypeOfferings", []):
            if offering["Location"] in offered:
                offered[offering["Location"]].add(offering["InstanceType"])
    return offered


def gateway_clients_problems(secrets: Client, gateway: GatewaySettings) -> list[str]:
    """The gateway's clients secret must exist and hold a key for every client the settings name: the key sync
    stops at the first client without one (charts/gateway.py). The keys themselves are never shown."""
    name = gateway.clients_secret
    try:
        text = secrets.get_secret_value(SecretId=name).get("SecretString") or ""
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return [f'gateway.clients_secret: {name} does not exist; create it (docs/gateway.md, "Settings")']
        raise
    try:
        keys = json.loads(text)
        if not isinstance(keys, dict):
            raise ValueError
    except ValueError:
        return [f'gateway.clients_secret: {name} is not a JSON object {{"<client id>": "<key>", ...}}']
    missing = [c.id for c in gateway.clients if not isinstance(keys.get(c.id), str) or not keys[c.id].strip()]
    if missing:
        return [f"gateway.clients: no key for {', '.join(missing)} in {name}"]
    # Envoy Gateway refuses a key two clients share, and then answers 500 on every route (its securitypolicy.go).
    held = [keys[c.id].strip() for c in gateway.clients]
    if sharing := [c.id for c in gateway.clients if held.count(keys[c.id].strip()) > 1]:
        return [f"gateway.clients: {', '.join(sharing)} share one key in {name}; give each its own"]
    return []


def secret_exists(secrets: Client, name: str) -> bool:
    """Whether a Secrets Manager secret of that name exists (and is visible to the caller)."""
    try:
        secrets.describe_secret(SecretId=name)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


def quota_value(quotas: Client, quota: Quota) -> tuple[float, str, str]:
    """(value, "applied" or "AWS default", the name AWS gives it) of an EC2 quota in the client's region."""
    try:
        answer = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=quota.code)["Quota"]
        source = "applied"
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
        answer = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=quota.code)["Quota"]
        source = "AWS default"
    return float(answer.get("Value", 0.0)), source, answer.get("QuotaName", quota.name)


def describe_reservation(ec2: Client, reservation: str) -> dict[str, Any] | None:
    """A capacity reservation as EC2 describes it; None when it does not exist."""
    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[reservation])["CapacityReservations"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvalidCapacityReservationId.NotFound":
            return None
        raise
    return found[0] if found else None


def reservation_result(
    reservation: str,
    described: dict[str, Any] | None,
    settings: StageSettings,
    zones: Sequence[str],
    runnable: Sequence[str],
    now: datetime,
) -> ReservationResult:
    """What stops a described reservation from serving the stage's GPU nodes, and what else to know."""
    if described is None:
        return ReservationResult(
            reservation, found=False, problems=(f"does not exist in {settings.region} (or is not visible to you)",)
        )
    state = described.get("State", "")
    zone = described.get("AvailabilityZone", "")
    instance_type = described.get("InstanceType", "")
    available = int(described.get("AvailableInstanceCount", 0))
    end_date: datetime | None = described.get("EndDate")
    problems, notes = [], []
    if end_date is not None and end_date <= now:
        problems.append(f"expired: it ended {end_date.isoformat()}")
    if state != "active" and not (state == "expired" and problems):
        problems.append(f"state is {state}, not active")
    if zone not in zones:
        problems.append(f"in {zone}, where GPU nodes do not run (they may use {', '.join(zones)})")
    if instance_type not in runnable:
        problems.append(f"{instance_type} cannot run any of the stage's models")
    if available <= 0:
        problems.append(f"no instance available ({available} of {described.get('TotalInstanceCount', 0)})")
    platform = described.get("InstancePlatform", "Linux/UNIX")
    if platform != "Linux/UNIX":
        problems.append(f"platform {platform}; the GPU nodes are Linux/UNIX")
    if described.get("Tenancy", "default") != "default":
        problems.append(f"tenancy {described['Tenancy']}; the GPU nodes use default tenancy")
    if reservation not in selected_reservations(settings):
        if described.get("InstanceMatchCriteria") == "targeted":
            notes.append("targeted: only launches that name it use it, and no GPU pool selects it")
        else:
            notes.append(
                "no GPU pool selects it: Auto Mode launches into it only by open matching, as on-demand, and "
                "not at all once any NodeClass selects reservations; add it to a pool's capacity_reservations"
            )
        if ON_DEMAND not in capacity_types(settings):
            notes.append("open matching launches on-demand, which no GPU pool's capacity_types allows")
    return ReservationResult(
        reservation,
        found=True,
        state=state,
        zone=zone,
        instance_type=instance_type,
        available=available,
        total=int(described.get("TotalInstanceCount", 0)),
        end=end_date.isoformat() if end_date is not None else "no end date",
        problems=tuple(problems),
        notes=tuple(notes),
    )


def check_offerings(
    settings: StageSettings,
    ec2: Client,
    options: dict[str, list[GpuInstance]],
    runnable: list[str],
    zones: tuple[str, ...],
    zones_reason: str,
    blockers: list[str],
    notes: list[str],
) -> tuple[list[OfferingResult], list[Node]]:
    """Each model's candidate instances offered where its GPU nodes run; the node each gets, to count quotas on."""
    offered = instance_offerings(ec2, runnable, settings.availability_zones) if runnable else {}
    offerings, nodes = [], []
    for model in settings.models:
        names = tuple(instance.type for instance in options[model.name])
        result = OfferingResult(
            model=model.name,
            candidates=names,
            offered={zone: tuple(name for name in names if name in offered.get(zone, ())) for zone in offered},
            usable_zones=zones,
        )
        offerings.append(result)
        if not names:
            blockers.append(f"{model.name}: no GPU instance can run one replica (see `make sizing`)")
            continue
        if not result.ok:
            elsewhere = {zone: found for zone, found in result.offered.items() if found and zone not in zones}
            hint = (
                "; offered elsewhere: " + ", ".join(f"{zone}: {', '.join(found)}" for zone, found in elsewhere.items())
                if elsewhere
                else ""
            )
            blockers.append(
                f"{model.name}: none of its {len(names)} candidate instance types is offered in "
                f"{', '.join(zones)} ({zones_reason}){hint}"
            )
        usable_offered = {name for found in result.usable.values() for name in found}
        pick = next((i for i in options[model.name] if i.type in usable_offered), options[model.name][0])
        if pick is not options[model.name][0]:
            notes.append(
                f"{model.name}: its cheapest candidate {options[model.name][0].type} is not offered where GPU "
                f"nodes run; the quotas are counted on {pick.type}"
            )
        # A warm spare holds a GPU node around the clock (charts/warm_spares.py): it counts as a replica does.
        nodes.append(Node(model.name, pick, model.peak_replicas + 1 + model.warm_spares))
    return offerings, nodes


def check_gpu_quotas(
    settings: StageSettings,
    quotas_client: Client,
    nodes: list[Node],
    allowed: Sequence[str],
    blockers: list[str],
    notes: list[str],
) -> list[QuotaResult]:
    """The G and P vCPU quotas against the nodes the models need at their peak, plus a rollout's surge."""
    quotas = []
    for quota in QUOTAS:
        value, source, aws_name = quota_value(quotas_client, quota)
        used = quota.capacity_type in allowed or (quota.capacity_type == ON_DEMAND and RESERVED in allowed)
        needed = sum(node.vcpus for node in nodes if node.instance.category == quota.category) if used else 0
        quotas.append(
            QuotaResult(quota, value, source, needed, used, aws_name, request_url(settings.region, quota.code))
        )
        if aws_name != quota.name:
            notes.append(f"AWS names {quota.code} {aws_name!r}, not {quota.name!r}: check the quota code")
    for category, family in FAMILIES.items():
        counted = [row for row in quotas if row.quota.category == category and row.used and row.needed > 0]
        if counted and not any(row.enough for row in counted):
            blockers.append(
                f"{family} vCPU quota: {counted[0].needed} vCPUs needed, "
                + (" and ".join(f"{row.quota.name} ({row.quota.code}) is {row.value:g}" for row in counted))
                + "; request more at "
                + " or ".join(row.url for row in counted)
            )
    return quotas


def check_account(
    settings: StageSettings,
    client_factory: ClientFactory,
    quotas_client: Client,
    blockers: list[str],
    notes: list[str],
) -> None:
    """The API keys secrets, the Standard quota, the registry's scanning and WAF's body rules."""
    # 4: the models' API keys secrets exist (a replica cannot start without its keys), and Docker Hub's credential.
    credential = settings.registry.docker_hub_credential_arn
    secrets = client_factory("secretsmanager") if settings.secrets_store or credential else None
    if credential and secrets is not None and not secret_exists(secrets, credential):
        blockers.append(
            f"registry.docker_hub_credential_arn: the secret {credential} does not exist; create it with your Docker "
            'Hub username and an access token (docs/vllm-versions.md, "Images from Docker Hub")'
        )
    if settings.routed is not None and secrets is not None:
        blockers.extend(gateway_clients_problems(secrets, settings.routed))
    for model in settings.models:
        if model.api_keys_secret and secrets is not None and not secret_exists(secrets, model.api_keys_secret):
            blockers.append(
                f"{model.name}: its API keys secret {model.api_keys_secret} does not exist in {settings.region}; "
                'create it (docs/access.md, "API keys") or the replicas wait for it'
            )

    # 5: the Standard quota, for what runs on Auto Mode's built-in pools.
    standard_value, standard_source, _ = quota_value(quotas_client, STANDARD_QUOTA)
    standard_needed = standard_vcpus_needed(settings)
    asked = ", ".join(f"{what} {millis}m" for what, millis in general_purpose_requests(settings).items())
    notes.append(
        f"{STANDARD_QUOTA.name} ({STANDARD_QUOTA.code}): {standard_value:g} ({standard_source}); at least "
        f"{standard_needed} vCPUs needed for the stage's own pods on Auto Mode's built-in pools ({asked or 'none'})"
    )
    if standard_value < standard_needed:
        blockers.append(
            f"{STANDARD_QUOTA.name} ({STANDARD_QUOTA.code}) is {standard_value:g}, {standard_needed} vCPUs needed "
            f"at least; request more at {request_url(settings.region, STANDARD_QUOTA.code)}"
        )

    # 6: the registry scanning configuration the stage would replace.
    if settings.registry.owns_scanning_configuration:
        problem, now_configured = scanning_problem(client_factory("ecr"))
        notes.append(
            f"ECR registry scanning in {settings.region} now: {now_configured}; the stage's deploy replaces it"
        )
        if problem:
            blockers.append(problem)

    # 7: body rules that would block prompts.
    if settings.exposed:
        new_rules = unhandled_body_rules(client_factory("wafv2"))
        if new_rules:
            blockers.append(
                f"{KNOWN_BAD_INPUTS} has rules that inspect the request body and would block prompts quoting "
                f"their patterns: {', '.join(new_rules)}; add them to KNOWN_BAD_INPUTS_BODY_RULES (stacks/web_acl.py)"
            )


def preflight(
    settings: StageSettings,
    reservations: Sequence[str],
    client_factory: ClientFactory,
    *,
    now: datetime | None = None,
) -> Report:
    """Check that the stage can get its GPU nodes; `client_factory(service)` gives a boto3 client in its region.

    Raises ValueError on a malformed reservation id before any AWS call; AWS errors other than the
    expected ones (no applied quota value, no such reservation) propagate.
    """
    check_reservation_ids(reservations)
    reservations = list(dict.fromkeys([*selected_reservations(settings), *reservations]))
    now = now or datetime.now(UTC)
    zones, zones_reason = usable_zones(settings)
    allowed = capacity_types(settings)
    options = {model.name: candidates(settings, model) for model in settings.models}
    runnable = list(dict.fromkeys(instance.type for found in options.values() for instance in found))
    blockers: list[str] = []
    notes: list[str] = []

    # 2 first: the instance Karpenter would launch is the cheapest candidate offered in a usable zone.
    ec2 = client_factory("ec2")
    offerings, nodes = check_offerings(settings, ec2, options, runnable, zones, zones_reason, blockers, notes)
    # 1: the quotas.
    quotas_client = client_factory("service-quotas")
    quotas = check_gpu_quotas(settings, quotas_client, nodes, allowed, blockers, notes)
    # 4 to 7: the account's other settings the stage relies on.
    check_account(settings, client_factory, quotas_client, blockers, notes)

    # 3: the reservations.
    results = [
        reservation_result(reservation, describe_reservation(ec2, reservation), settings, zones, runnable, now)
        for reservation in reservations
    ]
    blockers += [
        f"capacity reservation {result.id}: {'; '.join(result.problems)}" for result in results if not result.ok
    ]

    return Report(
        stage=settings.name,
        region=settings.region,
        capacity_types=allowed,
        usable_zones=zones,
        zones_reason=zones_reason,
        nodes=nodes,
        quotas=quotas,
        offerings=offerings,
        reservations=results,
        blockers=blockers,
        notes=notes,
    )


# --- the command ---


def _reservation_argument(value: str) -> str:
    try:
        check_reservation_ids([value])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def main(argv: Sequence[str] | None = None, client_factory: ClientFactory | None = None) -> int:
    """Print the report; 0 if the stage can start, 1 if something blocks it, 2 if it could not be checked."""
    parser = argparse.ArgumentParser(prog="python -m commands.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    parser.add_argument(
        "--reservation",
        action="extend",
        nargs="+",
        default=[],
        type=_reservation_argument,
        metavar="cr-ID",
        help="capacity reservations to check besides those the GPU pools select (repeatable)",
    )
    args = parser.parse_args(argv)
    settings = stage_settings_or_exit(args.stage)
    if client_factory is None:
        client_factory = boto3.session.Session(region_name=settings.region).client
    try:
        report = preflight(settings, args.reservation, client_factory)
    except (BotoCoreError, ClientError) as error:
        print(f"could not check stage {settings.name} in {settings.region}: {error}", file=sys.stderr)
        return 2
    print(report.markdown())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
