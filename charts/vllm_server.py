"""How one model is served: vLLM's OpenAI-compatible server on GPU nodes, in a namespace of its own.

The pod reproduces the walkthrough's (`vllm serve` flags, env, one GPU, memory-backed /dev/shm,
port 8000) and adds what a long-lived service needs: weights read from the FSx for Lustre file
system instead of downloaded, the image from the in-region registry, requests sized for vLLM,
probes that tell loading from broken, a hardened security context, spreading over nodes, a
PodDisruptionBudget and a rollout that never drops the last serving replica.
"""

from __future__ import annotations

from dataclasses import dataclass

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.api_keys import LOGGING_MOUNT, ApiKeys, config_args, logging_env
from charts.api_keys import MOUNT as API_KEYS_MOUNT
from charts.api_keys import SECRET_ANNOTATION as API_KEYS_SECRET_ANNOTATION
from charts.api_object import without_namespace
from charts.exposure import InternalEndpoint
from charts.gateway import ROUTES_LABEL
from charts.gateway_model import GatewayModel, GatewayModelPlan
from charts.gpu_metrics import (
    GPU_METRICS_PORT,
    GPU_METRICS_PORT_NAME,
    SCRIPT_HASH_ANNOTATION,
    GpuMetrics,
    script_hash,
    with_gpu_metrics,
)
from charts.gpu_metrics import MOUNT as GPU_METRICS_MOUNT
from charts.gpu_placement import limit_gpus, schedule
from charts.model_loader import (
    ENCODINGS_DIR,
    WAIT_SCRIPT,
    WeightsImport,
    harmony_encodings,
    has_import_job,
    wait_for_weights_env,
)
from charts.model_volume import ModelVolume
from charts.pod_security import PINNED_BY_TAG, POD_SECURITY_LABELS, checkov_skip_annotations, hardened, non_root_pod
from charts.pre_stop_drain import drain_args, drain_command
from charts.queue_autoscaler import AutoscalingPlan, QueueAutoscaler
from charts.shared_compile_cache import SERVICE_ACCOUNT as COMPILE_CACHE_SERVICE_ACCOUNT
from charts.shared_compile_cache import SharedCompileCache
from charts.smoke_test_access import smoke_test_access
from charts.warm_spares import WarmSpares
from settings import names
from settings.drain import termination_grace_seconds
from settings.schema import ModelSettings
from settings.sizing import Requests
from settings.vllm_profiles import ATTENTION_BACKEND_ENV

PORT = 8000
PROBE_PERIOD_SECONDS = 10
# vLLM's image runs as root by default; nothing in serving needs it. Any non-zero id works:
# the writable paths below are emptyDirs owned through fsGroup. Above 10000, so it matches no
# user on the node.
RUN_AS_USER = 10001
HOME = "/home/vllm"
# The file system's /models directory (the bucket's contents), mounted read-only here.
WEIGHTS_DIR = "/models"
# checkov's Kubernetes checks these pods fail on purpose, with the reasons; rendered as
# checkov.io/skip annotations on the Deployment and the weights import Job, where checkov reads them.
CHECKOV_EXCEPTIONS = {
    "CKV_K8S_11": "no CPU limit on purpose: throttling only slows weight loading and CUDA graph capture; "
    "the request reserves what the pod needs",
    "CKV_K8S_15": "IfNotPresent on purpose: images are pinned, so pulling one again on every start only delays "
    "the pod (the vLLM image is about 14 GB)",
    "CKV_K8S_43": PINNED_BY_TAG,
    "CKV2_K8S_6": "EKS Auto Mode enforces NetworkPolicies only once its network policy controller is enabled; "
    "until then a policy here would protect nothing",
}


CHECKOV_SKIP_ANNOTATIONS = checkov_skip_annotations(CHECKOV_EXCEPTIONS)


def vllm_args(model: ModelSettings) -> list[str]:
    """`vllm serve` arguments: the weights on the file system, the name clients use, then the flags."""
    return [
        f"{WEIGHTS_DIR}/{model.weights_path}",
        f"--served-model-name={model.model}",
        f"--port={PORT}",
        f"--gpu-memory-utilization={model.gpu_memory_utilization:.2f}",
        f"--tensor-parallel-size={model.tensor_parallel_size}",
        f"--max-model-len={model.max_model_len}",
        *(config_args() if model.api_keys_secret else []),
        *drain_args(model),
        *(
            [f"--attention-backend={model.attention_backend}"]
            if model.attention_backend and model.profile.attention_backend_by_flag
            else []
        ),
        *lora_args(model),
        *model.extra_args,
    ]


def lora_args(model: ModelSettings) -> list[str]:
    """The model's LoRA adapters, each served under its name from its folder on the file system, every one loaded in
    CPU memory and `adapters_per_batch` of them in a batch, at the smallest rank vLLM takes that holds each
    (vllm/config/lora.py)."""
    if not model.adapters:
        return []
    modules = [f"{adapter.name}={WEIGHTS_DIR}/{model.adapter_path(adapter)}" for adapter in model.adapters]
    return [
        "--enable-lora",
        f"--max-lora-rank={model.max_lora_rank}",
        f"--max-loras={model.adapters_per_batch}",
        f"--max-cpu-loras={len(model.adapters)}",
        "--lora-modules",
        *modules,
    ]


def vllm_env(model: ModelSettings) -> dict[str, str]:
    """The server's environment: the model's own variables, then what keeps a replica inside the VPC."""
    backend = model.attention_backend and not model.profile.attention_backend_by_flag
    env = {
        **({ATTENTION_BACKEND_ENV: model.attention_backend} if backend else {}),
        **model.env,
        # The weights are on the file system: never reach out to the Hugging Face Hub.
        "HF_HUB_OFFLINE": "1",
        # vLLM reports usage statistics to its authors unless told not to (vllm/usage/usage_lib.py).
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # Caches (Hugging Face, vLLM, Triton, torch.compile) go under HOME, an emptyDir,
        # because the root filesystem is read-only and the image's /root is not ours.
        "HOME": HOME,
        # torch's compile cache asks for the user name; uid 10001 has no passwd entry in the image.
        "USER": "vllm",
    }
    if model.api_keys_secret and not model.profile.redacts_api_keys:
        # This vLLM would log the keys it reads (charts/api_keys.py).
        env.update(logging_env())
    if harmony_encodings(model):
        # gpt-oss's harmony tokenizer downloads its encodings at every start unless this names a
        # folder that holds them (HF_HUB_OFFLINE does not cover it: vllm#22525, openai/harmony#46).
        env["TIKTOKEN_ENCODINGS_BASE"] = f"{WEIGHTS_DIR}/{ENCODINGS_DIR}"
    return env


@dataclass(frozen=True)
class WeightsFileSystem:
    """The FSx for Lustre file system holding the weights (CDK tokens when applied by the serving stack)."""

    file_system_id: str
    dns_name: str
    mount_name: str
    capacity_gib: int
    zone: str
    # The bucket behind it, and its region: where the import writes.
    bucket: str
    region: str


class FeatureChart(cdk8s.Chart):
    """A model's objects of one optional feature, in the model's namespace.

    What only an optional feature needs, and no `kubectl apply --prune` would delete once the feature is off (custom
    resources, and kinds outside its default allow-list: kubernetes/kubectl pkg/util/prune/prune.go), goes into a
    chart of its own, which the stack applies as a resource of its own: turning the feature off removes that
    resource, whose deletion deletes its objects. Applied over existing objects: a stage deployed before the feature
    had a chart of its own holds them already."""

    applies_over_existing = True

    def __init__(self, scope: Construct, id: str, *, namespace: str) -> None:
        super().__init__(scope, id, namespace=namespace, disable_resource_name_hashes=True)


class VllmServerChart(cdk8s.Chart):
    """Namespace, weights volume, weights import, Deployment, Service, smoke-test access and PodDisruptionBudget.

    `image` and `helper_image` (a small shell image for the replicas' wait) are the references
    nodes pull (see charts.images); `startup_budget`, `progress_deadline` and `import_deadline`
    (seconds) come from the cold-start budget. With `gpu_metrics`, each replica also serves its GPUs'
    utilization and memory for the stage's scraper (charts/gpu_metrics.py).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelSettings,
        image: str,
        helper_image: str,
        weights: WeightsFileSystem,
        startup_budget: int,
        progress_deadline: int,
        import_deadline: int,
        requests: Requests,
        autoscaling: AutoscalingPlan | None = None,
        web_acl_arn: str | None = None,
        inbound_subnet_ids: tuple[str, ...] = (),
        inbound_cidrs: tuple[str, ...] = (),
        gpu_metrics: bool = False,
        gateway: GatewayModelPlan | None = None,
    ) -> None:
        super().__init__(scope, id, namespace=model.name, disable_resource_name_hashes=True)
        labels = {"app": names.app_label(model.name)}
        # What only an optional feature needs goes into a chart of its own (FeatureChart), which the model's stack
        # applies as a resource of its own (stacks/model_serving.py).
        self.feature_charts: dict[str, cdk8s.Chart] = {}

        def feature(name: str) -> cdk8s.Chart:
            if name not in self.feature_charts:
                self.feature_charts[name] = FeatureChart(scope, f"{id}-{name}", namespace=model.name)
            return self.feature_charts[name]

        volume, import_job = namespace_and_weights(self, model, image, weights, import_deadline, routed=bool(gateway))
        api_keys = api_keys_of(feature("api-keys"), self, model, weights.region) if model.api_keys_secret else None

        account = api_keys.service_account if api_keys else None
        if model.compile_cache and account is None:
            account = compile_cache_account(feature("compile-cache"))
        deployment = server_deployment(self, model, labels, progress_deadline, account)
        service = service_and_access(self, model, labels)
        scraped_ports = (GPU_METRICS_PORT,) if gpu_metrics else ()
        if model.exposure is not None:
            assert web_acl_arn is not None  # the model's stack creates one per exposed model
            # The Ingress stays with the model: kubectl's prune deletes an Ingress the chart stops declaring.
            InternalEndpoint(
                feature("exposure"), "InternalEndpoint", ingress_scope=self, service=service, model=model,
                exposure=model.exposure, port=PORT, web_acl_arn=web_acl_arn, inbound_subnet_ids=inbound_subnet_ids,
                inbound_cidrs=inbound_cidrs, pod_labels=labels, scraped_ports=scraped_ports,
            )  # fmt: skip
        if gateway is not None:
            GatewayModel(
                feature("gateway"), "Gateway", model=model, plan=gateway, pod_labels=labels, port=PORT,
                inbound_cidrs=inbound_cidrs, scraped_ports=scraped_ports,
            )  # fmt: skip
        if autoscaling is not None:
            autoscale(feature("autoscaler"), deployment, model, autoscaling)
        if model.warm_spares:
            WarmSpares(
                feature("warm-spares"), "WarmSpares", model=model, image=image, requests=requests, user=RUN_AS_USER
            )
        schedule(deployment, model, labels)
        container = server_container(deployment, model, image, requests, startup_budget, gpu_metrics=gpu_metrics)
        home = kplus.Volume.from_empty_dir(self, "Home", "home")
        mount_server_volumes(
            self, deployment, container, model, requests, home, gpu_metrics=gpu_metrics, api_keys=api_keys
        )
        if model.compile_cache:
            share_compile_cache(feature("compile-cache"), deployment, model, image, weights, home)
        mount_weights(self, deployment, container, model, helper_image, volume.claim_name, import_job)
        container.mount("/tmp", kplus.Volume.from_empty_dir(self, "Tmp", "tmp"))
        limit_gpus(deployment, model.gpus)


def compile_cache_account(chart: cdk8s.Chart) -> kplus.ServiceAccount:
    """The replicas' account when they share a compile cache and have no API keys: EKS Pod Identity's subject."""
    return kplus.ServiceAccount(
        chart,
        "ServiceAccount",
        metadata=cdk8s.ApiObjectMetadata(name=COMPILE_CACHE_SERVICE_ACCOUNT),
        automount_token=False,
    )


def share_compile_cache(
    chart: cdk8s.Chart,
    deployment: kplus.Deployment,
    model: ModelSettings,
    image: str,
    weights: WeightsFileSystem,
    home: kplus.Volume,
) -> None:
    """The replicas' compile cache copied from the model bucket before vLLM starts, and back once it serves."""
    SharedCompileCache(
        chart,
        "CompileCache",
        deployment=deployment,
        model=model,
        image=image,
        bucket=weights.bucket,
        region=weights.region,
        home=home,
        home_path=HOME,
        health_url=f"http://127.0.0.1:{PORT}/health",
        user=RUN_AS_USER,
    )


def mount_weights(
    chart: cdk8s.Chart,
    deployment: kplus.Deployment,
    container: kplus.Container,
    model: ModelSettings,
    helper_image: str,
    claim_name: str,
    import_job: str | None,
) -> None:
    """The file system's models, read-only, and a wait for the revision's weights before vLLM starts."""
    weights_volume = kplus.Volume.from_persistent_volume_claim(
        chart,
        "WeightsVolume",
        kplus.PersistentVolumeClaim.from_claim_name(chart, "WeightsClaim", claim_name),
        name="weights",
        read_only=True,
    )
    container.mount(WEIGHTS_DIR, weights_volume, sub_path="models", read_only=True)
    wait_for_weights(deployment, model, helper_image, weights_volume, import_job)


def autoscale(
    feature: cdk8s.Chart, deployment: kplus.Deployment, model: ModelSettings, autoscaling: AutoscalingPlan
) -> None:
    """KEDA's objects in the model's autoscaler chart; the Deployment leaves the count to the autoscaler."""
    # The HorizontalPodAutoscaler owns the count: an applied one would reset it on every deploy.
    cdk8s.ApiObject.of(deployment).add_json_patch(cdk8s.JsonPatch.remove("/spec/replicas"))
    QueueAutoscaler(feature, "Autoscaler", model=model, deployment_name=model.name, plan=autoscaling)


def namespace_and_weights(
    chart: cdk8s.Chart,
    model: ModelSettings,
    image: str,
    weights: WeightsFileSystem,
    import_deadline: int,
    *,
    routed: bool = False,
) -> tuple[ModelVolume, str | None]:
    """The model's namespace (whose routes may attach to the stage's gateway when `routed`), its weights volume, and
    the Job that imports its weights (its name), if it has one."""
    labels = {**POD_SECURITY_LABELS, **({ROUTES_LABEL: "true"} if routed else {})}
    namespace = kplus.Namespace(chart, "Namespace", metadata=cdk8s.ApiObjectMetadata(name=model.name, labels=labels))
    without_namespace(cdk8s.ApiObject.of(namespace))
    volume = ModelVolume(
        chart,
        "Weights",
        namespace=model.name,
        file_system_id=weights.file_system_id,
        dns_name=weights.dns_name,
        mount_name=weights.mount_name,
        capacity_gib=weights.capacity_gib,
    )
    if not has_import_job(model):
        return volume, None
    job = WeightsImport(
        chart,
        "Import",
        model=model,
        image=image,
        bucket=weights.bucket,
        region=weights.region,
        claim_name=volume.claim_name,
        mount=WEIGHTS_DIR,
        zone=weights.zone,
        user=RUN_AS_USER,
        annotations=CHECKOV_SKIP_ANNOTATIONS,
        deadline_seconds=import_deadline,
    )
    return volume, job.job_name


HARDENED = hardened(RUN_AS_USER)


def server_deployment(
    chart: cdk8s.Chart,
    model: ModelSettings,
    labels: dict[str, str],
    progress_deadline: int,
    account: kplus.ServiceAccount | None,
) -> kplus.Deployment:
    """The replicas' Deployment: its rollout, its grace period, its pods' identity and security context."""
    return kplus.Deployment(
        chart,
        "Deployment",
        metadata=cdk8s.ApiObjectMetadata(
            name=model.name,
            labels=labels,
            annotations=CHECKOV_SKIP_ANNOTATIONS,
        ),
        replicas=model.replicas,
        select=False,
        # A new replica must serve before an old one stops: one extra GPU node during a
        # rollout, never fewer serving replicas than asked for.
        strategy=kplus.DeploymentStrategy.rolling_update(
            max_surge=kplus.PercentOrAbsolute.absolute(1),
            max_unavailable=kplus.PercentOrAbsolute.absolute(0),
        ),
        # From the cold-start budget (settings/cold_start.py): past it the rollout reports failure.
        progress_deadline=cdk8s.Duration.seconds(progress_deadline),
        # Long enough for the preStop drain to let the longest request finish (charts/pre_stop_drain.py).
        termination_grace_period=cdk8s.Duration.seconds(termination_grace_seconds(model)),
        # The server calls no Kubernetes API; with API keys, the CSI driver reads them as this account, and with a
        # shared compile cache, EKS Pod Identity gives it access to the bucket's copy.
        service_account=account,
        automount_service_account_token=False,
        security_context=non_root_pod(RUN_AS_USER),
    )


def health_probe(*, period: int, failures: int, timeout: int) -> kplus.Probe:
    return kplus.Probe.from_http_get(
        "/health",
        port=PORT,
        period_seconds=cdk8s.Duration.seconds(period),
        failure_threshold=failures,
        timeout_seconds=cdk8s.Duration.seconds(timeout),
    )


def server_container(
    deployment: kplus.Deployment,
    model: ModelSettings,
    image: str,
    requests: Requests,
    startup_budget: int,
    *,
    gpu_metrics: bool,
) -> kplus.Container:
    """vLLM: its command and flags, its requests, its probes, its drain."""
    return deployment.add_container(
        name="inference-server",
        image=image,
        image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
        command=with_gpu_metrics(["vllm", "serve"]) if gpu_metrics else ["vllm", "serve"],
        args=vllm_args(model),
        port_number=PORT,
        env_variables={name: kplus.EnvValue.from_value(value) for name, value in vllm_env(model).items()},
        resources=kplus.ContainerResources(
            cpu=kplus.CpuResources(request=kplus.Cpu.millis(requests.cpu_millis)),
            memory=kplus.MemoryResources(
                request=cdk8s.Size.mebibytes(requests.memory_mib), limit=cdk8s.Size.mebibytes(requests.memory_mib)
            ),
            ephemeral_storage=kplus.EphemeralStorageResources(
                request=cdk8s.Size.mebibytes(requests.ephemeral_storage_mib)
            ),
        ),
        # vLLM starts its HTTP server only once the engine is ready (0.11.2's api_server.py:
        # build_async_engine_client, then serve_http; 0.31.0's launchers/api_server/entry.py), so /health answers
        # as the model can serve, and 503 once the engine is dead (serve/instrumentator/health.py in 0.31.0);
        # /v1/models would keep answering 200 for a dead engine. Liveness and readiness start after the
        # startupProbe, so a server still loading weights is never restarted.
        startup=health_probe(period=PROBE_PERIOD_SECONDS, failures=startup_budget // PROBE_PERIOD_SECONDS, timeout=5),
        readiness=health_probe(period=PROBE_PERIOD_SECONDS, failures=3, timeout=5),
        # Restart only a server that stopped answering for 90 s after it had started.
        liveness=health_probe(period=30, failures=3, timeout=10),
        security_context=HARDENED,
        # Kubernetes runs this before SIGTERM: a wait for the proxies, and for a vLLM that does not drain by itself
        # a poll of its requests (charts/pre_stop_drain.py).
        lifecycle=kplus.ContainerLifecycle(pre_stop=kplus.Handler.from_command(drain_command(model, PORT))),
    )


def mount_server_volumes(
    chart: cdk8s.Chart,
    deployment: kplus.Deployment,
    container: kplus.Container,
    model: ModelSettings,
    requests: Requests,
    home: kplus.Volume,
    *,
    gpu_metrics: bool,
    api_keys: ApiKeys | None,
) -> None:
    """The server's shared memory, home, GPU reader and API keys (the weights come next)."""
    container.mount(
        "/dev/shm",
        kplus.Volume.from_empty_dir(
            chart,
            "SharedMemory",
            "dshm",
            medium=kplus.EmptyDirMedium.MEMORY,
            size_limit=cdk8s.Size.mebibytes(requests.shared_memory_mib),
        ),
    )
    container.mount(HOME, home)
    if gpu_metrics:
        deployment.pod_metadata.add_annotation(SCRIPT_HASH_ANNOTATION, script_hash())
        container.add_port(number=GPU_METRICS_PORT, name=GPU_METRICS_PORT_NAME)
        container.mount(GPU_METRICS_MOUNT, GpuMetrics(chart, "GpuMetrics").volume, read_only=True)
    if api_keys is not None and model.api_keys_secret:
        deployment.pod_metadata.add_annotation(API_KEYS_SECRET_ANNOTATION, model.api_keys_secret)
        container.mount(API_KEYS_MOUNT, api_keys.volume, read_only=True)
        if api_keys.logging_volume is not None:
            container.mount(LOGGING_MOUNT, api_keys.logging_volume, read_only=True)


def api_keys_of(scope: Construct, chart: cdk8s.Chart, model: ModelSettings, region: str) -> ApiKeys:
    """The model's API keys from its secret; with a vLLM that would log them, the logging that hides them."""
    assert model.api_keys_secret is not None
    return ApiKeys(
        scope,
        "ApiKeys",
        config_scope=chart,
        secret_name=model.api_keys_secret,
        region=region,
        hide_log=not model.profile.redacts_api_keys,
    )


def wait_for_weights(
    deployment: kplus.Deployment,
    model: ModelSettings,
    helper_image: str,
    weights_volume: kplus.Volume,
    import_job: str | None,
) -> None:
    """Until the revision's weights are complete, a replica waits here (Init:0/1, with a log line that says what
    for) instead of starting vLLM on missing files."""
    wait = deployment.add_init_container(
        name="wait-for-weights",
        image=helper_image,
        image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
        command=["sh", "-c", WAIT_SCRIPT],
        env_variables={
            name: kplus.EnvValue.from_value(value)
            for name, value in wait_for_weights_env(model, mount=WEIGHTS_DIR, job=import_job).items()
        },
        resources=kplus.ContainerResources(
            cpu=kplus.CpuResources(request=kplus.Cpu.millis(10)),
            memory=kplus.MemoryResources(request=cdk8s.Size.mebibytes(16), limit=cdk8s.Size.mebibytes(32)),
        ),
        security_context=HARDENED,
    )
    wait.mount(WEIGHTS_DIR, weights_volume, sub_path="models", read_only=True)


def service_and_access(chart: cdk8s.Chart, model: ModelSettings, labels: dict[str, str]) -> kplus.Service:
    """The model's Service, the smoke test's access to its namespace, and its disruption budget."""
    service = kplus.Service(
        chart,
        "Service",
        metadata=cdk8s.ApiObjectMetadata(name=model.service_name, labels=labels),
        type=kplus.ServiceType.CLUSTER_IP,
        ports=[kplus.ServicePort(port=PORT, target_port=PORT)],
    )
    for key, value in labels.items():
        service.select_label(key, value)

    smoke_test_access(chart)

    # Voluntary evictions (node repair, expiry, drains) take one replica at a time. cdk8s-plus has no
    # PodDisruptionBudget: the typed object.
    k8s.KubePodDisruptionBudget(
        chart,
        "DisruptionBudget",
        metadata=k8s.ObjectMeta(name=model.name, labels=labels),
        spec=k8s.PodDisruptionBudgetSpec(
            max_unavailable=k8s.IntOrString.from_number(1), selector=k8s.LabelSelector(match_labels=labels)
        ),
    )
    return service
