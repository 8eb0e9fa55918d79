"""PipelineStack: tested synth, the stages in order, approval before production, a smoke test after each."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from settings import SettingsError, load_pipeline_settings, parse_pipeline_settings, parse_stage_settings
from stacks.pipeline import lookup_role_arn, plan_commands, smoke_test_commands, trigger_role_arn
from stacks.smoke_test_project import smoke_test_timeout
from tests.conftest import Assembly, keyed_prod_data, nested_stage, properties, validation_findings

PIPELINE_ACCOUNT, DEV_ACCOUNT, PROD_ACCOUNT = "111111111111", "222222222222", "333333333333"


@pytest.fixture(scope="module")
def template(pipeline: Assembly) -> dict[str, Any]:
    return pipeline.template("GpuInferencePipeline")


@pytest.fixture(scope="module")
def stages(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    (code_pipeline,) = properties(template, "AWS::CodePipeline::Pipeline")
    return {stage["Name"]: stage["Actions"] for stage in code_pipeline["Stages"]}


def step_statements(template: dict[str, Any], action: dict[str, Any]) -> list[dict[str, Any]]:
    """What the role of a pipeline step's CodeBuild project may do."""
    project_id = action["Configuration"]["ProjectName"]["Ref"]
    role_id = template["Resources"][project_id]["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    return [
        statement
        for policy in properties(template, "AWS::IAM::Policy")
        if policy["Roles"] == [{"Ref": role_id}]
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def buildspec_of(template: dict[str, Any], action: dict[str, Any]) -> dict[str, Any]:
    project_id = action["Configuration"]["ProjectName"]["Ref"]
    return json.loads(template["Resources"][project_id]["Properties"]["Source"]["BuildSpec"])


def test_pipeline_deploys_into_its_own_account_and_the_stages_into_theirs(pipeline: Assembly) -> None:
    assert pipeline.stacks()["GpuInferencePipeline"]["environment"] == f"aws://{PIPELINE_ACCOUNT}/us-west-2"
    for stage, account in (("dev", DEV_ACCOUNT), ("prod", PROD_ACCOUNT)):
        environments = {a["environment"] for a in nested_stage(pipeline, stage).stacks().values()}
        assert environments == {f"aws://{account}/us-west-2"}


def test_stages_run_in_order_after_source_build_and_self_mutation(stages: dict[str, Any]) -> None:
    names = list(stages)
    assert names[:3] == ["Source", "Build", "UpdatePipeline"]
    assert names.index("dev") < names.index("prod") == len(names) - 1


def test_source_is_the_repository_branch_through_the_connection(stages: dict[str, Any]) -> None:
    (source,) = stages["Source"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    assert source["Configuration"]["ConnectionArn"] == (
        "arn:aws:codeconnections:us-west-2:111111111111:connection/00000000-0000-0000-0000-000000000000"
    )
    assert source["Configuration"]["FullRepositoryId"] == "example-org/eks-gpu-inference"
    assert source["Configuration"]["BranchName"] == "main"


def test_synth_installs_tests_and_synthesizes_as_the_pipeline_guide_says(
    template: dict[str, Any], stages: dict[str, Any]
) -> None:
    (synth,) = stages["Build"]
    phases = buildspec_of(template, synth)["phases"]
    assert phases["install"]["commands"] == ["make setup"]
    assert phases["build"]["commands"] == ["make test", "npx cdk synth --quiet -c pipeline=true"]


def test_self_mutation_uses_the_cli_version_of_package_json(template: dict[str, Any], stages: dict[str, Any]) -> None:
    (self_mutation,) = stages["UpdatePipeline"]
    commands = buildspec_of(template, self_mutation)["phases"]["install"]["commands"]
    package = json.loads(open("package.json").read())  # noqa: SIM115
    assert f"npm install -g aws-cdk@{package['devDependencies']['aws-cdk']}" in commands


def action_names(actions: list[dict[str, Any]]) -> list[str]:
    return [action["Name"] for action in sorted(actions, key=lambda action: action["RunOrder"])]


def test_production_waits_for_a_manual_approval_after_its_plan(stages: dict[str, Any]) -> None:
    prod = sorted(stages["prod"], key=lambda action: action["RunOrder"])
    assert [action["Name"] for action in prod[:2]] == ["Plan", "ApproveProduction"]
    approval = prod[1]
    assert approval["ActionTypeId"] == {"Category": "Approval", "Owner": "AWS", "Provider": "Manual", "Version": "1"}
    assert "The Plan step's log says what it changes" in approval["Configuration"]["CustomData"]
    deploys = [action for action in prod if action["ActionTypeId"]["Provider"] == "CloudFormation"]
    assert deploys
    check = next(action for action in prod if action["Name"] == "ConfirmIamBroadening.Check")
    assert prod[0]["RunOrder"] < approval["RunOrder"] < check["RunOrder"] < min(a["RunOrder"] for a in deploys)
    assert "ApproveProduction" not in action_names(stages["dev"])


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_every_stage_confirms_broadened_iam_before_deploying_and_smoke_tests_after(
    stages: dict[str, Any], stage: str
) -> None:
    actions = sorted(stages[stage], key=lambda action: action["RunOrder"])
    names = [action["Name"] for action in actions]
    check, confirm = (
        actions[names.index("ConfirmIamBroadening.Check")],
        actions[names.index("ConfirmIamBroadening.Confirm")],
    )
    assert check["ActionTypeId"]["Provider"] == "CodeBuild"  # cdk diff --security-only
    assert confirm["ActionTypeId"]["Provider"] == "Manual"
    deploy_orders = [a["RunOrder"] for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"]
    assert check["RunOrder"] < confirm["RunOrder"] < min(deploy_orders)
    assert names[-1] == "SmokeTest"
    assert actions[-1]["RunOrder"] > max(deploy_orders)
    # `make plan` against the stage's deployed templates comes first, before any approval.
    plan = actions[names.index("Plan")]
    assert plan["RunOrder"] == min(action["RunOrder"] for action in actions) < check["RunOrder"]
    if "ApproveProduction" in names:
        assert plan["RunOrder"] < actions[names.index("ApproveProduction")]["RunOrder"] < check["RunOrder"]


@pytest.mark.parametrize(("stage", "account"), [("dev", DEV_ACCOUNT), ("prod", PROD_ACCOUNT)])
def test_plan_reads_the_stages_templates_as_its_lookup_role(
    template: dict[str, Any], stages: dict[str, Any], stage: str, account: str
) -> None:
    plan = next(action for action in stages[stage] if action["Name"] == "Plan")
    buildspec = buildspec_of(template, plan)
    settings = load_pipeline_settings()[1][stage]
    role_arn = f"arn:aws:iam::{account}:role/cdk-hnb659fds-lookup-role-{account}-us-west-2"
    assert lookup_role_arn(settings) == role_arn
    # CDK Pipelines links the synth step's output to cdk.out before the install.
    link, install = buildspec["phases"]["install"]["commands"]
    assert link.endswith('ln -s -- "$CODEBUILD_SRC_DIR_Synth_Output" "cdk.out"')
    assert install == "make setup-plan"
    commands = buildspec["phases"]["build"]["commands"]
    assert commands == plan_commands(stage, settings)
    assert commands[-1].endswith(f"--stage {stage} --from-aws --after cdk.out/assembly-GpuInferencePipeline-{stage}")
    # Its inputs: the repository (the commands) and the synth step's cloud assembly in cdk.out.
    assert len(plan["InputArtifacts"]) == 2
    assert {"Action": "sts:AssumeRole", "Effect": "Allow", "Resource": role_arn} in step_statements(template, plan)


@pytest.mark.parametrize(("stage", "account"), [("dev", DEV_ACCOUNT), ("prod", PROD_ACCOUNT)])
def test_smoke_test_starts_the_stages_project_as_the_role_the_stage_grants(
    template: dict[str, Any], stages: dict[str, Any], stage: str, account: str
) -> None:
    smoke_test = next(action for action in stages[stage] if action["Name"] == "SmokeTest")
    commands = buildspec_of(template, smoke_test)["phases"]["build"]["commands"]
    role_arn = f"arn:aws:iam::{account}:role/gpu-inference-{stage}-smoke-test-trigger"
    assert commands == smoke_test_commands(load_pipeline_settings()[1][stage])
    assert f"assume {role_arn}" in commands
    assert any(f"--project-name gpu-inference-{stage}-smoke-test" in command for command in commands)
    assert commands[-1] == '[ "$status" = SUCCEEDED ]'
    assert {"Action": "sts:AssumeRole", "Effect": "Allow", "Resource": role_arn} in step_statements(
        template, smoke_test
    )


def test_artifacts_are_encrypted_with_a_rotating_key_the_stage_accounts_may_use(template: dict[str, Any]) -> None:
    (key,) = properties(template, "AWS::KMS::Key")
    assert key["EnableKeyRotation"] is True
    (bucket,) = [
        r["Properties"]
        for logical_id, r in template["Resources"].items()
        if r["Type"] == "AWS::S3::Bucket" and logical_id.startswith("PipelineArtifactsBucket")
    ]
    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert encryption["SSEAlgorithm"] == "aws:kms"
    assert bucket["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True


@pytest.mark.parametrize(("stage", "account"), [("dev", DEV_ACCOUNT), ("prod", PROD_ACCOUNT)])
def test_stage_lets_only_the_pipeline_account_trigger_its_smoke_test(
    pipeline: Assembly, stage: str, account: str
) -> None:
    serving = nested_stage(pipeline, stage).template("Serving")
    (trigger,) = [
        r["Properties"]
        for r in serving["Resources"].values()
        if r["Type"] == "AWS::IAM::Role"
        and r["Properties"].get("RoleName") == f"gpu-inference-{stage}-smoke-test-trigger"
    ]
    (trust,) = trigger["AssumeRolePolicyDocument"]["Statement"]
    assert json.dumps(trust["Principal"]).count(f":iam::{PIPELINE_ACCOUNT}:root") == 1
    assert account != PIPELINE_ACCOUNT


def test_pipeline_passes_every_gate_that_stages_pass(pipeline: Assembly) -> None:
    findings, _ = validation_findings(pipeline.directory / "validation-report.json")
    assert findings == []


def test_pipeline_settings_must_name_a_connection() -> None:
    data = {
        "account": PIPELINE_ACCOUNT,
        "region": "us-west-2",
        "connection_arn": "github-token-123",
        "repository": "o/r",
        "stages": [{"name": "dev", "account": DEV_ACCOUNT}],
    }
    with pytest.raises(
        SettingsError,
        match=r"pipeline has invalid settings:\n  connection_arn: 'github-token-123' is not a CodeConnections",
    ):
        parse_pipeline_settings(data)


def test_pipeline_stage_must_exist_and_appear_once() -> None:
    base = {
        "account": PIPELINE_ACCOUNT,
        "region": "us-west-2",
        "repository": "o/r",
        "connection_arn": "arn:aws:codeconnections:us-west-2:111111111111:connection/abc-123",
    }
    with pytest.raises(SettingsError, match="unknown stage 'qa'"):
        parse_pipeline_settings({**base, "stages": [{"name": "qa", "account": DEV_ACCOUNT}]})
    twice = [{"name": "dev", "account": DEV_ACCOUNT}, {"name": "dev", "account": DEV_ACCOUNT}]
    with pytest.raises(SettingsError, match="stages: each stage may appear once; repeated: dev"):
        parse_pipeline_settings({**base, "stages": twice})


def test_pipeline_stages_keep_their_order_and_get_their_accounts() -> None:
    settings, stages = load_pipeline_settings()
    assert [target.name for target in settings.stages] == list(stages) == ["dev", "prod"]
    assert stages["dev"].account == DEV_ACCOUNT
    assert stages["prod"].production


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_stage_smoke_test_runs_in_that_stages_vpc_as_a_role_its_cluster_admits(pipeline: Assembly, stage: str) -> None:
    serving = nested_stage(pipeline, stage).template("Serving")
    (project,) = properties(serving, "AWS::CodeBuild::Project")
    assert project["Name"] == f"gpu-inference-{stage}-smoke-test"
    assert all(f"{stage}-Network" in json.dumps(subnet) for subnet in project["VpcConfig"]["Subnets"])
    (entry,) = properties(serving, "AWS::EKS::AccessEntry")
    assert entry["PrincipalArn"] == project["ServiceRole"]
    assert entry["KubernetesGroups"] == ["smoke-testers"]


FAKE_AWS = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$1 $2" in
  "sts assume-role") echo '{"AccessKeyId": "AKIA", "SecretAccessKey": "s", "SessionToken": "t"}' ;;
  "codebuild start-build") echo build-1 ;;
  "codebuild batch-get-builds")
    polls=$(grep -c batch-get-builds "$CALLS")
    if [ "$polls" -lt 4 ]; then echo IN_PROGRESS; else echo "$FINAL"; fi ;;
esac
"""


@pytest.mark.skipif(shutil.which("jq") is None, reason="the smoke step's shell reads credentials with jq")
@pytest.mark.parametrize(("final", "exit_code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_smoke_step_takes_fresh_credentials_before_every_poll_and_fails_with_the_build(
    tmp_path: Path, final: str, exit_code: int
) -> None:
    # Role chaining caps the assumed role's session at one hour; the smoke test may run longer.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("aws", FAKE_AWS), ("sleep", "#!/bin/sh\n")):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    commands = smoke_test_commands(load_pipeline_settings()[1]["dev"])
    # CodeBuild runs a phase's commands in one shell, stopping at the first that fails.
    process = subprocess.run(
        ["bash", "-e", "-c", "\n".join(commands)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "FINAL": final},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == exit_code, process.stderr
    assert f"smoke test build-1: {final}" in process.stdout
    services = [line.split()[0] + " " + line.split()[1] for line in calls.read_text().splitlines()]
    assert services[:2] == ["sts assume-role", "codebuild start-build"]
    polls = services[2:]
    assert polls == ["sts assume-role", "codebuild batch-get-builds"] * 4


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_smoke_step_outlasts_the_stages_smoke_test(
    template: dict[str, Any], stages: dict[str, Any], stage: str
) -> None:
    smoke_test = next(action for action in stages[stage] if action["Name"] == "SmokeTest")
    project = template["Resources"][smoke_test["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    settings = load_pipeline_settings()[1][stage]
    # The stage's project waits for each rollout past its progress deadline (16 min here), then asks.
    assert project["TimeoutInMinutes"] > smoke_test_timeout(settings).to_minutes() > 2 * 16


def test_synth_runs_the_suite_on_a_build_with_memory_to_spare(template: dict[str, Any], stages: dict[str, Any]) -> None:
    # The suite peaks at about 2.8 GiB (make bench); SMALL has 3 GB, MEDIUM 7 GB.
    (synth,) = stages["Build"]
    project = template["Resources"][synth["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    assert project["Environment"]["ComputeType"] == "BUILD_GENERAL1_MEDIUM"


def test_synth_installs_from_the_lock_and_caches_downloads_between_runs(
    template: dict[str, Any], stages: dict[str, Any]
) -> None:
    (synth,) = stages["Build"]
    project = template["Resources"][synth["Configuration"]["ProjectName"]["Ref"]]["Properties"]
    # `make setup` installs lock/*.txt (tests/test_locks.py) and node_modules from package-lock.json.
    assert buildspec_of(template, synth)["phases"]["install"]["commands"] == ["make setup"]
    assert set(json.loads(project["Source"]["BuildSpec"])["cache"]["paths"]) == {
        "/root/.cache/uv/**/*",
        "/root/.cache/pip/**/*",
        "/root/.npm/**/*",
    }
    cache = project["Cache"]
    assert cache["Type"] == "S3"
    bucket_id = cache["Location"]["Fn::Join"][1][0]["Ref"]
    bucket = template["Resources"][bucket_id]
    assert bucket["Properties"]["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 30
    assert bucket["Properties"]["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True


@pytest.mark.parametrize(
    ("region", "expected"), [("us-west-2", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")]
)
def test_the_trigger_role_is_named_in_its_regions_partition(region: str, expected: str) -> None:
    settings = load_pipeline_settings()[1]["dev"].model_copy(update={"region": region})
    assert trigger_role_arn(settings) == f"arn:{expected}:iam::222222222222:role/gpu-inference-dev-smoke-test-trigger"


@pytest.mark.parametrize("stack", ["ModelStore", "Registry"])
def test_stateful_stacks_have_the_same_logical_ids_deployed_alone_or_by_the_pipeline(
    dev: Assembly, pipeline: Assembly, stack: str
) -> None:
    # Moving a stage between `make deploy` and the pipeline must replace nothing in its stateful stacks: a renamed
    # security group rule would be created beside its twin, which EC2 refuses as a duplicate.
    alone = set(dev.template(stack)["Resources"])
    by_pipeline = set(nested_stage(pipeline, "dev").template(stack)["Resources"])
    assert alone == by_pipeline


def test_a_stage_of_many_models_is_smoke_tested_within_what_codebuild_allows_a_build() -> None:
    data = keyed_prod_data()
    data["models"] = [
        {**data["models"][0], "name": f"model-{i}", "service_name": f"model-{i}", "revision": f"{i:040x}"}
        for i in range(40)
    ]
    settings = parse_stage_settings("prod", data)
    assert smoke_test_timeout(settings).to_minutes() == 2160  # StartBuild's most; 40 models would wait longer
