"""One model's stack: its charts applied to the cluster, its pods' AWS identities, its web ACL, its outputs.

Each model has a stack of its own, so a stage's size is no longer capped by one template's 1,000,000 bytes, a
model's change deploys its stack alone, and the pipeline deploys the models side by side. It depends on the
stage's serving stack (stacks/serving.py), which holds what the models share: the GPU pools, KEDA, the smoke test
project. The model's own check, alarms and dashboard are here, so a model added or removed changes no other stack.
Construct ids are those the resources had in the serving stack, so their logical ids are unchanged
(docs/architecture.md, "One stack per model").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import cdk8s
from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from constructs import Construct, IConstruct

from charts import feature_chart_id, model_chart_id, model_charts
from charts.api_keys import SERVICE_ACCOUNT as API_KEYS_SERVICE_ACCOUNT
from charts.model_loader import COMPLETION_MARKER, IMPORT_SERVICE_ACCOUNT, has_import_job, import_folders, job_name_in
from charts.shared_compile_cache import SERVICE_ACCOUNT as COMPILE_CACHE_SERVICE_ACCOUNT
from charts.shared_compile_cache import compile_cache_folder
from charts.vllm_server import PORT
from settings import names
from settings.schema import ModelSettings, StageSettings
from stacks.observability import ModelAlarms, model_dashboard
from stacks.pod_identity import pod_identity
from stacks.references import StageResources, refer_strongly, secret_arn
from stacks.replica_count import ReplicaCountHandover
from stacks.smoke_test_project import ModelSmokeTest, smoke_test_start_command
from stacks.web_acl import rate_limited_web_acl
from workloads.smoke_test import chat_request

FEATURES = ("api-keys", "autoscaler", "exposure", "warm-spares", "compile-cache", "gateway")


class ModelServingStack(Stack):
    """Applies one model's charts through the cluster's kubectl handler.

    `keda`: the stage's KEDA release, which an autoscaled model's ScaledObject needs first (and last, to remove its
    finalizer). `import_job`: the name of the model's weights import Job, if it has one (the smoke test waits for it).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: StageSettings,
        model: ModelSettings,
        resources: StageResources,
        keda: IConstruct | None = None,
        gateway: Sequence[IConstruct] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        refer_strongly(self)
        target = resources.cluster_in(self, "ImportedCluster")
        acls = {model.name: rate_limited_web_acl(self, model).attr_arn} if model.exposure else {}
        charts = model_charts(cdk8s.App(), settings, model, resources.deployed(settings, acls))
        # Where each was in the serving stack (its own chart under "Cluster", a feature's at the top), so that their
        # logical ids stay what they were there.
        cluster_scope = Construct(self, "Cluster")
        manifests = {
            # Applied (`kubectl apply`), so a model moved here from the serving stack keeps its running objects.
            chart_id: eks.KubernetesManifest(
                self if getattr(chart, "applies_over_existing", False) else cluster_scope,
                chart_id,
                cluster=target,
                manifest=chart.to_json(),
                overwrite=True,
            )
            for chart_id, chart in charts.items()
        }
        server = manifests[model_chart_id(model.name)]
        objects = charts[model_chart_id(model.name)].to_json()
        # The replica count passes to the autoscaler (and back) without a reset (stacks/replica_count.py).
        ReplicaCountHandover(
            self,
            f"{names.output_id(model.name)}ReplicaCount",
            cluster=target,
            manifest=server,
            objects=objects,
            deployment_name=model.name,
            namespace=model.name,
        )
        for feature in FEATURES:
            if (chart_id := feature_chart_id(feature, model.name)) in manifests:
                # Into the model's namespace; and removed before it, as CloudFormation deletes in reverse order.
                manifests[chart_id].node.add_dependency(server)
        if model.autoscaling is not None:
            assert keda is not None  # the serving stack installs KEDA when a model is autoscaled
            # A ScaledObject needs KEDA's resource definitions, and KEDA to remove its finalizer when it goes.
            manifests[feature_chart_id("autoscaler", model.name)].node.add_dependency(keda)
        if settings.routed is not None:
            assert gateway is not None  # the serving stack installs the gateway's charts
            # The route and the pool are kinds of the gateway's charts, which must also outlive them.
            manifests[feature_chart_id("gateway", model.name)].node.add_dependency(*gateway)
        # EKS Pod Identity gives credentials only to pods created after their association (EKS User Guide, "Assign an
        # IAM role to a Kubernetes service account"): the import Job's pod and the replicas come after theirs.
        for identity in self._identities(settings, model, resources):
            server.node.add_dependency(identity)
        self.import_job = job_name_in(objects)
        ModelSmokeTest(self, "SmokeTest", settings=settings, model=model, import_job=self.import_job)
        if settings.observability.enabled:
            model_dashboard(self, settings, model, ModelAlarms(self, "Alarms", settings=settings, model=model))
        self._outputs(settings, model)

    def _identities(
        self, settings: StageSettings, model: ModelSettings, resources: StageResources
    ) -> list[eks.CfnPodIdentityAssociation]:
        """The AWS access of the model's pods: the import Job's to its folders of the bucket (and its Hub token), the
        replicas' to their API keys and their compile cache's folder."""
        prefix = names.output_id(model.name)
        # (id, service account, what for, statements) of each account that gets a role.
        wanted: list[tuple[str, str, str, list[iam.PolicyStatement]]] = []
        if has_import_job(model):
            wanted.append(
                (
                    f"{prefix}Import",
                    IMPORT_SERVICE_ACCOUNT,
                    f"Imports {model.model} into the model store",
                    import_statements(settings, model, resources.bucket_arn),
                )
            )
        # The replicas' account: their API keys' (whose role then holds the compile cache's grant too), or the
        # compile cache's.
        cache = compile_cache_statements(model, resources.bucket_arn) if model.compile_cache else []
        if model.api_keys_secret:
            keys = iam.PolicyStatement(
                # DescribeSecret: the provider checks the version before it reads (secrets_manager_provider.go).
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[secret_arn(settings, model.api_keys_secret)],
            )
            wanted.append(
                (f"{prefix}ApiKeys", API_KEYS_SERVICE_ACCOUNT, f"Reads {model.model}'s API keys", [keys, *cache])
            )
        elif cache:
            what = f"Shares {model.model}'s compile cache through the model bucket"
            wanted.append((f"{prefix}CompileCache", COMPILE_CACHE_SERVICE_ACCOUNT, what, cache))
        return [
            pod_identity(
                self,
                id_prefix,
                cluster_name=resources.cluster.cluster_name,
                namespace=model.name,
                service_account=account,
                description=description,
                statements=statements,
            )
            for id_prefix, account, description, statements in wanted
        ]

    def _outputs(self, settings: StageSettings, model: ModelSettings) -> None:
        output_id = names.output_id(model.name)
        CfnOutput(
            self,
            f"{output_id}SmokeTestCommand",
            description=f"Runs the smoke test of {model.model} alone, in the stage's VPC",
            value=smoke_test_start_command(settings, model),
        )
        CfnOutput(
            self,
            f"{output_id}PortForwardCommand",
            description=f"Forwards localhost:{PORT} to {model.model} (leave it running)",
            value=port_forward_command(model),
        )
        CfnOutput(
            self,
            f"{output_id}WeightsCommand",
            description=f"Shows where {model.model}'s weights are: the import's status and log, or what to upload",
            value=weights_command(model, self.import_job),
        )
        CfnOutput(
            self,
            f"{output_id}TestRequestCommand",
            description=f"Sends the test prompt to {model.model} through the port-forward",
            value=test_request_command(model),
        )


def import_statements(settings: StageSettings, model: ModelSettings, bucket_arn: str) -> list[iam.PolicyStatement]:
    """What a model's import Job may do: its folders of the bucket, its Hub token."""
    folders = import_folders(model)
    statements = [
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[f"{bucket_arn}/{folder}" for folder in folders],
        ),
        iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket_arn], conditions={"StringLike": {"s3:prefix": folders}}
        ),
    ]
    if model.hf_token_secret:
        statements.append(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"], resources=[secret_arn(settings, model.hf_token_secret)]
            )
        )
    return statements


def compile_cache_statements(model: ModelSettings, bucket_arn: str) -> list[iam.PolicyStatement]:
    """What the replicas may do to share their compile cache: their model's folder of the bucket."""
    folder = compile_cache_folder(model.name)
    return [
        iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[f"{bucket_arn}/{folder}*"]),
        iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket_arn], conditions={"StringLike": {"s3:prefix": [f"{folder}*"]}}
        ),
    ]


def weights_command(model: ModelSettings, job: str | None) -> str:
    """How to watch a model's weights arrive: the import Job's status and log, or where to upload them."""
    if not model.imported or job is None:
        return (
            f"aws s3 sync <weights folder> s3://<model bucket>/{model.weights_path}/ && "
            f"echo '{{}}' | aws s3 cp - s3://<model bucket>/{model.weights_path}/{COMPLETION_MARKER}"
        )
    return f"kubectl -n {model.name} get job {job} && kubectl -n {model.name} logs -f job/{job}"


def port_forward_command(model: ModelSettings) -> str:
    return f"kubectl -n {model.name} port-forward service/{model.service_name} {PORT}:{PORT}"


def test_request_command(model: ModelSettings) -> str:
    key = (
        '-H "Authorization: Bearer $(aws secretsmanager get-secret-value --secret-id '
        f'{model.api_keys_secret} --query SecretString --output text | jq -r \'."api-key"[0]\')" '
        if model.api_keys_secret
        else ""
    )
    return (
        f"curl -s http://localhost:{PORT}/v1/chat/completions -H 'Content-Type: application/json' {key}"
        f"-d '{json.dumps(chat_request(model.model))}' "
        # gpt-oss may answer in its reasoning only when the token budget runs out.
        "| jq -r '.choices[0] | .finish_reason, (.message | .content // .reasoning_content // .reasoning)'"
    )
