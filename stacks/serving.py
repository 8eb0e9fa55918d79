"""What a stage's models share on the cluster, applied as cdk8s charts and a Helm release; and the smoke test
project (stacks/smoke_test_project.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cdk8s
from aws_cdk import Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from charts import GATEWAY_CHART, GATEWAY_WEB_ACL, stage_charts
from settings import names
from settings.schema import StageSettings
from stacks.inference_gateway import InferenceGateway
from stacks.metrics import ManagedPrometheus
from stacks.model_store import LUSTRE_PORTS
from stacks.observability import PrometheusDataSource, stage_dashboard
from stacks.pod_identity import pod_identity
from stacks.references import StageResources, optional_feature, refer_strongly
from stacks.smoke_test_project import add_smoke_test

# KEDA 2.20.2's Helm chart, vendored from kedacore/charts (charts/vendor/keda/VENDORED.md); its
# operator's service account, which the chart names keda-operator in the release's namespace.
KEDA_CHART = Path(__file__).resolve().parent.parent / "charts" / "vendor" / "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"


class ServingStack(Stack):
    """What a stage's models share, applied to the cluster: the GPU pools, their rotation, the network policy
    controller and KEDA; the dashboard and alarms; the Lustre rules between the nodes and the file system; the smoke
    test. Each model has a stack of its own (stacks/model_serving.py), which depends on this one.

    The cluster is imported by name, so the manifests live in this stack's template: a new pool changes this stack,
    never the cluster's. The Lustre rules live here too, so neither the cluster nor the model store depends on the
    other.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: StageSettings,
        resources: StageResources,
        pipeline_account: str | None = None,
        **kwargs: Any,
    ) -> None:
        """`pipeline_account`: the account whose pipeline may start the smoke test; unset, this stage's own."""
        super().__init__(scope, id, **kwargs)
        refer_strongly(self)
        self._settings, self._resources = settings, resources
        target = resources.cluster_in(self)
        # The stage's inference gateway, when it has one: installed before the objects that use its kinds.
        self.gateway = (
            InferenceGateway(self, "InferenceGateway", settings=settings, resources=resources, target=target)
            if settings.gateway
            else None
        )
        acls = {GATEWAY_WEB_ACL: arn} if self.gateway and (arn := self.gateway.web_acl_arn) else {}
        for chart_id, chart in stage_charts(cdk8s.App(), settings, resources.deployed(settings, acls)).items():
            if getattr(chart, "applies_over_existing", False):
                # A chart whose objects may already exist is applied (`kubectl apply`), not created.
                eks.KubernetesManifest(self, chart_id, cluster=target, manifest=chart.to_json(), overwrite=True)
            else:
                manifest = target.add_cdk8s_chart(chart_id, chart)
                if chart_id == GATEWAY_CHART and self.gateway is not None:
                    manifest.node.add_dependency(*self.gateway.installed)
        prometheus = resources.prometheus
        self.keda: eks.HelmChart | None = None
        if settings.keda:
            assert prometheus is not None  # KEDA runs where metrics do
            self.keda = self._keda(target, resources.cluster, prometheus)
        if settings.observability.enabled:
            # settings: observability reads the Prometheus workspace
            assert prometheus is not None
            query_url = resources.query_url(settings.region)
            assert query_url is not None
            source = PrometheusDataSource(
                self,
                "PrometheusDataSource",
                settings=settings,
                workspace_arn=optional_feature(prometheus.workspace.attr_arn),
                query_url=query_url,
            )
            stage_dashboard(self, settings, source)
        self._lustre_between(
            resources.file_system_security_group.security_group_id, resources.cluster.cluster_security_group_id
        )
        self.smoke_test = add_smoke_test(self, settings, resources, pipeline_account)

    def _keda(self, target: eks.ICluster, cluster: eks.Cluster, prometheus: ManagedPrometheus) -> eks.HelmChart:
        """KEDA from its chart in the repository (charts/vendor/keda, no download at deploy), with the AWS
        identity its operator signs Prometheus queries with: read access to the workspace, through EKS
        Pod Identity.

        The association comes first: Pod Identity gives credentials to pods created after it.
        """
        identity = pod_identity(
            self,
            "KedaOperator",
            cluster_name=cluster.cluster_name,
            namespace=names.KEDA_NAMESPACE,
            service_account=KEDA_SERVICE_ACCOUNT,
            description="KEDA's operator reads vLLM's queue from Amazon Managed Service for Prometheus",
            statements=[
                iam.PolicyStatement(
                    actions=["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata"],
                    resources=[optional_feature(prometheus.workspace.attr_arn)],
                )
            ],
        )
        keda = eks.HelmChart(
            self,
            "Keda",
            cluster=target,
            chart_asset=s3_assets.Asset(self, "KedaChart", path=str(KEDA_CHART)),
            release="keda",
            namespace=names.KEDA_NAMESPACE,
            create_namespace=True,
            wait=True,
            timeout=Duration.minutes(10),
        )
        keda.node.add_dependency(identity)
        return keda

    def _lustre_between(self, file_system_group_id: str, node_group_id: str) -> None:
        """Lustre traffic between the file system and the nodes (which carry the cluster security group), both ways.

        Clients connect to the servers, and the servers open connections back to the clients
        (callbacks, recovery), so each side admits the other on the Lustre ports and may reach
        it: the rules the FSx for Lustre User Guide gives for the file system's and the clients'
        security groups ("File system access control with Amazon VPC").
        """
        # Logical ids stay as first deployed: a renamed rule would be created while its twin still
        # exists, and EC2 refuses duplicate rules.
        sides = (
            # EC2 takes no apostrophe in a rule's description (EC2 API Reference, IpRange Description); a changed
            # description updates the rule in place (AWS::EC2::SecurityGroupIngress: not a create-only property).
            ("LustreFromNodes", "LustreToNodes", file_system_group_id, node_group_id, "the cluster nodes"),
            ("LustreFromFileSystem", "LustreToFileSystem", node_group_id, file_system_group_id, "the file system"),
        )
        for index, port in enumerate(LUSTRE_PORTS):
            ports = port.to_rule_json()
            for ingress_id, egress_id, group, peer, other in sides:
                ec2.CfnSecurityGroupIngress(
                    self,
                    f"{ingress_id}{index}",
                    group_id=group,
                    source_security_group_id=peer,
                    ip_protocol="tcp",
                    from_port=ports["fromPort"],
                    to_port=ports["toPort"],
                    description=f"Lustre from {other}",
                )
                ec2.CfnSecurityGroupEgress(
                    self,
                    f"{egress_id}{index}",
                    group_id=group,
                    destination_security_group_id=peer,
                    ip_protocol="tcp",
                    from_port=ports["fromPort"],
                    to_port=ports["toPort"],
                    description=f"Lustre to {other}",
                )
