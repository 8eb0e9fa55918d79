"""The quality gates' scanners, run as a reviewer would run them, with findings a reader can act on.

Each function returns findings as lines that name the resource, the rule and how to fix or
acknowledge it; an empty list means the input passed.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import cfnlint
import jsonschema
import kubernetes_validate
import yaml

from settings.yaml_files import FAST_LOADER
from tests.conftest import ROOT, start_in_background

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CFN_LINT = ROOT / ".venv" / "bin" / "cfn-lint"


def cfn_lint(templates: list[Path]) -> list[str]:
    """cfn-lint with the project's .cfnlintrc.yaml: errors, warnings and informational findings.

    One process for all the templates: its start-up (the resource schemas) would cost each process as much
    again, and it runs beside checkov, which takes the other core."""
    process = start_in_background([str(CFN_LINT), "--format", "json", *map(str, templates)])
    stdout, stderr = process.communicate(timeout=300)
    if process.returncode and not stdout.strip().startswith("["):
        raise RuntimeError(f"cfn-lint did not run: {stderr}")
    return [
        f"{m['Level']} {m['Rule']['Id']} at {'/'.join(map(str, m['Location']['Path']))} in "
        f"{Path(m['Filename']).name}: {m['Message']} (fix the construct, or ignore the rule in .cfnlintrc.yaml "
        "with the reason)"
        for m in json.loads(stdout)
    ]


# Kubernetes' own name rules, which its OpenAPI schemas do not carry (k8s.io/apimachinery
# pkg/util/validation/validation.go).
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def is_dns1123_label(name: str) -> bool:
    """IsDNS1123Label: volume names, namespaces."""
    return len(name) <= 63 and re.fullmatch(_DNS1123_LABEL, name) is not None


def is_dns1035_label(name: str) -> bool:
    """IsDNS1035Label: Service names (ValidateServiceName); a DNS-1123 label that starts with a letter."""
    return len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) is not None


def is_dns1123_subdomain(name: str) -> bool:
    """IsDNS1123Subdomain: most object names (a ConfigMap's, say), and a qualified name's prefix."""
    return len(name) <= 253 and re.fullmatch(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*", name) is not None


def is_qualified_name(key: str) -> bool:
    """IsQualifiedName: label and annotation keys, an optional subdomain prefix and "/", then at most 63 of
    [A-Za-z0-9_.-], starting and ending alphanumeric."""
    parts = key.split("/")
    if len(parts) > 2 or (len(parts) == 2 and not is_dns1123_subdomain(parts[0])):
        return False
    return len(parts[-1]) <= 63 and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", parts[-1]) is not None


def is_port_name(name: str) -> bool:
    """IsValidPortName (an IANA service name): at most 15 of [a-z0-9-], a letter among them, no hyphen at
    either end or next to another."""
    return (
        len(name) <= 15
        and re.fullmatch(r"[-a-z0-9]+", name) is not None
        and re.search("[a-z]", name) is not None
        and not name.startswith("-")
        and not name.endswith("-")
        and "--" not in name
    )


def is_config_map_key(key: str) -> bool:
    """IsConfigMapKey: at most 253 of [-._a-zA-Z0-9], and not "." or ".."."""
    return len(key) <= 253 and re.fullmatch(r"[-._a-zA-Z0-9]+", key) is not None and key not in (".", "..")


def run_checkov(frameworks: list[str], directory: Path) -> subprocess.Popen[str]:
    """Start checkov (its own virtual environment: it pins an old `packaging`) on a folder."""
    if not CHECKOV.exists():
        raise FileNotFoundError(f"{CHECKOV} is missing: `make setup` installs it")
    return start_in_background(
        [
            str(CHECKOV),
            "-d",
            str(directory),
            "--framework",
            *frameworks,
            "--skip-download",
            "--output",
            "json",
            "--compact",  # no code blocks: a tenth of the output to parse, the same results
        ]
    )


def checkov_results(process: subprocess.Popen[str]) -> dict[str, list[dict[str, Any]]]:
    """passed_checks, failed_checks and skipped_checks of a checkov run started by run_checkov."""
    stdout, stderr = process.communicate(timeout=300)
    merged: dict[str, list[dict[str, Any]]] = {"passed_checks": [], "failed_checks": [], "skipped_checks": []}
    for report in _json_documents(stdout):
        # One report per scanned folder or framework; a list when there are several.
        for single in report if isinstance(report, list) else [report]:
            for key in merged:
                merged[key].extend(single.get("results", {}).get(key, []))
    if not any(merged.values()):
        raise RuntimeError(f"checkov {process.args!r} checked nothing (exit {process.returncode}): {stderr}")
    return merged


def _json_documents(text: str) -> list[Any]:
    """checkov may print several JSON documents one after another."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while position < len(text.rstrip()):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


def checkov_share(results: dict[str, list[dict[str, Any]]], folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """The part of a checkov run's results that concerns files under some folders."""
    roots = tuple(f"{folder.resolve()}/" for folder in folders)
    # Each file has hundreds of checks: its path is resolved once.
    files = {check["file_abs_path"] for checks in results.values() for check in checks}
    inside = {file for file in files if str(Path(file).resolve()).startswith(roots)}
    share = {key: [check for check in checks if check["file_abs_path"] in inside] for key, checks in results.items()}
    if not any(share.values()):
        raise RuntimeError(f"checkov checked nothing under {', '.join(roots)}")
    return share


def checkov_failures(results: dict[str, list[dict[str, Any]]], how_to_skip: str) -> list[str]:
    return [
        f"{check['check_id']} ({check['check_name']}) failed for {check['resource']} in "
        f"{Path(check['file_path']).name}: fix it, or {how_to_skip}"
        for check in results["failed_checks"]
    ]


def checkov_skips(results: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str]]:
    """The (check, reason) pairs a run skipped because the input says so."""
    return {(check["check_id"], check["check_result"]["suppress_comment"]) for check in results["skipped_checks"]}


def kubernetes_problems(obj: dict[str, Any], version: str) -> list[str]:
    """Strict validation (unknown fields are errors) against the Kubernetes OpenAPI schema of a version."""
    name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(map(str, error.path))
        return [
            f"{name}: {error.message} at {path or 'the top'} (Kubernetes {version} schema; "
            "fix the chart under charts/ that renders it)"
        ]
    return []


def karpenter_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Validation against the karpenter.sh/v1 schema published in @kubernetes-models/karpenter."""
    process = subprocess.run(
        ["node", str(ROOT / "tools" / "validate_karpenter.mjs")],
        input=json.dumps(objects),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [
        f"{obj['kind']} {obj['metadata']['name']}: {problem} (karpenter.sh/v1 schema; fix charts/gpu_node_pool.py)"
        for obj, problem in zip(objects, json.loads(process.stdout), strict=True)
        if problem
    ]


@functools.cache
def _crd_schema(path: Path, version: str, kind: str) -> dict[str, Any]:
    """A version's schema from a CustomResourceDefinition file (Helm template lines dropped; the kind's definition
    where the file holds several), made strict: an unknown field is an error, where the API server would silently
    drop it."""
    text = "\n".join(line for line in path.read_text().splitlines() if "{{" not in line)
    # libyaml's loader: KEDA's ScaledObject definition alone is 300 KB.
    definitions = [doc for doc in yaml.load_all(text, Loader=FAST_LOADER) if doc]
    crd = next(doc for doc in definitions if len(definitions) == 1 or doc["spec"]["names"]["kind"] == kind)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(served["schema"]["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_problems(obj: dict[str, Any], crd: Path) -> list[str]:
    """Validation of a custom resource against its definition, strict, as `path: message` lines."""
    validator = jsonschema.Draft7Validator(_crd_schema(crd, obj["apiVersion"].split("/")[1], obj["kind"]))
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(obj)]


CFN_SCHEMAS = Path(cfnlint.__file__).parent / "data" / "schemas"


@functools.cache
def cfn_resource_schema(resource_type: str) -> dict[str, Any]:
    """A resource type's whole CloudFormation resource schema, as cfn-lint bundles it (us-east-1's provider list):
    its properties, and which of them replace the resource when they change (createOnlyProperties)."""
    provider = json.loads((CFN_SCHEMAS / "providers" / "us-east-1.json").read_text())
    return dict(json.loads((CFN_SCHEMAS / "resources" / f"{provider[resource_type]}.json").read_text()))


@functools.cache
def _resource_schema(resource_type: str) -> dict[str, Any]:
    """A resource type's properties as a JSON schema that refuses unknown ones."""
    schema = cfn_resource_schema(resource_type)
    return {
        "type": "object",
        "properties": schema["properties"],
        "required": schema.get("required", []),
        "additionalProperties": False,
        "definitions": schema.get("definitions", {}),
    }


def resource_property_schema(resource_type: str, name: str) -> dict[str, Any]:
    """One property's schema in a resource type's CloudFormation schema."""
    return _resource_schema(resource_type)["properties"][name]


def cloudformation_problems(resource_type: str, properties: dict[str, Any]) -> list[str]:
    """A resource's properties against its CloudFormation resource schema (what cfn-lint's E30xx rules
    check), in this process: `path: message` lines."""
    validator = jsonschema.Draft7Validator(_resource_schema(resource_type))
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(properties)]
