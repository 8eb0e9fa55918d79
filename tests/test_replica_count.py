"""Turning autoscaling on (and off) for a running model keeps its replica count: each deploy, as the CDK kubectl
handler applies it, against a stand-in for kubectl's client-side apply."""

from __future__ import annotations

import copy
import json
from typing import Any

import cdk8s
import pytest

from charts import DeployedResources, build_charts
from commands.plan import unfold, unfold_manifest
from settings import parse_stage_settings
from stacks.replica_count import LAST_APPLIED, MANIFEST_DIGEST, PRUNE_LABEL_PREFIX, last_applied_without_replicas
from tests.conftest import Assembly, stage_data
from tests.test_serving import MANIFEST_TYPE

PRUNE_LABEL = f"{PRUNE_LABEL_PREFIX}c8test"
DELETE = None


def three_way_patch(original: dict[str, Any], modified: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl apply` sends: fields of the last applied configuration (`original`) that the new one lacks are
    deleted, and fields of the new one that the live object (`current`) lacks or holds otherwise are set
    (k8s.io/apimachinery pkg/util/strategicpatch CreateThreeWayMergePatch; for maps and scalars, as here, its
    strategic and JSON merge patches agree)."""
    patch: dict[str, Any] = {}
    for key in original.keys() - modified.keys():
        patch[key] = DELETE
    for key, value in modified.items():
        now = current.get(key)
        if isinstance(value, dict) and isinstance(now, dict):
            was = original[key] if isinstance(original.get(key), dict) else {}
            if nested := three_way_patch(was, value, now):
                patch[key] = nested
        elif now != value:
            patch[key] = value
    return patch


def merged(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch applied (RFC 7386): null deletes."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is DELETE:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class ClientSideApply:
    """One Deployment as the API server keeps it, changed as the kubectl handler and the autoscaler change it."""

    def __init__(self) -> None:
        self.live: dict[str, Any] | None = None

    @staticmethod
    def _defaulted(deployment: dict[str, Any]) -> dict[str, Any]:
        # The API server defaults a Deployment's missing replicas to 1 (Kubernetes docs, "Deployments": replicas).
        deployment["spec"].setdefault("replicas", 1)
        return deployment

    def create(self, config: dict[str, Any]) -> None:
        """`kubectl create --save-config`: the handler's Create."""
        self.live = self._defaulted(merged(config, {"metadata": {"annotations": {LAST_APPLIED: json.dumps(config)}}}))

    def apply(self, config: dict[str, Any]) -> None:
        """`kubectl apply`: the handler's Update."""
        assert self.live is not None
        original = json.loads(self.live["metadata"]["annotations"][LAST_APPLIED])
        patch = three_way_patch(original, config, self.live)
        patch.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = json.dumps(config)
        self.live = self._defaulted(merged(self.live, patch))

    def patch(self, patch: dict[str, Any]) -> None:
        """`kubectl patch --type merge`: the KubernetesPatch."""
        assert self.live is not None
        self.live = merged(self.live, patch)

    @property
    def replicas(self) -> int:
        assert self.live is not None
        return int(self.live["spec"]["replicas"])


def deployment_of(data: dict[str, Any]) -> dict[str, Any]:
    """prod's model Deployment as its chart renders it from `data`, with the kubectl handler's prune label."""
    settings = parse_stage_settings("prod", data)
    objects = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))["Model-gpt-oss-20b"]
    (deployment,) = [o for o in objects.to_json() if o["kind"] == "Deployment"]
    deployment["metadata"]["labels"] = {PRUNE_LABEL: "", **deployment["metadata"]["labels"]}
    return deployment


def deploy(cluster: ClientSideApply, deployment: dict[str, Any], *, handover: bool = True) -> None:
    """One deploy of the model's chart: applied (created the first time), then the handover patch."""
    (cluster.create if cluster.live is None else cluster.apply)(deployment)
    if handover:
        last_applied = json.dumps(last_applied_without_replicas(deployment, prune_label=None))
        cluster.patch({"metadata": {"annotations": {LAST_APPLIED: last_applied, MANIFEST_DIGEST: "digest"}}})


def settings_data(*, autoscaling: bool, env: str = "") -> dict[str, Any]:
    data = stage_data("prod")
    model = data["models"][0]
    if not autoscaling:
        del model["autoscaling"]
    if env:
        model["env"] = {**model.get("env", {}), "EXTRA": env}
    return data


@pytest.mark.parametrize("handover", [True, False])
def test_turning_autoscaling_on_and_off_keeps_the_replica_count(handover: bool) -> None:
    cluster = ClientSideApply()
    deploy(cluster, deployment_of(settings_data(autoscaling=False)), handover=handover)
    assert cluster.replicas == 2  # replicas: 2
    deploy(cluster, deployment_of(settings_data(autoscaling=True)), handover=handover)
    if not handover:
        # What a client-side apply does on its own: the field leaves the manifest, the count falls to 1.
        assert cluster.replicas == 1
        return
    assert cluster.replicas == 2  # the autoscaler takes over from the count the model had
    cluster.live["spec"]["replicas"] = 3  # type: ignore[index]  # the HorizontalPodAutoscaler scales out
    deploy(cluster, deployment_of(settings_data(autoscaling=True, env="1")))
    assert cluster.replicas == 3  # the next deploy leaves the autoscaler's count alone
    deploy(cluster, deployment_of(settings_data(autoscaling=False)))
    assert cluster.replicas == 2  # autoscaling off: the manifest's count again


def test_each_models_handover_rewrites_what_its_manifest_applied(prod: Assembly) -> None:
    serving = prod.model_template()["Resources"]
    (manifest_id,) = [k for k, v in serving.items() if v["Type"] == MANIFEST_TYPE and "Modelgptoss20b" in k]
    (patch,) = [v for v in serving.values() if v["Type"] == "Custom::AWSCDK-EKS-KubernetesPatch"]
    assert patch["DependsOn"] == [manifest_id]  # after the chart is applied
    properties = patch["Properties"]
    assert (properties["ResourceName"], properties["ResourceNamespace"], properties["PatchType"]) == (
        "deployment/gpt-oss-20b",
        "gpt-oss-20b",
        "merge",
    )
    applied = unfold_manifest(serving[manifest_id]["Properties"]["Manifest"])
    (deployment,) = [o for o in applied if o["kind"] == "Deployment"]
    annotations = unfold(properties["ApplyPatchJson"])["metadata"]["annotations"]
    # Exactly what the handler applied (its prune label included), without the count.
    assert json.loads(annotations[LAST_APPLIED]) == last_applied_without_replicas(deployment, prune_label=None)
    assert len(annotations[MANIFEST_DIGEST]) == 16
