"""`make e2e`'s offline parts: the throwaway stage, the load test Job, and removing what a stage keeps."""

from __future__ import annotations

import datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from scripts import e2e
from settings import STAGES_DIR, parse_stage_settings
from tests.scanners import kubernetes_problems

ROLE = "arn:aws:iam::123456789012:role/PlatformAdmin"


def test_an_assumed_role_session_is_admitted_as_its_role() -> None:
    assert e2e.role_of("arn:aws:sts::123456789012:assumed-role/PlatformAdmin/alice") == ROLE
    assert e2e.role_of("arn:aws:iam::123456789012:user/alice") == "arn:aws:iam::123456789012:user/alice"


# The stage files go to a scratch folder: the session's synths may be reading settings/stages/.
def test_the_throwaway_stage_is_dev_with_names_of_its_own_and_leaves_no_file(tmp_path: Path) -> None:
    with e2e.throwaway_stage(ROLE, tmp_path) as settings:
        assert settings.name.startswith("e2e-")
        assert (tmp_path / f"{settings.name}.yaml").exists()
        assert settings.cluster.name == f"gpu-inference-{settings.name}"
        assert settings.cluster.admin_principal_arns == (ROLE,)
        assert settings.image_cache_prefix == f"ecr-public/{settings.name}"
        assert (
            settings.models
            == parse_stage_settings("dev", e2e.yaml.safe_load((STAGES_DIR / "dev.yaml").read_text())).models
        )
    assert not (tmp_path / f"{settings.name}.yaml").exists()


def test_the_stage_file_goes_even_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), e2e.throwaway_stage(ROLE, tmp_path) as settings:
        raise RuntimeError("deploy failed")
    assert not (tmp_path / f"{settings.name}.yaml").exists()


def test_the_load_test_job_is_valid_kubernetes_and_runs_vllm_bench_against_the_service(tmp_path: Path) -> None:
    with e2e.throwaway_stage(ROLE, tmp_path) as settings:
        job = e2e.load_test_job(settings, "load-test")
    assert kubernetes_problems(job, "1.36") == []
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert command.startswith("vllm bench serve --backend openai-chat --endpoint /v1/chat/completions ")
    assert "--base-url http://gptoss-service.gpt-oss-20b:8000 --model openai/gpt-oss-20b" in command
    assert "--tokenizer /models/gpt-oss-20b/main" in command
    assert "--save-result" in command


def test_what_a_normal_stage_keeps_is_removed_for_a_throwaway_one() -> None:
    settings = parse_stage_settings("e2e-abc123", e2e.throwaway_stage_data("e2e-abc123", ROLE))
    session = boto3.Session(region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="y")
    clients = {name: session.client(name) for name in ("resourcegroupstaggingapi", "s3", "kms", "logs", "ecr")}
    stubs = {name: Stubber(client) for name, client in clients.items()}
    key = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stubs["resourcegroupstaggingapi"].add_response(
        "get_resources",
        {
            "ResourceTagMappingList": [
                {"ResourceARN": "arn:aws:s3:::e2e-bucket"},
                {"ResourceARN": key},
                {"ResourceARN": "arn:aws:logs:us-west-2:123456789012:log-group:flow-logs"},
            ]
        },
        {"TagFilters": [{"Key": "stage", "Values": ["e2e-abc123"]}]},
    )
    stubs["s3"].add_response(
        "list_object_versions",
        {"Versions": [{"Key": "gpt-oss-20b/main/config.json", "VersionId": "v1"}], "DeleteMarkers": []},
        {"Bucket": "e2e-bucket"},
    )
    stubs["s3"].add_response(
        "delete_objects",
        {},
        {
            "Bucket": "e2e-bucket",
            "Delete": {"Objects": [{"Key": "gpt-oss-20b/main/config.json", "VersionId": "v1"}], "Quiet": True},
        },
    )
    stubs["s3"].add_response("delete_bucket", {}, {"Bucket": "e2e-bucket"})
    stubs["kms"].add_response("describe_key", {"KeyMetadata": {"KeyId": "1234", "KeyState": "Enabled"}}, {"KeyId": key})
    stubs["kms"].add_response(
        "schedule_key_deletion",
        {"KeyId": key, "DeletionDate": datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)},
        {"KeyId": key, "PendingWindowInDays": 7},
    )
    stubs["logs"].add_response("delete_log_group", {}, {"logGroupName": "flow-logs"})
    control_plane = "/aws/eks/gpu-inference-e2e-abc123/cluster"
    stubs["logs"].add_response(
        "describe_log_groups", {"logGroups": [{"logGroupName": control_plane}]}, {"logGroupNamePrefix": control_plane}
    )
    stubs["logs"].add_response("delete_log_group", {}, {"logGroupName": control_plane})
    repository = "ecr-public/e2e-abc123/deep-learning-containers/vllm"
    stubs["ecr"].add_response(
        "describe_repositories",
        {
            "repositories": [
                {
                    "repositoryName": repository,
                    "repositoryArn": f"arn:aws:ecr:us-west-2:123456789012:repository/{repository}",
                },
                {
                    "repositoryName": "ecr-public/dev/deep-learning-containers/vllm",
                    "repositoryArn": "arn:aws:ecr:us-west-2:123456789012:repository/ecr-public/dev/x",
                },
            ]
        },
        {},
    )
    stubs["ecr"].add_response("delete_repository", {}, {"repositoryName": repository, "force": True})

    class Session:
        def client(self, name: str):  # the stubbed clients, whatever asks for them
            return clients[name]

    for stub in stubs.values():
        stub.activate()
    removed = e2e.purge_retained(settings, Session())
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    assert "arn:aws:s3:::e2e-bucket" in removed
    assert key in removed
    assert control_plane in removed
    assert not any("ecr-public/dev/" in item for item in removed)  # another stage's images stay
