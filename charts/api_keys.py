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
a changed secret reaches replicas as they restart (README, "API keys").
"""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus
import yaml
from constructs import Construct

# The replica's service account: the Pod Identity association that may read the secret names it.
SERVICE_ACCOUNT = "vllm-server"
PROVIDER_CLASS = "api-keys"
CSI_DRIVER = "secrets-store.csi.k8s.io"
# Where the secret is mounted, and its file: vLLM's --config takes only .yaml or .yml files.
MOUNT = "/etc/vllm/api-keys"
FILE = "api-keys.yaml"


def config_args() -> list[str]:
    """vLLM's flags for the keys: `--config` and the file, as two arguments (vLLM looks for the bare flag)."""
    return ["--config", f"{MOUNT}/{FILE}"]


class ApiKeys(Construct):
    """The replica's service account, the SecretProviderClass that mounts the secret, and its volume."""

    def __init__(self, scope: Construct, id: str, *, secret_name: str, region: str) -> None:
        super().__init__(scope, id)
        # The CSI driver asks the kubelet for the account's token itself: the pod mounts none.
        self.service_account = kplus.ServiceAccount(
            self,
            "ServiceAccount",
            metadata=cdk8s.ApiObjectMetadata(name=SERVICE_ACCOUNT),
            automount_token=False,
        )
        cdk8s.ApiObject(
            self,
            "SecretProviderClass",
            api_version="secrets-store.csi.x-k8s.io/v1",
            kind="SecretProviderClass",
            metadata=cdk8s.ApiObjectMetadata(name=PROVIDER_CLASS),
        ).add_json_patch(
            cdk8s.JsonPatch.add(
                "/spec",
                {
                    "provider": "aws",
                    "parameters": {
                        "region": region,
                        "usePodIdentity": "true",
                        # A YAML list in a string, as the provider reads it.
                        "objects": yaml.safe_dump(
                            [{"objectName": secret_name, "objectType": "secretsmanager", "objectAlias": FILE}]
                        ),
                    },
                },
            )
        )
        self.volume = kplus.Volume.from_csi(
            self,
            "Volume",
            CSI_DRIVER,
            name="api-keys",
            read_only=True,
            attributes={"secretProviderClass": PROVIDER_CLASS},
        )
