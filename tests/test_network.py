"""NetworkStack: the VPC the cluster and its GPU nodes live in."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from tests.conftest import Assembly, properties


def tag(properties: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in properties.get("Tags", []) if t["Key"] == key), None)


def subnets(template: dict[str, Any], subnet_type: str) -> list[dict[str, Any]]:
    return [s for s in properties(template, "AWS::EC2::Subnet") if tag(s, "aws-cdk:subnet-type") == subnet_type]


def test_vpc_spans_exactly_the_configured_zones(dev: Assembly) -> None:
    network = dev.template("Network")
    for subnet_type in ("Public", "Private"):
        zones = sorted(s["AvailabilityZone"] for s in subnets(network, subnet_type))
        assert zones == ["us-west-2a", "us-west-2b", "us-west-2c"]
    Template.from_json(network).has_resource_properties("AWS::EC2::VPC", {"CidrBlock": "10.0.0.0/16"})


def test_public_subnets_are_tagged_for_internet_facing_load_balancers(dev: Assembly) -> None:
    network = dev.template("Network")
    assert all(tag(s, "kubernetes.io/role/elb") == "1" for s in subnets(network, "Public"))
    assert all(tag(s, "kubernetes.io/role/internal-elb") == "1" for s in subnets(network, "Private"))
    assert not any(tag(s, "kubernetes.io/role/elb") for s in subnets(network, "Private"))


def test_private_subnets_have_egress_through_nat(dev: Assembly) -> None:
    routes = properties(dev.template("Network"), "AWS::EC2::Route")
    assert sum("NatGatewayId" in route for route in routes) == 3


@pytest.mark.parametrize(("stage", "count"), [("dev", 1), ("prod", 3)])
def test_nat_gateways_follow_the_settings(assemblies: dict[str, Assembly], stage: str, count: int) -> None:
    Template.from_json(assemblies[stage].template("Network")).resource_count_is("AWS::EC2::NatGateway", count)


@pytest.mark.parametrize(("stage", "days"), [("dev", 90), ("prod", 365)])
def test_flow_logs_go_to_a_log_group_with_retention(assemblies: dict[str, Assembly], stage: str, days: int) -> None:
    network = Template.from_json(assemblies[stage].template("Network"))
    network.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"},
    )
    network.has_resource("AWS::Logs::LogGroup", {"Properties": {"RetentionInDays": days}, "DeletionPolicy": "Retain"})


def test_s3_gateway_endpoint_serves_the_private_subnets(dev: Assembly) -> None:
    Template.from_json(dev.template("Network")).has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Gateway",
            "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
            "RouteTableIds": Match.array_with([{"Ref": Match.string_like_regexp("PrivateSubnet1RouteTable")}]),
        },
    )


@pytest.mark.parametrize("service", ["ecr.api", "ecr.dkr", "sts"])
def test_interface_endpoints_keep_image_pulls_and_credentials_private(dev: Assembly, service: str) -> None:
    Template.from_json(dev.template("Network")).has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Interface",
            "ServiceName": f"com.amazonaws.us-west-2.{service}",
            "PrivateDnsEnabled": True,
            "SubnetIds": Match.array_with([{"Ref": Match.string_like_regexp("PrivateSubnet")}]),
        },
    )
