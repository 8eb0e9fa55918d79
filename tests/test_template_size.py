"""CloudFormation's template size limit, checked at synth (stacks/template_size.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import cfnlint.helpers
import pytest

from app import add_checks, project_app
from stacks.template_size import TEMPLATE_MAX_BYTES, oversized_templates


def template_of_size(path: Path, size: int) -> Path:
    """A template of exactly `size` bytes: a small resource and a large one, padded."""
    template: dict[str, Any] = {
        "Resources": {"Small": {"Type": "AWS::SNS::Topic"}, "Large": {"Type": "AWS::SSM::Parameter"}}
    }
    padding = size - len(json.dumps(template)) - len(', "Properties": {"Value": ""}')
    template["Resources"]["Large"]["Properties"] = {"Value": "x" * padding}
    path.write_text(json.dumps(template))
    assert path.stat().st_size == size
    return path


def test_the_limit_is_the_one_cfn_lint_holds_templates_to() -> None:
    assert cfnlint.helpers.LIMITS["template"]["body"] == TEMPLATE_MAX_BYTES


@pytest.mark.parametrize(("size", "refused"), [(TEMPLATE_MAX_BYTES, False), (TEMPLATE_MAX_BYTES + 1, True)])
def test_the_limit_is_a_million_bytes(tmp_path: Path, size: int, refused: bool) -> None:
    found = oversized_templates([str(template_of_size(tmp_path / "t.template.json", size))])
    assert [(f.size, f.largest_resource) for f in found] == ([(size, "Large")] if refused else [])


def test_the_app_stops_a_synth_whose_template_is_over_the_limit(tmp_path: Path) -> None:
    # The checks every synth runs (app.add_checks), the pipeline's nested stages included: the session's
    # synths of every stage and of the pipeline pass them.
    app = project_app(outdir=str(tmp_path))
    add_checks(app)
    stack = cdk.Stack(app, "Big")
    cdk.CfnResource(stack, "Manifest", type="AWS::SSM::Parameter", properties={"Value": "x" * TEMPLATE_MAX_BYTES})
    with pytest.raises(RuntimeError, match="ValidationFailed") as stopped:
        app.synth()
    message = str(stopped.value)
    assert re.search(r"Big.template.json is 1,000,[0-9]{3} bytes;", message)
    assert "CloudFormation takes at most 1,000,000. Its largest resource is Manifest" in message
    assert "serve fewer models in the stage" in message
