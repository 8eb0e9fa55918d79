"""The stage's inference gateway: its settings, its objects against the vendored charts' definitions, its quotas,
routes, picker and admission, the key sync, and what the stacks install (charts/gateway.py, charts/gateway_model.py,
stacks/inference_gateway.py)."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import subprocess
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from charts.gateway import CLIENT_HEADER, KEY_SYNC_SCRIPT, MODEL_HEADER, TOKEN_COST_KEYS
from charts.gateway_model import picker_metric_flags
from settings import parse_stage_settings
from settings.vllm_profiles import profile_of, supported_versions, vllm_catalog
from stacks.inference_gateway import ENVOY_GATEWAY_NAMESPACE, VENDOR, ai_gateway_values, envoy_gateway_values
from tests.conftest import (
    BUILT_IN_VERSIONS,
    CERTIFICATE,
    GATEWAY_DEFINITIONS,
    UNPUBLISHED_DEFINITIONS,
    Assembly,
    charts_of,
    find,
    find_all,
    gateway_data,
    gateway_objects,
    properties,
    resources,
    stage_data,
    stored_check,
)
from tests.scanners import crd_problems, is_dns1035_label
from tests.stand_ins import QuietHandler, serving
from tests.test_settings import rejected


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return gateway_objects()


def test_the_settings_refuse_what_the_gateway_cannot_serve() -> None:
    twice = gateway_data()
    twice["models"].append({**copy.deepcopy(twice["models"][0]), "name": "second", "service_name": "second"})
    assert "openai/gpt-oss-20b served by more than one model" in rejected(twice)
    stranger = gateway_data(quotas=[{"client": "team-b", "limit": 10}])
    assert (
        "gateway.quotas[0].client: no client 'team-b'; allowed: the ids under gateway.clients (team-a, smoke-test)"
        in (rejected(stranger))
    )
    unserved = gateway_data(quotas=[{"client": "team-a", "model": "meta/llama", "limit": 10}])
    assert "gateway.quotas[0].model: no model 'meta/llama'; allowed: openai/gpt-oss-20b" in rejected(unserved)
    for missing in ("certificate_arn", "hostname"):
        half = gateway_data()
        del half["gateway"]["endpoint"][missing]
        assert f"gateway.endpoint: {missing}: missing; the load balancer needs both" in rejected(half)
    exposed = gateway_data()
    exposed["models"][0]["exposure"] = {"hostname": "a.example.com", "certificate_arn": CERTIFICATE}
    exposed["models"][0]["api_keys_secret"] = "gpt-oss-20b/api-keys"
    assert "models[0].exposure: the stage's gateway serves every model" in rejected(exposed)
    keyed = gateway_data()
    keyed["models"][0]["api_keys_secret"] = "gpt-oss-20b/api-keys"
    assert "models[0].api_keys_secret: behind the gateway, clients' keys are the gateway's" in rejected(keyed)
    assert "client ids must be distinct; repeated: team-a" in rejected(gateway_data(clients=[{"id": "team-a"}] * 2))
    assert "gateway.clients: should have at least 1 item, got 0" in rejected(gateway_data(clients=[]))
    for cluster in ("a" * 34, "1-gpu", "gpu--inference"):
        data = gateway_data()
        data["cluster"]["name"] = cluster
        assert f"the gateway's quota store is named {cluster}-quotas; ElastiCache takes a letter first" in rejected(
            data
        )
    assert "gateway.replicas: 1; a production stage runs at least 2 gateway replicas" in rejected(
        gateway_data("prod", replicas=1), "prod"
    )


def test_every_custom_resource_passes_its_vendored_definition(objects: list[dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in objects if obj["apiVersion"] not in BUILT_IN_VERSIONS}
    assert kinds == set(GATEWAY_DEFINITIONS) | UNPUBLISHED_DEFINITIONS
    checked = [obj for obj in objects if obj["kind"] in GATEWAY_DEFINITIONS]
    assert [f"{o['kind']} {p}" for o in checked for p in crd_problems(o, GATEWAY_DEFINITIONS[o["kind"]])] == []


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        (
            "BackendTrafficPolicy",
            lambda o: o["spec"]["rateLimit"]["global"]["rules"][0]["limit"].update(unit="Fortnight"),
            "'Fortnight' is not one of",
        ),
        ("InferencePool", lambda o: o["spec"].pop("selector"), "'selector' is a required property"),
        ("AIGatewayRoute", lambda o: o["spec"]["llmRequestCosts"][0].update(type="Tokens"), "'Tokens' is not one of"),
        (
            "SecurityPolicy",
            lambda o: o["spec"]["apiKeyAuth"].pop("extractFrom"),
            "'extractFrom' is a required property",
        ),
        (
            "EnvoyProxy",
            lambda o: o["spec"]["provider"]["kubernetes"]["envoyService"].update(kind="ClusterIP"),
            "'kind' was unexpected",
        ),
    ],
)
def test_the_definitions_refuse_a_broken_object(
    objects: list[dict[str, Any]], kind: str, change: Any, message: str
) -> None:
    broken = copy.deepcopy(find(objects, kind))
    change(broken)
    problems = crd_problems(broken, GATEWAY_DEFINITIONS[kind])
    assert len(problems) == 1
    assert message in problems[0]


def test_quotas_count_each_clients_tokens_per_model_and_window(objects: list[dict[str, Any]]) -> None:
    every_model, one_model = find(objects, "BackendTrafficPolicy")["spec"]["rateLimit"]["global"]["rules"]
    client = {"name": CLIENT_HEADER, "type": "Exact", "value": "team-a"}
    assert every_model["clientSelectors"] == [{"headers": [client, {"name": MODEL_HEADER, "type": "Distinct"}]}]
    assert every_model["limit"] == {"requests": 100000, "unit": "Hour"}
    assert every_model["cost"]["response"]["metadata"]["key"] == TOKEN_COST_KEYS["total"]
    assert one_model["clientSelectors"][0]["headers"][1] == {
        "name": MODEL_HEADER,
        "type": "Exact",
        "value": "openai/gpt-oss-20b",
    }
    assert one_model["limit"] == {"requests": 5000, "unit": "Minute"}
    assert one_model["cost"] == {
        "request": {"from": "Number", "number": 0},
        "response": {"from": "Metadata", "metadata": {"namespace": "io.envoy.ai_gateway", "key": "llm_output_token"}},
    }


def test_the_route_names_the_model_and_records_every_token_count_quotas_read(objects: list[dict[str, Any]]) -> None:
    route = find(objects, "AIGatewayRoute")
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"headers": [{"type": "Exact", "name": MODEL_HEADER, "value": "openai/gpt-oss-20b"}]}]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "gpt-oss-20b"}
    ]
    assert {cost["metadataKey"] for cost in route["spec"]["llmRequestCosts"]} == set(TOKEN_COST_KEYS.values())
    pool = find(objects, "InferencePool")
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "picker-gpt-oss-20b")
    assert pool["spec"]["endpointPickerRef"]["name"] == deployment["metadata"]["name"]
    # Envoy AI Gateway v1.1.0 fails closed whatever the pool says: the pool says so, and prod runs two pickers.
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"
    assert deployment["spec"]["replicas"] == 2
    assert "--ha-enable-leader-election" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # One picker per node: a node's loss never takes both.
    template = deployment["spec"]["template"]
    (term,) = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


@pytest.mark.parametrize("version", supported_versions())
def test_the_picker_reads_metrics_each_vllm_version_exports(version: str) -> None:
    profile = vllm_catalog().profiles[version]
    names = picker_metric_flags(profile)[1::2]
    assert set(names) <= profile.extracted.metrics
    assert len(names) == 3


def test_only_the_gateway_and_the_picker_reach_the_replicas(objects: list[dict[str, Any]]) -> None:
    policy = next(o for o in objects if o["metadata"]["name"] == "gpt-oss-20b-from-gateway")
    serving, scraping = policy["spec"]["ingress"]
    assert serving["ports"] == [{"protocol": "TCP", "port": 8000}]
    proxies, picker = serving["from"]
    assert proxies["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "inference-gateway"}}
    assert picker == {"podSelector": {"matchLabels": {"app": "picker-gpt-oss-20b"}}}
    assert all("ipBlock" in peer for peer in scraping["from"])
    namespace = next(o for o in objects if o["kind"] == "Namespace" and o["metadata"]["name"] == "inference-gateway")
    model_namespace = find(rendered_model(), "Namespace")
    gateway = find(objects, "Gateway")
    selector = gateway["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["selector"]["matchLabels"]
    assert selector.items() <= model_namespace["metadata"]["labels"].items()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def rendered_model() -> list[dict[str, Any]]:
    return charts_of(gateway_data(), "dev")["Model-gpt-oss-20b"]


def test_the_chart_values_set_are_keys_of_the_vendored_charts() -> None:
    settings = parse_stage_settings("prod", gateway_data("prod"))

    def keys(values: dict[str, Any], prefix: str = "") -> set[str]:
        return {f"{prefix}{k}" for k in values} | {
            key for k, v in values.items() if isinstance(v, dict) and v for key in keys(v, f"{prefix}{k}.")
        }

    for folder, values, free in (
        ("envoy-gateway", envoy_gateway_values(settings, "123456789012", "store:6379", 2), "config.envoyGateway."),
        ("envoy-ai-gateway", ai_gateway_values(settings, "123456789012", 2), "-"),
    ):
        chart = yaml.safe_load((VENDOR / folder / "values.yaml").read_text())
        unknown = {k for k in keys(values) if not k.startswith(free) and k not in keys(chart)}
        assert unknown == set(), folder


def test_usage_is_labelled_with_the_client_the_key_names(prod: Assembly) -> None:
    # The key authentication forwards the client's id in a header; Envoy AI Gateway's controller turns that header
    # into the token metrics' attribute client.id (manifests/charts/ai-gateway-helm/values.yaml,
    # controller.metricsRequestHeaderAttributes: "<header>:<attribute>"), which Prometheus reads as client_id.
    settings = parse_stage_settings("prod", gateway_data("prod"))
    values = ai_gateway_values(settings, "123456789012", 2)
    header, attribute = values["controller"]["metricsRequestHeaderAttributes"].split(":")
    assert header == CLIENT_HEADER
    assert attribute.replace(".", "_") == "client_id"
    # The recording rule the dashboard and the cost report read sums by that label.
    assert "sum by (client_id, gen_ai_request_model, gen_ai_token_type)" in json.dumps(prod.template("Cluster"))


def run_key_sync(tmp_path: Path, keys: dict[str, str], server: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "clients.json").write_text(json.dumps(keys))
    (tmp_path / "token").write_text("service-account-token")
    env = {
        **os.environ,
        "CLIENTS": json.dumps(["team-a", "smoke-test"]),
        "CLIENTS_FILE": str(tmp_path / "clients.json"),
        "SECRET": "gateway-api-keys",
        "NAMESPACE": "inference-gateway",
        "KUBERNETES_API": server,
        "SERVICE_ACCOUNT_DIR": str(tmp_path),
        "ONCE": "1",
    }
    return subprocess.run([sys.executable, str(KEY_SYNC_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_the_key_sync_refuses_a_client_without_a_key_and_never_logs_one(tmp_path: Path) -> None:
    run = run_key_sync(tmp_path, {"team-a": "sk-secret-a", "smoke-test": "  "}, "http://127.0.0.1:9")
    assert run.returncode == 1
    assert run.stderr.strip() == "gateway clients without a key in the clients secret: smoke-test"
    assert "sk-secret" not in run.stdout + run.stderr


def test_the_key_sync_refuses_clients_sharing_a_key(tmp_path: Path) -> None:
    run = run_key_sync(tmp_path, {"team-a": "sk-shared", "smoke-test": " sk-shared"}, "http://127.0.0.1:9")
    assert run.returncode == 1
    assert run.stderr.strip() == "gateway clients sharing one key in the clients secret: smoke-test, team-a"
    assert "sk-shared" not in run.stdout + run.stderr


def test_the_key_sync_creates_the_secret_envoy_reads(tmp_path: Path) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    class Api(QuietHandler):
        def _answer(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.command, self.path, body))
            assert self.headers["Authorization"] == "Bearer service-account-token"
            self.answer(404 if self.command == "PUT" else 201, b"")

        do_PUT = do_POST = _answer

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Api)) as server:
        run = run_key_sync(
            tmp_path, {"team-a": "sk-a", "smoke-test": "sk-s", "retired": "x"}, f"http://127.0.0.1:{server.server_port}"
        )
    assert run.returncode == 0, run.stderr
    assert [(method, path) for method, path, _ in seen] == [
        ("PUT", "/api/v1/namespaces/inference-gateway/secrets/gateway-api-keys"),
        ("POST", "/api/v1/namespaces/inference-gateway/secrets"),
    ]
    # Only the clients the settings name: "retired" stays out (base64 of sk-a and sk-s).
    assert seen[1][2]["data"] == {"team-a": "c2stYQ==", "smoke-test": "c2stcw=="}
    assert run.stdout.strip() == "gateway keys written for 2 clients"


def test_the_gateways_images_are_pinned_and_its_proxies_spread(objects: list[dict[str, Any]]) -> None:
    proxy = find(objects, "EnvoyProxy")["spec"]["provider"]["kubernetes"]
    assert proxy["envoyService"] == {"type": "ClusterIP", "name": "inference-gateway"}
    assert proxy["envoyDeployment"]["replicas"] == 2
    assert proxy["envoyPDB"] == {"minAvailable": 1}
    assert proxy["envoyDeployment"]["container"]["image"].endswith("envoyproxy/envoy:distroless-v1.39.0")
    assert profile_of(stage_data("prod")["models"][0]["image"]).version in supported_versions()
    # Only the leading picker is ready (leader election): a disruption budget would forbid draining its node.
    assert find_all(objects, "PodDisruptionBudget") == []
    # Long prompts: Envoy holds whole bodies for the AI Gateway's processor, 32 KiB unless raised.
    bodies = find(objects, "ClientTrafficPolicy")["spec"]
    assert bodies["connection"] == {"bufferLimit": "50Mi"}
    assert bodies["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gateway"}
    ]


def test_envoy_gateway_may_watch_inference_pools_before_the_ai_gateway_is_installed() -> None:
    """Envoy Gateway is ready only once its InferencePool watch syncs; the grant comes with the definitions, which
    install first (stacks/inference_gateway.py), and names Envoy Gateway's own service account."""
    role, binding = yaml.safe_load_all(
        (VENDOR / "inference-extension-crds" / "templates" / "envoy-gateway-inferencepool-reader.yaml").read_text()
    )
    assert role["rules"] == [
        {
            "apiGroups": ["inference.networking.k8s.io"],
            "resources": ["inferencepools"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    # The chart's account: a fixed name (its template's metadata.name), in the release's namespace.
    template = (VENDOR / "envoy-gateway" / "templates" / "envoy-gateway-serviceaccount.yaml").read_text()
    assert "\n  name: envoy-gateway\n" in template
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "envoy-gateway", "namespace": ENVOY_GATEWAY_NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_quota_store_is_private_to_the_cluster_and_what_the_rate_limit_service_reads(prod: Assembly) -> None:
    serving = prod.template("Serving")
    (store,) = properties(serving, "AWS::ElastiCache::ServerlessCache")
    assert (store["Engine"], store["MajorEngineVersion"], store["ServerlessCacheName"]) == (
        "valkey",
        "8",
        "gpu-inference-prod-quotas",
    )
    assert all("PrivateSubnet" in json.dumps(subnet) for subnet in store["SubnetIds"])
    assert len(store["SubnetIds"]) == 3
    ((group_ref,),) = [[g["Fn::GetAtt"][0] for g in store["SecurityGroupIds"]]]
    group = serving["Resources"][group_ref]["Properties"]
    (ingress,) = group["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["IpProtocol"]) == (6379, 6379, "tcp")
    assert "ClusterSecurityGroupId" in json.dumps(ingress["SourceSecurityGroupId"])
    (egress,) = group["SecurityGroupEgress"]
    assert egress["CidrIp"] == "255.255.255.255/32"  # CDK's rule for "no outbound traffic"
    charts = {r["Properties"]["Release"]: r["Properties"] for r in resources(serving, "Custom::AWSCDK-EKS-HelmChart")}
    assert set(charts) == {
        "keda",
        "inference-extension-crds",
        "envoy-gateway",
        "envoy-ai-gateway-crds",
        "envoy-ai-gateway",
    }
    values = json.dumps(charts["envoy-gateway"]["Values"])
    assert '"url\\":\\"", {"Fn::GetAtt": ["' in values
    assert "Endpoint.Address" in values
    assert '{\\"name\\":\\"REDIS_TLS\\",\\"value\\":\\"true\\"}' in values
    # While the store or the rate limit service does not answer, requests go on uncounted.
    assert '\\"failClosed\\":false' in values


def test_the_key_sync_reads_the_clients_secret_and_nothing_else(prod: Assembly) -> None:
    serving = prod.template("Serving")
    (association,) = [
        a for a in properties(serving, "AWS::EKS::PodIdentityAssociation") if a["ServiceAccount"] == "gateway-key-sync"
    ]
    assert association["Namespace"] == "inference-gateway"
    role = association["RoleArn"]["Fn::GetAtt"][0]
    (policy,) = [p for p in properties(serving, "AWS::IAM::Policy") if p["Roles"] == [{"Ref": role}]]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    assert ":secret:prod/gateway-clients-??????" in json.dumps(statement["Resource"])


def test_prods_smoke_test_asks_through_the_gateway_with_its_client(prod: Assembly) -> None:
    check = stored_check(prod.model_template())
    assert check[check.index("--gateway") :] == [
        *("--gateway", "inference-gateway/inference-gateway"),
        *("--clients-secret", "prod/gateway-clients", "--client", "smoke-test"),
    ]
    (grant,) = [
        p
        for p in properties(prod.model_template(), "AWS::IAM::Policy")
        if p["Roles"] == ["gpu-inference-prod-smoke-test"]
    ]
    assert ":secret:prod/gateway-clients-??????" in json.dumps(grant["PolicyDocument"]["Statement"][0]["Resource"])


def test_the_picker_comes_through_the_stages_cache(objects: list[dict[str, Any]]) -> None:
    picker = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "picker-gpt-oss-20b")
    image = picker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "<account>.dkr.ecr.us-west-2.amazonaws.com/k8s/prod/gateway-api-inference-extension/epp:v1.0.2"
    gateway = find(objects, "Gateway")
    config = find(objects, "GatewayConfig")
    assert gateway["metadata"]["annotations"]["aigateway.envoyproxy.io/gateway-config"] == config["metadata"]["name"]
    assert config["spec"]["extProc"]["kubernetes"]["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}


SECRET_LIMIT = 1024 * 1024  # Kubernetes' largest Secret (its data), where Helm keeps each release


@pytest.mark.parametrize(
    "chart", ["inference-extension-crds", "envoy-gateway", "envoy-ai-gateway-crds", "envoy-ai-gateway"]
)
def test_each_charts_release_fits_the_secret_helm_keeps_it_in(chart: str) -> None:
    """Helm stores a release as base64(gzip(JSON)) in one Secret (helm pkg/storage/driver/util.go, encodeRelease):
    the chart's templates (bytes, so base64 in the JSON) and the rendered manifest, about as long as the templates. A
    subchart (Envoy Gateway's definitions) is not in it. A newer version of a chart whose definitions are its
    templates (Envoy AI Gateway's) could outgrow it; this says so before a deploy does."""
    root = VENDOR / chart / "templates"
    files = sorted(path for path in root.rglob("*") if path.is_file())
    templates = [
        {"name": str(path.relative_to(root)), "data": base64.b64encode(path.read_bytes()).decode()} for path in files
    ]
    manifest = "".join(path.read_text() for path in files)
    stored = base64.b64encode(
        gzip.compress(json.dumps({"chart": {"templates": templates}, "manifest": manifest}).encode())
    )
    assert len(stored) < SECRET_LIMIT


def test_the_stages_load_balancer_fronts_the_proxies_with_its_certificate_and_web_acl(
    objects: list[dict[str, Any]],
) -> None:
    params, ingress = find(objects, "IngressClassParams"), find(objects, "Ingress")
    assert params["spec"]["certificateARNs"] == [CERTIFICATE]
    assert params["spec"]["scheme"] == "internal"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.internal.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
    assert path["backend"]["service"] == {"name": "inference-gateway", "port": {"number": 80}}
    annotations = ingress["metadata"]["annotations"]
    # A proxy asked without a key answers 401: up, as far as the load balancer is concerned.
    assert (
        annotations["alb.ingress.kubernetes.io/healthcheck-path"],
        annotations["alb.ingress.kubernetes.io/success-codes"],
    ) == ("/v1/models", "200-499")
    assert annotations["alb.ingress.kubernetes.io/wafv2-acl-arn"] == "<web ACL of the gateway>"


def test_a_model_named_with_a_digit_first_gets_a_picker_service_kubernetes_takes() -> None:
    """A model's name is a DNS-1123 label (a digit may lead); a Service's must be a DNS-1035 label (a letter)."""
    data = gateway_data()
    data["models"][0].update(name="7b-chat", service_name="chat")
    data["gateway"]["quotas"] = []
    charts = charts_of(data, "dev")
    services = [o["metadata"]["name"] for objects in charts.values() for o in objects if o["kind"] == "Service"]
    assert "picker-7b-chat" in services
    assert all(map(is_dns1035_label, services))
