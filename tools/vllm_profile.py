"""`make vllm-profile VERSION=x.y.z`: what a vLLM release offers, read from its wheel, into its profile.

The wheel on PyPI is the release's own text. From it come the facts the project depends on and that change between
versions: the `vllm serve` flags (the options vLLM's parsers add, and the fields of the dataclasses its parsers are
built from), the VLLM_* environment variables (the keys of `environment_variables` in vllm/envs.py), the Prometheus
metric names (vllm/v1/metrics/), the attention backends (the members of the backends' registry enum), the largest
max_num_batched_tokens `vllm serve` defaults to on a GPU (vllm/engine/arg_utils.py), the torch it
pins, the CUDA major version its kernels link (`libcudart.so.<major>` in its extensions) and the harmony package
it requires. They are written to settings/catalog/vllm/<version>.yaml, whole; what a person reviews (the images,
their CUDA, the advisories) is in settings/catalog/vllm_profiles.yaml. A new version is a reviewable diff.

    make vllm-profile VERSION=0.33.0            # downloads the wheel from PyPI (pip download --no-deps)
    make vllm-profile VERSION=0.33.0 WHEEL=...  # or reads one already here
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from settings.vllm_profiles import EXTRACTED_DIR

FLAG = re.compile(r"""["'](--[a-z0-9][a-z0-9-]*)["']""")
METRIC = re.compile(r"""["'](vllm:[a-z0-9_]+)["']""")
CUDART = re.compile(rb"libcudart\.so\.(\d+)")
# vllm serve's max_num_batched_tokens defaults by GPU (vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults or
# _set_default_args): the literal ones; the per-world-size CPU default and the smaller TPU ones do not reach GPUs.
SERVE_BATCHED_TOKENS = re.compile(r"UsageContext\.OPENAI_API_SERVER:\s*(\d+),")
HARMONY_PACKAGES = ("openai-harmony", "oss-harmony")
ARGUMENT_CLASSES = ("EngineArgs", "AsyncEngineArgs", "FrontendArgs", "BaseFrontendArgs")


def python_sources(wheel: zipfile.ZipFile, *patterns: str) -> dict[str, str]:
    """The wheel's Python files whose path matches one of `patterns` (regular expressions), by path."""
    return {
        name: wheel.read(name).decode(errors="replace")
        for name in wheel.namelist()
        if name.endswith(".py") and any(re.search(pattern, name) for pattern in patterns)
    }


def dataclass_flags(source: str) -> set[str]:
    """`--field-name` for each annotated field of the argument classes vLLM builds its parsers from."""
    flags = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name in ARGUMENT_CLASSES:
            for item in node.body:
                named = isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                if named and not item.target.id.startswith("_"):  # type: ignore[attr-defined]
                    flags.add("--" + item.target.id.replace("_", "-"))  # type: ignore[attr-defined]
    return flags


def serve_flags(wheel: zipfile.ZipFile) -> list[str]:
    """Every flag `vllm serve` accepts: those its parsers add by name and those derived from argument classes."""
    sources = python_sources(
        wheel, r"^vllm/engine/arg_utils\.py$", r"^vllm/entrypoints/.*cli_args\.py$", r"^vllm/entrypoints/cli/serve\.py$"
    )
    flags: set[str] = set()
    for source in sources.values():
        flags |= set(FLAG.findall(source)) | dataclass_flags(source)
    return sorted(flags)


def environment_variables(wheel: zipfile.ZipFile) -> list[str]:
    """The keys of vllm/envs.py's `environment_variables`: every variable vLLM reads as its own."""
    tree = ast.parse(wheel.read("vllm/envs.py").decode())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "environment_variables"
            and isinstance(node.value, ast.Dict)
        ):
            return sorted(str(key.value) for key in node.value.keys if isinstance(key, ast.Constant))
    raise ValueError("vllm/envs.py has no environment_variables dictionary")


def metric_names(wheel: zipfile.ZipFile) -> list[str]:
    """The Prometheus metrics vLLM's v1 engine defines."""
    names: set[str] = set()
    for source in python_sources(wheel, r"^vllm/v1/metrics/.*\.py$").values():
        names |= set(METRIC.findall(source))
    return sorted(names)


def attention_backends(wheel: zipfile.ZipFile) -> list[str]:
    """The members of the attention backends' registry enum (vllm/[v1/]attention/backends/registry.py)."""
    for source in python_sources(wheel, r"^vllm/(v1/)?attention/backends/registry\.py$").values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and "Backend" in node.name and node.bases:
                members = [
                    item.targets[0].id
                    for item in node.body
                    if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name)
                ]
                if members:
                    return sorted(members)
    raise ValueError("no attention backends registry in the wheel")


def serve_batched_tokens_default(wheel: zipfile.ZipFile) -> int:
    """The largest max_num_batched_tokens `vllm serve` gives itself on any GPU."""
    found = SERVE_BATCHED_TOKENS.findall(wheel.read("vllm/engine/arg_utils.py").decode())
    if not found:
        raise ValueError("vllm/engine/arg_utils.py sets no OPENAI_API_SERVER max_num_batched_tokens default")
    return max(int(value) for value in found)


def requirement(metadata: str, package: str) -> str | None:
    """The version constraint the wheel's METADATA puts on `package` (outside extras), if any."""
    for line in metadata.splitlines():
        match = re.match(rf"Requires-Dist: {re.escape(package)}\s*([^;]*)$", line)
        if match:
            return match.group(1).strip() or "any"
    return None


def cuda_major(wheel: zipfile.ZipFile) -> int:
    """The CUDA major version the wheel's compiled extensions link against (libcudart.so.<major>)."""
    majors = {
        int(major)
        for name in wheel.namelist()
        if name.startswith("vllm/") and name.endswith(".so")
        for major in CUDART.findall(wheel.read(name))
    }
    if len(majors) != 1:
        raise ValueError(f"the wheel's extensions link CUDA majors {sorted(majors)}, not one")
    return majors.pop()


def wheel_facts(path: Path) -> dict[str, Any]:
    """Everything `extracted` holds, from one wheel."""
    with zipfile.ZipFile(path) as wheel:
        metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        version = re.search(r"^Version: (.+)$", metadata, re.MULTILINE)
        assert version, "METADATA has no Version"
        return {
            "source": {
                "wheel": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "url": f"https://pypi.org/project/vllm/{version.group(1)}/",
            },
            "version": version.group(1),
            "torch": requirement(metadata, "torch"),
            # gpt-oss's tokenizer: openai-harmony, or its successor oss-harmony (the same openai_harmony module).
            "harmony": next(
                (f"{name}{constraint}" for name in HARMONY_PACKAGES if (constraint := requirement(metadata, name))),
                None,
            ),
            "cuda_major": cuda_major(wheel),
            "flags": serve_flags(wheel),
            "environment_variables": environment_variables(wheel),
            "metrics": metric_names(wheel),
            "attention_backends": attention_backends(wheel),
            "serve_batched_tokens_default": serve_batched_tokens_default(wheel),
        }


def write_extracted(facts: dict[str, Any], directory: Path = EXTRACTED_DIR) -> Path:
    """Writes `facts` to the version's file of extracted facts, whole: nothing in it is edited by hand."""
    path = directory / f"{facts['version']}.yaml"
    header = (
        f"# vLLM {facts['version']}, as its wheel states it. Written by `make vllm-profile VERSION={facts['version']}`"
        " (tools/vllm_profile.py);\n# do not edit: review the diff.\n"
    )
    path.write_text(header + yaml.safe_dump(facts, sort_keys=False, width=120))
    return path


def download(version: str, directory: Path) -> Path:
    """vLLM's wheel for `version` from PyPI, without its dependencies."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"vllm=={version}",
            "-d",
            str(directory),
        ],
        check=True,
    )
    return next(directory.glob(f"vllm-{version}-*.whl"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True)
    parser.add_argument("--wheel", type=Path, help="a wheel already downloaded (default: from PyPI)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = args.wheel or download(args.version, Path(scratch))
        facts = wheel_facts(wheel)
    if facts["version"] != args.version:
        raise SystemExit(f"the wheel is vLLM {facts['version']}, not {args.version}")
    path = write_extracted(facts)
    print(
        f"wrote vLLM {args.version}'s facts ({len(facts['flags'])} flags, {len(facts['environment_variables'])} "
        f"variables, {len(facts['metrics'])} metrics) to {path}; its reviewed profile is in the profiles file"
    )


if __name__ == "__main__":
    main()
