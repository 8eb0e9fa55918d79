"""Snapshots of every template and every chart, for review: a change to either shows as a diff here.

Update them only on purpose (`make snapshots`), then read the diff before committing it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from commands.plan import STACKS, unfold_manifest
from settings import load_stage_settings, names, stage_names
from tests.conftest import Assembly, render_charts

# Asset hashes change with every library bump that touches a bundled handler, not with our code.
ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")
# An asset's publishing destination, "<asset>:<account>-<region>-<8 hex of the destination>".
ASSET_DESTINATION = re.compile(r"(<asset-hash>:[\w-]+?-)[0-9a-f]{8}\b")


class TextSnapshot(SingleFileSnapshotExtension):
    _write_mode = WriteMode.TEXT

    def serialize(self, data: Any, **kwargs: Any) -> str:
        return str(data)


class JsonSnapshot(TextSnapshot):
    file_extension = "json"


class YamlSnapshot(TextSnapshot):
    file_extension = "yaml"


def reviewable(template: dict[str, Any]) -> str:
    """The template as JSON, minus what changes without a change of ours, with manifests unfolded."""
    resources = {
        logical_id: _unfold_manifest(resource)
        for logical_id, resource in template["Resources"].items()
        # Encoded library and construct versions, for AWS's usage statistics.
        if resource["Type"] != "AWS::CDK::Metadata"
    }
    text = ASSET_HASH.sub("<asset-hash>", json.dumps({**template, "Resources": resources}, indent=2, sort_keys=True))
    return ASSET_DESTINATION.sub(r"\1<destination-hash>", text)


def _unfold_manifest(resource: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes manifest is one JSON string in the template; as a JSON tree its diff reads line by line."""
    manifest = resource.get("Properties", {}).get("Manifest")
    if manifest is None:
        return resource
    return {**resource, "Properties": {**resource["Properties"], "Manifest": unfold_manifest(manifest)}}


def stage_stacks() -> list[tuple[str, str]]:
    """Each stage's stacks: the five every stage has, and one per model."""
    return [
        (stage, stack)
        for stage in stage_names()
        for stack in (*STACKS, *(names.model_stack_id(model.name) for model in load_stage_settings(stage).models))
    ]


@pytest.mark.parametrize(
    ("stage", "stack"), stage_stacks(), ids=[f"{stack}-{stage}" for stage, stack in stage_stacks()]
)
def test_template(assemblies: dict[str, Assembly], stage: str, stack: str, snapshot: SnapshotAssertion) -> None:
    assert reviewable(assemblies[stage].template(stack)) == snapshot.use_extension(JsonSnapshot)


def test_pipeline_template(pipeline: Assembly, snapshot: SnapshotAssertion) -> None:
    assert reviewable(pipeline.template("GpuInferencePipeline")) == snapshot.use_extension(JsonSnapshot)


@pytest.mark.parametrize("stage", stage_names())
def test_chart_manifests(stage: str, snapshot: SnapshotAssertion) -> None:
    rendered = "---\n".join(
        f"# chart {chart_id}\n" + yaml.safe_dump_all(objects, sort_keys=False)
        for chart_id, objects in render_charts(stage).items()
    )
    assert rendered == snapshot.use_extension(YamlSnapshot)
