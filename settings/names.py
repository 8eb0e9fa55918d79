"""Every name derived from the settings, each built beside the limit of the system that receives it.

A name too long for Kubernetes, IAM or CodeBuild passes `cdk synth` and fails only in the deploy,
so settings.schema refuses a model or cluster name that leaves one of them no room: the largest
allowed length follows from MODEL_NAME_LIMITS and CLUSTER_NAME_LIMITS, whatever the names become.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal, NamedTuple


class NameLimit(NamedTuple):
    """A name derived from one setting, and the most characters the system receiving it accepts.

    `derive` puts a fixed prefix and suffix around the setting, so the setting may be at most
    `limit - len(derive(""))` characters long.
    """

    what: str
    derive: Callable[[str], str]
    limit: int


# --- from a model's name ---

# Namespace names are DNS-1123 labels: at most 63 characters (Kubernetes docs, "Namespaces";
# apimachinery validation.DNS1123LabelMaxLength).
NAMESPACE_MAX = 63


def namespace(model_name: str) -> str:
    """Each model runs in a namespace of its own, named after it."""
    return model_name


# The namespaces a stage makes for its own parts: KEDA's release (stacks/serving.py), the node rotation
# (charts/node_rotation.py), and the CloudWatch add-on's, which the add-on names itself (Amazon CloudWatch
# User Guide, "Install the CloudWatch agent with the Amazon CloudWatch Observability EKS add-on").
KEDA_NAMESPACE = "keda"
NODE_ROTATION_NAMESPACE = "gpu-node-rotation"
CLOUDWATCH_NAMESPACE = "amazon-cloudwatch"
PROJECT_NAMESPACES = (KEDA_NAMESPACE, NODE_ROTATION_NAMESPACE, CLOUDWATCH_NAMESPACE)


def is_reserved_namespace(name: str) -> bool:
    """`default` exists in every cluster, and `kube-` is reserved for Kubernetes' own namespaces
    (kube-system, kube-public, kube-node-lease; Kubernetes docs, "Namespaces")."""
    return name == "default" or name.startswith("kube-")


# Label values: at most 63 characters (Kubernetes docs, "Labels and Selectors", syntax and character set).
LABEL_VALUE_MAX = 63


def app_label(model_name: str) -> str:
    """The `app` label that selects a model's pods, as in `kubectl get pods -l app=...`."""
    return f"vllm-{model_name}"


# A Job's name is also its pods' `job-name` label value: at most LABEL_VALUE_MAX characters
# (kubernetes/kubernetes pkg/apis/batch/validation/validation.go, ValidateJob).
# The import Job's name ends in 8 hex digits of what it imports (charts.model_loader.import_key).
IMPORT_KEY_EXAMPLE = "0123abcd"


def import_job_name(model_name: str, key: str) -> str:
    """The Job that brings one revision of a model's weights into the model store, once."""
    return f"import-{model_name}-{key}"


# PersistentVolume names are DNS-1123 subdomains: at most 253 characters (Kubernetes docs,
# "Object Names and IDs").
PERSISTENT_VOLUME_NAME_MAX = 253


def weights_volume_name(model_name: str) -> str:
    """The cluster-scoped volume onto the file system that a model's namespace claims."""
    return f"model-weights-{model_name}"


def output_id(model_name: str) -> str:
    """The CamelCase prefix of a model's stack output ids, e.g. GptOss20b for gpt-oss-20b.

    CloudFormation logical ids: alphanumeric, at most 255 characters (CloudFormation User Guide,
    "Outputs"); a model name of at most NAMESPACE_MAX characters leaves plenty of room, so this
    is not among MODEL_NAME_LIMITS. Different names may give the same id (qwen3-8b and qwen38b):
    settings.schema refuses that.
    """
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", model_name))


# Service names are DNS-1035 labels: a letter first, at most 63 characters (Kubernetes docs, "Service";
# apimachinery validation.IsDNS1035Label). A model's name may start with a digit, so the picker's starts with "picker-".
SERVICE_NAME_MAX = 63


def picker_name(model_name: str) -> str:
    """The model's endpoint picker behind the gateway: its Deployment, Service, account and labels
    (charts/gateway_model.py)."""
    return f"picker-{model_name}"


# In order: where two limits leave the same room, the first names it.
MODEL_NAME_LIMITS = (
    NameLimit("namespace", namespace, NAMESPACE_MAX),
    NameLimit("app label", app_label, LABEL_VALUE_MAX),
    NameLimit(
        "weights import Job name (its pods' job-name label)",
        lambda name: import_job_name(name, IMPORT_KEY_EXAMPLE),
        LABEL_VALUE_MAX,
    ),
    NameLimit("weights PersistentVolume name", weights_volume_name, PERSISTENT_VOLUME_NAME_MAX),
    NameLimit("endpoint picker Service name", picker_name, SERVICE_NAME_MAX),
)


# --- from the cluster's name ---

# CodeBuild project names: 2 to 255 characters matching [A-Za-z0-9][A-Za-z0-9\-_]{1,254}
# (CodeBuild API Reference, CreateProject: name).
CODEBUILD_PROJECT_NAME_MAX = 255


def smoke_test_project_name(cluster_name: str) -> str:
    """The CodeBuild project that runs the post-deploy smoke test."""
    return f"{cluster_name}-smoke-test"


# IAM role names: at most 64 characters (IAM User Guide, "IAM and AWS STS quotas").
IAM_ROLE_NAME_MAX = 64


def smoke_test_trigger_role_name(cluster_name: str) -> str:
    """The role the stage's (or the pipeline's) account assumes to start the smoke test."""
    return f"{cluster_name}-smoke-test-trigger"


def smoke_test_role_name(cluster_name: str) -> str:
    """The smoke test's own role: named, so that each model's stack can let it read that model's API keys."""
    return f"{cluster_name}-smoke-test"


def smoke_test_checks_path(cluster_name: str) -> str:
    """The SSM Parameter Store path under which each model's stack stores its smoke test (/<cluster>/smoke-test)."""
    return f"/{cluster_name}/smoke-test"


# Lambda function names: 1 to 64 of [a-zA-Z0-9_-] (Lambda API Reference, CreateFunction: FunctionName;
# the AWS::Lambda::Function resource schema's pattern).
LAMBDA_FUNCTION_NAME_MAX = 64


def prometheus_data_source_name(cluster_name: str) -> str:
    """The CloudWatch data source function that reads the stage's Prometheus workspace: metric math calls
    it by this name, LAMBDA("<name>", "<PromQL>") (stacks/observability.py)."""
    return f"{cluster_name}-prometheus"


# CloudWatch dashboard names: at most 255 of [A-Za-z0-9_-] (CloudWatch API Reference, PutDashboard).
DASHBOARD_NAME_MAX = 255


def dashboard_name(cluster_name: str) -> str:
    """The stage's CloudWatch dashboard."""
    return f"{cluster_name}-serving"


def model_dashboard_name(cluster_name: str, model_name: str) -> str:
    """A model's CloudWatch dashboard; "-model-" keeps it apart from the stage's (<cluster>-serving) whatever the
    model's name. A cluster name and a model name together stay far below DASHBOARD_NAME_MAX."""
    return f"{cluster_name}-model-{model_name}"


def eks_log_group_prefix(cluster_name: str) -> str:
    """The prefix of the log groups EKS names after a cluster (EKS User Guide, "Send control plane logs to
    CloudWatch Logs": /aws/eks/<cluster>/cluster)."""
    return f"/aws/eks/{cluster_name}/"


def control_plane_log_group(cluster_name: str) -> str:
    """Where EKS writes the control plane's logs: EKS names it, so the stacks create it first."""
    return f"{eks_log_group_prefix(cluster_name)}cluster"


def container_insights_log_group_prefix(cluster_name: str) -> str:
    """The prefix of the log groups Container Insights names after a cluster (CloudWatch User Guide,
    "Container Insights performance log events")."""
    return f"/aws/containerinsights/{cluster_name}/"


def container_insights_log_group(cluster_name: str) -> str:
    """Where the CloudWatch agent writes Container Insights' records: the agent names it, so the stacks
    create it first."""
    return f"{container_insights_log_group_prefix(cluster_name)}performance"


# The log groups the CloudWatch add-on's Fluent Bit writes containers' logs (application), the nodes' kubelet and
# container runtime logs (dataplane) and their system logs (host) to (aws-observability/helm-charts,
# charts/amazon-cloudwatch-observability/values.yaml, containerLogs.fluentBit.config: log_group_name).
CONTAINER_LOG_GROUPS = ("application", "dataplane", "host")


def container_log_groups(cluster_name: str) -> tuple[str, ...]:
    """The container log groups of a cluster: Fluent Bit names them, so the stacks create them first."""
    return tuple(f"{container_insights_log_group_prefix(cluster_name)}{group}" for group in CONTAINER_LOG_GROUPS)


def cloudwatch_log_groups(cluster_name: str, *, insights: bool, container_logs: bool) -> tuple[str, ...]:
    """The log groups the CloudWatch add-on writes: Container Insights' records, and the containers' logs."""
    return (
        *((container_insights_log_group(cluster_name),) if insights else ()),
        *(container_log_groups(cluster_name) if container_logs else ()),
    )


CLUSTER_NAME_LIMITS = (
    NameLimit("CodeBuild project name", smoke_test_project_name, CODEBUILD_PROJECT_NAME_MAX),
    NameLimit("IAM role name", smoke_test_trigger_role_name, IAM_ROLE_NAME_MAX),
    NameLimit("IAM role name", smoke_test_role_name, IAM_ROLE_NAME_MAX),
    NameLimit("Lambda function name", prometheus_data_source_name, LAMBDA_FUNCTION_NAME_MAX),
    NameLimit("CloudWatch dashboard name", dashboard_name, DASHBOARD_NAME_MAX),
)


# --- from the stage's name ---

# ECR pull-through cache rules and repository creation templates: a prefix of 2 to 30 characters
# (AWS::ECR::PullThroughCacheRule EcrRepositoryPrefix, in the CloudFormation resource schema).
ECR_PREFIX_MAX = 30
# The registry prefix a stage's cache gets unless its settings give another (RegistrySettings.cache_prefix).
DEFAULT_CACHE_PREFIX = "ecr-public"


# Where a stage's cache keeps Docker Hub's images (docker-hub/<stage>): as long as the default prefix, so the stage
# names that fit one fit the other.
DOCKER_HUB_CACHE_PREFIX = "docker-hub"
# registry.k8s.io's images (the gateway's endpoint picker), which ECR caches without credentials.
KUBERNETES_CACHE_PREFIX = "k8s"


def image_cache_prefix(cache_prefix: str, stage: str) -> str:
    """Where a stage's pull-through cache keeps its repositories: one prefix per stage, so that stages can share
    an account and region (a cache rule and a creation template are unique per prefix in a registry)."""
    return f"{cache_prefix}/{stage}"


# CloudFormation stack names: at most 128 characters (CloudFormation User Guide, "Quotas"). The longest
# stack of a stage is <stage>-ModelStore (stacks/stage.py).
STACK_NAME_MAX = 128


def stack_name(stage: str, stack: str = "ModelStore") -> str:
    return f"{stage}-{stack}"


STAGE_NAME_LIMITS = (
    NameLimit(
        "ECR cache prefix (with the default registry.cache_prefix)",
        lambda stage: image_cache_prefix(DEFAULT_CACHE_PREFIX, stage),
        ECR_PREFIX_MAX,
    ),
    NameLimit("stack name", stack_name, STACK_NAME_MAX),
)


# --- names no two stages in one account (or region) may share ---


class FixedName(NamedTuple):
    """A physical name the stacks set from a setting, and where AWS keeps it unique: in the account (IAM) or in
    the account's region (everything regional)."""

    what: str
    derive: Callable[[str], str]
    unique_in: Literal["account", "region"]


def cdk_assets_bucket(account: str, region: str) -> str:
    """The CDK bootstrap's assets bucket of an account and region, with the default qualifier (the CDK CLI's
    bootstrap-template.yaml, StagingBucket: cdk-${Qualifier}-assets-${AWS::AccountId}-${AWS::Region})."""
    return f"cdk-hnb659fds-assets-{account}-{region}"


# The EKS add-ons the Cluster stack installs (stacks/cluster.py), named here for the settings (cluster.addon_versions)
# and `make plan`, which read no CDK. The FSx CSI driver, always; the AWS Secrets and Configuration Provider, which
# installs the Secrets Store CSI driver with it (EKS User Guide, "AWS add-ons": available on Auto Mode; its chart's
# secrets-store-csi-driver.install), for API keys; the Amazon CloudWatch Observability add-on (CloudWatch User Guide,
# "Install the CloudWatch agent with the Amazon CloudWatch Observability EKS add-on"), for container metrics or logs.
FSX_CSI_ADDON: Final = "aws-fsx-csi-driver"
SECRETS_STORE_ADDON: Final = "aws-secrets-store-csi-driver-provider"
CLOUDWATCH_ADDON: Final = "amazon-cloudwatch-observability"
EksAddon = Literal["aws-fsx-csi-driver", "aws-secrets-store-csi-driver-provider", "amazon-cloudwatch-observability"]


def container_log_group_of(group: str) -> Callable[[str], str]:
    """The name of one of the container log groups, from the cluster's name."""
    return lambda cluster: f"{container_insights_log_group_prefix(cluster)}{group}"


def model_stack_id(model_name: str) -> str:
    """The id of a model's stack in its stage: Model-<model>, deployed as <stage>-Model-<model>."""
    return f"Model-{model_name}"


# Everything the stacks name from cluster.name; the rest of a stage's physical names are generated by
# CloudFormation or hold the stage's name (stacks, the cache prefix). IAM names are global to an account
# (IAM User Guide, "IAM identifiers": names must be unique within the account); the others are per region.
CLUSTER_FIXED_NAMES = (
    FixedName("EKS cluster", lambda cluster: cluster, "region"),
    FixedName("control plane log group", control_plane_log_group, "region"),
    FixedName("Container Insights log group", container_insights_log_group, "region"),
    *(
        FixedName(
            f"container log group ({group})",
            container_log_group_of(group),
            "region",
        )
        for group in CONTAINER_LOG_GROUPS
    ),
    FixedName("smoke test CodeBuild project", smoke_test_project_name, "region"),
    FixedName("smoke test trigger IAM role", smoke_test_trigger_role_name, "account"),
    FixedName("smoke test IAM role", smoke_test_role_name, "account"),
    FixedName("Prometheus data source Lambda function", prometheus_data_source_name, "region"),
    FixedName("CloudWatch dashboard", dashboard_name, "region"),
)
