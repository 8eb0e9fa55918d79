"""The VPC that the cluster and its GPU nodes live in."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, Tags
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from settings.schema import NetworkSettings
from stacks.log_group import log_group

# The subnet group of internal load balancers and the metrics scraper (NetworkStack.inbound_subnets).
INBOUND_SUBNETS = "Inbound"


class NetworkStack(Stack):
    """VPC over explicit zones: public subnets for load balancers, private ones for nodes,
    flow logs, and endpoints that keep image pulls and credential calls off the internet."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        availability_zones: tuple[str, ...],
        network: NetworkSettings,
        **kwargs: Any,
    ) -> None:
        self._zones = list(availability_zones)
        super().__init__(scope, id, **kwargs)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(str(network.cidr)),
            # Explicit zones: synth needs no AZ lookup, so no credentials.
            availability_zones=list(availability_zones),
            nat_gateways=network.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                # Auto Mode gives every pod a VPC address: private subnets are sized for pods.
                ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19),
                # What reaches the pods from outside the cluster: internal load balancers and the
                # metrics scraper. No pod or node lives here, so a NetworkPolicy can admit these
                # subnets' addresses and no pod (charts/exposure.py). Added last: the others keep
                # their ranges.
                ec2.SubnetConfiguration(
                    name=INBOUND_SUBNETS, subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
        )
        # Auto Mode places internet-facing load balancers in subnets tagged elb, internal ones in internal-elb.
        for subnet in self.vpc.public_subnets:
            Tags.of(subnet).add("kubernetes.io/role/elb", "1")
        for subnet in self.inbound_subnets:
            Tags.of(subnet).add("kubernetes.io/role/internal-elb", "1")

        flow_logs = log_group(self, "FlowLogs", retention_days=network.flow_log_retention_days)
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))

        # Image layers come from S3 behind ECR; nodes and pods get credentials from STS.
        self.vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        # HTTPS from inside the VPC only. The CIDR is written out (not the VPC's CidrBlock
        # attribute) so reviewers and scanners see the actual range.
        endpoints_security_group = ec2.SecurityGroup(
            self,
            "EndpointsSecurityGroup",
            vpc=self.vpc,
            description="HTTPS from inside the VPC to its interface endpoints",
            allow_all_outbound=False,
        )
        endpoints_security_group.add_ingress_rule(
            ec2.Peer.ipv4(str(network.cidr)), ec2.Port.tcp(443), "HTTPS from the VPC"
        )
        for endpoint_id, service in (
            ("EcrApiEndpoint", ec2.InterfaceVpcEndpointAwsService.ECR),
            ("EcrDockerEndpoint", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
            ("StsEndpoint", ec2.InterfaceVpcEndpointAwsService.STS),
        ):
            self.vpc.add_interface_endpoint(
                endpoint_id, service=service, security_groups=[endpoints_security_group], open=False
            )

    @property
    def inbound_subnets(self) -> list[ec2.ISubnet]:
        """One per zone: for internal load balancers and the metrics scraper, never for pods."""
        return self.vpc.select_subnets(subnet_group_name=INBOUND_SUBNETS).subnets

    @property
    def availability_zones(self) -> list[str]:
        """The stage's zones. Constructs that ask the stack (endpoints do) would otherwise look them up in
        the account at synth, which needs credentials once the stage names its account."""
        return self._zones
