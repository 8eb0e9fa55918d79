"""One deployment stage: the stacks that `cdk deploy` and the pipeline roll out together."""

from __future__ import annotations

from aws_cdk import Environment, Stage, Tags
from constructs import Construct

from settings.model import StageSettings
from stacks.cluster import ClusterStack
from stacks.network import NetworkStack
from stacks.reviewed_findings import acknowledge_reviewed_findings
from stacks.serving import ServingStack


class InferencePlatformStage(Stage):
    """Network, cluster and serving stacks of one stage, built from its settings alone."""

    def __init__(self, scope: Construct, id: str, *, settings: StageSettings) -> None:
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
        cluster = ClusterStack(
            self,
            "Cluster",
            description="EKS Auto Mode cluster for GPU inference",
            termination_protection=protect,
            vpc=network.vpc,
            cluster=settings.cluster,
        )
        ServingStack(
            self,
            "Serving",
            description="GPU NodePool and vLLM model servers, applied to the cluster",
            termination_protection=protect,
            cluster=cluster.cluster,
            gpu_node_pool=settings.gpu_node_pool,
            models=settings.models,
        )
        acknowledge_reviewed_findings(self)
        Tags.of(self).add("project", "eks-gpu-inference")
        Tags.of(self).add("stage", id)
