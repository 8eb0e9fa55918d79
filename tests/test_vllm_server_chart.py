"""VllmServerChart: the walkthrough's vLLM pod, made fit to serve for a long time."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from charts.model_loader import harmony_encodings
from charts.vllm_server import vllm_env
from settings import load_stage_settings, parse_stage_settings
from settings.cold_start import progress_deadline_seconds, startup_probe_seconds
from settings.sizing import gpu_memory_needed_mib
from tests.conftest import find, render_charts, stage_data

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


def test_chart_holds_namespace_volume_import_deployment_service_and_budget(objects: list[dict[str, Any]]) -> None:
    assert [obj["kind"] for obj in objects] == [
        "Namespace",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "ConfigMap",
        "Job",
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
        "/models/gpt-oss-20b/main",
        "--served-model-name=openai/gpt-oss-20b",
        "--port=8000",
        "--gpu-memory-utilization=0.90",
        "--tensor-parallel-size=1",
        "--max-model-len=20000",
        "--shutdown-timeout=1000",  # the longest request the model allows (charts/pre_stop_drain.py)
        "--attention-backend=TRITON_ATTN",  # a flag in this version, which no longer reads VLLM_ATTENTION_BACKEND
    ]
    assert container["ports"] == [{"containerPort": 8000}]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert "VLLM_ATTENTION_BACKEND" not in env
    assert "PORT" not in env  # vLLM reads --port, which comes from the same constant as containerPort
    assert env["HF_HUB_OFFLINE"] == "1"  # a replica never downloads weights


def test_a_replica_calls_nothing_outside_the_vpc(container: dict[str, Any]) -> None:
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    # No usage statistics (vllm/envs.py reads both), no Hub, and the harmony tokenizer's encodings
    # from the model store instead of openaipublic.blob.core.windows.net.
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == env["HF_HUB_OFFLINE"] == "1"
    assert env["TIKTOKEN_ENCODINGS_BASE"] == "/models/tiktoken_encodings"
    assert {"mountPath": "/models", "name": "weights", "readOnly": True, "subPath": "models"} in container[
        "volumeMounts"
    ]


def test_harmonys_encoding_follows_the_model_type_as_vllm_decides_it() -> None:
    data = stage_data()
    data["models"][0] |= {"name": "qwen3-8b", "model": "Qwen/Qwen3-8B"}
    settings = parse_stage_settings("dev", data)
    assert harmony_encodings(settings.models[0]) == ()
    assert "TIKTOKEN_ENCODINGS_BASE" not in vllm_env(settings.models[0])
    assert harmony_encodings(load_stage_settings("dev").models[0]) == ("o200k_base.tiktoken",)
    # A fine-tune of gpt-oss under another name is still served with harmony (its config.json's model_type).
    facts = load_stage_settings("dev").models[0].architecture.model_dump()
    data["models"][0] |= {"name": "tuned", "model": "example-org/my-assistant", "facts": facts}
    assert harmony_encodings(parse_stage_settings("dev", data).models[0]) == ("o200k_base.tiktoken",)


def test_weights_volume_uses_an_access_mode_the_fsx_csi_driver_accepts(objects: list[dict[str, Any]]) -> None:
    # kubernetes-sigs/aws-fsx-csi-driver pkg/driver/controller.go `volumeCaps`: only these two.
    # Kubernetes hands the driver the CSI mode of the access mode (ReadOnlyMany is
    # MULTI_NODE_READER_ONLY, refused with "Volume capability not supported").
    csi_mode = {
        "ReadWriteOnce": "SINGLE_NODE_WRITER",
        "ReadOnlyMany": "MULTI_NODE_READER_ONLY",
        "ReadWriteMany": "MULTI_NODE_MULTI_WRITER",
        "ReadWriteOncePod": "SINGLE_NODE_SINGLE_WRITER",
    }
    driver_accepts = {"SINGLE_NODE_WRITER", "MULTI_NODE_MULTI_WRITER"}
    volume, claim = find(objects, "PersistentVolume"), find(objects, "PersistentVolumeClaim")
    for obj in (volume, claim):
        # Many nodes mount it at once: the multi-node mode.
        assert obj["spec"]["accessModes"] == ["ReadWriteMany"]
        assert {csi_mode[mode] for mode in obj["spec"]["accessModes"]} <= driver_accepts
    # Read-only all the same: the driver mounts with "ro" when the volume is published read-only.
    assert volume["spec"]["csi"]["readOnly"] is True


def test_weights_are_mounted_read_only_from_the_model_volume(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"mountPath": "/models", "name": "weights", "readOnly": True, "subPath": "models"} in container[
        "volumeMounts"
    ]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "model-weights", "readOnly": True}


def test_image_comes_through_the_pull_through_cache(container: dict[str, Any]) -> None:
    assert container["image"] == (
        "<account>.dkr.ecr.us-west-2.amazonaws.com/ecr-public/dev/deep-learning-containers/"
        "vllm:0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"
    )


def test_gpu_limit_renders_as_a_quoted_quantity(objects: list[dict[str, Any]], container: dict[str, Any]) -> None:
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    rendered = yaml.safe_dump_all(objects)
    assert "nvidia.com/gpu: '1'" in rendered
    assert ": null" not in rendered


def test_requests_are_sized_for_vllm_not_cdk8s_plus_defaults(container: dict[str, Any]) -> None:
    resources = container["resources"]
    # Derived from the model (settings.sizing.requests): 3 CPUs for its one GPU, and the 13 GiB a
    # 16 GiB g6.xlarge, the cheapest instance whose GPU holds it, leaves to pods.
    assert resources["requests"]["cpu"] == "3000m"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "13312Mi"
    assert resources["requests"]["ephemeral-storage"] == "20Gi"
    # No CPU limit: throttling a loading server only slows its start.
    assert "cpu" not in resources["limits"]


def test_pod_asks_for_gpus_that_hold_its_shard_of_the_weights(pod: dict[str, Any]) -> None:
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    needed = gpu_memory_needed_mib(load_stage_settings("dev").models[0])
    assert term["matchExpressions"] == [
        {"key": "eks.amazonaws.com/instance-gpu-memory", "operator": "Gt", "values": [str(needed - 1)]}
    ]


def test_pod_tolerates_the_gpu_taint(pod: dict[str, Any]) -> None:
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_shared_memory_is_a_memory_backed_empty_dir(pod: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "3072Mi"}  # a quarter of the memory
    assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]


def test_startup_probe_allows_the_cold_start_budget(container: dict[str, Any]) -> None:
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["httpGet"]["port"] == 8000
    settings = load_stage_settings("dev")
    budget = startup_probe_seconds(settings, settings.models[0])
    assert probe["periodSeconds"] * probe["failureThreshold"] == budget == 480


def test_readiness_asks_the_route_that_reports_a_dead_engine(container: dict[str, Any]) -> None:
    # vLLM 0.11.2 serves HTTP only once the engine is ready, and /health answers 503 when it has
    # died, where /v1/models keeps answering 200.
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000, "scheme": "HTTP"}


def test_liveness_runs_only_after_startup_and_tolerates_a_busy_server(container: dict[str, Any]) -> None:
    probe = container["livenessProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert "initialDelaySeconds" not in probe  # the startupProbe holds it back instead
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 90


def test_image_is_pinned_and_not_pulled_again_when_present(container: dict[str, Any]) -> None:
    assert not container["image"].endswith(":latest")
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_container_is_hardened(objects: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    # The weights import and the wait for it get the very same context.
    assert pod["initContainers"][0]["securityContext"] == context
    assert find(objects, "Job")["spec"]["template"]["spec"]["containers"][0]["securityContext"] == context


def test_non_root_server_has_writable_home_and_tmp(pod: dict[str, Any], container: dict[str, Any]) -> None:
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts["/home/vllm"] == "home"
    assert mounts["/models"] == "weights"
    assert mounts["/tmp"] == "tmp"
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["HOME"] == "/home/vllm"
    assert env["USER"]  # torch looks the user name up; uid 10001 has no passwd entry
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"]


def test_replicas_spread_over_nodes_and_zones(prod_objects: list[dict[str, Any]]) -> None:
    deployment = find(prod_objects, "Deployment")
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
    assert spec["progressDeadlineSeconds"] == progress_deadline_seconds(settings, settings.models[0]) == 960


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


def test_smoke_test_group_may_only_watch_the_import_the_rollout_and_the_load_balancer_and_port_forward(
    objects: list[dict[str, Any]],
) -> None:
    role = find(objects, "Role")
    assert role["metadata"] == {"name": "smoke-test", "namespace": "gpt-oss-20b"}
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("apps", "deployments"): {"get", "list", "watch"},
        ("apps", "replicasets"): {"get", "list", "watch"},
        ("batch", "jobs"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list"},
        ("", "services"): {"get", "list"},
        ("", "pods/portforward"): {"create"},
        ("networking.k8s.io", "ingresses"): {"get"},
    }
    assert all("resourceNames" not in rule for rule in role["rules"])
    binding = find(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "smoke-test"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "smoke-testers"}]
