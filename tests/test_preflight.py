"""commands/preflight.py against stubbed AWS: real boto3 clients, botocore's Stubber, no network.

Stubber checks every request against the expected parameters and both against the service models.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from commands.preflight import QUOTAS, STANDARD_QUOTA, gateway_clients_problems, main, preflight, request_url
from settings import StageSettings, load_stage_settings, parse_stage_settings
from settings.sizing import candidates
from tests.aws_stubs import StubbedClients
from tests.conftest import keyed_prod_data, stage_data

REGION = "us-west-2"
ACTIVE = "cr-0123456789abcdef0"
EXPIRED = "cr-0fedcba9876543210"
MISSING = "cr-00000000000000000"
SERVICES = ("ec2", "service-quotas", "secretsmanager", "ecr", "wafv2")
G_ON_DEMAND, G_SPOT, P_ON_DEMAND, P_SPOT = (quota.code for quota in QUOTAS)


@functools.cache
def stage(name: str) -> StageSettings:
    return load_stage_settings(name)


class Stubs(StubbedClients):
    """The services commands/preflight.py asks, with their answers for a stage."""

    def __init__(self) -> None:
        super().__init__(SERVICES)

    def offerings(self, settings: StageSettings, offered: Mapping[str, Sequence[str]]) -> None:
        """DescribeInstanceTypeOfferings for every candidate in the stage's zones, answering `offered` per zone."""
        types = list(dict.fromkeys(i.type for model in settings.models for i in candidates(settings, model)))
        self.stubbers["ec2"].add_response(
            "describe_instance_type_offerings",
            {
                "InstanceTypeOfferings": [
                    {"InstanceType": name, "LocationType": "availability-zone", "Location": zone}
                    for zone, names in offered.items()
                    for name in names
                ]
            },
            {
                "LocationType": "availability-zone",
                "Filters": [
                    {"Name": "instance-type", "Values": types},
                    {"Name": "location", "Values": list(settings.availability_zones)},
                ],
            },
        )

    def quotas(self, values: dict[str, float | None]) -> None:
        """GetServiceQuota of each quota in turn; None: no applied value, so the AWS default (5) is asked."""
        stubber = self.stubbers["service-quotas"]
        for quota in (*QUOTAS, STANDARD_QUOTA):
            params = {"ServiceCode": "ec2", "QuotaCode": quota.code}
            answer = {"Quota": {"QuotaCode": quota.code, "QuotaName": quota.name, "ServiceCode": "ec2"}}
            value = values[quota.code]
            if value is None:
                stubber.add_client_error(
                    "get_service_quota", "NoSuchResourceException", "no applied value", 404, params
                )
                stubber.add_response(
                    "get_aws_default_service_quota", {"Quota": {**answer["Quota"], "Value": 5.0}}, params
                )
            else:
                stubber.add_response("get_service_quota", {"Quota": {**answer["Quota"], "Value": value}}, params)

    def secrets(
        self, settings: StageSettings, missing: Sequence[str] = (), gateway_keys: dict[str, str] | None = None
    ) -> None:
        """GetSecretValue of the gateway's clients secret (`gateway_keys`, by default a key for every client), then
        DescribeSecret of every model's API keys secret: found, unless named in `missing`."""
        if settings.gateway is not None:
            params = {"SecretId": settings.gateway.clients_secret}
            if settings.gateway.clients_secret in missing:
                self.stubbers["secretsmanager"].add_client_error(
                    "get_secret_value", "ResourceNotFoundException", "not found", 400, params
                )
            else:
                keys = (
                    {c.id: f"key-of-{c.id}" for c in settings.gateway.clients} if gateway_keys is None else gateway_keys
                )
                answer = {"Name": settings.gateway.clients_secret, "SecretString": json.dumps(keys)}
                self.stubbers["secretsmanager"].add_response("get_secret_value", answer, params)
        for model in settings.models:
            if not model.api_keys_secret:
                continue
            params = {"SecretId": model.api_keys_secret}
            if model.api_keys_secret in missing:
                self.stubbers["secretsmanager"].add_client_error(
                    "describe_secret", "ResourceNotFoundException", "not found", 400, params
                )
            else:
                self.stubbers["secretsmanager"].add_response("describe_secret", {"Name": model.api_keys_secret}, params)

    def scanning(self, scan_type: str = "BASIC", rules: Sequence[dict[str, Any]] = ()) -> None:
        """GetRegistryScanningConfiguration: the account's current one."""
        configuration = {"scanType": scan_type, "rules": list(rules)}
        self.stubbers["ecr"].add_response(
            "get_registry_scanning_configuration",
            {"registryId": "123456789012", "scanningConfiguration": configuration},
        )

    def known_bad_inputs(self, rules: Sequence[str]) -> None:
        """DescribeManagedRuleGroup of AWS's Known Bad Inputs rule group, with these rules."""
        self.stubbers["wafv2"].add_response(
            "describe_managed_rule_group",
            {"Rules": [{"Name": name, "Action": {"Block": {}}} for name in rules]},
            {"VendorName": "AWS", "Name": "AWSManagedRulesKnownBadInputsRuleSet", "Scope": "REGIONAL"},
        )

    def reservation(self, reservation: str, described: dict[str, Any] | None) -> None:
        params = {"CapacityReservationIds": [reservation]}
        if described is None:
            self.stubbers["ec2"].add_client_error(
                "describe_capacity_reservations", "InvalidCapacityReservationId.NotFound", "not found", 400, params
            )
        else:
            response = {"CapacityReservations": [{"CapacityReservationId": reservation, **described}]}
            self.stubbers["ec2"].add_response("describe_capacity_reservations", response, params)


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    with Stubs() as stubs:
        yield stubs
        stubs.assert_no_pending_responses()


def needed_vcpus(settings: StageSettings, category: str) -> int:
    """Every model's replicas (at most) plus one surge on its cheapest candidate, for the models of a category."""
    total = 0
    for model in settings.models:
        cheapest = candidates(settings, model)[0]
        if cheapest.category == category:
            total += (model.peak_replicas + 1 + model.warm_spares) * cheapest.vcpus
    return total


def test_warm_spares_count_against_the_quota_as_replicas_do(stubs: Stubs) -> None:
    data = stage_data()
    data["models"][0]["warm_spares"] = 2
    settings = parse_stage_settings("dev", data)
    # dev's one replica, its surge and two spares: four nodes of the cheapest candidate, not two.
    assert needed_vcpus(settings, "g") == 2 * needed_vcpus(stage("dev"), "g")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    out = preflight(settings, [], stubs.client).markdown()
    cheapest = candidates(settings, settings.models[0])[0]
    assert f"gpt-oss-20b 4 x {cheapest.type} ({cheapest.vcpus} vCPUs, G and VT) = {4 * cheapest.vcpus}" in out


def offered_everywhere(settings: StageSettings) -> dict[str, list[str]]:
    types = [i.type for model in settings.models for i in candidates(settings, model)]
    return {zone: types for zone in settings.availability_zones}


ENOUGH = {G_ON_DEMAND: 64.0, G_SPOT: 64.0, P_ON_DEMAND: 0.0, P_SPOT: None, STANDARD_QUOTA.code: 32.0}


def test_enough_quota_and_offered_everywhere_can_start(stubs: Stubs, capsys: pytest.CaptureFixture[str]) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)

    assert main(["--stage", "dev"], client_factory=stubs.client) == 0

    out = capsys.readouterr().out
    needed = needed_vcpus(settings, "g")
    assert f"| Running On-Demand G and VT instances | {G_ON_DEMAND} | 64 (applied) | {needed} | OK |  |" in out
    assert f"| All G and VT Spot Instance Requests | {G_SPOT} | 64 (applied) | {needed} | OK |  |" in out
    assert f"| All P Spot Instance Requests | {P_SPOT} | 5 (AWS default) | 0 | OK |  |" in out
    assert "must also cover the instances already running" in out
    assert (
        f"| gpt-oss-20b | {settings.model_store_zone} | yes | {candidates(settings, settings.models[0])[0].type}, "
        in out
    )
    assert "SHORT" not in out
    assert "servicequotas/home" not in out
    assert out.rstrip().endswith("stage dev can start: quotas, offerings and reservations allow its GPU nodes")


def test_no_g_and_vt_quota_blocks_naming_the_quota_and_its_request_link(
    stubs: Stubs, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas({**ENOUGH, G_ON_DEMAND: 0.0, G_SPOT: 0.0})

    assert main(["--stage", "dev"], client_factory=stubs.client) == 1

    out = capsys.readouterr().out
    needed = needed_vcpus(settings, "g")
    assert needed == (settings.models[0].replicas + 1) * candidates(settings, settings.models[0])[0].vcpus
    link = f"https://{REGION}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{G_ON_DEMAND}"
    assert request_url(REGION, G_ON_DEMAND) == link
    assert f"| Running On-Demand G and VT instances | {G_ON_DEMAND} | 0 (applied) | {needed} | SHORT | {link} |" in out
    summary = out.rstrip().splitlines()[-1]
    assert summary.startswith("stage dev cannot start: G and VT vCPU quota: ")
    assert f"{needed} vCPUs needed" in summary
    assert f"Running On-Demand G and VT instances ({G_ON_DEMAND}) is 0" in summary
    assert f"All G and VT Spot Instance Requests ({G_SPOT}) is 0" in summary
    assert link in summary
    assert request_url(REGION, G_SPOT) in summary


def test_one_capacity_type_with_enough_quota_is_enough(stubs: Stubs) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas({**ENOUGH, G_SPOT: 0.0})

    report = preflight(settings, [], stubs.client)

    assert report.ok, report.blockers
    assert f"| All G and VT Spot Instance Requests | {G_SPOT} | 0 (applied) | " in report.markdown()
    assert "| SHORT, on-demand is enough | " + request_url(REGION, G_SPOT) in report.markdown()


def test_spot_quota_does_not_count_where_the_pool_allows_on_demand_only(stubs: Stubs) -> None:
    settings = stage("prod")
    assert settings.gpu_node_pools[0].capacity_types == ("on-demand",)
    stubs.secrets(settings)
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas({**ENOUGH, G_ON_DEMAND: 4.0, G_SPOT: 1000.0})
    stubs.scanning()

    report = preflight(settings, [], stubs.client)

    needed = needed_vcpus(settings, "g")
    assert needed == (4 + 1) * 4  # autoscaling's 4 replicas and a surge, on g6.xlarge
    assert report.blockers == [
        f"G and VT vCPU quota: {needed} vCPUs needed, Running On-Demand G and VT instances ({G_ON_DEMAND}) is 4; "
        f"request more at {request_url(REGION, G_ON_DEMAND)}"
    ]
    assert "| 0 (spot in no pool's capacity_types) |" in report.markdown()


def test_candidates_not_offered_in_the_model_store_zone_block_naming_the_zone(
    stubs: Stubs, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = stage("prod")
    assert settings.gpu_node_pools[0].zones == "model_store_zone"
    stubs.secrets(settings)
    store_zone = settings.model_store_zone
    other_zone = next(zone for zone in settings.availability_zones if zone != store_zone)
    cheapest = candidates(settings, settings.models[0])[0].type
    stubs.offerings(settings, {other_zone: [cheapest]})
    stubs.quotas(ENOUGH)
    stubs.scanning()

    assert main(["--stage", "prod"], client_factory=stubs.client) == 1

    out = capsys.readouterr().out
    assert f"| gpt-oss-20b | {store_zone} | yes | — | NONE OFFERED |" in out
    assert f"| gpt-oss-20b | {other_zone} | no | {cheapest} | not used |" in out
    summary = out.rstrip().splitlines()[-1]
    assert summary.startswith("stage prod cannot start: gpt-oss-20b: none of its ")
    assert f"is offered in {store_zone} (the model store's zone" in summary
    assert f"offered elsewhere: {other_zone}: {cheapest}" in summary


def reservation(settings: StageSettings, **changes: Any) -> dict[str, Any]:
    """An active, open Linux reservation of the cheapest candidate in the model store's zone, 2 of 2 free."""
    return {
        "InstanceType": candidates(settings, settings.models[0])[0].type,
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": settings.model_store_zone,
        "Tenancy": "default",
        "TotalInstanceCount": 2,
        "AvailableInstanceCount": 2,
        "State": "active",
        "EndDateType": "unlimited",
        "InstanceMatchCriteria": "open",
        **changes,
    }


def test_expired_reservation_blocks_naming_it(stubs: Stubs, capsys: pytest.CaptureFixture[str]) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    ended = datetime(2025, 1, 31, tzinfo=UTC)
    stubs.reservation(ACTIVE, reservation(settings))
    stubs.reservation(EXPIRED, reservation(settings, State="expired", EndDate=ended, EndDateType="limited"))

    assert main(["--stage", "dev", "--reservation", ACTIVE, EXPIRED], client_factory=stubs.client) == 1

    out = capsys.readouterr().out
    assert f"| {ACTIVE} | active | {settings.model_store_zone} | " in out
    assert "| 2 of 2 | no end date | OK |" in out
    summary = out.rstrip().splitlines()[-1]
    assert summary == f"stage dev cannot start: capacity reservation {EXPIRED}: expired: it ended {ended.isoformat()}"


def test_active_matching_reservation_with_room_is_ok(stubs: Stubs) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.reservation(ACTIVE, reservation(settings, AvailableInstanceCount=1, EndDate=datetime(2099, 1, 1, tzinfo=UTC)))

    report = preflight(settings, [ACTIVE], stubs.client, now=datetime(2026, 6, 1, tzinfo=UTC))

    assert report.ok, report.blockers
    (result,) = report.reservations
    assert (result.state, result.available, result.total, result.problems) == ("active", 1, 2, ())
    assert f"| {ACTIVE} | active | {settings.model_store_zone} | {result.instance_type} | 1 of 2 | 2099-01-01" in (
        report.markdown()
    )


def test_unusable_reservations_say_why(stubs: Stubs) -> None:
    settings = stage("dev")
    other_zone = next(zone for zone in settings.availability_zones if zone != settings.model_store_zone)
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.reservation(MISSING, None)
    stubs.reservation(
        ACTIVE, reservation(settings, AvailabilityZone=other_zone, InstanceType="m5.large", AvailableInstanceCount=0)
    )

    report = preflight(settings, [MISSING, ACTIVE], stubs.client)

    assert report.blockers == [
        f"capacity reservation {MISSING}: does not exist in {REGION} (or is not visible to you)",
        f"capacity reservation {ACTIVE}: in {other_zone}, where GPU nodes do not run (they may use "
        f"{settings.model_store_zone}); m5.large cannot run any of the stage's models; no instance available (0 of 2)",
    ]


@pytest.mark.parametrize("bad", ["cr-123", "CR-0123456789ABCDEF0", "i-0123456789abcdef0", "cr-0123456789abcdef0x"])
def test_malformed_reservation_id_is_refused_before_any_aws_call(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    def no_aws(service: str) -> Any:
        raise AssertionError(f"AWS was called ({service})")

    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "dev", "--reservation", ACTIVE, bad], client_factory=no_aws)

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"not a capacity reservation id: {bad!r}" in err
    assert "cr- and 17 lower-case hex digits" in err
    with pytest.raises(ValueError, match="not a capacity reservation id"):
        preflight(stage("dev"), [bad], no_aws)


def stage_with_a_reserved_pool(reservation_id: str) -> StageSettings:
    data = stage_data()
    data["cluster"]["open_reservations_unused"] = True
    data["gpu_node_pools"].insert(
        0, {"name": "reserved", "capacity_types": ["reserved"], "capacity_reservations": [reservation_id]}
    )
    return parse_stage_settings("dev", data)


def test_the_reservations_a_pool_selects_are_checked_without_being_named(stubs: Stubs) -> None:
    settings = stage_with_a_reserved_pool(EXPIRED)
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    ended = datetime(2025, 1, 31, tzinfo=UTC)
    stubs.reservation(EXPIRED, reservation(settings, State="expired", EndDate=ended, EndDateType="limited"))

    report = preflight(settings, [], stubs.client)

    assert report.blockers == [f"capacity reservation {EXPIRED}: expired: it ended {ended.isoformat()}"]
    assert report.reservations[0].notes == ()  # selected: no advice to select it


def test_a_reservation_no_pool_selects_is_reported_as_open_matching_only(stubs: Stubs) -> None:
    settings = stage("dev")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.reservation(ACTIVE, reservation(settings))

    (result,) = preflight(settings, [ACTIVE], stubs.client).reservations

    assert result.ok
    assert result.notes == (
        "no GPU pool selects it: Auto Mode launches into it only by open matching, as on-demand, and not at all "
        "once any NodeClass selects reservations; add it to a pool's capacity_reservations",
    )


def test_a_missing_api_keys_secret_blocks_naming_it(stubs: Stubs) -> None:
    settings = parse_stage_settings("prod", keyed_prod_data())
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.scanning()
    stubs.secrets(settings, missing=["gpt-oss-20b/api-keys"])

    report = preflight(settings, [], stubs.client)

    assert report.blockers == [
        "gpt-oss-20b: its API keys secret gpt-oss-20b/api-keys does not exist in us-west-2; create it "
        '(docs/access.md, "API keys") or the replicas wait for it'
    ]


def test_a_stage_that_does_not_load_ends_the_command_before_any_aws_call(capsys: pytest.CaptureFixture[str]) -> None:
    def no_aws(service: str) -> Any:
        raise AssertionError(f"AWS was called ({service})")

    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "no-such-stage"], client_factory=no_aws)

    assert exit_info.value.code == 2
    assert "no-such-stage" in capsys.readouterr().err


def test_too_little_standard_quota_for_the_stages_own_pods_blocks(stubs: Stubs) -> None:
    # prod's weights import (2 CPUs), KEDA's three parts (100m each), the node rotation (50m) and the gateway (two
    # proxies of 1.5 CPU with their processors, two rate limit services and two Envoy Gateway controllers of 100m,
    # two pickers of 500m, the key sync's 10m) need an 8-vCPU instance on Auto Mode's built-in pools.
    settings = stage("prod")
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas({**ENOUGH, STANDARD_QUOTA.code: 2.0})
    stubs.secrets(settings)
    stubs.scanning()

    report = preflight(settings, [], stubs.client)

    assert report.blockers == [
        f"Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances ({STANDARD_QUOTA.code}) is 2, 8 vCPUs "
        f"needed at least; request more at {request_url(REGION, STANDARD_QUOTA.code)}"
    ]
    (note,) = [note for note in report.notes if STANDARD_QUOTA.code in note]
    assert "weights import of gpt-oss-20b 2000m, KEDA operator 100m, KEDA metricServer 100m" in note
    assert "gateway proxies 3000m, gateway rate limit service 200m, endpoint pickers 1000m, Envoy Gateway 200m" in note


def test_enhanced_scanning_in_the_account_blocks_a_stage_that_would_replace_it(stubs: Stubs) -> None:
    settings = stage("prod")
    assert settings.registry.owns_scanning_configuration
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.secrets(settings)
    stubs.scanning(
        "ENHANCED",
        [{"scanFrequency": "CONTINUOUS_SCAN", "repositoryFilters": [{"filter": "*", "filterType": "WILDCARD"}]}],
    )

    report = preflight(settings, [], stubs.client)

    assert report.blockers == [
        "the account's ECR registry scanning is ENHANCED (Amazon Inspector): the stage's deploy would replace it "
        "with basic scanning; set registry.owns_scanning_configuration: false"
    ]
    assert "ECR registry scanning in us-west-2 now: ENHANCED scanning (CONTINUOUS_SCAN of *)" in report.markdown()


def test_a_stage_that_does_not_own_scanning_never_asks_ecr(stubs: Stubs) -> None:
    settings = stage("dev")
    assert not settings.registry.owns_scanning_configuration
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    assert preflight(settings, [], stubs.client).ok  # no ECR stub: a call would fail the test


@pytest.mark.parametrize(("rules", "blocked"), [((), False), (("SQLi_BODY",), True)])
def test_a_new_body_rule_of_known_bad_inputs_blocks_an_exposed_stage(
    stubs: Stubs, rules: tuple[str, ...], blocked: bool
) -> None:
    data = keyed_prod_data()
    data["models"][0]["exposure"] = {
        "hostname": "llm.internal.example.com",
        "certificate_arn": "arn:aws:acm:us-west-2:123456789012:certificate/0a1b2c3d-0000-4000-8000-000000000000",
    }
    settings = parse_stage_settings("prod", data)
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.secrets(settings)
    stubs.scanning()
    stubs.known_bad_inputs(["JavaDeserializationRCE_BODY", "Log4JRCE_BODY", "Log4JRCE_HEADER", *rules])

    report = preflight(settings, [], stubs.client)

    assert report.blockers == (
        [
            "AWSManagedRulesKnownBadInputsRuleSet has rules that inspect the request body and would block prompts "
            "quoting their patterns: SQLi_BODY; add them to KNOWN_BAD_INPUTS_BODY_RULES (stacks/web_acl.py)"
        ]
        if blocked
        else []
    )


def test_a_missing_docker_hub_credential_blocks_naming_it(stubs: Stubs) -> None:
    data = stage_data("dev")
    arn = "arn:aws:secretsmanager:us-west-2:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    data["registry"] = {"docker_hub_credential_arn": arn}
    data["models"][0]["image"] = "docker.io/vllm/vllm-openai:v0.33.0"
    settings = parse_stage_settings("dev", data)
    stubs.offerings(settings, offered_everywhere(settings))
    stubs.quotas(ENOUGH)
    stubs.stubbers["secretsmanager"].add_client_error(
        "describe_secret", "ResourceNotFoundException", "not found", 400, {"SecretId": arn}
    )

    report = preflight(settings, [], stubs.client)

    assert report.blockers == [
        f"registry.docker_hub_credential_arn: the secret {arn} does not exist; create it with your Docker Hub "
        'username and an access token (docs/vllm-versions.md, "Images from Docker Hub")'
    ]


@pytest.mark.parametrize(
    ("keys", "missing", "blocker"),
    [
        ({"smoke-test": "k"}, (), "gateway.clients: no key for platform in prod/gateway-clients"),
        ({"smoke-test": "k", "platform": " "}, (), "gateway.clients: no key for platform in prod/gateway-clients"),
        (None, ("prod/gateway-clients",), "gateway.clients_secret: prod/gateway-clients does not exist"),
        ({"smoke-test": "k", "platform": "k"}, (), "gateway.clients: smoke-test, platform share one key"),
    ],
)
def test_the_gateways_clients_secret_must_hold_a_key_for_every_client(
    stubs: Stubs, keys: dict[str, str] | None, missing: tuple[str, ...], blocker: str
) -> None:
    settings = stage("prod")
    stubs.secrets(settings, missing=missing, gateway_keys=keys)
    assert settings.gateway is not None
    blockers = gateway_clients_problems(stubs.client("secretsmanager"), settings.gateway)
    assert len(blockers) == 1
    assert blockers[0].startswith(blocker)
    assert "key-of" not in blockers[0]
