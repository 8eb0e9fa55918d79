"""How weights get onto the file system: S3 upload, automatic import, and a preload job that reads them in.

Weights are uploaded once to s3://<model bucket>/<model name>/; the data repository association
makes them appear at /models/<model name> on the file system without copying their contents.
The first read of a file pulls it in from S3; the preload job does that read ahead of time, so
no replica ever waits on S3. It is a suspended CronJob: a template to start, not a schedule.
"""

from __future__ import annotations

from typing import Any

import cdk8s
from constructs import Construct

from settings import names
from settings.model import ModelSettings

# gpt-oss's harmony tokenizer reads these from $TIKTOKEN_ENCODINGS_BASE instead of downloading
# them at every start (openai/harmony, tiktoken_ext/public_encodings.rs). They live beside the
# models in the bucket, under a name no model can have (model names are DNS labels: no '_').
ENCODINGS_DIR = "tiktoken_encodings"
HARMONY_ENCODINGS = ("o200k_base.tiktoken", "cl100k_base.tiktoken")

# Run the job: kubectl -n <namespace> create job preload-$(date +%s) --from=cronjob/preload-<model>
PRELOAD_SCRIPT = """set -eu
dir="/models/$MODEL"
if [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
  echo "no weights in $dir yet: upload them to s3://<model bucket>/$MODEL/ first" >&2
  exit 1
fi
for encoding in $ENCODINGS; do
  if [ ! -s "/models/$ENCODINGS_DIR/$encoding" ]; then
    echo "$encoding is missing: upload it to s3://<model bucket>/$ENCODINGS_DIR/ first" >&2
    exit 1
  fi
  cat "/models/$ENCODINGS_DIR/$encoding" > /dev/null
done
find "$dir" -type f | while read -r file; do cat "$file" > /dev/null; done
echo "preloaded $(du -sh "$dir" | cut -f1) in $dir${ENCODINGS:+ and $ENCODINGS}"
"""


def harmony_encodings(model: ModelSettings) -> tuple[str, ...]:
    """The tokenizer encodings a model's replicas read from the model store: gpt-oss models use harmony's."""
    return HARMONY_ENCODINGS if "gpt-oss" in model.model.lower() else ()


class ModelPreload(Construct):
    """A suspended CronJob whose job reads every file of one model (and the tokenizer encodings it
    needs), so the file system holds it all; it fails, saying what to upload, when something is missing."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelSettings,
        image: str,
        claim_name: str,
        zones: tuple[str, ...],
        pod_security_context: dict[str, Any],
        container_security_context: dict[str, Any],
        annotations: dict[str, str],
    ) -> None:
        super().__init__(scope, id)
        cron_job = cdk8s.ApiObject(
            self,
            "CronJob",
            api_version="batch/v1",
            kind="CronJob",
            metadata=cdk8s.ApiObjectMetadata(name=names.preload_job_name(model.name), annotations=annotations),
        )
        cron_job.add_json_patch(
            cdk8s.JsonPatch.add(
                "/spec",
                {
                    "suspend": True,
                    "schedule": "0 0 1 1 *",  # required by the API; never used while suspended
                    "jobTemplate": {
                        "spec": {
                            "backoffLimit": 2,
                            "activeDeadlineSeconds": 2 * 60 * 60,
                            "template": {
                                "spec": {
                                    "restartPolicy": "Never",
                                    "automountServiceAccountToken": False,
                                    "securityContext": pod_security_context,
                                    # Read in the file system's zone: no cross-zone transfer for the weights.
                                    "affinity": {
                                        "nodeAffinity": {
                                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                                "nodeSelectorTerms": [
                                                    {
                                                        "matchExpressions": [
                                                            {
                                                                "key": "topology.kubernetes.io/zone",
                                                                "operator": "In",
                                                                "values": list(zones),
                                                            }
                                                        ]
                                                    }
                                                ]
                                            }
                                        }
                                    },
                                    "containers": [
                                        {
                                            "name": "preload",
                                            "image": image,
                                            "imagePullPolicy": "IfNotPresent",
                                            "command": ["sh", "-c", PRELOAD_SCRIPT],
                                            "env": [
                                                {"name": "MODEL", "value": model.name},
                                                {"name": "ENCODINGS_DIR", "value": ENCODINGS_DIR},
                                                {"name": "ENCODINGS", "value": " ".join(harmony_encodings(model))},
                                            ],
                                            "resources": {
                                                "requests": {"cpu": "500m", "memory": "128Mi"},
                                                "limits": {"memory": "256Mi"},
                                            },
                                            "securityContext": container_security_context,
                                            "volumeMounts": [
                                                {
                                                    "name": "weights",
                                                    "mountPath": "/models",
                                                    "subPath": "models",
                                                    "readOnly": True,
                                                }
                                            ],
                                        }
                                    ],
                                    "volumes": [
                                        {
                                            "name": "weights",
                                            "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True},
                                        }
                                    ],
                                }
                            },
                        }
                    },
                },
            )
        )
