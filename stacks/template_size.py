"""CloudFormation's limit on a template's size, checked at synth: a stage with many models would otherwise
synthesize a Serving stack that CloudFormation refuses only when it is deployed.

CloudFormation takes a template of at most 1,000,000 bytes from S3, where the CDK uploads it ("Template
may not exceed 1000000 bytes in size"; AWS CloudFormation User Guide, "Quotas": template body size in an
Amazon S3 object, 1 MB). Each model adds its manifests and, with metrics, its alarms to the Serving stack:
about 55 KB in dev, 80 KB in prod. (aws-cdk-lib only warns, from 80 % of the limit; cfn-lint's E1002 checks
the same figure, cfnlint/helpers.py LIMITS["template"]["body"] = 1000000, but only where the test suite runs.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii

TEMPLATE_MAX_BYTES = 1_000_000
RULE = "TemplateSize"


@dataclass(frozen=True)
class Oversized:
    path: Path
    size: int
    largest_resource: str


def oversized_templates(paths: list[str]) -> list[Oversized]:
    """The templates over CloudFormation's limit, each with its largest resource (what to move or remove)."""
    found = []
    for path in map(Path, paths):
        size = path.stat().st_size
        if size > TEMPLATE_MAX_BYTES:
            resources: dict[str, Any] = json.loads(path.read_text()).get("Resources", {})
            largest = max(resources, key=lambda name: len(json.dumps(resources[name])), default="")
            found.append(Oversized(path, size, largest))
    return found


@jsii.implements(cdk.IPolicyValidationPluginBeta1)
class TemplateSizeLimit:
    """A validation plugin (like cdk-nag's, app.add_checks): a template over the limit stops the synth."""

    @property
    def name(self) -> str:
        return "CloudFormationQuotas"

    @property
    def rule_ids(self) -> list[str]:
        return [RULE]

    @property
    def version(self) -> str | None:
        return None

    def validate(self, context: cdk.IPolicyValidationContextBeta1) -> cdk.PolicyValidationPluginReportBeta1:
        violations = [
            cdk.PolicyViolationBeta1(
                rule_name=RULE,
                description=(
                    f"{found.path.name} is {found.size:,} bytes; CloudFormation takes at most "
                    f"{TEMPLATE_MAX_BYTES:,}. Its largest resource is {found.largest_resource}"
                ),
                violating_resources=[
                    cdk.PolicyViolatingResourceBeta1(
                        resource_logical_id=found.largest_resource,
                        template_path=str(found.path),
                        locations=["Resources"],
                    )
                ],
                fix="serve fewer models in the stage (each adds 55 to 80 KB to its Serving stack), or split them "
                "between stages",
            )
            for found in oversized_templates(context.template_paths)
        ]
        return cdk.PolicyValidationPluginReportBeta1(success=not violations, violations=violations)
