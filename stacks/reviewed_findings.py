"""Every scanner finding this project accepts, with the reason a reviewer gets: the one place for them.

cdk-nag findings are acknowledged through CDK's Validations API on the one construct they
concern, narrowed to the finding (`Rule[Finding]`) where the rule reports several. checkov's
CloudFormation findings are skipped in the template metadata of the one resource, where
checkov reads them. Paths are construct paths below a stage; a path that no longer exists
(after a library upgrade, say) stops the synth instead of silently acknowledging nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from aws_cdk import Acknowledgment, CfnResource, Stage, Validations
from constructs import IConstruct

from settings.model import StageSettings

CLUSTER_ROLE = "Cluster/Cluster/Role"
NODE_ROLE = "Cluster/NodeRole"
FSX_CSI_ROLE = "Cluster/FsxCsiDriverRole"
ACCESS_LOGS_BUCKET = "ModelStore/AccessLogsBucket"
KUBECTL_HANDLER = "Cluster/Cluster/KubectlProvider/Handler"
KUBECTL_FRAMEWORK = "Cluster/Cluster/KubectlProvider/Provider/framework-onEvent"
RESTRICT_DEFAULT_SG_HANDLER = "Network/Custom::VpcRestrictDefaultSGCustomResourceProvider/Handler"

# Lambda functions that aws-cdk-lib itself generates to run custom resources at deploy time.
CDK_PROVIDER_FUNCTIONS = (KUBECTL_HANDLER, KUBECTL_FRAMEWORK)


@dataclass(frozen=True)
class Finding:
    path: str
    rule: str
    reason: str


def _managed_policy(name: str) -> str:
    return f"Policy::arn:<AWS::Partition>:iam::aws:policy/{name}"


def _account_resource(service: str, region: str, resource: str) -> str:
    return f"Resource::arn:<AWS::Partition>:{service}:{region}:<AWS::AccountId>:{resource}"


def nag_findings(settings: StageSettings) -> tuple[Finding, ...]:
    """The stage's accepted cdk-nag findings; some name the stage's region and cache prefix."""
    prefix = settings.registry.cache_prefix
    return (
        *_LIBRARY_NAG_FINDINGS,
        *(
            Finding(
                NODE_ROLE,
                f"AwsSolutions-IAM4[{_managed_policy(policy)}]",
                f"{policy} is one of the two AWS-maintained policies the EKS Auto Mode documentation gives "
                "the node role.",
            )
            for policy in ("AmazonEKSWorkerNodeMinimalPolicy", "AmazonEC2ContainerRegistryPullOnly")
        ),
        Finding(
            f"{NODE_ROLE}/DefaultPolicy",
            f"AwsSolutions-IAM5[{_account_resource('ecr', settings.region, f'repository/{prefix}/*')}]",
            "A first pull through the cache creates the image's repository under the cache prefix; the "
            "repositories are not known in advance, so the grant covers that prefix and nothing else.",
        ),
        Finding(
            f"{FSX_CSI_ROLE}/DefaultPolicy",
            f"AwsSolutions-IAM5[{_account_resource('fsx', settings.region, 'file-system/*')}]",
            "Read-only lookup of file systems by the CSI driver; naming the one file system would make the "
            "cluster wait for the model store's creation.",
        ),
    )


# Findings on what aws-cdk-lib generates for the cluster, whatever the settings.
_LIBRARY_NAG_FINDINGS = (
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
    Finding(
        f"{KUBECTL_HANDLER}/ServiceRole",
        "AwsSolutions-IAM4[Policy::{"
        '"Fn::If":["ClusterKubectlProviderHandlerHasEcrPublic69E09706",{"Fn::Join":["",["arn:",'
        '{"Ref":"AWS::Partition"},":iam::aws:policy/AmazonElasticContainerRegistryPublicReadOnly"]]},'
        '{"Ref":"AWS::NoValue"}]}]',
        "Read-only pulls from ECR Public, only in partitions that have it (the condition in the policy ARN).",
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
        f"{KUBECTL_FRAMEWORK}/ServiceRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::<ClusterKubectlProviderHandler2E05C68A.Arn>:*]",
        "The provider framework invokes the kubectl handler's versions and aliases: the wildcard is a "
        "qualifier of that one function's ARN.",
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
        ACCESS_LOGS_BUCKET,
        "CKV_AWS_18",
        "This bucket receives the model bucket's server access logs; logging it into itself would loop.",
    ),
    *(
        Finding(path, check, reason)
        for path in (*CDK_PROVIDER_FUNCTIONS, RESTRICT_DEFAULT_SG_HANDLER)
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
        if (path, check) != (RESTRICT_DEFAULT_SG_HANDLER, "CKV_AWS_173")
    ),
    Finding(
        RESTRICT_DEFAULT_SG_HANDLER,
        "CKV_AWS_117",
        "Runs once per deployment to empty the default security group; it calls only the EC2 API and "
        "needs no VPC access.",
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


def acknowledge_reviewed_findings(stage: Stage, settings: StageSettings) -> None:
    """Acknowledge the findings above on the stage's constructs."""
    for finding in nag_findings(settings):
        Validations.of(_construct_at(stage, finding.path)).acknowledge(
            Acknowledgment(id=finding.rule, reason=finding.reason)
        )
    skips: dict[str, list[dict[str, str]]] = defaultdict(list)
    for finding in CHECKOV_FINDINGS:
        skips[finding.path].append({"id": finding.rule, "comment": finding.reason})
    for path, checks in skips.items():
        construct = _construct_at(stage, path)
        # An L2 construct stands for its CloudFormation resource, its default child.
        resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
        if not isinstance(resource, CfnResource):
            raise TypeError(f"{path} is not a CloudFormation resource; checkov skips go on one")
        resource.add_metadata("checkov", {"skip": checks})


def _construct_at(stage: Stage, path: str) -> IConstruct:
    construct: IConstruct = stage
    for part in path.split("/"):
        construct = construct.node.find_child(part)
    return construct
