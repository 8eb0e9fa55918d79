"""What the post-deploy smoke test (workloads/smoke_test.py) may do in a namespace it checks: a model's, or the
gateway's."""

from __future__ import annotations

import cdk8s
import cdk8s_plus_30 as kplus

from charts.api_object import allow

# The Kubernetes group of the post-deploy smoke test's role (an EKS access entry maps it here): in each namespace it
# checks it may watch the weights import and the rollout, and port-forward to the Service, nothing else.
SMOKE_TEST_GROUP = "smoke-testers"
SMOKE_TEST_RULES: list[tuple[list[str], list[kplus.ApiResource]]] = [
    (["get", "list", "watch"], [kplus.ApiResource.DEPLOYMENTS, kplus.ApiResource.REPLICA_SETS, kplus.ApiResource.JOBS]),
    (["get", "list"], [kplus.ApiResource.PODS, kplus.ApiResource.SERVICES]),
    (["create"], [kplus.ApiResource.custom(api_group="", resource_type="pods/portforward")]),
    # The load balancer's address, for a model (or the gateway) exposed inside the VPC (charts/exposure.py).
    (["get"], [kplus.ApiResource.INGRESSES]),
]


def smoke_test_access(chart: cdk8s.Chart) -> None:
    """The smoke test's Role in the chart's namespace, bound to its group."""
    role = kplus.Role(chart, "SmokeTestRole", metadata=cdk8s.ApiObjectMetadata(name="smoke-test"))
    for verbs, resources in SMOKE_TEST_RULES:
        allow(role, verbs, *resources)
    binding = kplus.RoleBinding(
        chart, "SmokeTestBinding", metadata=cdk8s.ApiObjectMetadata(name="smoke-test"), role=role
    )
    binding.add_subjects(kplus.Group.from_name(chart, "SmokeTesters", SMOKE_TEST_GROUP))
