"""How weights get into the model store: a Job per (model, revision) imports them from the Hub.

The Job runs workloads/import_weights.py (shipped in a ConfigMap) in the vLLM image, which has
huggingface_hub and boto3. It downloads one file at a time from the Hub, checks its size and
hash, uploads it to s3://<model bucket>/<name>/<revision>/, waits until the data repository
association shows it on the file system and reads it there once (so no replica waits on S3),
and writes a completion marker last. Replicas wait for that marker in an init container.

Why a Job on the cluster's general-purpose pool: it is in the stage's VPC and account already,
reaches the Hub through the NAT gateway, mounts the file system to check and warm what it
imported, gets AWS credentials from EKS Pod Identity, and its status and logs are where the
replicas' are (`kubectl -n <model> logs job/import-...`). It writes to S3, never to the file
system, so it runs as non-root under the namespace's restricted Pod Security Standard, and
the bucket stays the durable copy from which a rebuilt file system is filled again.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import cdk8s
import cdk8s_plus_30 as kplus
from constructs import Construct

from charts.pod_security import hardened, non_root_pod
from settings import names
from settings.schema import AdapterSettings, ModelSettings
from settings.sizing import IMPORT_CPU_MILLIS, IMPORT_MEMORY_MIB

# gpt-oss's harmony tokenizer reads its encoding from $TIKTOKEN_ENCODINGS_BASE, and once that is set never
# downloads it: a missing file stops vLLM at start ("invalid tiktoken vocab file"). gpt-oss reads o200k_base only
# (openai/harmony, src/tiktoken_ext/public_encodings.rs: O200kHarmony). It lives beside the models in the bucket,
# under a name no model can have (model names are DNS labels: no '_').
ENCODINGS_DIR = "tiktoken_encodings"
HARMONY_ENCODINGS = ("o200k_base.tiktoken",)
# vLLM serves a model with harmony when its config.json's model_type is gpt_oss
# (vllm/entrypoints/openai/serving_chat.py at v0.11.2: `self.use_harmony = model_config.hf_config.model_type ==
# "gpt_oss"`): so do the encodings follow, whatever the model is called.
HARMONY_MODEL_TYPE = "gpt_oss"
# Written by the import last, in the revision's folder: its presence means every file is there.
COMPLETION_MARKER = ".import-complete"
IMPORT_SCRIPT = Path(__file__).resolve().parent.parent / "workloads" / "import_weights.py"
IMPORT_SERVICE_ACCOUNT = "weights-import"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The import's scratch disk: one file at a time passes through it (shards are a few GB).
IMPORT_SCRATCH_GIB = 30
WAIT_POLL_SECONDS = 15

# The replica's init container: wait, saying what for, until the import's marker (and any encoding the model
# reads) is on the file system.
WAIT_SCRIPT = """set -eu
for file in "$WEIGHTS/$MARKER" $ENCODINGS; do
  while [ ! -f "$file" ]; do
    echo "waiting for $REPO at $REVISION: $file is not on the file system yet ($IMPORT)"
    sleep "$POLL_SECONDS"
  done
done
echo "weights of $REPO at $REVISION are ready in $WEIGHTS"
"""


def harmony_encodings(model: ModelSettings) -> tuple[str, ...]:
    """The tokenizer encodings a model's replicas read from the model store: those of harmony, for gpt-oss."""
    return HARMONY_ENCODINGS if model.architecture.model_type == HARMONY_MODEL_TYPE else ()


def has_import_job(model: ModelSettings) -> bool:
    """A Job brings something into the model store for the model: its weights (and adapters) from the Hub, or, for
    weights you upload, the encodings it reads."""
    return model.imported or bool(harmony_encodings(model))


def hub_adapters(model: ModelSettings) -> list[AdapterSettings]:
    """The model's adapters the import Job brings from the Hub, each before the weights (settings: only a model whose
    weights are imported has any)."""
    return [adapter for adapter in model.adapters if adapter.repository is not None]


def import_folders(model: ModelSettings) -> list[str]:
    """The bucket folders a model's import writes (as IAM resource patterns): its own, and the encodings'."""
    return [
        *([f"{model.name}/*"] if model.imported else []),
        *([f"{ENCODINGS_DIR}/*"] if harmony_encodings(model) else []),
    ]


# What a chart holds only once deployed: a CDK token ("${Token[...]}"), or a placeholder ("<...>") when the charts
# are written out alone. Neither may decide a name.
DEPLOYED_VALUE = re.compile(r"\$\{Token\[[^\]]*\]\}|<[^<>]*>")


def import_job_name(model_name: str, spec: dict[str, Any]) -> str:
    """The name of the Job that runs `spec`: the model's, and 8 hex digits of the whole spec.

    A Job's pod template is immutable (kubernetes pkg/apis/batch/validation, ValidateJobSpecUpdate), so a Job whose
    spec changes must be a new Job: any change to what it runs, now or by a later change to this code, names a new
    one, and an unchanged spec keeps its name (running again costs little: the import finds its marker). Deployed
    values are left out, so the name is the same in the stack and in the charts written alone.
    """
    digest = hashlib.sha256(DEPLOYED_VALUE.sub("<deployed>", json.dumps(spec, sort_keys=True)).encode())
    return names.import_job_name(model_name, digest.hexdigest()[:8])


def job_name_in(objects: list[dict[str, Any]]) -> str | None:
    """The import Job's name in a model's rendered chart, if it has one."""
    return next((obj["metadata"]["name"] for obj in objects if obj["kind"] == "Job"), None)


def import_command(model: ModelSettings, *, bucket: str, region: str, mount: str) -> list[str]:
    """The import's command line (workloads/import_weights.py), as the Job runs it: the weights from the Hub and the
    encodings the model reads, or the encodings alone for weights you upload."""
    command = ["python3", "/import/import_weights.py"]
    if model.imported:
        command += [f"--repo={model.model}", f"--revision={model.revision}", f"--prefix={model.weights_path}"]
    command += [f"--bucket={bucket}", f"--region={region}", "--workdir=/scratch", f"--mount={mount}"]
    if model.imported:
        command += ["--include", *model.files]
    if model.hf_token_secret:
        command.append(f"--token-secret={model.hf_token_secret}")
    if harmony_encodings(model):
        command += [f"--encodings-prefix={ENCODINGS_DIR}", "--encodings", *harmony_encodings(model)]
    return command


def adapter_import_command(
    model: ModelSettings, adapter: AdapterSettings, *, bucket: str, region: str, mount: str
) -> list[str]:
    """One adapter's import, as the weights' (its files are a config and safetensors, which the default patterns
    take), into its folder under the model's."""
    return [
        "python3",
        "/import/import_weights.py",
        f"--repo={adapter.repository}",
        f"--revision={adapter.revision}",
        f"--prefix={model.adapter_path(adapter)}",
        *(f"--bucket={bucket}", f"--region={region}", "--workdir=/scratch", f"--mount={mount}"),
        # What vLLM loads of an adapter (vllm/lora/models.py: a safetensors file beside its config); a repository
        # without the safetensors file fails the import, rather than a replica later.
        *("--include", *ADAPTER_FILES, "--require", *ADAPTER_FILES),
        # What vLLM checks of the adapter's config at every replica's start, checked once here.
        f"--max-lora-rank={model.max_lora_rank}",
        *(["--token-secret", model.hf_token_secret] if model.hf_token_secret else []),
    ]


def wait_for_weights_env(model: ModelSettings, *, mount: str, job: str | None) -> dict[str, str]:
    """What a replica's wait (WAIT_SCRIPT) looks for, and says it waits for.

    `job`: the import Job that brings the weights, or None for weights you upload yourself.
    """
    # ENCODINGS: every file the replica waits for besides the weights' marker: the encodings it reads, and each
    # adapter's marker (written by the import for the Hub's, by you for those you upload).
    encodings = " ".join(
        [
            *(f"{mount}/{ENCODINGS_DIR}/{name}" for name in harmony_encodings(model)),
            *(f"{mount}/{model.adapter_path(adapter)}/{COMPLETION_MARKER}" for adapter in model.adapters),
        ]
    )
    if model.imported:
        source = f"imported by job {job}"
    else:
        source = f"upload the weights to the bucket, then {COMPLETION_MARKER}" + (
            f"; the encodings come by job {job}" if job else ""
        )
    return {
        "WEIGHTS": f"{mount}/{model.weights_path}",
        "MARKER": COMPLETION_MARKER,
        "ENCODINGS": encodings,
        "REPO": model.model,
        "REVISION": model.revision if model.imported else model.weights_path,
        "IMPORT": source,
        "POLL_SECONDS": str(WAIT_POLL_SECONDS),
    }


IMPORT_ENV = {
    "HOME": "/scratch/home",
    "HF_HOME": "/scratch/hf",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # hf_xet up to 1.2 fetches 48 ranges at once, up to 64 MiB each (huggingface/xet-core,
    # HF_XET_NUM_CONCURRENT_RANGE_GETS), and was OOM-killed near 4 GB in pods (huggingface/huggingface_hub#3300):
    # 8, as KServe sets it (kserve/kserve#4726). From 1.3 a download buffer bounds it instead (settings/sizing.py,
    # IMPORT_MEMORY_MIB).
    "HF_XET_NUM_CONCURRENT_RANGE_GETS": "8",
}


class WeightsImport(Construct):
    """The ConfigMap holding the import script, the service account EKS Pod Identity gives AWS
    credentials to, and the Job that imports one revision of one model."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelSettings,
        image: str,
        bucket: str,
        region: str,
        claim_name: str,
        mount: str,
        zone: str,
        user: int,
        annotations: dict[str, str],
        deadline_seconds: int,
    ) -> None:
        super().__init__(scope, id)
        # EKS Pod Identity mounts its own token; the Kubernetes API is not called.
        account = kplus.ServiceAccount(
            self, "ServiceAccount", metadata=cdk8s.ApiObjectMetadata(name=IMPORT_SERVICE_ACCOUNT), automount_token=False
        )
        script = kplus.ConfigMap(
            self,
            "Script",
            metadata=cdk8s.ApiObjectMetadata(name="weights-import"),
            data={"import_weights.py": IMPORT_SCRIPT.read_text()},
        )
        job = kplus.Job(
            self,
            "Job",
            metadata=cdk8s.ApiObjectMetadata(annotations=annotations),
            # Retries resume where the last attempt stopped: finished files are skipped.
            backoff_limit=3,
            active_deadline=cdk8s.Duration.seconds(deadline_seconds),
            pod_metadata=cdk8s.ApiObjectMetadata(
                labels={"app": f"import-{model.name}"},
                # The script is mounted, not in the spec: a new script names a new Job, which runs it. So does a
                # new import_retry, the way to run a failed import again.
                annotations={
                    "gpu-inference/script-sha256": hashlib.sha256(IMPORT_SCRIPT.read_bytes()).hexdigest(),
                    "gpu-inference/import-retry": str(model.import_retry),
                },
            ),
            restart_policy=kplus.RestartPolicy.NEVER,
            select=False,
            service_account=account,
            automount_service_account_token=False,
            security_context=non_root_pod(user),
        )
        # No GPU toleration: the general-purpose pool, in the file system's zone.
        job.scheduling.attract(kplus.Node.labeled(kplus.NodeLabelQuery.is_("topology.kubernetes.io/zone", zone)))
        volumes = import_volumes(self, script, claim_name)
        # The adapters first, one after the other, as init containers; the weights last, whose marker the replicas
        # wait for with the adapters' (WAIT_SCRIPT).
        for index, adapter in enumerate(hub_adapters(model)):
            command = adapter_import_command(model, adapter, bucket=bucket, region=region, mount=mount)
            import_container(job, f"adapter-{index}", command, volumes, image=image, mount=mount, user=user, init=True)
        command = import_command(model, bucket=bucket, region=region, mount=mount)
        import_container(job, "import", command, volumes, image=image, mount=mount, user=user)
        resource = cdk8s.ApiObject.of(job)
        # The cause of a failure, for `kubectl describe` and the smoke test: the termination log, or the log's tail
        # when there is none (Kubernetes docs, "Determine the Reason for Pod Failure"; at most 4096 bytes).
        # cdk8s-plus's Container has no terminationMessagePolicy: a patch of the one container.
        for path in ["containers/0", *(f"initContainers/{i}" for i in range(len(hub_adapters(model))))]:
            resource.add_json_patch(
                cdk8s.JsonPatch.add(f"/spec/template/spec/{path}/terminationMessagePolicy", "FallbackToLogsOnError")
            )
        # The name follows from the whole spec, rendered: a patch names the Job once its spec is complete.
        self.job_name = import_job_name(model.name, resource.to_json()["spec"])
        resource.add_json_patch(cdk8s.JsonPatch.replace("/metadata/name", self.job_name))


ImportVolumes = tuple[kplus.Volume, kplus.Volume, kplus.Volume, kplus.Volume]


def import_volumes(scope: Construct, script: kplus.ConfigMap, claim_name: str) -> ImportVolumes:
    """The import's script, scratch space, /tmp and the file system, for each of its containers."""
    return (
        kplus.Volume.from_config_map(scope, "ScriptVolume", script, name="script"),
        kplus.Volume.from_empty_dir(scope, "Scratch", "scratch", size_limit=cdk8s.Size.gibibytes(IMPORT_SCRATCH_GIB)),
        kplus.Volume.from_empty_dir(scope, "Tmp", "tmp"),
        kplus.Volume.from_persistent_volume_claim(
            scope,
            "Weights",
            kplus.PersistentVolumeClaim.from_claim_name(scope, "Claim", claim_name),
            name="weights",
            read_only=True,
        ),
    )


def import_container(
    job: kplus.Job,
    name: str,
    command: list[str],
    volumes: ImportVolumes,
    *,
    image: str,
    mount: str,
    user: int,
    init: bool = False,
) -> None:
    """An import's container (or init container): the script, scratch space and /tmp, the file system read-only at
    `mount`."""
    add = job.add_init_container if init else job.add_container
    container = add(
        name=name,
        image=image,
        image_pull_policy=kplus.ImagePullPolicy.IF_NOT_PRESENT,
        command=command,
        env_variables={key: kplus.EnvValue.from_value(value) for key, value in IMPORT_ENV.items()},
        # One file at a time: its scratch disk and memory (settings/sizing.py).
        resources=kplus.ContainerResources(
            cpu=kplus.CpuResources(request=kplus.Cpu.millis(IMPORT_CPU_MILLIS)),
            memory=kplus.MemoryResources(
                request=cdk8s.Size.mebibytes(IMPORT_MEMORY_MIB), limit=cdk8s.Size.mebibytes(IMPORT_MEMORY_MIB)
            ),
            ephemeral_storage=kplus.EphemeralStorageResources(
                request=cdk8s.Size.gibibytes(IMPORT_SCRATCH_GIB), limit=cdk8s.Size.gibibytes(IMPORT_SCRATCH_GIB)
            ),
        ),
        security_context=hardened(user),
    )
    script, scratch, tmp, weights = volumes
    container.mount("/import", script, read_only=True)
    container.mount("/scratch", scratch)
    container.mount("/tmp", tmp)
    container.mount(mount, weights, sub_path="models", read_only=True)
