"""API keys: from a Secrets Manager secret to vLLM through the Secrets Store CSI driver, never through a template."""

from __future__ import annotations

import copy
import io
import json
import logging.config
from typing import Any

import yaml

from charts.api_keys import FILE, LOGGING_CONFIG, LOGGING_FILE, LOGGING_MOUNT, MOUNT, PROVIDER_CLASS, SERVICE_ACCOUNT
from stacks.cluster import SECRETS_STORE_ADDON
from tests.conftest import (
    KEYED_MODEL,
    ROOT,
    WALKTHROUGH_IMAGE,
    Assembly,
    Scenario,
    charts_of,
    find,
    keyed_prod_data,
    render_charts,
    resources,
    stage_data,
    stored_check,
)
from tests.conftest import model_objects as objects_of
from tests.scanners import crd_problems
from tests.test_settings import rejected

SECRET = "gpt-oss-20b/api-keys"
SECRET_PROVIDER_CLASS_CRD = ROOT / "tests" / "fixtures" / "crds" / "secretproviderclasses.yaml"


def model_objects(stage: str | None = None) -> list[dict[str, Any]]:
    """The model's objects: in a stage file's charts, or by default in prod keyed per model (keyed_prod_data)."""
    return objects_of(render_charts(stage) if stage else charts_of(keyed_prod_data()), "gpt-oss-20b")


def test_the_secret_is_mounted_for_vllm_to_read_as_its_config() -> None:
    objects = model_objects()
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["automountServiceAccountToken"] is False  # the CSI driver asks the kubelet for a token itself
    (volume,) = [v for v in pod["volumes"] if "csi" in v]
    assert volume["csi"] == {
        "driver": "secrets-store.csi.k8s.io",
        "readOnly": True,
        "volumeAttributes": {"secretProviderClass": PROVIDER_CLASS},
    }
    container = pod["containers"][0]
    assert {"mountPath": MOUNT, "name": volume["name"], "readOnly": True} in container["volumeMounts"]
    # vLLM looks for the bare flag, then reads the file as YAML (argparse_utils.load_config_file).
    index = container["args"].index("--config")
    assert container["args"][index + 1] == f"{MOUNT}/{FILE}"
    assert FILE.endswith(".yaml")  # vLLM refuses a config file of any other extension
    provider = find(objects, "SecretProviderClass")
    assert provider["spec"]["provider"] == "aws"
    assert provider["spec"]["parameters"]["usePodIdentity"] == "true"
    assert yaml.safe_load(provider["spec"]["parameters"]["objects"]) == [
        {"objectName": SECRET, "objectType": "secretsmanager", "objectAlias": FILE}
    ]


def test_the_secret_provider_class_matches_the_drivers_definition() -> None:
    provider = find(model_objects(), "SecretProviderClass")
    assert crd_problems(provider, SECRET_PROVIDER_CLASS_CRD) == []
    broken = copy.deepcopy(provider)
    broken["spec"]["paramaters"] = broken["spec"].pop("parameters")
    assert any("'paramaters' was unexpected" in problem for problem in crd_problems(broken, SECRET_PROVIDER_CLASS_CRD))


def test_the_secret_format_is_what_vllm_reads_as_its_config() -> None:
    # The access guide's example secret, read as vLLM reads a --config file: a mapping whose list becomes
    # --api-key k1 k2.
    readme = (ROOT / "docs" / "access.md").read_text()
    example = readme[readme.index("## API keys") :].split("```json\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(example)
    assert list(config) == ["api-key"]
    assert isinstance(config["api-key"], list)
    assert all(isinstance(key, str) for key in config["api-key"])


def test_a_model_without_keys_mounts_nothing_and_has_no_config() -> None:
    pod = find(model_objects("dev"), "Deployment")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert not [v for v in pod["volumes"] if "csi" in v]
    assert "--config" not in pod["containers"][0]["args"]


def test_keys_never_come_from_the_templates() -> None:
    for flag in ("--api-key=sk-123", "--config=/tmp/x.yaml"):
        data = stage_data()
        data["models"][0]["extra_args"] = [flag]
        assert f"models[0].extra_args: {flag!r} is set by the project" in rejected(data)


def test_the_replicas_and_the_smoke_test_may_read_the_secret_and_nothing_else(
    keyed_model_serving: Scenario, dev: Assembly
) -> None:
    model = keyed_model_serving.template
    (association,) = [
        a["Properties"]
        for a in resources(model, "AWS::EKS::PodIdentityAssociation")
        if a["Properties"]["ServiceAccount"] == SERVICE_ACCOUNT
    ]
    assert association["Namespace"] == KEYED_MODEL
    role = association["RoleArn"]["Fn::GetAtt"][0]
    (policy,) = [p for p in resources(model, "AWS::IAM::Policy") if p["Properties"]["Roles"] == [{"Ref": role}]]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    assert f":secret:{SECRET}-??????" in json.dumps(statement["Resource"])
    # The smoke test's role gets it from the model's stack, by the role's name; the serving stack grants none.
    assert "secretsmanager" not in json.dumps(resources(dev.template("Serving"), "AWS::IAM::Policy"))
    (smoke,) = [
        p["Properties"]
        for p in resources(model, "AWS::IAM::Policy")
        if p["Properties"]["Roles"] == ["gpu-inference-dev-smoke-test"]
    ]
    # Named for the model: every model stack puts one on the same role, where an inline policy's name is its key.
    assert smoke["PolicyName"] == f"smoke-test-keys-{KEYED_MODEL}"
    (statement,) = smoke["PolicyDocument"]["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert f":secret:{SECRET}-??????" in json.dumps(statement["Resource"])


def test_the_provider_add_on_is_installed_where_a_model_has_keys(prod: Assembly, dev: Assembly) -> None:
    def add_ons(assembly: Assembly) -> list[str]:
        return [a["Properties"]["AddonName"] for a in resources(assembly.template("Cluster"), "AWS::EKS::Addon")]

    assert SECRETS_STORE_ADDON in add_ons(prod)
    assert SECRETS_STORE_ADDON not in add_ons(dev)


def test_the_smoke_test_asks_with_a_key_and_the_test_command_sends_one(keyed_model_serving: Scenario) -> None:
    check = stored_check(keyed_model_serving.template)
    assert check[check.index("--api-key-secret") + 1] == SECRET
    command = keyed_model_serving.template["Outputs"]["KeyedTestRequestCommand"]["Value"]
    assert f"--secret-id {SECRET}" in command
    assert "Authorization: Bearer" in command


def test_a_vllm_that_masks_the_keys_keeps_its_own_logging() -> None:
    # vLLM 0.31.0 logs --api-key as *** (settings/catalog/vllm_profiles.yaml): its log is left as it is.
    objects = model_objects()
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "VLLM_LOGGING_CONFIG_PATH" not in {item["name"] for item in container["env"]}
    assert not any(mount["mountPath"] == LOGGING_MOUNT for mount in container["volumeMounts"])
    assert not [o for o in objects if o["kind"] == "ConfigMap" and LOGGING_FILE in o.get("data", {})]


def test_a_vllm_that_would_log_the_keys_logs_everything_but_the_flags_that_hold_them() -> None:
    data = keyed_prod_data()
    data["models"][0]["image"] = WALKTHROUGH_IMAGE  # vLLM 0.11.2 logs its flags as given
    objects = objects_of(charts_of(data), "gpt-oss-20b")
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["VLLM_LOGGING_CONFIG_PATH"] == f"{LOGGING_MOUNT}/{LOGGING_FILE}"
    assert any(mount["mountPath"] == LOGGING_MOUNT for mount in container["volumeMounts"])
    (logging_map,) = [o for o in objects if o["kind"] == "ConfigMap" and LOGGING_FILE in o.get("data", {})]
    config = json.loads(logging_map["data"][LOGGING_FILE])
    assert config == LOGGING_CONFIG
    # The configuration as logging applies it (vLLM's formatter class swapped for the standard one).
    stream = io.StringIO()
    applied = copy.deepcopy(config)
    applied["formatters"]["vllm"] = {"format": "%(name)s %(message)s"}
    applied["handlers"]["vllm"]["stream"] = stream
    logging.config.dictConfig(applied)
    try:
        logging.getLogger("vllm.entrypoints.utils").info("non-default args: {'api_key': ['key-one']}")
        logging.getLogger("vllm.entrypoints.openai.api_server").info("Starting vLLM API server")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    assert stream.getvalue() == "vllm.entrypoints.openai.api_server Starting vLLM API server\n"


def test_the_provider_runs_on_the_gpu_nodes(prod: Assembly) -> None:
    (add_on,) = [
        a["Properties"]
        for a in resources(prod.template("Cluster"), "AWS::EKS::Addon")
        if a["Properties"]["AddonName"] == SECRETS_STORE_ADDON
    ]
    assert json.loads(add_on["ConfigurationValues"]) == {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    }
