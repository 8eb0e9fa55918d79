"""The CodePipeline that rolls the stages out: tested synth, stage by stage, approval before production."""

from __future__ import annotations

from typing import Any

from aws_cdk import DefaultStackSynthesizer, Duration, RemovalPolicy, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from settings import names
from settings.schema import PipelineSettings, StageSettings
from stacks.reviewed_findings import acknowledge_pipeline_findings
from stacks.smoke_test_project import smoke_test_timeout
from stacks.stage import InferencePlatformStage

# The same commands a person runs (docs/pipeline.md): install, the whole test suite with its gates, synth.
SYNTH_INSTALL = ["make setup"]
SYNTH_COMMANDS = ["make test", "npx cdk synth --quiet -c pipeline=true"]
# `make plan` needs the project's Python packages (cfn-lint's resource schemas, boto3), not Node's.
PLAN_INSTALL = ["make setup-plan"]
# The pipeline stack's id (app.py): each stage's nested assembly is cdk.out/assembly-<id>-<stage>.
PIPELINE_STACK = "GpuInferencePipeline"


# A stage account's role, assumed from the pipeline's CodeBuild role: role chaining, whose sessions
# last at most one hour (IAM User Guide, "Role chaining"), while the smoke test may run longer. The
# smoke test's credentials are taken again before every status call.
ASSUME_ROLE = (
    'assume() { creds=$(aws sts assume-role --role-arn "$1" --role-session-name pipeline --query Credentials) '
    '&& export AWS_ACCESS_KEY_ID=$(echo "$creds" | jq -r .AccessKeyId) '
    'AWS_SECRET_ACCESS_KEY=$(echo "$creds" | jq -r .SecretAccessKey) '
    'AWS_SESSION_TOKEN=$(echo "$creds" | jq -r .SessionToken); }'
)
# The synth step runs the whole test suite, which peaks at about 2.8 GiB over its processes
# (`make bench`): MEDIUM (7 GB, 4 vCPUs) leaves room to grow where SMALL (3 GB) would not
# (CodeBuild User Guide, "Build environment compute modes and types").
SYNTH_COMPUTE_TYPE = codebuild.ComputeType.MEDIUM
SMOKE_TEST_POLL_SECONDS = 20
# The download caches of uv, pip and npm on a CodeBuild standard image (running as root).
SYNTH_CACHE_PATHS = ("/root/.cache/uv/**/*", "/root/.cache/pip/**/*", "/root/.npm/**/*")


def partition(region: str) -> str:
    """The ARN partition of a region (AWS General Reference, "Amazon Resource Names (ARNs)")."""
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def trigger_role_arn(settings: StageSettings) -> str:
    """The role the stage lets this pipeline assume to start its smoke test (stacks/smoke_test_project.py)."""
    role = names.smoke_test_trigger_role_name(settings.cluster.name)
    return f"arn:{partition(settings.region)}:iam::{settings.account}:role/{role}"


def smoke_test_commands(settings: StageSettings) -> list[str]:
    """Start the stage's smoke test project, as the role the stage lets this pipeline assume, and wait for it."""
    role_arn = trigger_role_arn(settings)
    region, project = settings.region, names.smoke_test_project_name(settings.cluster.name)
    minutes = int(smoke_test_timeout(settings).to_minutes())
    return [
        ASSUME_ROLE,
        f"assume {role_arn}",
        f"build=$(aws codebuild start-build --region {region} --project-name {project} "
        f"--timeout-in-minutes-override {minutes} --query build.id --output text)",
        f"while sleep {SMOKE_TEST_POLL_SECONDS}; assume {role_arn}; "
        f"status=$(aws codebuild batch-get-builds --region {region} --ids $build "
        "--query 'builds[0].buildStatus' --output text); [ \"$status\" = IN_PROGRESS ]; do :; done",
        'echo "smoke test $build: $status"',
        '[ "$status" = SUCCEEDED ]',
    ]


def lookup_role_arn(settings: StageSettings) -> str:
    """The stage account's CDK lookup role: ReadOnlyAccess, without kms:Decrypt, trusted by the accounts its
    bootstrap's --trust names (the CDK CLI's bootstrap-template.yaml, LookupRole). The CDK CLI reads deployed
    templates with it too (AWS CDK Developer Guide, "cdk diff": `--method template` uses the lookup role)."""
    template = DefaultStackSynthesizer.DEFAULT_LOOKUP_ROLE_ARN
    for placeholder, value in (
        ("${AWS::Partition}", partition(settings.region)),
        ("${Qualifier}", DefaultStackSynthesizer.DEFAULT_QUALIFIER),
        ("${AWS::AccountId}", str(settings.account)),
        ("${AWS::Region}", settings.region),
    ):
        template = template.replace(placeholder, value)
    return template


def plan_commands(stage: str, settings: StageSettings) -> list[str]:
    """`make plan` of the stage against the templates CloudFormation holds in its account, read as the lookup
    role: what the deploy will do, in the step's log before the approval; a change it refuses stops the stage."""
    return [
        ASSUME_ROLE,
        f"assume {lookup_role_arn(settings)}",
        f".venv/bin/python -m commands.plan --stage {stage} --from-aws "
        f"--after cdk.out/assembly-{PIPELINE_STACK}-{stage}",
    ]


class PipelineStack(Stack):
    """Deployed once by hand (`make deploy-pipeline`), then updates itself from the repository.

    Each stage is the same InferencePlatformStage a person deploys with `make deploy`, into the
    account the pipeline settings give it. Before a stage: a manual approval if it is a production
    stage, and a confirmation whenever the change broadens IAM permissions. After it: the stage's
    smoke test project (in the stage's account and VPC) sends a real inference request to every
    model; the pipeline starts it through a role the stage lets it assume, and fails if it fails.
    """

    def _synth_cache_bucket(self) -> s3.Bucket:
        """Where the synth step's download caches live between runs: private, TLS-only, kept a month."""
        return s3.Bucket(
            self,
            "SynthCache",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # A cache, rebuilt by the next run: nothing here is worth keeping.
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(30))],
            removal_policy=RemovalPolicy.DESTROY,
        )

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        pipeline: PipelineSettings,
        stages: dict[str, StageSettings],
        cli_version: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        source = pipelines.CodePipelineSource.connection(
            pipeline.repository, pipeline.branch, connection_arn=pipeline.connection_arn
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            synth=pipelines.ShellStep("Synth", input=source, install_commands=SYNTH_INSTALL, commands=SYNTH_COMMANDS),
            # Stages live in other accounts: artifacts are encrypted with a key those accounts may use.
            cross_account_keys=True,
            enable_key_rotation=True,
            cli_version=cli_version,
            code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(build_image=codebuild.LinuxBuildImage.STANDARD_7_0)
            ),
            synth_code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(compute_type=SYNTH_COMPUTE_TYPE),
                # `make setup` installs from lock/ (uv, or pip) and npm ci from package-lock.json; their
                # download caches come back from S3 between runs, so a rollout fetches only what changed.
                cache=codebuild.Cache.bucket(self._synth_cache_bucket(), prefix="synth"),
                partial_build_spec=codebuild.BuildSpec.from_object({"cache": {"paths": list(SYNTH_CACHE_PATHS)}}),
            ),
        )
        for name, settings in stages.items():
            stage = InferencePlatformStage(self, name, settings=settings, pipeline_account=pipeline.account)
            plan = pipelines.CodeBuildStep(
                "Plan",
                input=source,
                additional_inputs={"cdk.out": self.pipeline.synth},
                install_commands=PLAN_INSTALL,
                commands=plan_commands(name, settings),
                role_policy_statements=[
                    iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[lookup_role_arn(settings)])
                ],
            )
            confirm = pipelines.ConfirmPermissionsBroadening("ConfirmIamBroadening", stage=stage)
            before: list[pipelines.Step] = [plan, confirm]
            if settings.production:
                approval = pipelines.ManualApprovalStep(
                    "ApproveProduction", comment=f"Deploy to {name}? The Plan step's log says what it changes."
                )
                approval.add_step_dependency(plan)  # the plan first, then approval, then what it does to IAM
                confirm.add_step_dependency(approval)
                before.insert(1, approval)
            else:
                confirm.add_step_dependency(plan)
            self.pipeline.add_stage(
                stage,
                pre=before,
                post=[
                    pipelines.CodeBuildStep(
                        "SmokeTest",
                        commands=smoke_test_commands(settings),
                        # Waits for the stage's own smoke test, with time to start it and read its result.
                        timeout=smoke_test_timeout(settings).plus(Duration.minutes(10)),
                        role_policy_statements=[
                            iam.PolicyStatement(
                                actions=["sts:AssumeRole"],
                                resources=[trigger_role_arn(settings)],
                            )
                        ],
                    )
                ],
            )
        self.pipeline.build_pipeline()
        acknowledge_pipeline_findings(self, self.pipeline, list(stages))
