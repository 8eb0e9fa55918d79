"""VllmServerChart: the walkthrough's vLLM pod, made fit to serve for a long time."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from charts.cold_start import progress_deadline_seconds, startup_probe_seconds
from charts.vllm_server import CONTAINER_SECURITY_CONTEXT
from settings import load_stage_settings
from tests.conftest import find, render_charts

MODEL_CHART = "Model-gpt-oss-20b"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render_charts("dev")[MODEL_CHART]


@pytest.fixture(scope="module")
def prod_objects() -> list[dict[str, Any]]:
    return render_charts("prod")[MODEL_CHART]


@pytest.fixture(scope="module")
def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return only


def test_chart_holds_namespace_volume_preload_deployment_service_and_budget(objects: list[dict[str, Any]]) -> None:
    assert [obj["kind"] for obj in objects] == [
        "Namespace",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "CronJob",
        "Deployment",
        "Service",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ]


def test_model_runs_in_its_own_namespace(objects: list[dict[str, Any]]) -> None:
    namespace = find(objects, "Namespace")
    assert namespace["metadata"]["name"] == "gpt-oss-20b"
    assert "namespace" not in namespace["metadata"]  # a Namespace is cluster-scoped
    for obj in objects:
        if obj["kind"] not in ("Namespace", "PersistentVolume"):  # cluster-scoped
            assert obj["metadata"]["namespace"] == "gpt-oss-20b" != "default"
    assert "namespace" not in find(objects, "PersistentVolume")["metadata"]


def test_container_serves_the_walkthroughs_model_from_the_file_system(container: dict[str, Any]) -> None:
    assert container["name"] == "inference-server"
    assert container["command"] == ["vllm", "serve"]
    assert container["args"] == [
        "/models/gpt-oss-20b",
        "--served-model-name=openai/gpt-oss-20b",
        "--gpu-memory-utilization=0.90",
        "--tensor-parallel-size=1",
        "--max-model-len=20000",
    ]
    assert container["ports"] == [{"containerPort": 8000}]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN"
    assert env["PORT"] == "8000"
    assert env["HF_HUB_OFFLINE"] == "1"  # a replica never downloads weights


def test_weights_are_mounted_read_only_from_the_model_volume(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"mountPath": "/models", "name": "weights", "readOnly": True, "subPath": "models"} in container[
        "volumeMounts"
    ]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "model-weights", "readOnly": True}


def test_image_comes_through_the_pull_through_cache(container: dict[str, Any]) -> None:
    assert container["image"] == (
        "<account>.dkr.ecr.us-west-2.amazonaws.com/ecr-public/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2-soci"
    )


def test_gpu_limit_renders_as_a_quoted_quantity(objects: list[dict[str, Any]], container: dict[str, Any]) -> None:
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    rendered = yaml.safe_dump_all(objects)
    assert "nvidia.com/gpu: '1'" in rendered
    assert ": null" not in rendered


def test_requests_are_sized_for_vllm_not_cdk8s_plus_defaults(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert resources["requests"]["cpu"] == "3"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "24576Mi"
    assert resources["requests"]["ephemeral-storage"] == "20Gi"
    # No CPU limit: throttling a loading server only slows its start.
    assert "cpu" not in resources["limits"]


def test_pod_tolerates_the_gpu_taint(pod: dict[str, Any]) -> None:
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_shared_memory_is_a_memory_backed_empty_dir(pod: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8192Mi"}
    assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]


def test_startup_probe_allows_the_cold_start_budget(container: dict[str, Any]) -> None:
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["httpGet"]["port"] == 8000
    settings = load_stage_settings("dev")
    budget = startup_probe_seconds(settings, settings.models[0])
    assert probe["periodSeconds"] * probe["failureThreshold"] == budget == 480


def test_readiness_waits_for_the_model_to_serve(container: dict[str, Any]) -> None:
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models"


def test_liveness_runs_only_after_startup_and_tolerates_a_busy_server(container: dict[str, Any]) -> None:
    probe = container["livenessProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert "initialDelaySeconds" not in probe  # the startupProbe holds it back instead
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 90


def test_image_is_pinned_and_not_pulled_again_when_present(container: dict[str, Any]) -> None:
    assert not container["image"].endswith(":latest")
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_container_is_hardened(pod: dict[str, Any], container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    # The preload job's container gets the very same context.
    assert context == CONTAINER_SECURITY_CONTEXT


def test_non_root_server_has_writable_home_and_tmp(pod: dict[str, Any], container: dict[str, Any]) -> None:
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts["/home/vllm"] == "home"
    assert mounts["/models"] == "weights"
    assert mounts["/tmp"] == "tmp"
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["HOME"] == "/home/vllm"
    assert env["USER"]  # torch looks the user name up; uid 1000 has no passwd entry
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"]


def test_replicas_spread_over_nodes_and_zones(prod_objects: list[dict[str, Any]]) -> None:
    deployment = find(prod_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    anti_affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (required,) = anti_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    (preferred,) = anti_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert required["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_rollout_keeps_every_replica_serving(objects: list[dict[str, Any]]) -> None:
    spec = find(objects, "Deployment")["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    settings = load_stage_settings("dev")
    assert spec["progressDeadlineSeconds"] == progress_deadline_seconds(settings, settings.models[0]) == 660


def test_service_is_the_walkthroughs(objects: list[dict[str, Any]]) -> None:
    service = find(objects, "Service")
    deployment = find(objects, "Deployment")
    assert service["metadata"]["name"] == "gptoss-service"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"port": 8000, "targetPort": 8000}]
    assert service["spec"]["selector"] == {"app": "vllm-gpt-oss-20b"}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_disruption_budget_evicts_one_replica_at_a_time(objects: list[dict[str, Any]]) -> None:
    budget = find(objects, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "vllm-gpt-oss-20b"}}}
    assert find(objects, "Deployment")["spec"]["selector"] == {"matchLabels": {"app": "vllm-gpt-oss-20b"}}


def test_smoke_test_group_may_only_watch_the_rollout_and_port_forward(objects: list[dict[str, Any]]) -> None:
    role = find(objects, "Role")
    assert role["metadata"] == {"name": "smoke-test", "namespace": "gpt-oss-20b"}
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"]},
    ]
    binding = find(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "smoke-test"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "smoke-testers"}]
