"""How one model is served: vLLM's OpenAI-compatible server on GPU nodes, in a namespace of its own.

The pod reproduces the walkthrough's (image, `vllm serve` flags, env, one GPU, memory-backed
/dev/shm, port 8000) and adds what a long-lived service needs: requests sized for vLLM,
probes that tell loading from broken, a hardened security context, spreading over nodes,
a PodDisruptionBudget and a rollout that never drops the last serving replica.
"""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
from cdk8s_plus_30 import k8s
from constructs import Construct

from charts.gpu_node_pool import GPU_TAINT
from settings.model import ModelSettings

PORT = 8000
PROBE_PERIOD_SECONDS = 10
# vLLM's image runs as root by default; nothing in serving needs it. Any non-zero id works:
# the writable paths below are emptyDirs owned through fsGroup. Above 10000, so it matches no
# user on the node.
RUN_AS_USER = 10001
HOME = "/home/vllm"
# The restricted Pod Security Standard: non-root, no privilege escalation, all capabilities
# dropped, RuntimeDefault seccomp, only ephemeral volume types. The pod below meets it.
POD_SECURITY_LABELS = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
# checkov's Kubernetes checks this pod fails on purpose, with the reasons; rendered as
# checkov.io/skip annotations on the Deployment, where checkov reads them.
CHECKOV_EXCEPTIONS = {
    "CKV_K8S_11": "no CPU limit on purpose: throttling only slows weight loading and CUDA graph capture; "
    "the request reserves what serving needs",
    "CKV_K8S_15": "IfNotPresent on purpose: the image is about 14 GB and pinned, so pulling it on every start "
    "only delays the replica",
    "CKV_K8S_43": "pinned by the version tag in the stage settings (which also accept a digest)",
    "CKV2_K8S_6": "EKS Auto Mode enforces NetworkPolicies only once its network policy controller is enabled; "
    "until then a policy here would protect nothing",
}


def vllm_args(model: ModelSettings) -> list[str]:
    """`vllm serve` arguments: the model, the flags its settings own, then extra_args."""
    return [
        model.model,
        f"--gpu-memory-utilization={model.gpu_memory_utilization:.2f}",
        f"--tensor-parallel-size={model.tensor_parallel_size}",
        f"--max-model-len={model.max_model_len}",
        *model.extra_args,
    ]


def app_label(model: ModelSettings) -> str:
    """The `app` label that selects a model's pods, as in `kubectl get pods -l app=...`."""
    return f"vllm-{model.name}"


class VllmServerChart(cdk8s.Chart):
    """Namespace, Deployment, Service and PodDisruptionBudget for one model."""

    def __init__(self, scope: Construct, id: str, *, model: ModelSettings) -> None:
        super().__init__(scope, id, namespace=model.name, disable_resource_name_hashes=True)
        labels = {"app": app_label(model)}

        namespace = kplus.Namespace(
            self, "Namespace", metadata=cdk8s.ApiObjectMetadata(name=model.name, labels=POD_SECURITY_LABELS)
        )
        # A Namespace is cluster-scoped; the chart's namespace would otherwise be stamped on it too.
        cdk8s.ApiObject.of(namespace).add_json_patch(cdk8s.JsonPatch.remove("/metadata/namespace"))

        deployment = kplus.Deployment(
            self,
            "Deployment",
            metadata=cdk8s.ApiObjectMetadata(
                name=model.name,
                labels=labels,
                annotations={
                    f"checkov.io/skip{number}": f"{check}={reason}"
                    for number, (check, reason) in enumerate(CHECKOV_EXCEPTIONS.items(), start=1)
                },
            ),
            replicas=model.replicas,
            select=False,
            # A new replica must serve before an old one stops: one extra GPU node during a
            # rollout, never fewer serving replicas than asked for.
            strategy=kplus.DeploymentStrategy.rolling_update(
                max_surge=kplus.PercentOrAbsolute.absolute(1),
                max_unavailable=kplus.PercentOrAbsolute.absolute(0),
            ),
            # The default 10 minutes is shorter than a cold start (node launch, a 14 GB image,
            # the weights); past it the rollout reports failure while the pod is still loading.
            progress_deadline=cdk8s.Duration.minutes(model.startup_timeout_minutes + 15),
            # The server calls no Kubernetes API.
            automount_service_account_token=False,
            security_context=kplus.PodSecurityContextProps(
                ensure_non_root=True, user=RUN_AS_USER, group=RUN_AS_USER, fs_group=RUN_AS_USER
            ),
        )
        deployment.select(kplus.LabelSelector.of(labels=labels))
        for key, value in labels.items():
            deployment.pod_metadata.add_label(key, value)
        deployment.scheduling.tolerate(
            kplus.TaintedNode([kplus.NodeTaintQuery.exists(GPU_TAINT["key"], effect=kplus.TaintEffect.NO_SCHEDULE)])
        )
        # Replicas on separate nodes (a node's loss takes one replica), and across zones where possible.
        deployment.scheduling.spread(topology=kplus.Topology.HOSTNAME)
        deployment.scheduling.spread(topology=kplus.Topology.ZONE, weight=100)

        container = deployment.add_container(
            name="inference-server",
            image=model.image,
            image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
            command=["vllm", "serve"],
            args=vllm_args(model),
            port_number=PORT,
            env_variables={
                **{name: kplus.EnvValue.from_value(value) for name, value in model.env.items()},
                "PORT": kplus.EnvValue.from_value(str(PORT)),
                # Caches (Hugging Face, vLLM, Triton, torch.compile) go under HOME, an emptyDir,
                # because the root filesystem is read-only and the image's /root is not ours.
                "HOME": kplus.EnvValue.from_value(HOME),
                # torch's compile cache asks for the user name; uid 1000 has no passwd entry.
                "USER": kplus.EnvValue.from_value("vllm"),
            },
            resources=kplus.ContainerResources(
                cpu=kplus.CpuResources(request=kplus.Cpu.units(model.resources.cpu)),
                memory=kplus.MemoryResources(
                    request=_size(model.resources.memory), limit=_size(model.resources.memory)
                ),
                ephemeral_storage=kplus.EphemeralStorageResources(request=_size(model.resources.ephemeral_storage)),
            ),
            # /health answers once the server is up; only then do liveness and readiness start,
            # so a server still loading weights is never restarted by liveness.
            startup=kplus.Probe.from_http_get(
                "/health",
                port=PORT,
                period_seconds=cdk8s.Duration.seconds(PROBE_PERIOD_SECONDS),
                failure_threshold=model.startup_timeout_minutes * 60 // PROBE_PERIOD_SECONDS,
                timeout_seconds=cdk8s.Duration.seconds(5),
            ),
            # /v1/models answers only when the model can serve requests (/health can answer earlier).
            readiness=kplus.Probe.from_http_get(
                "/v1/models",
                port=PORT,
                period_seconds=cdk8s.Duration.seconds(PROBE_PERIOD_SECONDS),
                failure_threshold=3,
                timeout_seconds=cdk8s.Duration.seconds(5),
            ),
            # Restart only a server that stopped answering for 90 s after it had started.
            liveness=kplus.Probe.from_http_get(
                "/health",
                port=PORT,
                period_seconds=cdk8s.Duration.seconds(30),
                failure_threshold=3,
                timeout_seconds=cdk8s.Duration.seconds(10),
            ),
            security_context=kplus.ContainerSecurityContextProps(
                ensure_non_root=True,
                user=RUN_AS_USER,
                group=RUN_AS_USER,
                privileged=False,
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                capabilities=kplus.ContainerSecutiryContextCapabilities(drop=[kplus.Capability.ALL]),
                seccomp_profile=kplus.SeccompProfile(type=kplus.SeccompProfileType.RUNTIME_DEFAULT),
            ),
        )
        container.mount(
            "/dev/shm",
            kplus.Volume.from_empty_dir(
                self,
                "SharedMemory",
                "dshm",
                medium=kplus.EmptyDirMedium.MEMORY,
                size_limit=_size(model.resources.shared_memory),
            ),
        )
        container.mount(HOME, kplus.Volume.from_empty_dir(self, "Home", "home"))
        container.mount("/tmp", kplus.Volume.from_empty_dir(self, "Tmp", "tmp"))
        # cdk8s-plus has no field for extended resources such as GPUs. The patch runs before the
        # typed mapper, which renders a plain string as null: the value must be a k8s Quantity.
        cdk8s.ApiObject.of(deployment).add_json_patch(
            cdk8s.JsonPatch.add(
                "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
                k8s.Quantity.from_string(str(model.gpus)),
            )
        )

        service = kplus.Service(
            self,
            "Service",
            metadata=cdk8s.ApiObjectMetadata(name=model.service_name, labels=labels),
            type=kplus.ServiceType.CLUSTER_IP,
            ports=[kplus.ServicePort(port=PORT, target_port=PORT)],
        )
        for key, value in labels.items():
            service.select_label(key, value)

        # Voluntary evictions (node repair, expiry, drains) take one replica at a time.
        cdk8s.ApiObject(
            self,
            "DisruptionBudget",
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=cdk8s.ApiObjectMetadata(name=model.name, labels=labels),
        ).add_json_patch(cdk8s.JsonPatch.add("/spec", {"maxUnavailable": 1, "selector": {"matchLabels": labels}}))


def _size(quantity: str) -> cdk8s.Size:
    """A size from settings ("24Gi"; settings.model.BinarySize) as a cdk8s Size."""
    units = {
        "Ki": cdk8s.Size.kibibytes,
        "Mi": cdk8s.Size.mebibytes,
        "Gi": cdk8s.Size.gibibytes,
        "Ti": cdk8s.Size.tebibytes,
    }
    return units[quantity[-2:]](int(quantity[:-2]))
