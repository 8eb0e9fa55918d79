"""Weights arrive by themselves: a Job per (model, revision) imports them, and replicas wait for them."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import cdk8s
import pytest
from aws_cdk.assertions import Template

from charts import DeployedResources, build_charts, model_loader
from charts.model_loader import COMPLETION_MARKER, IMPORT_SCRIPT, WAIT_SCRIPT
from settings import SettingsError, load_stage_settings, parse_stage_settings
from settings.schema import DEFAULT_WEIGHT_FILES
from tests.conftest import Assembly, Scenario, find, render_charts, stage_data, stored_check
from workloads import import_weights

CHART = "Model-gpt-oss-20b"


def charts_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    settings = parse_stage_settings("dev", data)
    return build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))[CHART].to_json()


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render_charts("dev")[CHART]


def import_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Job")["spec"]["template"]["spec"]


def test_the_import_runs_the_projects_script_from_a_config_map(objects: list[dict[str, Any]]) -> None:
    config_map = find(objects, "ConfigMap")
    assert config_map["data"] == {"import_weights.py": IMPORT_SCRIPT.read_text()}
    pod = import_pod(objects)
    assert {"name": "script", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]


def test_the_import_brings_the_revisions_files_from_the_hub_into_the_bucket(objects: list[dict[str, Any]]) -> None:
    (container,) = import_pod(objects)["containers"]
    command = container["command"]
    assert command[:2] == ["python3", "/import/import_weights.py"]
    assert "--repo=openai/gpt-oss-20b" in command
    assert "--revision=main" in command
    assert "--bucket=<model bucket name>" in command
    assert "--prefix=gpt-oss-20b/main" in command
    assert "--mount=/models" in command
    include = command.index("--include")
    assert tuple(command[include + 1 : include + 1 + len(DEFAULT_WEIGHT_FILES)]) == DEFAULT_WEIGHT_FILES
    # gpt-oss's tokenizer encoding comes with it, for TIKTOKEN_ENCODINGS_BASE.
    assert command[-2:] == ["--encodings", "o200k_base.tiktoken"]
    assert "--encodings-prefix=tiktoken_encodings" in command


def test_the_settings_and_the_script_fetch_the_same_files_by_default() -> None:
    assert DEFAULT_WEIGHT_FILES == import_weights.DEFAULT_INCLUDE


def test_the_default_files_are_what_vllm_reads() -> None:
    def matches(path: str) -> bool:
        return any(import_weights.matches(path, pattern) for pattern in DEFAULT_WEIGHT_FILES)

    for path in ("model-00000-of-00002.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert matches(path), path
    # gpt-oss-20b's two other copies of its weights (41 GB in all where vLLM reads 13.8).
    for path in ("original/model.safetensors", "metal/model.bin", "original/config.json"):
        assert not matches(path), path


def test_the_import_runs_unprivileged_on_the_general_purpose_pool_in_the_file_systems_zone(
    objects: list[dict[str, Any]],
) -> None:
    job = find(objects, "Job")
    pod = import_pod(objects)
    assert "tolerations" not in pod  # not on the GPU nodes
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-west-2a"]}
    ]
    assert pod["serviceAccountName"] == find(objects, "ServiceAccount")["metadata"]["name"] == "weights-import"
    (container,) = pod["containers"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # One file at a time passes through a bounded scratch disk, so a 150 GB model needs no 150 GB disk.
    scratch = next(volume for volume in pod["volumes"] if volume["name"] == "scratch")
    sizes = (scratch["emptyDir"]["sizeLimit"], container["resources"]["limits"]["ephemeral-storage"])
    assert [mebibytes(size) for size in sizes] == [30 * 1024, 30 * 1024]
    weights = next(mount for mount in container["volumeMounts"] if mount["name"] == "weights")
    assert weights["readOnly"] is True  # it writes to the bucket, never to the file system
    assert job["spec"]["backoffLimit"] >= 1  # a retry resumes where the last attempt stopped
    assert job["spec"]["activeDeadlineSeconds"] == 3600


def mebibytes(quantity: str) -> int:
    """A Kubernetes quantity in Mi or Gi, in MiB."""
    number, unit = quantity[:-2], quantity[-2:]
    return int(number) * {"Mi": 1, "Gi": 1024}[unit]


def job_of(data: dict[str, Any]) -> dict[str, Any]:
    return find(charts_of(data), "Job")


@pytest.mark.parametrize(
    "change",
    [
        {"revision": "a" * 40},
        {"files": ["*.safetensors", "config.json"]},
        {"hf_token_secret": "hf-token"},
        {"import_retry": 1},
        {"image": "public.ecr.aws/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2"},
    ],
)
def test_whatever_changes_the_jobs_spec_names_a_new_job(change: dict[str, Any]) -> None:
    # A Job's pod template is immutable: a changed spec under the old name would fail every later deploy.
    data = stage_data()
    before = job_of(data)
    data["models"][0] |= change
    after = job_of(data)
    assert after["spec"] != before["spec"]
    assert after["metadata"]["name"] != before["metadata"]["name"]
    assert after["metadata"]["name"].startswith("import-gpt-oss-20b-")


@pytest.mark.parametrize(
    "change",
    [
        {"registry": {"cache_prefix": "mirror"}},
        {"registry": {"image_source": "public"}},
        {"model_store": {"availability_zone": "us-west-2b"}},
    ],
)
def test_stage_settings_that_change_the_jobs_spec_name_a_new_job(change: dict[str, Any]) -> None:
    data = stage_data()
    before = job_of(data)
    data |= change
    after = job_of(data)
    assert (after["spec"] != before["spec"], after["metadata"]["name"] != before["metadata"]["name"]) == (True, True)


def test_a_change_to_the_code_that_builds_the_job_names_a_new_job(monkeypatch: pytest.MonkeyPatch) -> None:
    before = job_of(stage_data())
    monkeypatch.setattr(model_loader, "IMPORT_SCRATCH_GIB", 31)
    after = job_of(stage_data())
    assert after["metadata"]["name"] != before["metadata"]["name"]


def test_an_unchanged_job_keeps_its_name_whatever_the_deployed_values() -> None:
    # The same name in the stack (CDK tokens) as in the charts written alone (placeholders).
    spec = job_of(stage_data())["spec"]
    tokens = json.loads(json.dumps(spec).replace("<model bucket name>", "${Token[TOKEN.812]}"))
    assert model_loader.import_job_name("gpt-oss-20b", spec) == model_loader.import_job_name("gpt-oss-20b", tokens)


def test_a_new_revision_rolls_out_under_the_same_served_name() -> None:
    data = stage_data()
    data["models"][0]["revision"] = "a" * 40
    container = find(charts_of(data), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == [f"/models/gpt-oss-20b/{'a' * 40}", "--served-model-name=openai/gpt-oss-20b"]


def test_replicas_wait_for_their_revisions_marker(objects: list[dict[str, Any]]) -> None:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    env = {variable["name"]: variable["value"] for variable in wait["env"]}
    assert env["WEIGHTS"] == "/models/gpt-oss-20b/main"
    assert env["MARKER"] == COMPLETION_MARKER == import_weights.MARKER
    assert env["IMPORT"] == f"imported by job {find(objects, 'Job')['metadata']['name']}"
    assert wait["volumeMounts"] == [{"name": "weights", "mountPath": "/models", "subPath": "models", "readOnly": True}]
    assert wait["securityContext"]["runAsNonRoot"] is True


def test_weights_you_upload_yourself_need_no_import() -> None:
    data = stage_data()
    data["models"][0] |= {"name": "qwen3-8b", "model": "Qwen/Qwen3-8B", "weights_s3_prefix": "my-models/qwen3-8b"}
    objects = build_charts(cdk8s.App(), *_settings_and_placeholders(data))["Model-qwen3-8b"].to_json()
    assert not [obj for obj in objects if obj["kind"] in ("Job", "ServiceAccount", "ConfigMap")]
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "/models/my-models/qwen3-8b"
    env = {variable["name"]: variable["value"] for variable in pod["initContainers"][0]["env"]}
    assert (env["WEIGHTS"], env["ENCODINGS"]) == ("/models/my-models/qwen3-8b", "")


def test_a_gpt_oss_model_from_your_own_upload_still_gets_harmonys_encoding() -> None:
    # harmony never downloads once TIKTOKEN_ENCODINGS_BASE is set: a Job brings the encoding, and the replicas wait
    # for it as they wait for the weights, saying so.
    data = stage_data()
    data["models"][0]["weights_s3_prefix"] = "my-models/gpt-oss-20b-tuned"
    objects = charts_of(data)
    job = find(objects, "Job")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert not [arg for arg in command if arg.startswith(("--repo", "--revision", "--prefix", "--include"))]
    assert command[-2:] == ["--encodings", "o200k_base.tiktoken"]
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    env = {variable["name"]: variable["value"] for variable in pod["initContainers"][0]["env"]}
    assert env["ENCODINGS"] == "/models/tiktoken_encodings/o200k_base.tiktoken"
    assert env["IMPORT"].endswith(f"the encodings come by job {job['metadata']['name']}")
    container_env = {variable["name"]: variable["value"] for variable in pod["containers"][0]["env"]}
    assert container_env["TIKTOKEN_ENCODINGS_BASE"] == "/models/tiktoken_encodings"


def test_the_import_script_brings_only_the_encodings_without_a_repo() -> None:
    args = import_weights.parse_args(["--bucket", "b", "--workdir", "/w", "--encodings", "o200k_base.tiktoken"])
    assert args.repo is None
    with pytest.raises(SystemExit):
        import_weights.parse_args(["--bucket", "b", "--workdir", "/w", "--repo", "a/b"])  # no revision, no prefix


def _settings_and_placeholders(data: dict[str, Any]) -> tuple[Any, DeployedResources]:
    settings = parse_stage_settings("dev", data)
    return settings, DeployedResources.placeholders(settings)


def run_wait(weights: Path, encodings: str = "") -> subprocess.Popen[str]:
    env = {
        "WEIGHTS": str(weights),
        "MARKER": COMPLETION_MARKER,
        "ENCODINGS": encodings,
        "REPO": "openai/gpt-oss-20b",
        "REVISION": "main",
        "IMPORT": "imported by job import-gpt-oss-20b-0123abcd",
        "POLL_SECONDS": "0.05",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.Popen(["sh", "-c", WAIT_SCRIPT], env=env, stdout=subprocess.PIPE, text=True)


def test_the_wait_says_what_it_waits_for_and_ends_when_the_marker_appears(tmp_path: Path) -> None:
    process = run_wait(tmp_path)
    time.sleep(0.3)
    assert process.poll() is None  # still waiting: it never fails for missing weights
    (tmp_path / COMPLETION_MARKER).write_text("{}")
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert (
        f"waiting for openai/gpt-oss-20b at main: {tmp_path}/{COMPLETION_MARKER} is not on the file system yet "
        "(imported by job import-gpt-oss-20b-0123abcd)"
    ) in out
    assert out.rstrip().endswith(f"weights of openai/gpt-oss-20b at main are ready in {tmp_path}")


def test_the_wait_ends_at_once_when_the_weights_are_there(tmp_path: Path) -> None:
    (tmp_path / COMPLETION_MARKER).write_text("{}")
    out, _ = run_wait(tmp_path).communicate(timeout=10)
    assert "waiting" not in out


def test_the_wait_names_a_missing_encoding_until_it_comes(tmp_path: Path) -> None:
    (tmp_path / COMPLETION_MARKER).write_text("{}")
    encoding = tmp_path / "tiktoken_encodings" / "o200k_base.tiktoken"
    process = run_wait(tmp_path, str(encoding))
    time.sleep(0.3)
    assert process.poll() is None
    encoding.parent.mkdir()
    encoding.write_text("x")
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert f"waiting for openai/gpt-oss-20b at main: {encoding} is not on the file system yet" in out


# --- settings ---


def rejected(data: dict[str, Any], stage: str = "dev") -> str:
    with pytest.raises(SettingsError) as caught:
        parse_stage_settings(stage, data)
    return str(caught.value)


def test_production_serves_a_pinned_commit() -> None:
    data = stage_data("prod")
    data["models"][0]["revision"] = "main"
    assert "models[0].revision: 'main' is not a commit; a production stage pins every model to a 40-character" in (
        rejected(data, "prod")
    )


def test_weights_that_outgrow_the_file_system_are_refused() -> None:
    data = stage_data()
    facts = {**load_stage_settings("dev").models[0].architecture.model_dump(), "weight_bytes": 1_300_000_000_000}
    data["models"][0] |= {"model": "example-org/huge", "facts": facts}
    assert (
        "models: their weights add up to 1300.0 GB, more than the 1288 GB of model_store.storage_capacity_gib (1200)"
    ) in rejected(data)


def test_a_token_for_weights_that_are_not_imported_is_refused() -> None:
    data = stage_data()
    data["models"][0] |= {"weights_s3_prefix": "mine", "hf_token_secret": "hf-token"}
    assert "hf_token_secret applies to weights imported from the Hub" in rejected(data)


@pytest.mark.parametrize("revision", ["refs/pr/1", "", "main branch"])
def test_a_revision_that_cannot_be_a_folder_is_refused(revision: str) -> None:
    data = stage_data()
    data["models"][0]["revision"] = revision
    assert "models[0].revision" in rejected(data)


# --- the serving stack: AWS access of the import ---


def test_the_import_gets_its_folders_of_the_bucket_through_pod_identity(dev: Assembly) -> None:
    resources = dev.model_template()["Resources"]
    (association,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EKS::PodIdentityAssociation"]
    assert (association["Namespace"], association["ServiceAccount"]) == ("gpt-oss-20b", "weights-import")
    role = resources[association["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    statements = [
        statement
        for r in resources.values()
        if r["Type"] == "AWS::IAM::Policy"
        and r["Properties"]["Roles"] == [{"Ref": association["RoleArn"]["Fn::GetAtt"][0]}]
        for statement in r["Properties"]["PolicyDocument"]["Statement"]
    ]
    text = json.dumps(statements)
    assert "/gpt-oss-20b/*" in text
    assert "/tiktoken_encodings/*" in text  # a gpt_oss model: the encoding too
    assert "secretsmanager" not in text  # no token for a model that is not gated
    assert all("s3:DeleteObject" not in json.dumps(statement["Action"]) for statement in statements)


def test_the_smoke_test_waits_for_the_import_first(dev: Assembly) -> None:
    job = find(render_charts("dev")[CHART], "Job")["metadata"]["name"]
    assert stored_check(dev.model_template())[-2:] == ["--import-job", job]


def test_a_gated_models_import_may_read_its_token_secret_and_nothing_else(gated_model_serving: Scenario) -> None:
    serving = Template.from_json(gated_model_serving.template)
    statements = [
        statement
        for resource in serving.find_resources("AWS::IAM::Policy").values()
        if resource["Properties"]["Roles"][0]["Ref"].startswith("GptOss20bImportRole")
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]
    (secret,) = [statement for statement in statements if statement["Action"] == "secretsmanager:GetSecretValue"]
    # Secrets Manager ends a secret's ARN in '-' and six random characters.
    assert json.dumps(secret["Resource"]).endswith(':secret:hf-token-??????"]]}')
