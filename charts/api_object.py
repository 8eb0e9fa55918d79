"""What cdk8s-plus and the typed `k8s` imports leave out: objects of the custom resources' kinds, and a
cluster-scoped object in a namespaced chart.

Built-in kinds are cdk8s-plus classes, or the typed `k8s.Kube*` classes where cdk8s-plus lacks a field (each
such use says which); `api_object` is only for custom resources (Karpenter, EKS Auto Mode, KEDA, the Secrets
Store CSI driver), whose schemas cdk8s has not imported here.
"""

from __future__ import annotations

from typing import Any, cast

import cdk8s
import cdk8s_plus_30 as kplus
from constructs import Construct


def api_object(
    scope: Construct,
    id: str,
    api_version: str,
    kind: str,
    metadata: cdk8s.ApiObjectMetadata,
    *,
    cluster_scoped: bool = False,
    **fields: Any,
) -> cdk8s.ApiObject:
    """A custom resource with its top-level fields (spec, data, rules, ...) given whole, in the order given.

    cdk8s's ApiObject takes no body in Python, so each field goes in as one JSON patch.
    """
    obj = cdk8s.ApiObject(scope, id, api_version=api_version, kind=kind, metadata=metadata)
    if cluster_scoped:
        without_namespace(obj)
    for key, value in fields.items():
        obj.add_json_patch(cdk8s.JsonPatch.add(f"/{key}", value))
    return obj


def without_namespace(obj: cdk8s.ApiObject) -> None:
    """A cluster-scoped object (a Namespace, a PersistentVolume, ...) in a namespaced chart: the namespace the
    chart stamps on its objects comes off."""
    obj.add_json_patch(cdk8s.JsonPatch.remove("/metadata/namespace"))


def allow(role: kplus.Role, verbs: list[str], *resources: object) -> None:
    """A rule on a cdk8s-plus role. jsii's ApiResource implements IApiResource but leaves out its optional
    resource_name, which mypy's protocol check asks for: the cast says what jsii already accepts."""
    role.allow(verbs, *(cast(kplus.IApiResource, resource) for resource in resources))
