"""Every scanner finding this project accepts, with the reason a reviewer gets: the one place for them.

cdk-nag findings are acknowledged through CDK's Validations API on the one construct they
concern, narrowed to the finding (`Rule[Finding]`) where the rule reports several. checkov's
CloudFormation findings are skipped in the template metadata of the one resource, where
checkov reads them. Paths are construct paths below a stage; a path that no longer exists
(after a library upgrade, say) stops the synth instead of silently acknowledging nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aws_cdk import Acknowledgment, CfnElement, CfnResource, Stack, Stage, Validations, pipelines
from constructs import IConstruct

from charts.model_loader import has_import_job, import_folders
from charts.shared_compile_cache import compile_cache_folder
from settings import names
from settings.schema import ModelSettings, StageSettings
from stacks.model_store import bucket_arn_export

CLUSTER_ROLE = "Cluster/Cluster/Role"
NODE_ROLE = "Cluster/NodeRole"
FSX_CSI_ROLE = "Cluster/FsxCsiDriverRole"
CLOUDWATCH_AGENT_ROLE = "Cluster/CloudWatchAgentRole"
PROMETHEUS_DATA_SOURCE = "Serving/PrometheusDataSource/Function"
ACCESS_LOGS_BUCKET = "ModelStore/AccessLogsBucket"
SMOKE_TEST = "Serving/SmokeTest"
SMOKE_TEST_ROLE = "Serving/SmokeTestRole"
KUBECTL_HANDLER = "Cluster/Cluster/KubectlProvider/Handler"
KUBECTL_FRAMEWORK = "Cluster/Cluster/KubectlProvider/Provider/framework-onEvent"
# The condition aws-cdk-lib puts on the handler's ECR Public policy (in partitions that have ECR Public).
ECR_PUBLIC_CONDITION = f"{KUBECTL_HANDLER}/HasEcrPublic"
RESTRICT_DEFAULT_SG_HANDLER = "Network/Custom::VpcRestrictDefaultSGCustomResourceProvider/Handler"
# aws-cdk-lib's LogRetention function: one per stack under this fixed id (aws-logs, log-retention.ts).
LOG_RETENTION = "Cluster/LogRetentionaae0aa3c5b4d4f87b02d85b201efdd8a"

# Lambda functions that aws-cdk-lib itself generates to run custom resources at deploy time.
CDK_PROVIDER_FUNCTIONS = (KUBECTL_HANDLER, KUBECTL_FRAMEWORK)


@dataclass(frozen=True)
class Finding:
    path: str
    rule: str
    reason: str


def _managed_policy(name: str) -> str:
    return f"Policy::arn:<AWS::Partition>:iam::aws:policy/{name}"


def _codebuild_project_resources(region: str, account: str, project_logical_id: str) -> tuple[tuple[str, str], ...]:
    """The log group and report groups aws-cdk-lib lets a CodeBuild project's role write, as cdk-nag names them."""
    return (
        ("logs", f"Resource::arn:aws:logs:{region}:{account}:log-group:/aws/codebuild/<{project_logical_id}>:*"),
        ("test reports", f"Resource::arn:aws:codebuild:{region}:{account}:report-group/<{project_logical_id}>-*"),
    )


def _account_resource(service: str, region: str, resource: str) -> str:
    return f"Resource::arn:<AWS::Partition>:{service}:{region}:<AWS::AccountId>:{resource}"


def nag_findings(
    settings: StageSettings, model_store_stack: str, logical_id: Callable[[str], str]
) -> tuple[Finding, ...]:
    """The stage's accepted cdk-nag findings; some name the stage's region, cache prefix and model store stack,
    and the logical ids of the constructs at some paths (`logical_id(path)`)."""
    return (
        *_library_nag_findings(logical_id),
        *_cluster_nag_findings(settings),
        *_model_nag_findings(settings, model_store_stack),
        *_smoke_test_nag_findings(settings, logical_id),
    )


def _cluster_nag_findings(settings: StageSettings) -> tuple[Finding, ...]:
    """What the cluster's roles may do: the nodes', the CloudWatch agent's, the FSx CSI driver's, KEDA's chart."""
    return (
        *(
            Finding(
                NODE_ROLE,
                f"AwsSolutions-IAM4[{_managed_policy(policy)}]",
                f"{policy} is one of the two AWS-maintained policies the EKS Auto Mode documentation gives "
                "the node role.",
            )
            for policy in ("AmazonEKSWorkerNodeMinimalPolicy", "AmazonEC2ContainerRegistryPullOnly")
        ),
        *(
            Finding(
                f"{NODE_ROLE}/DefaultPolicy",
                f"AwsSolutions-IAM5[{_account_resource('ecr', settings.region, f'repository/{prefix}/*')}]",
                "A first pull through the cache creates the image's repository under the cache prefix; the "
                "repositories are not known in advance, so the grant covers that prefix and nothing else.",
            )
            for prefix in settings.image_cache_prefixes
        ),
        *(
            Finding(
                f"{CLOUDWATCH_AGENT_ROLE}/DefaultPolicy",
                f"AwsSolutions-IAM5[{_account_resource('logs', settings.region, f'log-group:{group}:log-stream:*')}]",
                "The CloudWatch agent and Fluent Bit name their log streams after the nodes and containers they "
                "read: any stream of one log group the stack created.",
            )
            for group in settings.cloudwatch_log_groups
        ),
        *(
            [
                Finding(
                    f"{CLOUDWATCH_AGENT_ROLE}/DefaultPolicy",
                    "AwsSolutions-IAM5[Resource::*]",
                    "The CloudWatch agent reads node volumes and instance tags (ec2:DescribeVolumes, "
                    "ec2:DescribeTags), which the EC2 API does not let a policy narrow to a resource.",
                )
            ]
            if settings.cloudwatch_log_groups
            else []
        ),
        Finding(
            f"{FSX_CSI_ROLE}/DefaultPolicy",
            f"AwsSolutions-IAM5[{_account_resource('fsx', settings.region, 'file-system/*')}]",
            "Read-only lookup of file systems by the CSI driver; naming the one file system would make the "
            "cluster wait for the model store's creation.",
        ),
        *(
            Finding(
                f"{KUBECTL_HANDLER}/ServiceRole/DefaultPolicy",
                f"AwsSolutions-IAM5[{rule}]",
                "aws-cdk-lib's read grant on the KEDA chart asset the kubectl handler installs, in the CDK assets "
                "bucket of the stage's account and region.",
            )
            for rule in (
                *(f"Action::{action}" for action in ARTIFACT_ACTIONS),
                "Resource::arn:aws:s3:::"
                + names.cdk_assets_bucket(settings.account or "<AWS::AccountId>", settings.region)
                + "/*",
            )
            if settings.keda
        ),
    )


def _model_nag_findings(settings: StageSettings, model_store_stack: str) -> tuple[Finding, ...]:
    """What each model's pods may do: the weights import's folders and token, the replicas' API keys and compile
    cache."""
    return (
        *(
            Finding(
                f"{names.model_stack_id(model.name)}/{names.output_id(model.name)}"
                f"{'ApiKeys' if model.api_keys_secret else 'CompileCache'}Role/DefaultPolicy",
                f"AwsSolutions-IAM5[Resource::{bucket_arn_export(model_store_stack)}/"
                f"{compile_cache_folder(model.name)}*]",
                f"The replicas of {model.model} share the compile cache vLLM writes, whose files it names itself, "
                "under their model's folder; nothing else in the bucket.",
            )
            for model in settings.models
            if model.compile_cache
        ),
        *(
            Finding(
                f"{names.model_stack_id(model.name)}/{names.output_id(model.name)}ImportRole/DefaultPolicy",
                f"AwsSolutions-IAM5[{resource}]",
                f"The weights import of {model.model} writes files it only learns from the Hub, under {what}; "
                "nothing else in the bucket.",
            )
            for model in settings.models
            if has_import_job(model)
            for what, resource in _import_folders(model, bucket_arn_export(model_store_stack))
        ),
        *(
            Finding(
                f"{names.model_stack_id(model.name)}/{names.output_id(model.name)}ImportRole/DefaultPolicy",
                "AwsSolutions-IAM5["
                + _account_resource("secretsmanager", settings.region, f"secret:{model.hf_token_secret}-??????")
                + "]",
                "Secrets Manager ends a secret's ARN in six random characters: the wildcard is that suffix of the "
                "one token secret the settings name.",
            )
            for model in settings.models
            if model.imported and model.hf_token_secret
        ),
        *(
            Finding(
                path,
                "AwsSolutions-IAM5["
                + _account_resource("secretsmanager", settings.region, f"secret:{model.api_keys_secret}-??????")
                + "]",
                "Secrets Manager ends a secret's ARN in six random characters: the wildcard is that suffix of the "
                f"one API keys secret the settings name for {model.name}.",
            )
            for model in settings.models
            if model.api_keys_secret
            for path in (
                f"{names.model_stack_id(model.name)}/{names.output_id(model.name)}ApiKeysRole/DefaultPolicy",
                f"{names.model_stack_id(model.name)}/SmokeTest/Keys",
            )
        ),
    )


def _smoke_test_nag_findings(settings: StageSettings, logical_id: Callable[[str], str]) -> tuple[Finding, ...]:
    """What the smoke test's project and role may do."""
    checks = names.smoke_test_checks_path(settings.cluster.name)
    return (
        Finding(
            f"{SMOKE_TEST_ROLE}/DefaultPolicy",
            f"AwsSolutions-IAM5[{_account_resource('ssm', settings.region, f'parameter{checks}/*')}]",
            "The checks each model's stack stores under the stage's smoke test path, one parameter a model: the "
            "project reads whichever models the stage serves, and nothing else in Parameter Store.",
        ),
        *(
            Finding(
                f"{SMOKE_TEST_ROLE}/DefaultPolicy",
                f"AwsSolutions-IAM5[{resource}]",
                f"CodeBuild writes the smoke test's {what} under names it derives from the project; aws-cdk-lib "
                "scopes the grant to this project's prefix.",
            )
            for what, resource in _codebuild_project_resources(
                settings.region, settings.account or "<AWS::AccountId>", logical_id(SMOKE_TEST)
            )
        ),
        *(
            Finding(
                f"{SMOKE_TEST_ROLE}/DefaultPolicy",
                f"AwsSolutions-IAM5[Action::{action}]",
                "aws-cdk-lib's key grant for the smoke test's own artifact key; the resource is that one key.",
            )
            for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*")
        ),
        *(
            Finding(
                f"{SMOKE_TEST_ROLE}/DefaultPolicy",
                f"AwsSolutions-IAM5[Action::{action}]",
                "aws-cdk-lib's read grant on the script asset the smoke test runs, in the CDK assets bucket.",
            )
            for action in ARTIFACT_ACTIONS
        ),
        *(
            Finding(
                path,
                f"AwsSolutions-IAM5[{resource}]",
                "CodeBuild creates and deletes the network interface that puts the smoke test in the VPC; the EC2 "
                "calls for that (CreateNetworkInterface, DescribeSubnets, ...) do not take narrower resources.",
            )
            for path, resource in (
                (
                    f"{SMOKE_TEST_ROLE}/DefaultPolicy",
                    "Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:network-interface/*",
                ),
                (f"{SMOKE_TEST}/PolicyDocument", "Resource::*"),
            )
        ),
    )


# Findings on what aws-cdk-lib generates for the cluster, whatever the settings.
def _library_nag_findings(logical_id: Callable[[str], str]) -> tuple[Finding, ...]:
    """What aws-cdk-lib's own constructs in the stage are found to do."""
    return (
        *_CONSTANT_LIBRARY_NAG_FINDINGS,
        Finding(
            f"{KUBECTL_HANDLER}/ServiceRole",
            "AwsSolutions-IAM4[Policy::{"
            f'"Fn::If":["{logical_id(ECR_PUBLIC_CONDITION)}",{{"Fn::Join":["",["arn:",'
            '{"Ref":"AWS::Partition"},":iam::aws:policy/AmazonElasticContainerRegistryPublicReadOnly"]]},'
            '{"Ref":"AWS::NoValue"}]}]',
            "Read-only pulls from ECR Public, only in partitions that have it (the condition in the policy ARN).",
        ),
        Finding(
            f"{KUBECTL_FRAMEWORK}/ServiceRole/DefaultPolicy",
            f"AwsSolutions-IAM5[Resource::<{logical_id(KUBECTL_HANDLER)}.Arn>:*]",
            "The provider framework invokes the kubectl handler's versions and aliases: the wildcard is a "
            "qualifier of that one function's ARN.",
        ),
    )


_CONSTANT_LIBRARY_NAG_FINDINGS = (
    *(
        Finding(
            CLUSTER_ROLE,
            f"AwsSolutions-IAM4[{_managed_policy(policy)}]",
            f"EKS Auto Mode requires {policy} on the cluster role; AWS maintains it as the service changes.",
        )
        for policy in (
            "AmazonEKSClusterPolicy",
            "AmazonEKSComputePolicy",
            "AmazonEKSBlockStoragePolicy",
            "AmazonEKSLoadBalancingPolicy",
            "AmazonEKSNetworkingPolicy",
        )
    ),
    Finding(
        f"{KUBECTL_HANDLER}/ServiceRole",
        f"AwsSolutions-IAM4[{_managed_policy('AmazonEC2ContainerRegistryReadOnly')}]",
        "Read-only pulls from ECR, which the kubectl handler uses for Helm charts stored there.",
    ),
    *(
        Finding(
            f"{path}/ServiceRole",
            f"AwsSolutions-IAM4[{_managed_policy(policy)}]",
            f"The CDK's kubectl custom resource functions run in the VPC and log: {policy} is the minimal "
            "AWS-maintained policy for that.",
        )
        for path in CDK_PROVIDER_FUNCTIONS
        for policy in ("service-role/AWSLambdaBasicExecutionRole", "service-role/AWSLambdaVPCAccessExecutionRole")
    ),
    Finding(
        f"{LOG_RETENTION}/ServiceRole",
        f"AwsSolutions-IAM4[{_managed_policy('service-role/AWSLambdaBasicExecutionRole')}]",
        "aws-cdk-lib's log retention function writes its own logs: the minimal AWS-maintained policy for that.",
    ),
    Finding(
        f"{LOG_RETENTION}/ServiceRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::*]",
        "aws-cdk-lib's log retention function (one per stack, for any log group of it) may only set or "
        "remove retention policies; it creates or adopts the control plane's group by its name.",
    ),
    Finding(
        f"{KUBECTL_HANDLER}/Resource",
        "AwsSolutions-L1",
        "aws-cdk-lib pins the kubectl handler's runtime to the Python version its code and layers are "
        "built and tested for; it moves with library upgrades.",
    ),
)

CHECKOV_FINDINGS = (
    Finding(
        f"{SMOKE_TEST}/PolicyDocument",
        "CKV_AWS_111",
        "CodeBuild's VPC access: creating and deleting the build's network interface, which the EC2 API does "
        "not let a policy narrow to a resource.",
    ),
    Finding(
        ACCESS_LOGS_BUCKET,
        "CKV_AWS_18",
        "This bucket receives the model bucket's server access logs; logging it into itself would loop.",
    ),
    *(
        Finding(path, check, reason)
        for path in (*CDK_PROVIDER_FUNCTIONS, RESTRICT_DEFAULT_SG_HANDLER, LOG_RETENTION)
        for check, reason in (
            (
                "CKV_AWS_116",
                "Custom resource function, invoked synchronously by CloudFormation, which retries and reports "
                "failures itself: a dead-letter queue would never receive anything.",
            ),
            (
                "CKV_AWS_115",
                "Custom resource function, invoked only by CloudFormation during deployments: concurrency is "
                "bounded by the stack, and reserving it would take from the account's pool.",
            ),
            (
                "CKV_AWS_173",
                "The environment holds no secrets (a region-endpoint switch, a function ARN); Lambda "
                "encrypts it at rest with an AWS key.",
            ),
        )
        # Their functions have no environment to encrypt.
        if check != "CKV_AWS_173" or path not in (RESTRICT_DEFAULT_SG_HANDLER, LOG_RETENTION)
    ),
    Finding(
        RESTRICT_DEFAULT_SG_HANDLER,
        "CKV_AWS_117",
        "Runs once per deployment to empty the default security group; it calls only the EC2 API and "
        "needs no VPC access.",
    ),
    Finding(
        LOG_RETENTION,
        "CKV_AWS_117",
        "Runs once per deployment to set the control plane log group's retention; it calls only the "
        "CloudWatch Logs API and needs no VPC access.",
    ),
    Finding(
        f"{LOG_RETENTION}/ServiceRole/DefaultPolicy",
        "CKV_AWS_111",
        "aws-cdk-lib's log retention function sets and removes retention policies of the stack's log groups, "
        "whose names it only learns from each custom resource.",
    ),
    *(
        Finding(
            f"{path}/LogGroup",
            "CKV_AWS_158",
            "Logs of a CDK custom resource function: request metadata only, no secrets; encrypted at rest "
            "by CloudWatch Logs with an AWS key.",
        )
        for path in CDK_PROVIDER_FUNCTIONS
    ),
)


# The CloudWatch data source function of a stage with observability (stacks/observability.py).
OBSERVABILITY_CHECKOV_FINDINGS = tuple(
    Finding(PROMETHEUS_DATA_SOURCE, check, reason)
    for check, reason in (
        (
            "CKV_AWS_116",
            "CloudWatch invokes the data source synchronously and shows its errors in the widget or the alarm: "
            "a dead-letter queue would never receive anything.",
        ),
        (
            "CKV_AWS_115",
            "Reserving concurrency would take from the account's pool, and fail the deploy in accounts whose "
            "whole pool is 10; dashboards and one query a minute per alarm are its only callers.",
        ),
        (
            "CKV_AWS_117",
            "It calls only the Prometheus workspace's public AWS endpoint, signed with its role: no VPC access.",
        ),
        ("CKV_AWS_173", "The environment holds the workspace's URL, no secret; Lambda encrypts it with an AWS key."),
    )
)


def checkov_findings(settings: StageSettings) -> tuple[Finding, ...]:
    """The stage's accepted checkov findings."""
    return (*CHECKOV_FINDINGS, *(OBSERVABILITY_CHECKOV_FINDINGS if settings.observability.enabled else ()))


def acknowledge_reviewed_findings(stage: Stage, settings: StageSettings) -> None:
    """Acknowledge the findings above on the stage's constructs."""
    model_store = cast(Stack, _construct_at(stage, "ModelStore"))
    findings = nag_findings(settings, model_store.stack_name, lambda path: _logical_id_at(stage, path))
    _acknowledge(stage, findings, checkov_findings(settings))


def _import_folders(model: ModelSettings, bucket_export: str) -> list[tuple[str, str]]:
    """The bucket folders a model's weights import writes, as cdk-nag names their objects."""
    return [
        (f"s3://<model bucket>/{folder}", f"Resource::{bucket_export}/{folder}") for folder in import_folders(model)
    ]


def _acknowledge(scope: Stage | Stack, nag: list[Finding] | tuple[Finding, ...], checkov: tuple[Finding, ...]) -> None:
    for finding in nag:
        Validations.of(_construct_at(scope, finding.path)).acknowledge(
            Acknowledgment(id=finding.rule, reason=finding.reason)
        )
    skips: dict[str, list[dict[str, str]]] = defaultdict(list)
    for finding in checkov:
        skips[finding.path].append({"id": finding.rule, "comment": finding.reason})
    for path, checks in skips.items():
        construct = _construct_at(scope, path)
        # An L2 construct stands for its CloudFormation resource, its default child.
        resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
        if not isinstance(resource, CfnResource):
            raise TypeError(f"{path} is not a CloudFormation resource; checkov skips go on one")
        resource.add_metadata("checkov", {"skip": checks})


def _logical_id_at(scope: Stage | Stack, path: str) -> str:
    """The logical id of the CloudFormation element at a path (an L2 construct's default child)."""
    construct = _construct_at(scope, path)
    element = construct if isinstance(construct, CfnElement) else construct.node.default_child
    if not isinstance(element, CfnElement):
        raise TypeError(f"{path} is not a CloudFormation element")
    return Stack.of(element).get_logical_id(element)


def _construct_at(stage: Stage | Stack, path: str) -> IConstruct:
    construct: IConstruct = stage
    for part in path.split("/"):
        construct = construct.node.find_child(part)
    return construct


# --- The pipeline stack: what CDK Pipelines generates ---

ARTIFACT_ACTIONS = ("s3:GetObject*", "s3:GetBucket*", "s3:List*")
ARTIFACT_WRITE_ACTIONS = ("s3:DeleteObject*", "s3:Abort*")
ARTIFACT_KEY_ACTIONS = ("kms:GenerateDataKey*", "kms:ReEncrypt*")


AUTO_APPROVE = "Pipeline/PipelinesSecurityCheck/CDKPipelinesAutoApprove"
ARTIFACTS_BUCKET = "Pipeline/Pipeline/ArtifactsBucket"
SYNTH_CACHE = "SynthCache"

PIPELINE_CHECKOV_FINDINGS = (
    Finding(
        SYNTH_CACHE,
        "CKV_AWS_18",
        "Download caches of public packages that only the synth step reads and writes; CloudTrail records "
        "their API access.",
    ),
    Finding(
        SYNTH_CACHE,
        "CKV_AWS_21",
        "A cache the next run rebuilds and that expires after 30 days: versions would keep copies nothing reads.",
    ),
    Finding(
        ARTIFACTS_BUCKET,
        "CKV_AWS_18",
        "Pipeline artifacts: encrypted with the pipeline's rotating key and reachable only by the pipeline's "
        "roles; CloudTrail records their API access.",
    ),
    Finding(
        ARTIFACTS_BUCKET,
        "CKV_AWS_21",
        "Each pipeline run writes its artifacts under new keys; versions would keep copies nothing reads.",
    ),
    Finding(
        "Pipeline/Assets/FileRole/DefaultPolicy",
        "CKV_AWS_111",
        "Asset publishing assumes the target accounts' CDK file-publishing roles, named only at run time.",
    ),
    *(
        Finding(AUTO_APPROVE, check, reason)
        for check, reason in (
            ("CKV_AWS_116", "Invoked synchronously by the pipeline's IAM check, which reports its failures itself."),
            (
                "CKV_AWS_115",
                "Runs once per stage deployment; reserving concurrency would take from the account's pool.",
            ),
            ("CKV_AWS_117", "Calls only the CodePipeline API to approve its own check; it needs no VPC access."),
        )
    ),
    Finding(
        f"{AUTO_APPROVE}/LogGroup",
        "CKV_AWS_158",
        "Logs of the auto-approve function: approval decisions only, no secrets; encrypted at rest by "
        "CloudWatch Logs with an AWS key.",
    ),
)


# The CodeBuild steps the pipeline runs around each stage (stacks/pipeline.py): the plan before, the smoke test after.
STAGE_STEPS = ("Plan", "SmokeTest")


def acknowledge_pipeline_findings(stack: Stack, pipeline: pipelines.CodePipeline, stage_names: list[str]) -> None:
    """Acknowledge the findings on what CDK Pipelines generates (call after pipeline.build_pipeline())."""
    _acknowledge(stack, pipeline_nag_findings(stack, pipeline, stage_names), PIPELINE_CHECKOV_FINDINGS)


def pipeline_nag_findings(stack: Stack, pipeline: pipelines.CodePipeline, stage_names: list[str]) -> list[Finding]:
    """CDK Pipelines' grants: on the artifact bucket and each project's logs, then its own roles' wildcards."""
    return [*_pipeline_artifact_findings(stack, pipeline, stage_names), *_pipeline_role_findings(stack)]


def _pipeline_artifact_findings(
    stack: Stack, pipeline: pipelines.CodePipeline, stage_names: list[str]
) -> list[Finding]:
    """Each role's grant on the pipeline's artifact bucket (and key), and each CodeBuild project's on its logs."""

    def logical_id(path: str) -> str:
        return _logical_id_at(stack, path)

    bucket = logical_id("Pipeline/Pipeline/ArtifactsBucket")
    region, account = stack.region, stack.account
    artifact_reason = (
        "CDK Pipelines' grant on the pipeline's own artifact bucket and its key: object-level actions on that one "
        "bucket, which the pipeline's steps read and write."
    )

    def artifact_rules(*, write: bool, key: bool) -> list[str]:
        actions = (
            *ARTIFACT_ACTIONS,
            *(ARTIFACT_WRITE_ACTIONS if write else ()),
            *(ARTIFACT_KEY_ACTIONS if key else ()),
        )
        return [
            *(f"AwsSolutions-IAM5[Action::{action}]" for action in actions),
            f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]",
        ]

    def project_rules(project_path: str) -> list[Finding]:
        return [
            Finding(
                f"{project_path}/Role/DefaultPolicy",
                f"AwsSolutions-IAM5[{resource}]",
                f"CodeBuild writes this project's {what} under names it derives from the project; aws-cdk-lib "
                "scopes the grant to this project's prefix.",
            )
            for what, resource in _codebuild_project_resources(region, account, logical_id(project_path))
        ]

    roles_with_artifacts = {
        "Pipeline/Pipeline/Role/DefaultPolicy": artifact_rules(write=True, key=True),
        f"Pipeline/Pipeline/Source/{_source_action_id(pipeline)}/CodePipelineActionRole/DefaultPolicy": artifact_rules(
            write=True, key=True
        ),
        "Pipeline/Pipeline/Build/Synth/CdkBuildProject/Role/DefaultPolicy": artifact_rules(write=True, key=True),
        "Pipeline/UpdatePipeline/SelfMutation/Role/DefaultPolicy": artifact_rules(write=False, key=True),
        "Pipeline/PipelinesSecurityCheck/CDKSecurityCheck/Role/DefaultPolicy": artifact_rules(write=False, key=True),
        "Pipeline/Assets/FileRole/DefaultPolicy": artifact_rules(write=False, key=False),
        **{
            f"Pipeline/Pipeline/{name}/{step}/{step}/Role/DefaultPolicy": artifact_rules(write=False, key=True)
            for name in stage_names
            for step in STAGE_STEPS
        },
    }
    findings = [Finding(path, rule, artifact_reason) for path, rules in roles_with_artifacts.items() for rule in rules]
    for project in (
        "Pipeline/Pipeline/Build/Synth/CdkBuildProject",
        "Pipeline/UpdatePipeline/SelfMutation",
        "Pipeline/PipelinesSecurityCheck/CDKSecurityCheck",
        *(f"Pipeline/Pipeline/{name}/{step}/{step}" for name in stage_names for step in STAGE_STEPS),
    ):
        findings += project_rules(project)
    return findings


def _pipeline_role_findings(stack: Stack) -> list[Finding]:
    """The wildcards of CDK Pipelines' own roles: self-mutation, the IAM check, asset publishing, the caches."""

    def logical_id(path: str) -> str:
        return _logical_id_at(stack, path)

    region, account = stack.region, stack.account
    self_mutation = "Pipeline/UpdatePipeline/SelfMutation/Role/DefaultPolicy"
    security_check = "Pipeline/PipelinesSecurityCheck/CDKSecurityCheck/Role/DefaultPolicy"
    auto_approve = AUTO_APPROVE
    file_role = "Pipeline/Assets/FileRole/DefaultPolicy"
    return [
        Finding(
            self_mutation,
            f"AwsSolutions-IAM5[Resource::arn:*:iam::{account}:role/*]",
            "Self-mutation assumes the CDK bootstrap roles of the pipeline's account (cdk-*), whose names carry "
            "the bootstrap qualifier; CDK Pipelines grants the pattern and conditions it on the bootstrap role tag.",
        ),
        Finding(
            self_mutation,
            "AwsSolutions-IAM5[Resource::*]",
            "Self-mutation reads the pipeline's CloudFormation stacks and bootstrap versions by name at run time.",
        ),
        Finding(
            security_check,
            "AwsSolutions-IAM5[Resource::*]",
            "The IAM broadening check diffs every stage's stacks (cdk diff --security-only) before its deployment.",
        ),
        Finding(
            security_check,
            f"AwsSolutions-IAM5[Resource::<{logical_id(auto_approve)}.Arn>:*]",
            "The IAM broadening check invokes the versions of its own auto-approve function.",
        ),
        Finding(
            f"{auto_approve}/ServiceRole/DefaultPolicy",
            "AwsSolutions-IAM5[Resource::*]",
            "The auto-approve function approves the IAM broadening check of this pipeline when a diff broadens "
            "nothing; CodePipeline's PutApprovalResult names the pipeline only at run time.",
        ),
        Finding(
            f"{auto_approve}/ServiceRole",
            f"AwsSolutions-IAM4[{_managed_policy('service-role/AWSLambdaBasicExecutionRole')}]",
            "The auto-approve function only writes its own logs: the minimal AWS-maintained policy for that.",
        ),
        Finding(
            file_role,
            "AwsSolutions-IAM5[Resource::*]",
            "Asset publishing assumes the target accounts' CDK file-publishing roles, named only at run time.",
        ),
        *(
            Finding(
                file_role,
                f"AwsSolutions-IAM5[{resource}]",
                f"Asset publishing projects are created per asset by CDK Pipelines; their {what} share this prefix.",
            )
            for what, resource in (
                ("logs", f"Resource::arn:aws:logs:{region}:{account}:log-group:/aws/codebuild/*"),
                ("test reports", f"Resource::arn:aws:codebuild:{region}:{account}:report-group/*"),
            )
        ),
        Finding(
            ARTIFACTS_BUCKET,
            "AwsSolutions-S1",
            "Pipeline artifacts: encrypted with the pipeline's rotating key and reachable only by the pipeline's "
            "roles; CloudTrail records their API access.",
        ),
        Finding(
            SYNTH_CACHE,
            "AwsSolutions-S1",
            "Download caches of public packages (PyPI, npm) that only the synth step reads and writes; "
            "CloudTrail records their API access.",
        ),
        Finding(
            "Pipeline/Pipeline/Build/Synth/CdkBuildProject/Role/DefaultPolicy",
            f"AwsSolutions-IAM5[Resource::<{logical_id(SYNTH_CACHE)}.Arn>/*]",
            "CodeBuild reads and writes the synth step's cache under keys it names itself, in that one bucket.",
        ),
    ]


def _source_action_id(pipeline: pipelines.CodePipeline) -> str:
    (source_stage,) = [stage for stage in pipeline.pipeline.stages if stage.stage_name == "Source"]
    (action,) = source_stage.actions
    return action.action_properties.action_name
