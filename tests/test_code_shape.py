"""The code's shape, as a maintainer needs it: small functions and classes, and packages that import only what
sits below them (docs/architecture.md)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.conftest import ROOT

PRODUCT = ("app.py", "settings", "charts", "stacks", "commands", "workloads", "tools")
FUNCTION_MAX_LINES = 80
CLASS_MAX_LINES = 250
# The settings schema: one pydantic model per settings block, its validators beside its fields.
SCHEMA = "settings/schema.py"


@functools.cache
def product_modules() -> dict[str, ast.Module]:
    paths = [ROOT / "app.py", *(path for top in PRODUCT[1:] for path in (ROOT / top).rglob("*.py"))]
    return {str(path.relative_to(ROOT)): ast.parse(path.read_text()) for path in paths if "vendor" not in path.parts}


def lines(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def test_no_function_is_longer_than_a_screen_and_no_class_than_a_few() -> None:
    long = []
    for module, tree in product_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines(node) > FUNCTION_MAX_LINES:
                long.append(f"{module}: function {node.name}, {lines(node)} lines")
            if isinstance(node, ast.ClassDef) and lines(node) > CLASS_MAX_LINES and module != SCHEMA:
                long.append(f"{module}: class {node.name}, {lines(node)} lines")
    assert long == []


def imported_packages(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


# Who may import whom: each layer only what lies below it (settings at the bottom).
MAY_IMPORT = {
    "settings": {"settings"},
    "workloads": {"workloads"},
    "charts": {"charts", "settings", "workloads"},
    "stacks": {"stacks", "charts", "settings", "workloads"},
    "commands": {"commands", "stacks", "charts", "settings", "workloads"},
    "tools": {"tools", "app", "stacks", "charts", "settings"},
    "app.py": {"stacks", "settings"},
}


def test_each_package_imports_only_what_lies_below_it() -> None:
    ours = {"settings", "workloads", "charts", "stacks", "commands", "tools", "app", "tests"}
    wrong = []
    for module, tree in product_modules().items():
        package = module.split("/")[0]
        for imported in imported_packages(tree) & ours:
            if imported not in MAY_IMPORT[package]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_no_two_modules_share_a_name() -> None:
    names = [Path(module).name for module in product_modules() if not module.endswith("__init__.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []


def is_custom_resource(api_version: str) -> bool:
    """An apiVersion outside Kubernetes's own groups: the core group ("v1"), dotless groups (apps, batch, policy,
    ...) and *.k8s.io are built in; *.x-k8s.io, like every other domain, belongs to an add-on's custom resources."""
    group = api_version.rpartition("/")[0]
    built_in = group == "" or "." not in group or (group.endswith(".k8s.io") and not group.endswith(".x-k8s.io"))
    # The Gateway API and the Inference Extension are k8s.io groups that clusters get as CustomResourceDefinitions
    # (charts/vendor/envoy-gateway/charts/crds, charts/vendor/inference-extension-crds).
    return not built_in or group in ("gateway.networking.k8s.io", "inference.networking.k8s.io")


def test_built_in_kinds_are_cdk8s_plus_or_typed_objects_and_raw_ones_only_custom_resources() -> None:
    raw = []
    for module, tree in product_modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "ApiObject" and module != "charts/api_object.py":
                raw.append(f"{module}:{node.lineno}: cdk8s.ApiObject outside charts/api_object.py")
            if name == "api_object":
                version = node.args[2]
                if not (isinstance(version, ast.Constant) and is_custom_resource(str(version.value))):
                    raw.append(f"{module}:{node.lineno}: api_object for {ast.unparse(version)}")
    assert raw == []


def test_the_custom_resource_rule_tells_groups_apart() -> None:
    assert [is_custom_resource(v) for v in ("v1", "apps/v1", "networking.k8s.io/v1", "policy/v1")] == [False] * 4
    assert [is_custom_resource(v) for v in ("karpenter.sh/v1", "secrets-store.csi.x-k8s.io/v1")] == [True, True]
    assert is_custom_resource("gateway.networking.k8s.io/v1")
    assert is_custom_resource("inference.networking.k8s.io/v1")
