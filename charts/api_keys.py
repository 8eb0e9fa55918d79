"""A model's API keys, from AWS Secrets Manager to vLLM, never through a template or an environment variable.

The AWS Secrets and Configuration Provider for the Secrets Store CSI driver (the EKS add-on
aws-secrets-store-csi-driver-provider, stacks/cluster.py) mounts the secret as a file in the
replica, reading it as the replica's service account through EKS Pod Identity
(SecretProviderClass parameter usePodIdentity: aws/secrets-store-csi-driver-provider-aws,
README, "SecretProviderClass options"). vLLM reads the file as its `--config` (a YAML mapping of
its flags; JSON is YAML): the secret holds {"api-key": ["<key>", ...]}, and vLLM 0.11.2 turns a list
into `--api-key <key> ...` (vllm/utils/argparse_utils.py, load_config_file), accepting any of
them on /v1 (vllm/entrypoints/openai/api_server.py, AuthenticationMiddleware; /health and
/metrics stay open to the probes, the drain and the scraper). vLLM reads its flags once, at start:
a changed secret reaches replicas as they restart (docs/access.md, "API keys").
"""

from __future__ import annotations

import json

import cdk8s
import cdk8s_plus_30 as kplus
import yaml
from constructs import Construct

from charts.api_object import api_object

# The replica's service account: the Pod Identity association that may read the secret names it.
SERVICE_ACCOUNT = "vllm-server"
PROVIDER_CLASS = "api-keys"
CSI_DRIVER = "secrets-store.csi.k8s.io"
# The secret's name on the replicas' pod template: the driver mounts the secret as a pod starts, so a model that
# reads another secret must start new replicas, which a changed template does.
SECRET_ANNOTATION = "api-keys/secret"
# Where the secret is mounted, and its file: vLLM's --config takes only .yaml or .yml files.
MOUNT = "/etc/vllm/api-keys"
FILE = "api-keys.yaml"


# vLLM 0.11.2 logs every flag that differs from its default when it starts, the API keys
# included (vllm/entrypoints/openai/api_server.py, setup_server: log_non_default_args, at INFO on
# the logger vllm.entrypoints.utils). For such a version (its profile's redacts_api_keys is false)
# this is vLLM's own logging configuration (vllm/logger.py, DEFAULT_LOGGING_CONFIG, with its default
# level, stream and format) with that one logger at WARNING; VLLM_LOGGING_CONFIG_PATH points vLLM at
# it. Later versions mask the keys themselves and keep their own logging.
LOGGING_MOUNT = "/etc/vllm/logging"
LOGGING_FILE = "logging.json"
LOGGING_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "vllm": {
            "class": "vllm.logging_utils.NewLineFormatter",
            "datefmt": "%m-%d %H:%M:%S",
            "format": "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s",
        }
    },
    "handlers": {
        "vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": "INFO", "stream": "ext://sys.stdout"}
    },
    "loggers": {
        "vllm": {"handlers": ["vllm"], "level": "DEBUG", "propagate": False},
        "vllm.entrypoints.utils": {"level": "WARNING"},
    },
}


def logging_env() -> dict[str, str]:
    return {"VLLM_LOGGING_CONFIG_PATH": f"{LOGGING_MOUNT}/{LOGGING_FILE}"}


def config_args() -> list[str]:
    """vLLM's flags for the keys: `--config` and the file, as two arguments (vLLM looks for the bare flag)."""
    return ["--config", f"{MOUNT}/{FILE}"]


def mounted_secret(
    scope: Construct, *, provider_class: str, secret_name: str, alias: str, region: str, volume: str
) -> kplus.Volume:
    """A Secrets Manager secret as the file `alias` of a read-only volume: its SecretProviderClass, read as the pod's
    service account through EKS Pod Identity, and the CSI volume that mounts it."""
    api_object(
        scope,
        "SecretProviderClass",
        "secrets-store.csi.x-k8s.io/v1",
        "SecretProviderClass",
        cdk8s.ApiObjectMetadata(name=provider_class),
        spec={
            "provider": "aws",
            "parameters": {
                "region": region,
                "usePodIdentity": "true",
                # A YAML list in a string, as the provider reads it.
                "objects": yaml.safe_dump(
                    [{"objectName": secret_name, "objectType": "secretsmanager", "objectAlias": alias}]
                ),
            },
        },
    )
    return kplus.Volume.from_csi(
        scope, "Volume", CSI_DRIVER, name=volume, read_only=True, attributes={"secretProviderClass": provider_class}
    )


class ApiKeys(Construct):
    """The replica's service account, the SecretProviderClass that mounts the secret, and its volume; the logging
    configuration that keeps the keys out of vLLM's log, in `config_scope` (the model's chart, where kubectl's prune
    deletes a ConfigMap the chart stops declaring)."""

    def __init__(
        self, scope: Construct, id: str, *, config_scope: Construct, secret_name: str, region: str, hide_log: bool
    ) -> None:
        super().__init__(scope, id)
        # The CSI driver asks the kubelet for the account's token itself: the pod mounts none.
        self.service_account = kplus.ServiceAccount(
            self,
            "ServiceAccount",
            metadata=cdk8s.ApiObjectMetadata(name=SERVICE_ACCOUNT),
            automount_token=False,
        )
        self.logging_volume = None
        if hide_log:
            logging_config = kplus.ConfigMap(
                config_scope,
                "LoggingConfig",
                metadata=cdk8s.ApiObjectMetadata(name="vllm-logging"),
                data={LOGGING_FILE: json.dumps(LOGGING_CONFIG, indent=2)},
            )
            self.logging_volume = kplus.Volume.from_config_map(self, "LoggingVolume", logging_config, name="logging")
        self.volume = mounted_secret(
            self, provider_class=PROVIDER_CLASS, secret_name=secret_name, alias=FILE, region=region, volume="api-keys"
        )
