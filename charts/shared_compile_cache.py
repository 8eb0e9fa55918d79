"""A model's replicas share vLLM's compile cache through the model bucket (models[].compile_cache).

Before vLLM starts, an init container copies the bucket's copy of the cache into the pod's home (an emptyDir, where
vLLM keeps it); beside vLLM, a sidecar (an init container that keeps running: Kubernetes docs, "Sidecar containers")
uploads, once vLLM serves, what the bucket lacks. Both run workloads/compile_cache.py, shipped in a ConfigMap, in the
vLLM image (which has boto3), with the replicas' EKS Pod Identity: the model's stack lets it read and write
compile-cache/<model>/ of the bucket and nothing else (stacks/model_serving.py). The copy is per vLLM version: vLLM
keys the rest itself (the model, its settings, the GPU's name, CUDA and torch), and compiles again on a miss.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cdk8s
import cdk8s_plus_30 as kplus
from constructs import Construct

from charts.pod_security import hardened
from settings.schema import ModelSettings
from settings.sizing import SIDECAR_CPU_MILLIS, SIDECAR_MEMORY_MIB

SCRIPT = Path(__file__).resolve().parent.parent / "workloads" / "compile_cache.py"
MOUNT = "/compile-cache"
# The replicas' account when the model has no API keys (their account, vllm-server, has the grant then).
SERVICE_ACCOUNT = "vllm-compile-cache"
# The sidecar that uploads the cache once vLLM serves; its log says how many files (workloads/compile_cache.py).
SAVE_CONTAINER = "save-compile-cache"
# The init container that copies it in before vLLM starts; its log says how many files.
RESTORE_CONTAINER = "restore-compile-cache"
SCRIPT_HASH_ANNOTATION = "compile-cache/script-sha256"


def bucket_prefix(model: ModelSettings) -> str:
    """Where the model's copy lives in the bucket: one a vLLM version, whose caches would never match another's."""
    return f"{compile_cache_folder(model.name)}{model.profile.version}/"


def compile_cache_folder(model_name: str) -> str:
    return f"compile-cache/{model_name}/"


class SharedCompileCache(Construct):
    """The script's ConfigMap (in `scope`, the model's compile-cache chart), and the restore and save containers."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        deployment: kplus.Deployment,
        model: ModelSettings,
        image: str,
        bucket: str,
        region: str,
        home: kplus.Volume,
        home_path: str,
        health_url: str,
        user: int,
    ) -> None:
        super().__init__(scope, id)
        script = kplus.ConfigMap(
            self,
            "Script",
            metadata=cdk8s.ApiObjectMetadata(name="compile-cache"),
            data={SCRIPT.name: SCRIPT.read_text()},
        )
        volume = kplus.Volume.from_config_map(self, "Volume", script, name="compile-cache")
        # A new script reaches running replicas only through a new pod template.
        deployment.pod_metadata.add_annotation(SCRIPT_HASH_ANNOTATION, hashlib.sha256(SCRIPT.read_bytes()).hexdigest())
        env = {
            "BUCKET": bucket,
            "PREFIX": bucket_prefix(model),
            # vLLM's cache root unless VLLM_CACHE_ROOT says otherwise: ~/.cache/vllm (vllm/envs.py,
            # get_default_cache_root), and in it the compiled artifacts.
            "ROOT": f"{home_path}/.cache/vllm/torch_compile_cache",
            "AWS_REGION": region,
            "HEALTH_URL": health_url,
            "HOME": "/tmp",
        }
        for name, mode, restart in (
            (RESTORE_CONTAINER, "restore", None),
            (SAVE_CONTAINER, "save", kplus.ContainerRestartPolicy.ALWAYS),
        ):
            container = deployment.add_init_container(
                name=name,
                image=image,
                image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
                command=["python3", f"{MOUNT}/{SCRIPT.name}", mode],
                env_variables={key: kplus.EnvValue.from_value(value) for key, value in env.items()},
                resources=kplus.ContainerResources(
                    cpu=kplus.CpuResources(request=kplus.Cpu.millis(SIDECAR_CPU_MILLIS)),
                    memory=kplus.MemoryResources(
                        request=cdk8s.Size.mebibytes(SIDECAR_MEMORY_MIB),
                        limit=cdk8s.Size.mebibytes(2 * SIDECAR_MEMORY_MIB),
                    ),
                ),
                security_context=hardened(user),
                restart_policy=restart,
            )
            container.mount(MOUNT, volume, read_only=True)
            container.mount(home_path, home)
            container.mount("/tmp", kplus.Volume.from_empty_dir(self, f"{mode}-tmp", f"{mode}-tmp"))
