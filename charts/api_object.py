"""Kubernetes objects of any kind, for the kinds cdk8s-plus has no class for (CRDs, RBAC, policies, ...)."""

from __future__ import annotations

from typing import Any

import cdk8s
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
    """An object with its top-level fields (spec, data, rules, ...) given whole, in the order given.

    cdk8s's ApiObject takes no body in Python, so each field goes in as one JSON patch. A cluster-scoped
    object in a namespaced chart drops the namespace the chart would otherwise stamp on it.
    """
    obj = cdk8s.ApiObject(scope, id, api_version=api_version, kind=kind, metadata=metadata)
    if cluster_scoped:
        obj.add_json_patch(cdk8s.JsonPatch.remove("/metadata/namespace"))
    for key, value in fields.items():
        obj.add_json_patch(cdk8s.JsonPatch.add(f"/{key}", value))
    return obj
