"""The settings of one deployment stage: the only input of the stacks and charts.

Every field is typed and checked here, before any construct exists, so a bad value
stops `cdk synth` with one message naming the stage, the field and what is allowed.
Defaults reproduce the GPU inference walkthrough (NodePool `gpu-node-pool`, vLLM serving
openai/gpt-oss-20b); a stage's YAML file only says where it differs.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from settings import names
from settings.lora_slots import missing_widths
from settings.model_facts import KV_DTYPE_BYTES, ModelFacts, catalog
from settings.vllm_profiles import ATTENTION_BACKEND_ENV, VllmProfile, driver_problem, profile_of
from settings.yaml_files import load_yaml

# Each version needs its kubectl layer package in requirements.txt and an entry in
# stacks.cluster.KUBECTL_LAYERS. 1.36 is the newest aws-cdk-lib 2.275 knows; EKS ends
# standard support for 1.34 on 2026-12-02 and for 1.35 on 2027-03-27.
SUPPORTED_KUBERNETES_VERSIONS = ("1.34", "1.35", "1.36")

# CloudWatch Logs accepts only these retention periods (days).
LogRetentionDays = Literal[
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
]
LOG_RETENTION_DAYS = get_args(LogRetentionDays)

# vLLM flags that the model settings own; giving them again in extra_args would be ambiguous.
MANAGED_VLLM_FLAGS = (
    "--model",
    "--port",
    "--host",
    "--gpu-memory-utilization",
    "--tensor-parallel-size",
    "--max-model-len",
    "--served-model-name",
    # LoRA adapters come from models[].adapters.
    "--enable-lora",
    "--lora-modules",
    "--max-lora-rank",
    "--max-loras",
    "--max-cpu-loras",
    # API keys come from a Secrets Manager secret (api_keys_secret), never from the templates.
    "--api-key",
    "--config",
    # Without its statistics vLLM registers no metrics (vllm/v1/engine/async_llm.py:
    # enable_default_loggers=log_stats): the preStop drain (charts/pre_stop_drain.py) and the smoke test's
    # view of a replica's queue read them.
    "--disable-log-stats",
    # A replica's GPUs (`gpus`) all serve tensor parallelism: pipeline or data parallelism would have
    # vLLM ask for a multiple of them, which the pod does not have.
    "--pipeline-parallel-size",
    "--data-parallel-size",
    "--data-parallel-size-local",
    # The drain sets it from the longest request where the version drains by itself (charts/pre_stop_drain.py),
    # and attention_backend below the backend.
    "--shutdown-timeout",
    "--attention-backend",
)
# The short forms vLLM gives the parallel sizes (vllm/engine/arg_utils.py, EngineArgs.add_cli_args).
SHORT_VLLM_FLAGS = {
    "-tp": "--tensor-parallel-size",
    "-pp": "--pipeline-parallel-size",
    "-dp": "--data-parallel-size",
    "-dpl": "--data-parallel-size-local",
}


def vllm_flag(arg: str) -> str | None:
    """The option an argument of `vllm serve` names, as vLLM's parser sees it; None for a value.

    vLLM's parser reads underscores in a long option's name as dashes (FlexibleArgumentParser.parse_args,
    vllm/utils/argparse_utils.py: `--max_model_len` is `--max-model-len`), up to a `.` that addresses a
    field of a JSON option; `=` ends the name, for long and short options alike.
    """
    if arg.startswith("--") and arg != "--":
        return arg.split("=", 1)[0].split(".", 1)[0].replace("_", "-")
    if re.match(r"-[A-Za-z]", arg):
        return arg.split("=", 1)[0]
    return None


def managed_vllm_flag(arg: str) -> str | None:
    """The managed flag (MANAGED_VLLM_FLAGS) an argument may set, if any. argparse takes an option's
    unambiguous prefix for the whole option, long (`--max-model`) or short (`-t` for `-tp`): vLLM's parser
    leaves allow_abbrev on. A prefix of several options is refused too, as vLLM would refuse it."""
    flag = vllm_flag(arg)
    if flag is None:
        return None
    if flag.startswith("--"):
        return next((managed for managed in MANAGED_VLLM_FLAGS if managed.startswith(flag)), None)
    short = next((alias for alias in SHORT_VLLM_FLAGS if alias.startswith(flag)), None)
    return SHORT_VLLM_FLAGS[short] if short else None


def vllm_option(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    """The value extra_args give a long option of `vllm serve` (`--flag=value` or `--flag value`, in any spelling
    vLLM reads), or None."""
    for index, arg in enumerate(args):
        if vllm_flag(arg) == flag:
            if "=" in arg:
                return arg.split("=", 1)[1]
            return args[index + 1] if index + 1 < len(args) else None
    return None


# Lower-case letters, digits and '-', starting and ending with a letter or digit.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Service's name is a DNS-1035 label: it starts with a letter (Kubernetes pkg/apis/core/validation,
# ValidateServiceName = NameIsDNS1035Label; apimachinery IsDNS1035Label).
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
ServiceName = Annotated[
    str,
    StringConstraints(max_length=63, pattern=DNS_1035_LABEL_PATTERN),
    Field(
        description="a DNS-1035 label: lower-case letters, digits and '-', starting with a letter, "
        "at most 63 characters"
    ),
]
# EC2's capacity reservation ids (On-Demand Capacity Reservations and Capacity Blocks alike); the
# NodeClass accepts ^cr-[0-9a-z]+$ (karpenter-provider-aws, karpenter.k8s.aws_ec2nodeclasses.yaml).
RESERVATION_ID_PATTERN = r"^cr-[0-9a-f]{17}$"
DnsLabel = Annotated[
    str,
    StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN),
    Field(description="a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters"),
]

# Kubernetes' binary units (a size such as "24Gi") and the bytes of each.
BINARY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
BinarySize = Annotated[
    str,
    StringConstraints(pattern=rf"^[1-9][0-9]*({'|'.join(BINARY_UNITS)})$"),
    Field(description=f"a size such as 512Mi or 24Gi (units {', '.join(BINARY_UNITS)})"),
]


def size_bytes(size: str) -> int:
    """The bytes of a BinarySize: 1024 for "1Ki"."""
    return int(size[:-2]) * BINARY_UNITS[size[-2:]]


# An EKS add-on version as `aws eks describe-addon-versions` lists them and `--addon-version` takes them, such as
# v1.19.0-eksbuild.1 (EKS User Guide, "Update an Amazon EKS add-on" and the networking add-ons' create-addon examples).
AddonVersion = Annotated[
    str,
    StringConstraints(pattern=r"^v[0-9]+\.[0-9]+\.[0-9]+-eksbuild\.[0-9]+$"),
    Field(description="an EKS add-on version such as v1.6.0-eksbuild.1"),
]
KarpenterDuration = Annotated[
    str,
    StringConstraints(pattern=r"^(([0-9]+(s|m|h))+|Never)$"),
    Field(description="a duration such as 10m or 1h30m (units s, m, h), or Never"),
]
# A NodePool's terminationGracePeriod: a duration, never "Never" (karpenter.sh_nodepools.yaml, the field's pattern).
GracePeriod = Annotated[
    str,
    StringConstraints(pattern=r"^([0-9]+(s|m|h))+$"),
    Field(description="a duration such as 1h or 45m (units s, m, h)"),
]
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def as_duration(seconds: int) -> str:
    """A duration Karpenter takes, in whole minutes at least `seconds` long: "2h6m" for 7554."""
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def duration_seconds(duration: str) -> int:
    """The seconds of a KarpenterDuration or GracePeriod other than Never: 5400 for "1h30m"."""
    return sum(int(number) * DURATION_UNITS[unit] for number, unit in re.findall(r"([0-9]+)([smh])", duration))


Region = Annotated[
    str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$"), Field(description="a region such as us-west-2")
]
AccountId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{12}$"),
    Field(description='a 12-digit AWS account id, in quotes: "123456789012"'),
]


def _longest(limits: tuple[names.NameLimit, ...]) -> tuple[int, names.NameLimit]:
    """The most characters a setting may have so that every name derived from it fits, and the
    derived name that sets it (the first of those leaving the least room)."""
    return min(((limit.limit - len(limit.derive("")), limit) for limit in limits), key=lambda pair: pair[0])


MAX_MODEL_NAME_LENGTH = _longest(names.MODEL_NAME_LIMITS)[0]
MAX_STAGE_NAME_LENGTH, _STAGE_NAME_BOUND = _longest(names.STAGE_NAME_LIMITS)
MAX_CLUSTER_NAME_LENGTH = _longest(names.CLUSTER_NAME_LIMITS)[0]


def _fits_derived_names(limits: tuple[names.NameLimit, ...], placeholder: str) -> AfterValidator:
    """Refuses a name that leaves a derived name too long: `cdk synth` passes, the deploy fails."""
    longest, bound = _longest(limits)

    def check(name: str) -> str:
        if len(name) > longest:
            raise ValueError(
                f"{name!r} is {len(name)} characters; at most {longest} fit the {bound.what} "
                f"{bound.derive(placeholder)} ({bound.limit} characters)"
            )
        return name

    return AfterValidator(check)


def _own_namespace(name: str) -> str:
    if names.is_reserved_namespace(name):
        raise ValueError(
            f"{name!r} is a namespace Kubernetes reserves; the model gets a namespace of its own, named after it, "
            "so its name may be neither 'default' nor start with 'kube-'"
        )
    if name in names.PROJECT_NAMESPACES:
        # The model's namespace is created, not adopted: the deploy would stop on one that exists.
        raise ValueError(
            f"{name!r} is a namespace the stage makes for its own parts; the model gets a namespace of its own, "
            f"named after it, so its name may not be any of: {', '.join(names.PROJECT_NAMESPACES)}"
        )
    return name


# Stage names are file names (settings/stages/<stage>.yaml) and prefix the stack names
# (`<stage>-ModelStore`, stacks/stage.py), the stage's ECR cache prefix (`ecr-public/<stage>`) and the
# pipeline's stage ids. Stricter than CDK's stage ids on purpose: those may hold letters, digits, '-', '_'
# and '.', starting with a letter (aws-cdk-lib core/lib/stage.ts), but stack names only letters, digits and
# '-', starting with a letter (CloudFormation User Guide); one lower-case spelling fits both. The length
# leaves every name derived from the stage room (settings.names.STAGE_NAME_LIMITS).
StageName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]*$", max_length=MAX_STAGE_NAME_LENGTH),
    Field(
        description="a name of lower-case letters, digits and '-', starting with a letter, at most "
        f"{MAX_STAGE_NAME_LENGTH} characters (so that the {_STAGE_NAME_BOUND.what} "
        f"{_STAGE_NAME_BOUND.derive('<stage>')} fits its {_STAGE_NAME_BOUND.limit})"
    ),
]


ModelName = Annotated[
    str,
    StringConstraints(pattern=DNS_LABEL_PATTERN),
    _fits_derived_names(names.MODEL_NAME_LIMITS, "<name>"),
    AfterValidator(_own_namespace),
    Field(
        description="a name of lower-case letters, digits and '-', starting and ending with a letter or digit, "
        f"at most {MAX_MODEL_NAME_LENGTH} characters"
    ),
]
ClusterName = Annotated[
    str,
    StringConstraints(pattern=DNS_LABEL_PATTERN),
    _fits_derived_names(names.CLUSTER_NAME_LIMITS, "<cluster>"),
    Field(
        description="a name of lower-case letters, digits and '-', starting and ending with a letter or digit, "
        f"at most {MAX_CLUSTER_NAME_LENGTH} characters"
    ),
]


@functools.cache
def region_zones(region: str) -> tuple[str, ...] | None:
    """The zone names of a region (settings/catalog/regions.yaml); None for a region the table lacks."""
    regions = load_yaml((Path(__file__).parent / "catalog" / "regions.yaml").read_text())["regions"]
    return tuple(regions[region].get("zones", ())) or None if region in regions else None


def docker_hub_path(image: str) -> str | None:
    """The repository path of a Docker Hub image (docker.io/vllm/vllm-openai:tag, or vllm/vllm-openai:tag with no
    registry named: the first part names a registry only when it has a dot or a port, or is localhost, as Docker
    reads a reference), official images under library/; None for an image of another registry."""
    name = image.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if rest and (first in ("docker.io", "registry-1.docker.io", "index.docker.io")):
        name = rest
    elif rest and ("." in first or ":" in first or first == "localhost"):
        return None
    return name if "/" in name.rsplit(":", 1)[0] else f"library/{name}"


def _pinned_image(image: str) -> str:
    """An image reference must name an exact version: a digest, or a tag other than latest."""
    if "@sha256:" in image:
        return image
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        raise ValueError(f"{image!r} is not pinned; give a version tag other than 'latest' or an @sha256 digest")
    return image


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


def _retired(field: str, now: str) -> Any:
    """A validator that refuses a field the settings no longer take, saying what took its place."""

    def refuse(cls: type, data: Any) -> Any:
        if isinstance(data, dict) and field in data:
            raise ValueError(f"{field}: {now}")
        return data

    return model_validator(mode="before")(classmethod(refuse))  # type: ignore[arg-type]


def _repeated(values: tuple[str, ...] | list[str]) -> list[str]:
    return sorted({value for value in values if values.count(value) > 1})


class _Strict(BaseModel):
    """Unknown fields are errors and settings never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSettings(_Strict):
    """The stage's VPC: its range, NAT gateways and flow logs (stacks/network.py)."""

    # The VPC's range.
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.0.0/16")
    nat_gateways: int = Field(default=1, ge=1, description="one is cheaper; one per zone survives a zone's loss")
    # How long the VPC's flow logs are kept.
    flow_log_retention_days: LogRetentionDays = 90


# The least requests per evaluation window an AWS WAF rate-based rule takes.
WAF_MIN_RATE_LIMIT = 10
# The longest HorizontalPodAutoscaler stabilization window Kubernetes accepts (autoscaling/v2).
MAX_STABILIZATION_SECONDS = 3600
# Karpenter's NodePool weights run from 1 to 100 (karpenter.sh_nodepools.yaml): one per pool, 10 apart.
MAX_GPU_POOLS = 10


class RegistrySettings(_Strict):
    """Where nodes pull images from: an in-region ECR pull-through cache of ECR Public, or ECR Public itself."""

    # pull_through_cache: nodes pull through the account's in-region cache; public: straight from public.ecr.aws, as
    # in the walkthrough.
    image_source: Literal["pull_through_cache", "public"] = "pull_through_cache"
    # Images of public.ecr.aws/<path> are pulled as
    # <account>.dkr.ecr.<region>.amazonaws.com/<cache_prefix>/<stage>/<path>: StageSettings.image_cache_prefix.
    cache_prefix: Annotated[
        str,
        StringConstraints(pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=30),
        Field(
            description="a prefix of lower-case letters and digits, in words joined by single '.', '_' or '-', "
            "at most 30 characters"
        ),
    ] = names.DEFAULT_CACHE_PREFIX
    keep_images: int = Field(default=10, ge=1, description="per cached repository; older images expire")
    # Docker Hub through the cache too (an image such as docker.io/vllm/vllm-openai), pulled as
    # <account>.dkr.ecr.<region>.amazonaws.com/docker-hub/<stage>/<path>: ECR signs in to Docker Hub with this secret,
    # which must be named ecr-pullthroughcache/..., be in the stage's account and region, and hold "username" and
    # "accessToken" (ECR User Guide, "Creating a pull through cache rule", "Storing your upstream repository
    # credentials"). Its full ARN, as the rule takes it; the stage reads nothing else of it.
    docker_hub_credential_arn: (
        Annotated[
            str,
            StringConstraints(
                pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:ecr-pullthroughcache/[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$"
            ),
            Field(description="the full ARN of a secret named ecr-pullthroughcache/... (its name, then -XXXXXX)"),
        ]
        | None
    ) = None
    # ECR keeps one registry scanning configuration per account and region, and setting it replaces whatever the
    # account has (PutRegistryScanningConfiguration "creates or updates"): an account on Amazon Inspector's
    # enhanced scanning would silently go back to basic scanning. So a stage sets it only when it takes ownership
    # here: basic scan-on-push of every repository under cache_prefix. Of the stages that may share a registry,
    # one at most (settings.check_shared_registries); `make preflight` says what the account has now.
    owns_scanning_configuration: bool = False

    _scan_on_push_is_now_ownership = _retired(
        "scan_on_push",
        "now owns_scanning_configuration, false unless given: true replaces the account's registry scanning "
        "configuration in the stage's region (an account on Amazon Inspector's enhanced scanning would go back to "
        "basic); give it only where the stage owns that configuration",
    )


# FSx for Lustre PERSISTENT_2: the per-unit throughputs offered (MB/s per TiB of storage), and
# capacities of 1.2 TiB or a multiple of 2.4 TiB (both in GiB).
LustreThroughputPerTib = Literal[125, 250, 500, 1000]
LUSTRE_THROUGHPUTS_PER_TIB = get_args(LustreThroughputPerTib)


class ModelStoreSettings(_Strict):
    """The S3 bucket and FSx for Lustre file system that hold model weights."""

    storage_capacity_gib: int = Field(default=1200, description="1200, or a multiple of 2400")
    # MB/s per TiB of storage: 125, 250, 500 or 1000 (updated in place).
    throughput_per_tib: LustreThroughputPerTib = 250
    # The longest a replica's weight read may take with every replica of its model starting at once, which share
    # the file system's throughput (settings/cold_start.py); a file system that reads them slower is refused, with
    # the capacities and throughputs that would not be. Unset: not checked.
    weight_read_target_seconds: int | None = Field(default=None, ge=1, description="seconds; unset: not checked")
    # Lustre lives in one zone; unset: the stage's first zone.
    availability_zone: str | None = None
    # The bucket (the weights) is retained on stack deletion unless a stage says otherwise (a
    # throwaway test stage, say). The file system is a cache of it and always goes with the stack.
    retain_on_delete: bool = True

    @field_validator("storage_capacity_gib")
    @classmethod
    def _valid_capacity_step(cls, capacity: int) -> int:
        if capacity != 1200 and (capacity <= 0 or capacity % 2400):
            raise ValueError(
                f"{capacity} GiB is not a capacity FSx for Lustre PERSISTENT_2 offers; allowed: 1200, or a multiple "
                "of 2400 (2400, 4800, 7200, ...)"
            )
        return capacity


# gp3 volumes: one MiB/s of throughput needs four provisioned IOPS.
GP3_IOPS_PER_MIB = 4


class NodeDiskSettings(_Strict):
    """The GPU nodes' root volume, where images are unpacked: sized and fast enough for a ~14 GB image."""

    size: BinarySize = "200Gi"
    iops: int = Field(default=10000, ge=3000, le=16000)
    throughput_mib: int = Field(default=1000, ge=125, le=1000, description="MiB/s; Auto Mode's default is 125")

    @model_validator(mode="after")
    def _throughput_within_iops(self) -> NodeDiskSettings:
        # gp3 provisions at most 0.25 MiB/s of throughput per provisioned IOPS (EBS User Guide,
        # "General Purpose SSD volumes"); Auto Mode's NodeClass ephemeralStorage is a gp3 volume.
        if self.throughput_mib * GP3_IOPS_PER_MIB > self.iops:
            raise ValueError(
                f"throughput_mib {self.throughput_mib} needs iops of at least {self.throughput_mib * GP3_IOPS_PER_MIB}"
                f" (gp3 gives at most 0.25 MiB/s per provisioned IOPS); iops {self.iops} allow throughput_mib "
                f"up to {self.iops // GP3_IOPS_PER_MIB}"
            )
        return self


class MetricsSettings(_Strict):
    """Amazon Managed Service for Prometheus: a workspace, a managed scraper of every vLLM replica's
    /metrics, and recording and alerting rules on vLLM's signals (stacks/metrics.py)."""

    # vLLM's metrics in Amazon Managed Service for Prometheus, with recording and alerting rules (docs/operations.md,
    # "Metrics, alerts and autoscaling"); needs the cluster's private endpoint.
    enabled: bool = False
    # AMP managed collectors scrape no more often than every 30 s (AMP User Guide, "Scrape configuration").
    scrape_interval_seconds: int = Field(default=30, ge=30, le=300)
    # Alerts: p95 time to first token, and requests waiting per replica, held for 5 minutes.
    alert_ttft_p95_seconds: float = Field(default=5.0, gt=0)
    # Requests waiting per replica.
    alert_queue_per_replica: float = Field(default=20.0, gt=0)
    alert_kv_cache_usage: float = Field(default=0.95, gt=0, le=1, description="a fraction of 1, such as 0.95")
    alert_server_error_ratio: float = Field(default=0.05, gt=0, le=1, description="a fraction of 1, such as 0.05")
    # Where the alerts go: an SNS topic of the stage's account and region, whose policy lets
    # aps.amazonaws.com publish (docs/operations.md, "Metrics, alerts and autoscaling"); unset, alerts show in AMP only.
    alert_topic_arn: (
        Annotated[
            str,
            StringConstraints(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$"),
            Field(description="an SNS topic ARN such as arn:aws:sns:us-west-2:123456789012:gpu-inference-alerts"),
        ]
        | None
    ) = None


class ObservabilitySettings(_Strict):
    """Amazon CloudWatch: the CloudWatch Observability add-on's container metrics, a dashboard of the stage,
    and alarms on it to `metrics.alert_topic_arn` (stacks/observability.py). vLLM's signals are read from
    the Prometheus workspace, so it needs `metrics.enabled`."""

    # The CloudWatch Observability add-on, a dashboard and alarms per model, which send the alerts to
    # metrics.alert_topic_arn; needs metrics.enabled (docs/operations.md, "Dashboard and alarms").
    enabled: bool = False
    # The containers' logs (vLLM's start-up, an OOM, a traceback) in CloudWatch Logs, kept after the pod is gone, in
    # log groups the stack creates with cluster.log_retention_days; unset: on in a production stage, off elsewhere.
    container_logs: bool | None = None
    # VllmGpusIdle: an autoscaled model keeps more than its minimum replicas on GPUs less busy than this.
    alarm_gpu_idle_utilization: float = Field(
        default=0.1, gt=0, le=1, description="a fraction of 1, such as 0.1 for 10 % busy"
    )


class ClusterSettings(_Strict):
    """The EKS Auto Mode cluster: its name, version, API endpoint, who administers it, its logs and add-ons."""

    name: ClusterName
    # One with a kubectl layer in this project; EKS moves one minor version up at a time (docs/operations.md,
    # "Upgrading Kubernetes").
    kubernetes_version: str = "1.36"
    # Where the Kubernetes API answers: a private endpoint reached from the VPC, a public one (narrowed by
    # public_access_cidrs), or both.
    endpoint_access: Literal["public", "private", "public_and_private"] = "public_and_private"
    # Who may reach the public endpoint; only with public access.
    public_access_cidrs: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"),)
    # IAM roles and users given cluster admin through access entries; without one (and no exposed model) no person can
    # reach the cluster: synth warns, and a production stage is refused unless operated_by_pipeline_only.
    admin_principal_arns: tuple[
        Annotated[
            str,
            StringConstraints(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[\w+=,.@/-]+$"),
            Field(description="an IAM role or user ARN such as arn:aws:iam::123456789012:role/PlatformAdmin"),
        ],
        ...,
    ] = ()
    # true: no person gets access to the cluster (admin_principal_arns stays empty); only the CDK's kubectl
    # handler, the pipeline's smoke test and an exposed model's load balancer reach it. Without admins a stage
    # says so here, as a production stage must (StageSettings._someone_can_reach_it).
    operated_by_pipeline_only: bool = False
    # How long the control plane's logs (and the containers', with observability) are kept.
    log_retention_days: LogRetentionDays = 90
    # The Secrets Store CSI driver and its AWS provider (an EKS add-on), which mount API keys into the replicas.
    # Unset: installed while a model reads API keys. The Cluster stack deploys before Serving, so removing the
    # driver in the deploy that turns the last model's keys off would leave its old pods unable to unmount their
    # keys, Terminating for good: to turn API keys off, set true for that deploy, then unset it (`make plan` says).
    secrets_store_driver: bool | None = None
    # Each EKS add-on's version, pinned on purpose (`aws eks describe-addon-versions --kubernetes-version <version>
    # --addon-name <add-on>` lists those EKS offers); unpinned, EKS installs its default for the cluster's version and
    # leaves it there, through Kubernetes upgrades too (docs/operations.md, "Upgrading Kubernetes").
    addon_versions: dict[names.EksAddon, AddonVersion] = Field(default_factory=dict)
    # Once any NodeClass in the cluster selects capacity reservations, Auto Mode stops launching
    # into open On-Demand Capacity Reservations for every NodeClass, the built-in pools' included
    # (EKS User Guide, auto-odcr.html, the Warning). A stage whose GPU pools select reservations
    # sets this to true, to say that this is understood.
    open_reservations_unused: bool = False

    @field_validator("kubernetes_version")
    @classmethod
    def _has_kubectl_layer(cls, version: str) -> str:
        if version not in SUPPORTED_KUBERNETES_VERSIONS:
            raise ValueError(
                f"{version!r} has no matching kubectl layer in this project; "
                f"allowed: {', '.join(SUPPORTED_KUBERNETES_VERSIONS)}"
            )
        return version

    @model_validator(mode="after")
    def _admins_or_none(self) -> ClusterSettings:
        if self.operated_by_pipeline_only and self.admin_principal_arns:
            raise ValueError(
                "cluster.operated_by_pipeline_only: true says no person gets access, yet admin_principal_arns names "
                "some; remove one of them"
            )
        return self

    @model_validator(mode="after")
    def _cidrs_fit_endpoint_access(self) -> ClusterSettings:
        if self.endpoint_access == "private" and "public_access_cidrs" in self.model_fields_set:
            raise ValueError(
                "cluster.public_access_cidrs applies only when endpoint_access is public or public_and_private"
            )
        restricted = self.public_access_cidrs != (ipaddress.IPv4Network("0.0.0.0/0"),)
        if self.endpoint_access == "public" and restricted:
            raise ValueError(
                "cluster.public_access_cidrs can narrow the endpoint only with endpoint_access public_and_private: "
                "the CDK's kubectl handler then reaches the cluster from inside the VPC"
            )
        return self


class NodePoolLimits(_Strict):
    """The most a pool may hold in total, across all its nodes."""

    # Unset: derived from the models, so the pool holds every model's replicas plus one rollout
    # surge on the largest instance that can run them (settings.sizing.pool_limits).
    cpu: int | None = Field(default=None, ge=1)
    # A size such as 1024Gi.
    memory: BinarySize | None = None
    gpu: int | None = Field(default=None, ge=1, description="nvidia.com/gpu")


class MaintenanceWindow(_Strict):
    """A daily window, in UTC: from `start` (HH:MM) for `hours` hours."""

    start: Annotated[
        str,
        StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$"),
        Field(description="a time of day in UTC such as 03:00 (HH:MM, 24-hour clock)"),
    ]
    hours: int = Field(ge=1, le=23)


# EKS Auto Mode's own NodeClass and NodePools: a GPU pool of one of these names would overwrite them
# (EKS User Guide, "Enable or disable built-in NodePools", "Create a Node Class").
AUTO_MODE_NAMES = ("default", "general-purpose", "system")


class GpuNodePoolSettings(_Strict):
    name: DnsLabel = "gpu-node-pool"
    # Which instances: their categories (g, p) and, narrower, families of the catalog
    # (settings/catalog/gpu_instances.yaml); when no instance fits, the families a pool names are the first said why.
    instance_categories: tuple[
        Annotated[
            str,
            StringConstraints(pattern=r"^[a-z]+$"),
            Field(description="an instance category: lower-case letters, such as g or p"),
        ],
        ...,
    ] = ("g",)
    # Narrower: families of the catalog, such as g6 or g6e; none: every family of the categories.
    instance_families: tuple[
        Annotated[
            str,
            StringConstraints(pattern=r"^[a-z0-9-]+$"),
            Field(description="an instance family: lower-case letters, digits and '-', such as g6e"),
        ],
        ...,
    ] = ()
    # Karpenter's `Gt`: 4 admits generation 5 and newer (G5, G6, G6e).
    instance_generation_greater_than: int | None = Field(default=4, ge=0)
    # The least baseline network bandwidth an instance may have, in Mbps: the node reads the image and the weights
    # through it (settings/cold_start.py). EKS Auto Mode's label eks.amazonaws.com/instance-network-bandwidth
    # (EKS User Guide, "Create a Node Pool for EKS Auto Mode"). None: any.
    min_network_mbps: int | None = Field(
        default=None, ge=1, description="the least baseline network bandwidth of an instance, in Mbps"
    )
    # reserved: the capacity reservations below (On-Demand Capacity Reservations or Capacity Blocks
    # for ML); Auto Mode labels nodes launched into a selected reservation karpenter.sh/capacity-type:
    # reserved (EKS User Guide, "Control deployment of workloads into Capacity Reservations with EKS
    # Auto Mode", docs.aws.amazon.com/eks/latest/userguide/auto-odcr.html).
    capacity_types: tuple[Literal["spot", "on-demand", "reserved"], ...] = Field(
        default=("spot", "on-demand"), min_length=1
    )
    # Reservations this pool launches into, by id: its NodeClass's capacityReservationSelectorTerms.
    capacity_reservations: tuple[
        Annotated[
            str,
            StringConstraints(pattern=RESERVATION_ID_PATTERN),
            Field(
                description="a capacity reservation id: cr- and 17 lower-case hex digits, as in cr-0123456789abcdef0"
            ),
        ],
        ...,
    ] = ()
    architectures: tuple[Literal["amd64", "arm64"], ...] = Field(default=("amd64",), min_length=1)
    limits: NodePoolLimits = NodePoolLimits()
    # Only empty nodes are consolidated, so a serving replica is never evicted to save cost.
    consolidate_after: KarpenterDuration = "10m"
    # At most this many nodes (or percentage) disrupted at once, for any voluntary reason.
    disruption_budget_nodes: Annotated[
        str,
        StringConstraints(pattern=r"^((100|[0-9]{1,2})%|[0-9]+)$"),
        Field(description="a number of nodes such as 1, or a percentage from 0% to 100%"),
    ] = "1"
    disk: NodeDiskSettings = NodeDiskSettings()
    # How long a node going away (expiry, drift, repair) waits for its pods before Karpenter deletes them, budget
    # or not: long enough for a replacement replica to start and the old one to drain, for every model the pool
    # can run (settings/drain.py checks it). A setting of the pool, not derived from the models: Karpenter hashes
    # it for drift (kubernetes-sigs/karpenter pkg/apis/v1/nodepool.go, Hash), so a change replaces every node.
    termination_grace_period: GracePeriod = "1h"
    # When Karpenter may replace drifted nodes (a new AMI, changed settings): a daily window in UTC.
    # Outside it, no drifted node is disrupted; unset, at any time (a production stage sets one).
    maintenance_window: MaintenanceWindow | None = None
    # model_store_zone: GPU nodes only in the file system's zone (Lustre is single-AZ; reads from
    # other zones are slower and billed). all_zones: survive a zone's loss, at that price.
    zones: Literal["model_store_zone", "all_zones"] = "model_store_zone"

    @model_validator(mode="after")
    def _instances_chosen(self) -> GpuNodePoolSettings:
        if not self.instance_categories and not self.instance_families:
            raise ValueError("give instance_categories, instance_families or both; with neither the pool has no GPUs")
        return self

    @field_validator("name")
    @classmethod
    def _not_auto_modes_own(cls, name: str) -> str:
        if name in AUTO_MODE_NAMES:
            raise ValueError(
                f"{name!r} is a NodeClass or NodePool of EKS Auto Mode itself ({', '.join(AUTO_MODE_NAMES)}); "
                "a GPU pool of that name would overwrite it: choose another"
            )
        return name

    @model_validator(mode="after")
    def _reservations_used(self) -> GpuNodePoolSettings:
        reserved = "reserved" in self.capacity_types
        if self.capacity_reservations and not reserved:
            raise ValueError(
                "capacity_reservations: add reserved to capacity_types; nodes launched into a selected "
                "reservation have capacity type reserved, and a pool without it never uses them"
            )
        if reserved and not self.capacity_reservations:
            raise ValueError(
                "capacity_types: reserved needs capacity_reservations (cr-... ids) to launch into; Auto Mode "
                "launches reserved nodes only into reservations a NodeClass selects"
            )
        repeated = _repeated(self.capacity_reservations)
        if repeated:
            raise ValueError(f"capacity_reservations: each may appear once; repeated: {', '.join(repeated)}")
        return self


class ModelResources(_Strict):
    """A replica's requests. Unset, each follows the model (settings.sizing.requests): 3 CPUs and 24 GiB
    per GPU, capped to what the cheapest instance holding its GPUs leaves to pods (Karpenter leaves
    13.3 GiB of a 16 GiB instance, 28.1 GiB of a 32 GiB one), /dev/shm a quarter of the memory."""

    cpu: float | None = Field(default=None, gt=0, description="cores requested; no CPU limit, so loading may burst")
    # Request and limit: host memory holds the weights while they load and the CPU side of the KV cache.
    memory: BinarySize | None = None
    # Node disk for vLLM's compile caches (the weights are on the file system); unset: 20Gi.
    ephemeral_storage: BinarySize | None = None
    # /dev/shm for NCCL and vLLM's workers; counts against the memory limit.
    shared_memory: BinarySize | None = None

    @model_validator(mode="after")
    def _shared_memory_within_memory(self) -> ModelResources:
        if self.shared_memory and self.memory and size_bytes(self.shared_memory) > size_bytes(self.memory):
            raise ValueError(
                f"shared_memory ({self.shared_memory}) is more than memory ({self.memory}): the memory-backed "
                "/dev/shm counts against the pod's memory limit; give shared_memory at most memory"
            )
        return self


# GPUs per instance across EC2's GPU instance types: 1, 4 or 8 (G4dn, G5, G6, G6e; P4d and P5: 8),
# 2 (G4ad, G5g); a pod's GPUs must all be on one node.
GPU_COUNTS = (1, 2, 4, 8)

# What vLLM reads of a Hub repository: the root's weights, configs, tokenizer files and chat
# templates, not copies such as gpt-oss's original/ and metal/ folders (41 GB where vLLM reads
# 13.8). A pattern matches a path at its own depth: `*` never crosses a '/'.
# workloads/import_weights.py has the same list (DEFAULT_INCLUDE), for use by hand; a test keeps them equal.
DEFAULT_WEIGHT_FILES = ("*.safetensors", "*.json", "*.model", "*.tiktoken", "*.jinja", "vocab.txt", "merges.txt")
Revision = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"),
    Field(description="a branch, tag or commit of the Hub repository: letters, digits, '.', '_' and '-'"),
]
CommitSha = re.compile(r"^[0-9a-f]{40}$")
FilePattern = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9._*?/-]+$", max_length=200),
    Field(
        description="a file pattern such as *.safetensors: letters, digits, '.', '_', '-', '/' and wildcards * and ?"
    ),
]
# Secrets Manager secret names: 1-512 of letters, digits and /_+=.@- (Secrets Manager API, CreateSecret).
SecretName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$"),
    Field(description="a Secrets Manager secret name: letters, digits and /_+=.@-"),
]
S3Prefix = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$", max_length=200),
    Field(
        description="a key prefix in the model bucket such as my-model/v1: folders of letters, digits, '.', '_', '-'"
    ),
]


# The ranks vLLM's --max-lora-rank takes (vllm/config/lora.py, MaxLoRARanks, in 0.11.2 and 0.34.0 alike).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The model types whose vLLM model class implements SupportsLoRA in every supported version (read in the wheels:
# vllm/model_executor/models/gpt_oss.py GptOssForCausalLM, qwen3.py, qwen3_moe.py, qwen2.py, llama.py, at 0.11.2 and
# 0.34.0); vLLM refuses LoRA for any other ("does not support LoRA yet", vllm/v1/worker/lora_model_runner_mixin.py).
LORA_MODEL_TYPES = ("gpt_oss", "llama", "qwen2", "qwen3", "qwen3_moe")
HubRepository = Annotated[
    str,
    StringConstraints(pattern=r"^[\w.-]+/[\w.-]+$", max_length=200),
    Field(description="a Hugging Face Hub repository such as org/name"),
]
CommitRevision = Annotated[
    str,
    StringConstraints(pattern=CommitSha.pattern),
    Field(description="a commit of the repository: 40 lower-case hexadecimal digits"),
]
AdapterName = Annotated[
    str,
    StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"),
    Field(description="the name clients send as `model`: letters, digits, '.', '_', '-' and '/', no '='"),
]


class AdapterSettings(_Strict):
    """A LoRA adapter the model's replicas serve beside the base model, under its own name (vLLM's --lora-modules):
    a request whose `model` is the adapter's name runs the base model with the adapter."""

    # The name clients send as the request's `model` to reach the adapter.
    name: AdapterName
    # From the Hub at a commit, imported into the model store with the weights; or an S3 prefix of the model
    # bucket you fill and mark complete with .import-complete, as weights_s3_prefix.
    repository: HubRepository | None = None
    # The repository's commit the adapter is imported at: 40 hexadecimal digits, never a branch.
    revision: CommitRevision | None = None
    # Or its folder in the model bucket, such as adapters/support/v1, holding adapter_config.json and the weights.
    s3_prefix: S3Prefix | None = None
    # The adapter's rank, `r` in its adapter_config.json: vLLM loads no adapter of a rank above --max-lora-rank
    # ("LoRA rank {r} is greater than max_lora_rank", vllm/lora/models.py), which follows from it.
    rank: int = Field(ge=1, le=MAX_LORA_RANKS[-1], description="the LoRA rank r, 1 to 512")

    @model_validator(mode="after")
    def _one_source(self) -> AdapterSettings:
        if (self.repository is None) == (self.s3_prefix is None):
            raise ValueError("give repository (with its revision) or s3_prefix, one of them")
        if self.repository is not None and self.revision is None:
            raise ValueError("revision: missing; an adapter comes from the Hub at a commit (40 hex digits)")
        return self


class AutoscalingSettings(_Strict):
    """KEDA scales the model's Deployment between `replicas` (the minimum) and `max_replicas` on vLLM's
    queue, read from Amazon Managed Service for Prometheus (charts/queue_autoscaler.py)."""

    max_replicas: int = Field(ge=1)
    # Requests waiting per replica (vllm:num_requests_waiting) above which a replica is added.
    target_queue_per_replica: float = Field(gt=0, description="requests waiting per replica, more than 0")
    # How long the queue must stay low before a replica goes; unset: a cold start plus a minute, so a
    # replica is never removed sooner than a new one could come back (settings/autoscaling.py).
    # At most 3600: the HorizontalPodAutoscaler's stabilization window (KEDA's ScaledObject schema and
    # Kubernetes' MaxStabilizationWindowSeconds).
    scale_down_cooldown_seconds: int | None = Field(default=None, ge=1, le=MAX_STABILIZATION_SECONDS)


class ExposureSettings(_Strict):
    """An internal Application Load Balancer in front of the model, from Auto Mode's own load balancing:
    HTTPS only, /v1 only, API keys required, and an AWS WAF web ACL with rate limits (charts/exposure.py)."""

    # The name clients use, which the certificate covers, pointed at the load balancer (docs/access.md,
    # "Exposure inside the VPC"); the smoke test asks through it.
    hostname: Annotated[
        str,
        StringConstraints(max_length=253, pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"),
        Field(description="a DNS name in lower case such as llm.internal.example.com"),
    ]
    certificate_arn: Annotated[
        str,
        StringConstraints(pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]{36}$"),
        Field(description="an ACM certificate ARN such as arn:aws:acm:us-west-2:123456789012:certificate/<uuid>"),
    ]
    # Requests per 5 minutes, per API key (the Authorization header) and in all; AWS WAF's rate-based
    # rules take 10 to 2,000,000,000 (AWS WAF Developer Guide, "Rate-based rule high-level settings").
    rate_limit_per_key: int = Field(default=3000, ge=WAF_MIN_RATE_LIMIT, le=2_000_000_000)
    # The endpoint's limit in all.
    rate_limit_total: int = Field(default=30000, ge=WAF_MIN_RATE_LIMIT, le=2_000_000_000)


# The windows Envoy Gateway's global rate limit counts over (gateway.envoyproxy.io/v1alpha1 RateLimitUnit,
# envoyproxy/gateway api/v1alpha1/ratelimit_types.go at v1.8.3).
QuotaWindow = Literal["Second", "Minute", "Hour", "Day", "Month", "Year"]
# The token counts Envoy AI Gateway reports for a request (aigateway.envoyproxy.io/v1beta1 LLMRequestCostType,
# envoyproxy/ai-gateway api/v1beta1/shared_types.go at v1.1.0): prompt, completion, or both.
QuotaTokens = Literal["input", "output", "total"]
ClientId = Annotated[
    str,
    StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN),
    Field(description="a client's id: lower-case letters, digits and '-', as in a Secret's key and a metric label"),
]


class GatewayEndpointSettings(ExposureSettings):
    """The stage's internal Application Load Balancer in front of the gateway: the TLS edge with its AWS WAF web
    ACL and request rate limits, once per stage (charts/gateway.py); token quotas are the gateway's own."""

    @model_validator(mode="before")
    @classmethod
    def _hostname_and_certificate_together(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for given, missing in (("hostname", "certificate_arn"), ("certificate_arn", "hostname")):
                if data.get(given) and not data.get(missing):
                    raise ValueError(
                        f"{missing}: missing; the load balancer needs both a hostname and the ACM certificate "
                        "that covers it, or neither (the gateway is then reached from inside the cluster)"
                    )
        return data


class TokenQuota(_Strict):
    """Tokens a client may spend on a model (or on each model) in a window; past it the gateway answers 429."""

    client: ClientId
    # Unset: the quota holds on each of the stage's models (and adapters) separately.
    model: str | None = Field(default=None, min_length=1, description="a model id clients send, as served")
    # Which tokens count: the prompt's (input), the answer's (output), or both (total).
    tokens: QuotaTokens = "total"
    limit: int = Field(ge=1, description="tokens per window")
    # The window the count starts again after (a fixed window, Envoy's rate limit service).
    window: QuotaWindow = "Hour"


class GatewayClientSettings(_Strict):
    """A caller of the gateway: its id names it in quotas, metrics and the cost report; its key is in the
    gateway's clients secret, under the id."""

    id: ClientId


class GatewaySettings(_Strict):
    """One inference gateway for the stage (charts/gateway.py, docs/gateway.md): Envoy Gateway with Envoy AI
    Gateway, every model by its name at one address, API keys that name a client, token quotas per client and
    model counted in ElastiCache, and each model's replicas picked by an endpoint picker on prefix cache and queue.
    """

    # false: the models leave the gateway (its routes, pools, pickers and proxies go; each model is reached on its own
    # again) while its controllers stay, so that they remove what they finalize; the deploy before removing
    # `gateway` altogether, which `make plan` refuses in one step (docs/gateway.md, "Turning it off").
    enabled: bool = True
    # Envoy proxies; a production stage runs at least 2, on separate nodes.
    replicas: int = Field(default=2, ge=1, le=10)
    # The Secrets Manager secret holding the clients' keys: a JSON object {"<client id>": "<key>", ...}, one key per
    # client (Envoy Gateway's API key authentication takes one per client id: api/v1alpha1/api_key_auth_types.go).
    clients_secret: SecretName
    clients: tuple[GatewayClientSettings, ...] = Field(min_length=1)
    quotas: tuple[TokenQuota, ...] = ()
    # The client whose key the post-deploy smoke test asks every model with (workloads/smoke_test.py); one of clients.
    smoke_test_client: ClientId = "smoke-test"
    # Unset: reached from pods in the cluster at the gateway's ClusterIP Service, or by `kubectl port-forward`.
    endpoint: GatewayEndpointSettings | None = None

    @field_validator("clients")
    @classmethod
    def _distinct_clients(cls, clients: tuple[GatewayClientSettings, ...]) -> tuple[GatewayClientSettings, ...]:
        repeated = _repeated([client.id for client in clients])
        if repeated:
            raise ValueError(f"client ids must be distinct; repeated: {', '.join(repeated)}")
        return clients

    @model_validator(mode="after")
    def _smoke_test_is_a_client(self) -> GatewaySettings:
        known = [client.id for client in self.clients]
        if self.smoke_test_client not in known:
            raise ValueError(
                f"smoke_test_client: {self.smoke_test_client!r} is not among clients ({', '.join(known)}); add it "
                "there (its key in clients_secret), or name one that is"
            )
        return self


class ModelSettings(_Strict):
    """One model vLLM serves: where its weights come from, its GPUs and flags, its replicas, who may call it."""

    # Names the Deployment and the namespace it runs in (and the names in settings.names).
    name: ModelName
    model: str = Field(min_length=1, description="Hugging Face model id that vLLM serves, e.g. openai/gpt-oss-20b")
    service_name: ServiceName
    # The vLLM image, pinned to a tag or digest; nodes pull it through the registry cache.
    image: PinnedImage
    # GPUs per replica: 1, 2, 4 or 8, as GPU instances come.
    gpus: int = 1
    # With autoscaling: the minimum, and the count a rollout starts from.
    replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingSettings | None = None
    # GPU nodes held ready beyond the replicas, each already holding the image: a placeholder pod a new replica
    # preempts (charts/warm_spares.py), so that a scale-out or a rollout's surge skips the node's launch and the
    # image pull. Each costs a GPU node around the clock (make cost, make sizing).
    warm_spares: int = Field(default=0, ge=0, description="placeholder GPU nodes held ready; 0: none")
    # The replicas share vLLM's torch.compile cache through the model bucket: a replica starts from what an earlier
    # one compiled for the same model, vLLM version, settings and GPU type, and vLLM compiles again on any other
    # (charts/shared_compile_cache.py). Off: each pod compiles into its own disk.
    compile_cache: bool = False
    # vLLM's --max-model-len: the longest sequence, at most the model's context (facts.context_tokens) unless env sets
    # VLLM_ALLOW_LONG_MAX_MODEL_LEN.
    max_model_len: int = Field(default=20000, ge=1)
    # vLLM's --gpu-memory-utilization: the share of each GPU's memory vLLM takes.
    gpu_memory_utilization: Decimal = Field(default=Decimal("0.90"), gt=0, le=1, decimal_places=2)
    # vLLM's --tensor-parallel-size: equal to gpus.
    tensor_parallel_size: int = Field(default=1, ge=1)
    # More vLLM flags; the flags the project sets (the fields above, --api-key, --config, --disable-log-stats) and the
    # pipeline and data parallel sizes are refused in every spelling vLLM reads.
    extra_args: tuple[str, ...] = ()
    # The server's environment.
    env: dict[
        Annotated[
            str,
            StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
            Field(description="an environment variable name: letters, digits and '_', not starting with a digit"),
        ],
        str,
    ] = {}
    # vLLM's attention backend, one of the version's (settings/catalog/vllm/<version>.yaml, attention_backends); set
    # through VLLM_ATTENTION_BACKEND for the versions that read it, --attention-backend for the others. TRITON_ATTN is
    # the walkthrough's, for gpt-oss on L4, L40S and A10G GPUs; none lets vLLM choose.
    attention_backend: str | None = "TRITON_ATTN"
    resources: ModelResources = ModelResources()
    # The model's architecture, which sizes its GPUs, KV cache, file system and cold start (settings/model_facts.py):
    # from the catalog (settings/catalog/models.yaml) for the models it lists, given here for any other.
    facts: ModelFacts | None = None
    # vLLM's start besides reading the weights (kernel compilation, profiling, KV cache, CUDA graphs), measured for
    # the release and GPU served: the cold start's model load and the budgets derived from it (the startupProbe, the
    # progress deadline, KEDA's cooldown). Unset: the budgets take 180 s (the walkthrough's few minutes), and
    # `make cold-start` shows the model's measured start of another release where settings/cold_start.py has one.
    load_seconds: int | None = Field(default=None, ge=1)
    # Where the weights come from. From the Hub: the deploy imports `model` at `revision` (the
    # files matching `files`) into the model store, once per revision (workloads/import_weights.py);
    # a gated model needs a Secrets Manager secret holding a Hugging Face token.
    revision: Revision = "main"
    # What the import fetches, by pattern; `*` never crosses a `/`, so original/ and metal/ copies stay out.
    files: tuple[FilePattern, ...] = Field(default=DEFAULT_WEIGHT_FILES, min_length=1)
    # A Secrets Manager secret (its name) holding a Hugging Face token, for gated models such as Llama.
    hf_token_secret: SecretName | None = None
    # Raise it to run a failed weights import again, once its cause is mended (a token, the Hub's gate): the import
    # Job gets a new name, and a Job is never run twice under one.
    import_retry: int = Field(default=0, ge=0, description="0, then 1, 2, ... to run a failed weights import again")
    # Clients must send one of the API keys held in this Secrets Manager secret (as JSON:
    # {"api-key": ["<key>", ...]}); unset, the model answers without a key (docs/access.md, "API keys").
    api_keys_secret: SecretName | None = None
    # Unset: reached through `kubectl port-forward` only (docs/access.md, "Exposure inside the VPC").
    exposure: ExposureSettings | None = None
    # Or weights that are not on the Hub: you fill s3://<model bucket>/<weights_s3_prefix>/ and
    # mark it complete; nothing is imported.
    weights_s3_prefix: S3Prefix | None = None
    # LoRA adapters served on the same replicas, each under its own name (docs/models.md, "LoRA adapters").
    # At most 14: the gateway routes the model and each adapter by a rule of one route, which holds 15.
    adapters: tuple[AdapterSettings, ...] = Field(default=(), max_length=14)
    # How many adapters one batch may hold (vLLM's --max-loras): each slot reserves GPU memory at --max-lora-rank
    # from the start, which sizing counts (settings/lora_slots.py: gpt-oss-20b's two slots at rank 16 take 737 MiB of
    # its GPU in vLLM 0.31.0), so fewer than all of them; every adapter stays loaded in CPU memory (--max-cpu-loras).
    # Unset: up to 2.
    max_loras: int | None = Field(default=None, ge=1, description="adapters one batch may hold; unset: up to 2")
    # The longest a request may take, which the grace period of a replica going away covers
    # (charts/pre_stop_drain.py); unset: max_model_len tokens at 20 tokens per second.
    max_request_seconds: int | None = Field(default=None, ge=1)
    # The pod's grace period; unset: the shortest that drains it (settings/drain.py). Given, at least that.
    termination_grace_seconds: int | None = Field(default=None, ge=1)

    @property
    def architecture(self) -> ModelFacts:
        """The model's facts: the settings' own, or the catalog's (a model with neither is refused)."""
        facts = self.facts or catalog().get(self.model)
        assert facts is not None  # _facts_known
        return facts

    @property
    def weights_gb(self) -> float:
        """The size of the weights vLLM reads, in GB: it sizes the GPUs, the file system and the cold start."""
        return self.architecture.weights_gb

    @property
    def kv_cache_dtype_bytes(self) -> int:
        """Bytes per KV cache element: the model's 16-bit dtype unless extra_args ask vLLM for fp8."""
        return KV_DTYPE_BYTES.get(vllm_option(self.extra_args, "--kv-cache-dtype") or "auto", 2)

    @property
    def peak_replicas(self) -> int:
        """The most replicas the model may run: autoscaling's maximum, else `replicas`."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas

    @property
    def profile(self) -> VllmProfile:
        """What the image's vLLM version offers and needs (settings/vllm_profiles.py)."""
        return profile_of(self.image)

    @property
    def weights_path(self) -> str:
        """Where the weights are, from the model store's root: <name>/<revision>, or the S3 prefix you fill.

        The revision is part of the path, so a new one is a new folder, rolled out as an ordinary
        Deployment update while the replicas of the old one keep reading theirs.
        """
        return self.weights_s3_prefix or f"{self.name}/{self.revision}"

    @property
    def imported(self) -> bool:
        """The deploy brings this model's weights from the Hub (not from an S3 prefix you fill)."""
        return self.weights_s3_prefix is None

    @model_validator(mode="after")
    def _autoscaling_above_the_minimum(self) -> ModelSettings:
        if self.autoscaling is not None and self.autoscaling.max_replicas < self.replicas:
            raise ValueError(
                f"autoscaling.max_replicas: {self.autoscaling.max_replicas} is below replicas ({self.replicas}), "
                "the minimum it scales from; give a maximum of at least that"
            )
        return self

    _weights_gb_is_now_a_fact = _retired(
        "weights_gb",
        "now read from the model's facts (weight_bytes, the safetensors index's total_size): remove it; a model the "
        "catalog (settings/catalog/models.yaml) lacks gives them in facts",
    )

    @model_validator(mode="after")
    def _facts_known(self) -> ModelSettings:
        known = catalog().get(self.model)
        if known is None and self.facts is None:
            fields = ", ".join(name for name, field in ModelFacts.model_fields.items() if field.is_required())
            raise ValueError(
                f"facts: {self.model!r} is not in the catalog of models (settings/catalog/models.yaml), so its "
                f"architecture must be given: facts with {fields}, read from its config.json and safetensors index "
                f"(`make model-facts MODEL={self.model} REVISION=<commit>` writes them to the catalog); the catalog "
                f"knows {', '.join(sorted(catalog()))}"
            )
        if known is not None and self.facts is not None:
            raise ValueError(
                f"facts: the catalog (settings/catalog/models.yaml) has {self.model}'s already; remove them here, or "
                "correct the catalog's entry"
            )
        return self

    @model_validator(mode="after")
    def _within_the_context(self) -> ModelSettings:
        if self.facts is None and catalog().get(self.model) is None:
            return self  # _facts_known says what is missing
        context = self.architecture.context_tokens
        # vLLM takes the variable as on for 1 or true only (vllm/envs.py, VLLM_ALLOW_LONG_MAX_MODEL_LEN), and refuses a
        # longer max_model_len at start without it (vllm/config/model.py, _get_and_verify_max_len).
        allowed = self.env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() in ("1", "true")
        if self.max_model_len > context and not allowed:
            raise ValueError(
                f"max_model_len: {self.max_model_len} is more than {self.model}'s context of {context} tokens, and "
                f"vLLM refuses to start with it; give at most {context} (or set env VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 "
                "to have vLLM take it anyway)"
            )
        return self

    @model_validator(mode="after")
    def _exposed_with_keys(self) -> ModelSettings:
        if self.exposure is not None and self.api_keys_secret is None:
            raise ValueError(
                "exposure: a model behind a load balancer requires API keys: set api_keys_secret to the Secrets "
                "Manager secret that holds them"
            )
        return self

    @model_validator(mode="after")
    def _one_weights_source(self) -> ModelSettings:
        if self.weights_s3_prefix is not None and self.hf_token_secret is not None:
            raise ValueError(
                "hf_token_secret applies to weights imported from the Hub; with weights_s3_prefix nothing is "
                "imported: remove one of them"
            )
        return self

    @model_validator(mode="after")
    def _tensor_parallel_uses_every_gpu(self) -> ModelSettings:
        if self.tensor_parallel_size != self.gpus:
            raise ValueError(
                f"tensor_parallel_size ({self.tensor_parallel_size}) must equal gpus ({self.gpus}): "
                "vLLM shards the model over exactly the GPUs the pod gets"
            )
        return self

    @field_validator("gpus")
    @classmethod
    def _gpus_fit_one_node(cls, gpus: int) -> int:
        if gpus not in GPU_COUNTS:
            raise ValueError(
                f"{gpus} GPUs cannot be on one node; allowed: {', '.join(map(str, GPU_COUNTS))} (GPU instances "
                "come with that many, and a pod's GPUs must all be on one node)"
            )
        return gpus

    @model_validator(mode="after")
    def _adapters_vllm_loads(self) -> ModelSettings:
        if not self.adapters:
            if self.max_loras is not None:
                raise ValueError("max_loras: the model serves no adapter; give adapters, or unset max_loras")
            return self
        if self.architecture.model_type not in LORA_MODEL_TYPES:
            raise ValueError(
                f"adapters: vLLM serves no LoRA adapter on a {self.architecture.model_type} model (its model class "
                f"does not implement SupportsLoRA); allowed for model types {', '.join(LORA_MODEL_TYPES)}"
            )
        missing = missing_widths(self.architecture)
        if missing:
            raise ValueError(
                f"adapters: sizing the GPU memory of the LoRA slots needs the model's {', '.join(missing)} in its "
                "facts (config.json; `make model-facts` reads them)"
            )
        if self.max_loras is not None and self.max_loras > len(self.adapters):
            raise ValueError(
                f"max_loras: {self.max_loras}, more than the {len(self.adapters)} adapters; each slot reserves GPU "
                f"memory, so at most {len(self.adapters)}"
            )
        # vLLM 0.11.2 asserts that LoRA on a mixture of experts runs without expert parallelism
        # (vllm/lora/layers/fused_moe.py).
        if "--enable-expert-parallel" in self.extra_args:
            raise ValueError("adapters: vLLM serves no LoRA adapter with --enable-expert-parallel (extra_args)")
        if self.weights_s3_prefix is not None and any(a.repository for a in self.adapters):
            raise ValueError(
                "adapters: a model whose weights you upload (weights_s3_prefix) takes adapters you upload too: give "
                "each an s3_prefix"
            )
        repeated = _repeated([adapter.name for adapter in self.adapters])
        if repeated or self.model in [adapter.name for adapter in self.adapters]:
            raise ValueError(
                f"adapters: {', '.join(repeated or [self.model])} named twice; each adapter's name must differ from "
                "the others' and from the model's"
            )
        return self

    def adapter_path(self, adapter: AdapterSettings) -> str:
        """An adapter's folder in the model store: imported under the model's own folder, or your prefix."""
        return adapter.s3_prefix or f"{self.name}/adapters/{adapter.name.replace('/', '--')}/{adapter.revision}"

    @property
    def adapters_per_batch(self) -> int:
        """vLLM's --max-loras: the settings', or up to 2."""
        return self.max_loras or min(len(self.adapters), 2)

    @property
    def max_lora_rank(self) -> int:
        """vLLM's --max-lora-rank: the smallest rank it takes that holds every adapter's."""
        return next(rank for rank in MAX_LORA_RANKS if rank >= max(a.rank for a in self.adapters))

    @model_validator(mode="after")
    def _what_the_version_offers(self) -> ModelSettings:
        """The image's vLLM version has a profile, and the flags, variables and backend given are the version's."""
        try:
            profile = profile_of(self.image)
        except ValueError as problem:
            raise ValueError(f"image: {problem}") from None
        facts, version = profile.extracted, profile.version
        for arg in self.extra_args:
            flag = vllm_flag(arg)
            if flag and flag.startswith("--") and flag not in facts.flags and f"--{flag[5:]}" not in facts.flags:
                raise ValueError(
                    f"extra_args: vLLM {version} has no flag {flag} (give a flag's full name; the version's flags "
                    f"are in settings/catalog/vllm/{version}.yaml)"
                )
        if ATTENTION_BACKEND_ENV in self.env:
            raise ValueError(f"env: set the attention backend with attention_backend, not {ATTENTION_BACKEND_ENV}")
        for variable in self.env:
            if variable.startswith("VLLM_") and variable not in facts.environment_variables:
                raise ValueError(
                    f"env: vLLM {version} reads no {variable} (vllm/envs.py; settings/catalog/vllm/{version}.yaml)"
                )
        if self.attention_backend is not None and self.attention_backend not in facts.attention_backends:
            raise ValueError(
                f"attention_backend: vLLM {version} has no backend {self.attention_backend!r}; it has "
                f"{', '.join(sorted(facts.attention_backends))}"
            )
        if unsupported := driver_problem(self.image):
            raise ValueError(f"image: {unsupported}")
        return self

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        for arg in args:
            if managed := managed_vllm_flag(arg):
                named = "" if arg.split("=", 1)[0] == managed else f" (a spelling of {managed} to vLLM)"
                raise ValueError(
                    f"{arg!r}{named} is set by the project (by its own field, or kept as the drain and the GPUs "
                    f"need it); flags kept out of extra_args, in any spelling vLLM reads: "
                    f"{', '.join(MANAGED_VLLM_FLAGS)}"
                )
        return args


class StageSettings(_Strict):
    """One deployment stage: where it runs and what it serves."""

    # Filled in from the file's name, settings/stages/<name>.yaml (settings.parse_stage_settings).
    name: StageName
    # Where the stage deploys.
    region: Region
    account: AccountId | None = Field(default=None, description="unset: the account of the credentials that deploy")
    availability_zones: tuple[str, ...] = Field(min_length=2, description="explicit, so synth needs no lookup")
    # true: at least 2 replicas per model, commits as revisions, every GPU pool's zones and maintenance window chosen
    # explicitly, some pool with on-demand or reserved capacity, no Kubernetes API open to 0.0.0.0/0; the stacks get
    # termination protection.
    production: bool = False
    network: NetworkSettings = NetworkSettings()
    registry: RegistrySettings = RegistrySettings()
    model_store: ModelStoreSettings = ModelStoreSettings()
    cluster: ClusterSettings
    metrics: MetricsSettings = MetricsSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    # In order of preference: Karpenter tries the first pool and falls through to the next when
    # it cannot launch there (charts/gpu_node_pool.py, pool weights).
    gpu_node_pools: tuple[GpuNodePoolSettings, ...] = Field(
        default=(GpuNodePoolSettings(),), min_length=1, max_length=MAX_GPU_POOLS
    )
    models: tuple[ModelSettings, ...] = Field(min_length=1)
    # Unset: each model is reached on its own Service (or its own load balancer, models[].exposure).
    gateway: GatewaySettings | None = None

    _one_pool_is_now_a_list = _retired(
        "gpu_node_pool",
        "now gpu_node_pools, a list of pools in order of preference; make this pool its first (and maybe only) entry",
    )

    @field_validator("gpu_node_pools")
    @classmethod
    def _distinct_pool_names(cls, pools: tuple[GpuNodePoolSettings, ...]) -> tuple[GpuNodePoolSettings, ...]:
        repeated = _repeated([pool.name for pool in pools])
        if repeated:
            raise ValueError(
                f"each pool needs a name of its own (its NodePool and NodeClass); repeated: {', '.join(repeated)}"
            )
        return pools

    @field_validator("availability_zones")
    @classmethod
    def _distinct_zones(cls, zones: tuple[str, ...]) -> tuple[str, ...]:
        repeated = _repeated(zones)
        if repeated:
            raise ValueError(f"each zone may appear once; repeated: {', '.join(repeated)}")
        return zones

    @model_validator(mode="after")
    def _zones_in_region(self) -> StageSettings:
        outside = [
            zone for zone in self.availability_zones if not re.fullmatch(rf"{re.escape(self.region)}[a-z]", zone)
        ]
        if outside:
            raise ValueError(
                f"availability_zones: {', '.join(outside)} not in region {self.region} "
                f"(expected names like {self.region}a)"
            )
        known = region_zones(self.region)
        missing = [zone for zone in self.availability_zones if known is not None and zone not in known]
        if missing:
            raise ValueError(
                f"availability_zones: {', '.join(missing)} is not a zone of {self.region}, whose zones are "
                f"{', '.join(known or ())} (settings/catalog/regions.yaml)"
            )
        store_zone = self.model_store.availability_zone
        if store_zone is not None and store_zone not in self.availability_zones:
            raise ValueError(
                f"model_store.availability_zone: {store_zone} is not one of the stage's availability_zones "
                f"({', '.join(self.availability_zones)})"
            )
        if self.network.nat_gateways > len(self.availability_zones):
            raise ValueError(
                f"network.nat_gateways: {self.network.nat_gateways} is more than the "
                f"{len(self.availability_zones)} availability zones"
            )
        return self

    @model_validator(mode="after")
    def _models_fit_together(self) -> StageSettings:
        for field in ("name", "service_name"):
            repeated = _repeated([getattr(model, field) for model in self.models])
            if repeated:
                raise ValueError(f"models: {field} must be unique; repeated: {', '.join(repeated)}")
        # Stack output ids drop the '-' of model names, so different names can give the same one.
        models_by_output_id: dict[str, list[str]] = {}
        for model in self.models:
            models_by_output_id.setdefault(names.output_id(model.name), []).append(model.name)
        clashes = [
            f"{' and '.join(models)} both give the stack output id {output_id} ({output_id}PortForwardCommand, ...)"
            for output_id, models in models_by_output_id.items()
            if len(models) > 1
        ]
        if clashes:
            raise ValueError(f"models: {'; '.join(clashes)}; rename one")
        return self

    @property
    def image_cache_prefix(self) -> str:
        """Where the stage's pull-through cache keeps its repositories: <registry.cache_prefix>/<stage>.

        A pull-through cache rule and a repository creation template are unique per prefix in a
        registry (one per account and region), so each stage has a prefix of its own and two
        stages can share an account.
        """
        return names.image_cache_prefix(self.registry.cache_prefix, self.name)

    @property
    def docker_hub_cache_prefix(self) -> str:
        """Where the stage's cache keeps Docker Hub's images: docker-hub/<stage>."""
        return names.image_cache_prefix(names.DOCKER_HUB_CACHE_PREFIX, self.name)

    @property
    def kubernetes_cache_prefix(self) -> str:
        """Where the stage's cache keeps registry.k8s.io's images: k8s/<stage>."""
        return names.image_cache_prefix(names.KUBERNETES_CACHE_PREFIX, self.name)

    @property
    def image_cache_prefixes(self) -> tuple[str, ...]:
        """The prefixes the stage's cache creates repositories under: ECR Public's, Docker Hub's when signed in, and
        registry.k8s.io's with the gateway (its endpoint picker)."""
        docker_hub = (self.docker_hub_cache_prefix,) if self.registry.docker_hub_credential_arn else ()
        kubernetes = (self.kubernetes_cache_prefix,) if self.gateway else ()
        return (self.image_cache_prefix, *docker_hub, *kubernetes)

    @property
    def docker_hub_images(self) -> bool:
        """A model's image comes from Docker Hub."""
        return any(docker_hub_path(model.image) is not None for model in self.models)

    @model_validator(mode="after")
    def _docker_hub_through_the_cache(self) -> StageSettings:
        credential = self.registry.docker_hub_credential_arn
        if self.registry.image_source == "pull_through_cache" and self.docker_hub_images and credential is None:
            (index, model) = next((i, m) for i, m in enumerate(self.models) if docker_hub_path(m.image) is not None)
            raise ValueError(
                f"models[{index}].image ({model.image}) comes from Docker Hub, which the cache reaches only signed "
                "in: set registry.docker_hub_credential_arn (a Secrets Manager secret named ecr-pullthroughcache/..., "
                'holding "username" and "accessToken"; docs/vllm-versions.md), or registry.image_source: public'
            )
        if credential is not None:
            region, account = credential.split(":")[3:5]
            if region != self.region or (self.account is not None and account != self.account):
                raise ValueError(
                    f"registry.docker_hub_credential_arn: the secret is in {account}/{region}; ECR reads it only in "
                    f"the stage's own account and region ({self.account or 'the deploying account'}/{self.region})"
                )
        return self

    @model_validator(mode="after")
    def _image_cache_prefix_fits(self) -> StageSettings:
        # Only a cache_prefix longer than the default can overflow: the stage's name leaves the default room.
        if len(self.image_cache_prefix) > names.ECR_PREFIX_MAX:
            room = names.ECR_PREFIX_MAX - len(self.name) - 1
            raise ValueError(
                f"registry.cache_prefix: the stage's cache prefix {self.image_cache_prefix!r} "
                f"(<cache_prefix>/<stage>) is {len(self.image_cache_prefix)} characters; ECR allows at most "
                f"{names.ECR_PREFIX_MAX}: shorten cache_prefix to at most {room} (or the stage's name)"
            )
        return self

    @property
    def routed(self) -> GatewaySettings | None:
        """The gateway, when the models are behind it (gateway.enabled): its charts' controllers run whenever the
        settings have a gateway."""
        return self.gateway if self.gateway is not None and self.gateway.enabled else None

    @property
    def gateway_images_uncached(self) -> str | None:
        """Why the gateway's images come straight from Docker Hub, when they do: said at synth."""
        if self.gateway is None or self.registry.docker_hub_credential_arn is not None:
            return None
        return (
            "the gateway's images (Envoy Gateway, Envoy, its rate limit service, Envoy AI Gateway) come from Docker "
            "Hub through the NAT gateways, unauthenticated and so rate-limited per address; set "
            "registry.docker_hub_credential_arn to pull them through the stage's cache (docs/gateway.md)"
        )

    @property
    def secrets_store(self) -> bool:
        """The Secrets Store CSI driver's AWS provider runs on every node: a model reads API keys, or the driver
        stays while their last replicas go (cluster.secrets_store_driver)."""
        if self.cluster.secrets_store_driver is not None:
            return self.cluster.secrets_store_driver
        # The gateway's key sync mounts its clients' secret too (charts/gateway.py).
        return self.gateway is not None or any(model.api_keys_secret for model in self.models)

    @property
    def eks_addons(self) -> tuple[str, ...]:
        """The EKS add-ons the Cluster stack installs for this stage (stacks/cluster.py)."""
        return (
            names.FSX_CSI_ADDON,
            *((names.SECRETS_STORE_ADDON,) if self.secrets_store else ()),
            *((names.CLOUDWATCH_ADDON,) if self.observability.enabled or self.container_logs else ()),
        )

    @model_validator(mode="after")
    def _pinned_addons_are_installed(self) -> StageSettings:
        for addon in self.cluster.addon_versions:
            if addon not in self.eks_addons:
                raise ValueError(
                    f"cluster.addon_versions.{addon}: the stage installs no such add-on; it installs "
                    f"{', '.join(self.eks_addons)}"
                )
        return self

    @model_validator(mode="after")
    def _api_keys_have_their_driver(self) -> StageSettings:
        readers = [f"models[{index}]" for index, model in enumerate(self.models) if model.api_keys_secret]
        readers += ["gateway"] if self.gateway else []
        if self.cluster.secrets_store_driver is False and readers:
            raise ValueError(
                f"cluster.secrets_store_driver: false, but {', '.join(readers)} read API keys (api_keys_secret), "
                "which the driver mounts; allowed: true or unset"
            )
        return self

    @property
    def keda(self) -> bool:
        """KEDA runs wherever metrics do, autoscaled models or not: the models' stacks deploy after the stage's,
        so a KEDA removed with the last model's autoscaling would go before its ScaledObject, whose finalizer only
        KEDA removes. Turning metrics off (which autoscaling needs) goes after turning autoscaling off."""
        return self.metrics.enabled

    @property
    def exposed(self) -> bool:
        """A load balancer with a web ACL fronts a model (charts/exposure.py) or the gateway (charts/gateway.py)."""
        return any(model.exposure for model in self.models) or bool(self.routed and self.routed.endpoint)

    @property
    def container_logs(self) -> bool:
        """The containers' logs go to CloudWatch Logs: as the settings say, else in production only."""
        given = self.observability.container_logs
        return self.production if given is None else given

    @property
    def cloudwatch_log_groups(self) -> tuple[str, ...]:
        """The log groups the CloudWatch add-on writes, which the Cluster stack creates with the cluster's retention
        (empty: no add-on)."""
        return names.cloudwatch_log_groups(
            self.cluster.name, insights=self.observability.enabled, container_logs=self.container_logs
        )

    @property
    def model_store_zone(self) -> str:
        """The zone of the FSx for Lustre file system (and, unless spread, of the GPU nodes)."""
        return self.model_store.availability_zone or self.availability_zones[0]

    @model_validator(mode="after")
    def _weights_fit_the_file_system(self) -> StageSettings:
        if any(model.facts is None and model.model not in catalog() for model in self.models):
            return self  # a model's facts are missing: its own check says so
        total_gb = sum(model.weights_gb for model in self.models)
        capacity_gb = self.model_store.storage_capacity_gib * 2**30 / 1e9
        if total_gb > capacity_gb:
            raise ValueError(
                f"models: their weights add up to {total_gb:.1f} GB, more than the {capacity_gb:.0f} GB of "
                f"model_store.storage_capacity_gib ({self.model_store.storage_capacity_gib}); raise it to "
                "1200 or a multiple of 2400 that holds them (a new revision needs room beside the old one "
                "while it rolls out)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_reach_the_cluster(self) -> StageSettings:
        if not self.metrics.enabled:
            return self
        if self.cluster.endpoint_access == "public":
            raise ValueError(
                "metrics.enabled: the managed scraper reaches the cluster through its private endpoint; set "
                "cluster.endpoint_access to private or public_and_private"
            )
        topic = self.metrics.alert_topic_arn
        if topic is not None and topic.split(":")[3] != self.region:
            raise ValueError(
                f"metrics.alert_topic_arn: the topic is in {topic.split(':')[3]}; AMP's alert manager publishes to "
                f"topics of the workspace's region, {self.region}"
            )
        if topic is not None and self.account is not None and topic.split(":")[4] != self.account:
            raise ValueError(
                f"metrics.alert_topic_arn: the topic is in account {topic.split(':')[4]}; AMP's alert manager "
                f"publishes to topics of the stage's account, {self.account}"
            )
        return self

    @model_validator(mode="after")
    def _observability_reads_metrics(self) -> StageSettings:
        if self.observability.enabled and not self.metrics.enabled:
            raise ValueError(
                "observability.enabled: the dashboard and alarms read vLLM's signals from Amazon Managed Service "
                "for Prometheus; set metrics.enabled: true"
            )
        return self

    @model_validator(mode="after")
    def _certificates_in_the_region(self) -> StageSettings:
        for index, model in enumerate(self.models):
            if model.exposure is None:
                continue
            region = model.exposure.certificate_arn.split(":")[3]
            if region != self.region:
                raise ValueError(
                    f"models[{index}].exposure.certificate_arn: the certificate is in {region}; a load balancer "
                    f"takes certificates of its own region, {self.region}: request or import one there"
                )
        return self

    @model_validator(mode="after")
    def _autoscaling_reads_metrics(self) -> StageSettings:
        scaled = [f"models[{i}].autoscaling" for i, model in enumerate(self.models) if model.autoscaling is not None]
        if scaled and not self.metrics.enabled:
            raise ValueError(
                f"{', '.join(scaled)}: autoscaling reads vLLM's queue from Amazon Managed Service for Prometheus; "
                "set metrics.enabled: true"
            )
        return self

    @model_validator(mode="after")
    def _open_reservations_given_up_knowingly(self) -> StageSettings:
        selecting = [
            f"gpu_node_pools[{index}] ({pool.name})"
            for index, pool in enumerate(self.gpu_node_pools)
            if pool.capacity_reservations
        ]
        if selecting and not self.cluster.open_reservations_unused:
            raise ValueError(
                f"{', '.join(selecting)} select(s) capacity reservations: from then on EKS Auto Mode no longer "
                "launches into open On-Demand Capacity Reservations for any NodeClass in the cluster, its "
                "built-in pools included (EKS User Guide, auto-odcr.html); set cluster.open_reservations_unused: "
                "true to accept this, or select those reservations in a pool too"
            )
        return self

    @model_validator(mode="after")
    def _production_pins_revisions(self) -> StageSettings:
        if self.production:
            unpinned = [
                f"models[{index}].revision: {model.revision!r}"
                for index, model in enumerate(self.models)
                if model.imported and not CommitSha.fullmatch(model.revision)
            ]
            if unpinned:
                raise ValueError(
                    f"{'; '.join(unpinned)} is not a commit; a production stage pins every model to a 40-character "
                    "commit sha of its Hub repository, so a deploy always serves the files it was reviewed with"
                )
        return self

    @model_validator(mode="after")
    def _production_chooses_its_trade_offs(self) -> StageSettings:
        if not self.production:
            return self
        for index, pool in enumerate(self.gpu_node_pools):
            where = f"gpu_node_pools[{index}]"
            if "zones" not in pool.model_fields_set:
                raise ValueError(
                    f"{where}.zones: a production stage chooses it: model_store_zone (GPU nodes in the file "
                    "system's zone: fast, free reads, but no replica can start while that zone is down) or "
                    "all_zones (replicas survive another zone's loss, at slower, billed cross-zone reads of every "
                    "weight file)"
                )
            if pool.maintenance_window is None:
                raise ValueError(
                    f"{where}.maintenance_window: a production stage sets one (start HH:MM in UTC, hours), so "
                    "that drifted GPU nodes are replaced only then"
                )
        if all(pool.capacity_types == ("spot",) for pool in self.gpu_node_pools):
            raise ValueError(
                "gpu_node_pools: spot only in a production stage; spot nodes go at two minutes' notice, far less "
                "than a replica's cold start: give a pool on-demand or reserved capacity (a spot pool first and an "
                "on-demand one after it is fine)"
            )
        open_endpoint = ipaddress.IPv4Network("0.0.0.0/0") in self.cluster.public_access_cidrs
        if self.cluster.endpoint_access != "private" and open_endpoint:
            raise ValueError(
                "cluster.public_access_cidrs: a production stage's Kubernetes API is not open to 0.0.0.0/0; make "
                "endpoint_access private, or narrow public_access_cidrs to your networks"
            )
        return self

    @property
    def unreachable(self) -> str | None:
        """Why no person could reach the cluster or its models, and what to add; None when someone can.

        Access entries are the only way into the cluster's API (the creator gets no admin access,
        stacks/cluster.py), so without admin_principal_arns nobody runs kubectl, and a model no load balancer
        exposes is reached only through kubectl's port-forward.
        """
        if self.cluster.admin_principal_arns or self.exposed or self.cluster.operated_by_pipeline_only:
            return None
        return (
            "cluster.admin_principal_arns: no person could reach the cluster (its API admits only the principals "
            "listed there) nor its models (none is exposed, so they answer only through kubectl port-forward); "
            "add your IAM role, for example arn:aws:iam::<account>:role/<role>, or expose a model, or set "
            "cluster.operated_by_pipeline_only: true if only the pipeline and its smoke test should reach it"
        )

    @model_validator(mode="after")
    def _someone_can_reach_it(self) -> StageSettings:
        # Other stages get a warning at synth (stacks/stage.py): a first deploy often comes before the admin role.
        if self.production and self.unreachable:
            raise ValueError(self.unreachable)
        return self

    @model_validator(mode="after")
    def _gateway_routes_each_model_once(self) -> StageSettings:
        gateway = self.routed
        if gateway is None:
            return self
        served = [model.model for model in self.models]
        adapters = [adapter.name for model in self.models for adapter in model.adapters]
        repeated = _repeated(served + adapters)
        if repeated:
            raise ValueError(
                f"models: {', '.join(repeated)} served by more than one model or adapter; the gateway routes a "
                "request by its model, so each name may be served once"
            )
        for index, model in enumerate(self.models):
            if model.exposure is not None:
                raise ValueError(
                    f"models[{index}].exposure: the stage's gateway serves every model; a model behind its own load "
                    "balancer too would bypass the gateway's keys and quotas: remove exposure, or gateway"
                )
            if model.api_keys_secret is not None:
                raise ValueError(
                    f"models[{index}].api_keys_secret: behind the gateway, clients' keys are the gateway's "
                    "(gateway.clients_secret) and vLLM admits only the gateway: remove api_keys_secret"
                )
        known = [client.id for client in gateway.clients]
        for index, quota in enumerate(gateway.quotas):
            if quota.client not in known:
                raise ValueError(
                    f"gateway.quotas[{index}].client: no client {quota.client!r}; allowed: the ids under "
                    f"gateway.clients ({', '.join(known)})"
                )
            if quota.model is not None and quota.model not in (routable := served + adapters):
                raise ValueError(
                    f"gateway.quotas[{index}].model: no model {quota.model!r}; allowed: {', '.join(routable)}, or "
                    "unset for each model"
                )
        if gateway.endpoint is not None:
            region = gateway.endpoint.certificate_arn.split(":")[3]
            if region != self.region:
                raise ValueError(
                    f"gateway.endpoint.certificate_arn: the certificate is in {region}; a load balancer takes "
                    f"certificates of its own region, {self.region}"
                )
        # ElastiCache names: a letter first, then letters, digits and single hyphens, at most 40 (ElastiCache User
        # Guide, "Naming constraints").
        store = f"{self.cluster.name}-quotas"
        if len(store) > 40 or not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", store):
            raise ValueError(
                f"cluster.name: the gateway's quota store is named {store}; ElastiCache takes a letter first, then "
                "letters, digits and single hyphens, at most 40 characters: a cluster.name of at most 33 characters, "
                "starting with a letter, without '--'"
            )
        if self.production and gateway.replicas < 2:
            raise ValueError(
                f"gateway.replicas: {gateway.replicas}; a production stage runs at least 2 gateway replicas"
            )
        return self

    @model_validator(mode="after")
    def _production_is_redundant(self) -> StageSettings:
        if self.production:
            single = [model.name for model in self.models if model.replicas < 2]
            if single:
                raise ValueError(
                    f"models: {', '.join(single)} run(s) fewer than 2 replicas; "
                    "a production stage runs at least 2 per model, on separate nodes"
                )
        return self


class PipelineStageTarget(_Strict):
    """One stage the pipeline deploys, and the account it goes to."""

    name: StageName
    account: AccountId


class PipelineSettings(_Strict):
    """The CodePipeline that rolls the stages out, in order, from a repository branch."""

    account: AccountId
    region: Region
    # A CodeStar Connections (CodeConnections) connection, created and authorised in the console.
    connection_arn: Annotated[
        str,
        StringConstraints(
            pattern=r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:[0-9]{12}:connection/[0-9a-f-]+$"
        ),
        Field(
            description="a CodeConnections connection ARN such as "
            "arn:aws:codeconnections:us-west-2:111111111111:connection/<connection id>"
        ),
    ]
    repository: Annotated[
        str,
        StringConstraints(pattern=r"^[\w.-]+/[\w.-]+$"),
        Field(description="a repository as owner/name, such as example-org/eks-gpu-inference"),
    ]
    branch: str = Field(default="main", min_length=1)
    stages: tuple[PipelineStageTarget, ...] = Field(min_length=1, description="deployed in this order")

    @field_validator("stages")
    @classmethod
    def _distinct_stages(cls, stages: tuple[PipelineStageTarget, ...]) -> tuple[PipelineStageTarget, ...]:
        repeated = _repeated([stage.name for stage in stages])
        if repeated:
            raise ValueError(f"each stage may appear once; repeated: {', '.join(repeated)}")
        return stages
