"""One deployment stage: the stacks that `cdk deploy` and the pipeline roll out together."""

from __future__ import annotations

from aws_cdk import Annotations, Environment, Stage, Tags
from constructs import Construct

from settings import names
from settings.schema import StageSettings
from settings.vllm_profiles import advisory_warning
from stacks.cluster import ClusterStack
from stacks.model_serving import ModelServingStack
from stacks.model_store import ModelStoreStack
from stacks.network import NetworkStack
from stacks.references import StageResources
from stacks.registry import RegistryStack
from stacks.reviewed_findings import acknowledge_reviewed_findings
from stacks.serving import ServingStack


class InferencePlatformStage(Stage):
    """Network, registry, model store, cluster and serving stacks of one stage, and a stack per model, built from
    its settings alone.

    The stateful stacks (registry, model store) depend on the network only, so CloudFormation
    creates them while the cluster comes up, and a cluster rebuild leaves them untouched.
    `pipeline_account`: the account of the pipeline that deploys the stage, which may start its
    smoke test; unset, only the stage's own account may.
    """

    def __init__(
        self, scope: Construct, id: str, *, settings: StageSettings, pipeline_account: str | None = None
    ) -> None:
        super().__init__(scope, id, env=Environment(account=settings.account, region=settings.region))
        # A production stage refuses `cdk destroy` until protection is switched off by hand.
        protect = settings.production
        network = NetworkStack(
            self,
            "Network",
            description="VPC, subnets, flow logs and endpoints for the GPU inference cluster",
            termination_protection=protect,
            availability_zones=settings.availability_zones,
            network=settings.network,
        )
        RegistryStack(
            self,
            "Registry",
            description="ECR pull-through cache of ECR Public for the cluster's images (stateful)",
            termination_protection=protect,
            settings=settings,
        )
        model_store = ModelStoreStack(
            self,
            "ModelStore",
            description="S3 bucket and FSx for Lustre file system for model weights (stateful)",
            termination_protection=protect,
            vpc=network.vpc,
            availability_zone=settings.model_store_zone,
            store=settings.model_store,
        )
        self.cluster = cluster = ClusterStack(
            self,
            "Cluster",
            description="EKS Auto Mode cluster for GPU inference",
            termination_protection=protect,
            vpc=network.vpc,
            inbound_subnets=network.inbound_subnets,
            cluster=settings.cluster,
            metrics=settings.metrics,
            observability=settings.observability,
            container_logs=settings.container_logs,
            image_cache_prefixes=settings.image_cache_prefixes,
            secrets_store=settings.secrets_store,
        )
        resources = StageResources(
            cluster=cluster.cluster,
            node_role=cluster.node_role,
            vpc=network.vpc,
            inbound_subnets=network.inbound_subnets,
            file_system=model_store.file_system,
            file_system_security_group=model_store.security_group,
            bucket=model_store.bucket,
            bucket_arn=model_store.bucket_arn_import,
            prometheus=cluster.prometheus,
        )
        self.serving = ServingStack(
            self,
            "Serving",
            description="What the models share on the cluster: GPU NodeClasses and NodePools, KEDA, the smoke test",
            termination_protection=protect,
            settings=settings,
            resources=resources,
            pipeline_account=pipeline_account,
        )
        self.models = self._model_stacks(settings, resources, protect)
        self._warn(settings)
        acknowledge_reviewed_findings(self, settings)
        Tags.of(self).add("project", "eks-gpu-inference")
        Tags.of(self).add("stage", id)

    def _warn(self, settings: StageSettings) -> None:
        """What synth says of the settings without refusing them: each on the stack it concerns."""
        if settings.unreachable:
            Annotations.of(self.cluster).add_warning_v2("gpu-inference:unreachable-cluster", settings.unreachable)
        if settings.gateway_images_uncached:
            Annotations.of(self.serving).add_warning_v2(
                "gpu-inference:gateway-images-uncached", settings.gateway_images_uncached
            )
        for model in settings.models:
            if advisories := advisory_warning(model.name, model.image, model.extra_args):
                Annotations.of(self.models[model.name]).add_warning_v2("gpu-inference:vllm-advisories", advisories)
            if settings.production and "@" not in model.image:
                # As production serves a reviewed commit of the weights, it should serve reviewed bytes of the image.
                Annotations.of(self.models[model.name]).add_warning_v2(
                    "gpu-inference:image-unpinned",
                    f"{model.name}: {model.image} is pinned by its tag alone, which its publisher may move: "
                    f"`make pin-images STAGE={settings.name}` adds the digest the tag names now "
                    "(docs/vllm-versions.md)",
                )

    def _model_stacks(
        self, settings: StageSettings, resources: StageResources, protect: bool
    ) -> dict[str, ModelServingStack]:
        """A stack per model, after the serving stack: the pools, KEDA and the stage's shared objects first; and a
        model moved here from the serving stack leaves it before its stack takes it over."""
        stacks = {}
        for model in settings.models:
            stack = stacks[model.name] = ModelServingStack(
                self,
                names.model_stack_id(model.name),
                description=f"{model.model} served by vLLM as {model.name}: its weights volume, import and replicas",
                termination_protection=protect,
                settings=settings,
                model=model,
                resources=resources,
                keda=self.serving.keda,
                gateway=self.serving.gateway.installed if self.serving.gateway else None,
            )
            stack.add_stack_dependency(self.serving)
        return stacks
