"""The gateway's custom resources against the CEL rules of their vendored definitions (tests/crd_cel.py): what the
API server would refuse at apply time, checked offline, and the evaluator itself on a definition made for it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BUILT_IN_VERSIONS, GATEWAY_DEFINITIONS, UNPUBLISHED_DEFINITIONS, find, gateway_objects
from tests.crd_cel import cel_problems, unevaluable_rules

# The gateway's kinds and their vendored definitions (tests/conftest.py); SecretProviderClass's has no CEL rule.
DEFINITIONS = GATEWAY_DEFINITIONS


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return gateway_objects()


def test_every_custom_resource_passes_the_cel_rules_of_its_definition(objects: list[dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in objects if obj["apiVersion"] not in BUILT_IN_VERSIONS}
    assert kinds == set(DEFINITIONS) | UNPUBLISHED_DEFINITIONS
    checked = [obj for obj in objects if obj["kind"] in DEFINITIONS]
    assert [f"{o['kind']} {p}" for o in checked for p in cel_problems(o, DEFINITIONS[o["kind"]])] == []


def _set(path: list[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


RULE: list[str | int] = ["spec", "rules", 0]
INFERENCE_POOL = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "other"}


@pytest.mark.parametrize(
    ("kind", "change", "problems"),
    [
        (
            "AIGatewayRoute",
            _drop([*RULE, "backendRefs", 0, "group"]),
            [
                # The rule's references are all InferencePools (group and kind) or all AI service backends.
                "$.spec.rules[0]: cannot mix InferencePool and AIServiceBackend references in the same rule",
                "$.spec.rules[0].backendRefs[0]: group and kind must be specified together",
            ],
        ),
        (
            "AIGatewayRoute",
            lambda o: o["spec"]["rules"][0]["backendRefs"].append(INFERENCE_POOL),
            ["$.spec.rules[0]: only one InferencePool backend is allowed per rule"],
        ),
        (
            "AIGatewayRoute",
            _set([*RULE, "timeouts"], {"request": "60s", "backendRequest": "2m"}),
            ["$.spec.rules[0].timeouts: backendRequest timeout cannot be longer than request timeout"],
        ),
        (
            "SecurityPolicy",
            _set(["spec", "apiKeyAuth", "extractFrom", 0, "params"], ["key"]),
            ["$.spec.apiKeyAuth.extractFrom[0]: exactly one of headers, params, or cookies must be specified"],
        ),
        (
            "BackendTrafficPolicy",
            _set(["spec", "rateLimit", "global", "rules", 1, "cost", "request", "metadata"], {"key": "k"}),
            ["$.spec.rateLimit.global.rules[1].cost.request: only one of number or metadata can be specified"],
        ),
        (
            "EnvoyProxy",
            _set(["spec", "provider", "kubernetes", "envoyService", "loadBalancerIP"], "10.0.0.1"),
            ["$.spec.provider.kubernetes.envoyService: loadBalancerIP can only be set for LoadBalancer type"],
        ),
        (
            "EnvoyProxy",
            _set(["spec", "provider", "kubernetes", "envoyPDB", "maxUnavailable"], 1),
            ["$.spec.provider.kubernetes.envoyPDB: only one of minAvailable or maxUnavailable can be specified"],
        ),
        (
            "Gateway",
            _set(["spec", "listeners", 0, "tls"], {"mode": "Terminate", "certificateRefs": [{"name": "certificate"}]}),
            ["$.spec.listeners: tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"],
        ),
        (
            "Gateway",
            lambda o: o["spec"]["listeners"].append({**o["spec"]["listeners"][0], "port": 8080}),
            ["$.spec.listeners: Listener name must be unique within the Gateway"],
        ),
        (
            # The picker's kind is absent: the definition's default, Service, is what the rule reads.
            "InferencePool",
            _drop(["spec", "endpointPickerRef", "port"]),
            [
                "$.spec.endpointPickerRef: port is required when kind is 'Service' or unspecified "
                "(defaults to 'Service')"
            ],
        ),
    ],
)
def test_the_cel_rules_refuse_a_broken_object(
    objects: list[dict[str, Any]], kind: str, change: Callable[[dict[str, Any]], None], problems: list[str]
) -> None:
    broken = copy.deepcopy(find(objects, kind))
    change(broken)
    assert cel_problems(broken, DEFINITIONS[kind]) == problems


def test_a_transition_rule_waits_for_an_update(objects: list[dict[str, Any]]) -> None:
    """GatewayClass's controllerName is immutable (`self == oldSelf`): on create there is nothing to compare."""
    renamed = copy.deepcopy(find(objects, "GatewayClass"))
    renamed["spec"]["controllerName"] = "example.com/another-controller"
    assert cel_problems(renamed, DEFINITIONS["GatewayClass"]) == []


@pytest.mark.parametrize(
    ("kind", "version"),
    [
        ("GatewayClass", "v1"),
        ("Gateway", "v1"),
        ("EnvoyProxy", "v1alpha1"),
        ("GatewayConfig", "v1beta1"),
        ("SecurityPolicy", "v1alpha1"),
        ("BackendTrafficPolicy", "v1alpha1"),
        ("ClientTrafficPolicy", "v1alpha1"),
        ("AIGatewayRoute", "v1beta1"),
        ("InferencePool", "v1"),
    ],
)
def test_celpy_evaluates_every_rule_of_the_definitions(kind: str, version: str) -> None:
    """No rule of these definitions is beyond celpy and tests/crd_cel.py's functions: a rule that was would fail
    every object reaching it, and would be listed here, with why, once a vendored definition brings one."""
    assert unevaluable_rules(DEFINITIONS[kind], kind, version) == []


def test_celpy_evaluates_every_rule_of_the_routes_the_gateway_may_carry() -> None:
    """HTTPRoute's rules (the same file as Gateway's): the gateway renders none, the Envoy AI Gateway does from
    each AIGatewayRoute."""
    assert unevaluable_rules(DEFINITIONS["Gateway"], "HTTPRoute", "v1") == []


# A definition made to exercise the evaluator: Kubernetes' CEL libraries, escaping, defaults, formats, optionals,
# messages, and the rules it cannot evaluate. Every rule in PASSING holds on WIDGET.
PASSING = [
    "self.name.lowerAscii() == 'hello world' && self.name.upperAscii() == 'HELLO WORLD'",
    "self.name.split(' ') == ['Hello', 'World'] && self.name.split(' ', 1) == ['Hello World']",
    "'a/b/c'.split('/', 2) == ['a', 'b/c'] && 'a/b'.split('/')[0].size() == 1 && 'ab'.split('', 0) == []",
    "['a', 'b'].join('-') == 'a-b' && ['a', 'b'].join() == 'ab'",
    "self.name.indexOf('o') == 4 && self.name.indexOf('o', 5) == 7 && self.name.lastIndexOf('o') == 7",
    "self.name.replace('o', '0') == 'Hell0 W0rld' && self.name.replace('o', '0', 1) == 'Hell0 World'",
    "'  x '.trim() == 'x' && self.name.substring(6) == 'World' && self.name.substring(0, 5) == 'Hello'",
    "self.name.charAt(1) == 'e' && self.name.reverse() == 'dlroW olleH'",
    "self.name.startsWith('He') && self.name.endsWith('ld') && self.name.contains('lo W')",
    "self.name.matches('^H.*d$') && !self.name.matches('^d')",
    "self.name.find('[A-Z][a-z]+') == 'Hello' && self.name.findAll('[A-Z]') == ['H', 'W']",
    "'%s has %d ports'.format([self.name, size(self.ports)]) == 'Hello World has 2 ports'",
    "isURL(self.url) && !isURL('not a url') && url(self.url).getScheme() == 'https'",
    "url(self.url).getHostname() == 'example.com' && url(self.url).getPort() == '8443'",
    "url(self.url).getHost() == 'example.com:8443' && url(self.url).getEscapedPath() == '/a/b'",
    "url(self.url).getQuery()['x'] == ['1', '2']",
    "quantity(self.memory).isGreaterThan(quantity('1Gi')) && quantity(self.memory).compareTo(quantity('1.5Gi')) == 0",
    "!quantity('500m').isInteger() && quantity('2k').asInteger() == 2000 && quantity('-1').sign() == -1",
    "isQuantity('1.5Gi') && !isQuantity('1.5 Gi') && quantity('1').add(quantity('500m')).isLessThan(quantity('2'))",
    "quantity('1') == quantity('1000m')",
    "isIP(self.ip) && ip(self.ip).family() == 4 && !isIP('10.0.0.256') && string(ip(self.ip)) == self.ip",
    "cidr(self.cidr).containsIP(self.ip) && cidr(self.cidr).containsCIDR('10.1.0.0/16')",
    "cidr(self.cidr).prefixLength() == 8 && cidr(self.cidr).ip() == ip('10.0.0.0')",
    "!isCIDR('10.0.0.0') && ip('::1').isLoopback() && cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8')",
    "self.ports.isSorted() && self.ports.sum() == 523 && self.ports.max() == 443 && self.ports.min() == 80",
    "self.ports.indexOf(443) == 1 && self.ports.lastIndexOf(80) == 0 && [[1], [2]].flatten() == [1, 2]",
    "self.ports.all(p, p > 0) && self.ports.exists(p, p == 80) && self.ports.exists_one(p, p == 443)",
    "self.ports.map(p, p * 2) == [160, 886] && self.ports.filter(p, p > 100) == [443] && size(self.ports) == 2",
    "sets.contains([1, 2, 3], [1, 2]) && !sets.intersects([1], [2]) && sets.equivalent([1, 2], [2, 1])",
    "self.__namespace__ == 'team-a' && self.max__dash__size == 3",
    "self.ratio == 2 && self.ratio > 1 && 1 < self.ratio && type(self.ratio) == double && type(self.name) == string",
    "self.timeout > duration('1m') && self.timeout == duration('90s')",
    "timestamp('2025-01-01T00:00:00Z') > timestamp('2024-01-01T00:00:00Z')",
    "self.mode == 'Fast'",
    "self.?missing.orValue('none') == 'none' && self.?name.hasValue() && !self.?missing.hasValue()",
    "self.?name.value() == 'Hello World' && optional.none().orValue(1) == 1 && optional.of(2).value() == 2",
    "self.?labels[?'app.kubernetes.io/name'].orValue('') == 'w' && self.?nested.deeper.orValue(0) == 0",
    "self.labels.all(key, key.contains('/') || key == 'empty')",
    "{'a': 1}['a'] == 1 && 'a' in {'a': 1} && 2 in [1, 2] && 1 != 'a' && !(1 == 'a')",
    "!has(self.undeclared) && !has(self.nested)",
    "ip('224.0.0.1').isLinkLocalMulticast() && ip('10.0.0.1').isGlobalUnicast() && !ip('0.0.0.0').isGlobalUnicast()",
]
# Transition rules: not run on create; run with oldSelf absent when optionalOldSelf is true.
TRANSITIONS = [
    {"rule": "self == oldSelf", "message": "never runs on create"},
    {"rule": "!oldSelf.hasValue()", "message": "runs, oldSelf absent", "optionalOldSelf": True},
    {"rule": "oldSelf.hasValue()", "message": "oldSelf is absent on create", "optionalOldSelf": True},
]
# Rules that fail on WIDGET, or cannot be evaluated: each makes one line of the problems, in the definition's order.
FAILING = [
    {
        "rule": "self.ports.size() > 5",
        "message": "too few ports",
        "messageExpression": "'only ' + string(size(self.ports)) + ' ports'",
    },
    {"rule": "self.ports.size() > 4", "message": "too few ports", "messageExpression": "size(self.ports)"},
    {
        "rule": "self.name != 'Hello World'",
        "message": "name taken",
        "fieldPath": ".name",
        "reason": "FieldValueDuplicate",
    },
    {"rule": "self.ratio > 3"},
    {"rule": "self.name.frobnicate()"},
    {"rule": "self.name =="},
    {"rule": "self.missing == 1"},
    {"rule": "self.name"},
]
SPEC: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "url": {"type": "string"},
        "memory": {"type": "string"},
        "ip": {"type": "string"},
        "cidr": {"type": "string"},
        "namespace": {"type": "string"},
        "max-size": {"type": "integer"},
        "ratio": {"type": "number"},
        "timeout": {"type": "string", "format": "duration"},
        "mode": {"type": "string", "default": "Fast"},
        "ports": {"type": "array", "items": {"type": "integer"}},
        "weights": {
            "type": "array",
            "items": {"type": "integer", "x-kubernetes-validations": [{"rule": "self <= 100", "message": "over 100"}]},
        },
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self != ''", "message": "empty label"}],
            },
        },
        "nested": {"type": "object", "properties": {"deeper": {"type": "integer"}}},
    },
    "x-kubernetes-validations": [{"rule": rule, "message": rule} for rule in PASSING] + TRANSITIONS + FAILING,
}
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "spec": {
        "names": {"kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": SPEC,
                        },
                        "x-kubernetes-validations": [
                            {"rule": "self.metadata.name == 'w' && !has(self.metadata.namespace)", "message": "root"},
                        ],
                    }
                },
            }
        ],
    },
}
WIDGET = {
    "apiVersion": "example.com/v1",
    "kind": "Widget",
    "metadata": {"name": "w", "namespace": "ns"},
    "spec": {
        "name": "Hello World",
        "url": "https://example.com:8443/a/b?x=1&x=2",
        "memory": "1536Mi",
        "ip": "10.0.0.1",
        "cidr": "10.0.0.0/8",
        "namespace": "team-a",
        "max-size": 3,
        "ratio": 2,
        "timeout": "90s",
        "ports": [80, 443],
        "weights": [50, 150],
        "labels": {"app.kubernetes.io/name": "w", "empty": ""},
        "undeclared": "pruned by the API server, invisible to the rules",
    },
}


def test_the_evaluator_knows_kubernetes_cel(tmp_path: Path) -> None:
    """The vendored definitions use few of Kubernetes' CEL functions: this definition covers the others, and what
    the evaluator reports when it cannot follow a rule."""
    crd = tmp_path / "widgets.yaml"
    # A Helm template's line is dropped before the YAML is read; a second document holds another kind.
    other = {**WIDGET_CRD, "spec": {**WIDGET_CRD["spec"], "names": {"kind": "Gadget"}}}  # type: ignore[dict-item]
    crd.write_text("{{- if .Values.crds }}\n" + yaml.safe_dump_all([other, WIDGET_CRD], sort_keys=False))
    assert cel_problems(WIDGET, crd) == [
        "$.spec: oldSelf is absent on create",
        "$.spec: only 2 ports",
        "$.spec: too few ports",
        "$.spec.name: name taken",
        "$.spec: failed rule: self.ratio > 3",
        "$.spec: cannot evaluate rule self.name.frobnicate() (no function frobnicate)",
        "$.spec: cannot evaluate rule self.name == (syntax error at line 1 column 11)",
        "$.spec: cannot evaluate rule self.missing == 1 (no such key: missing)",
        "$.spec: cannot evaluate rule self.name (the rule yields StringType, not a bool)",
        "$.spec.weights[1]: over 100",
        "$.spec.labels['empty']: empty label",
    ]
    assert unevaluable_rules(crd, "Widget", "v1") == ["self.name ==", "self.name.frobnicate()"]
