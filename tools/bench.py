"""Benchmarks of the project's own speed: `make bench` (or `python -m tools.bench synth|tests|plan`).

synth  The full app (the pipeline with every stage it deploys) against a floor app (a VPC and an
       Auto Mode cluster with a kubectl provider, nothing else), each synthesized by the cdk CLI,
       alternately, several times; medians of each and
       of their ratio. Target: ratio at most 1.5.
tests  The test suite's wall time, CPU time and peak memory (the summed RSS of its process tree).
setup  A fresh clone (of the committed HEAD) to a synthesized default stage with `make synth`, then
       to a green `make test`, with empty download caches as on a new machine. Targets: 60 s and
       150 s; and the suite alone, 45 s.
scale  A stage of many models (the stage's first, copied under new names; 30 in `make bench`), built and synthesized
       in this process with every check of a synth: its time, its stacks, and its largest template against
       CloudFormation's 1,000,000 bytes. Target: it synthesizes.
plan   From a synthesized cloud assembly: the stacks' dependency waves (stacks in one wave can
       be created in parallel) and the longest chain of dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SYNTH_RATIO = 1.5


def synth_floor_app() -> None:
    """The floor: a VPC and an Auto Mode cluster with a kubectl provider, nothing else (run by the CLI)."""
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_eks_v2 as eks
    from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer

    app = cdk.App()
    stack = cdk.Stack(app, "Floor", env=cdk.Environment(region="us-west-2"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-west-2a", "us-west-2b"])
    eks.Cluster(
        stack,
        "Cluster",
        version=eks.KubernetesVersion.V1_36,
        vpc=vpc,
        default_capacity_type=eks.DefaultCapacityType.AUTOMODE,
        kubectl_provider_options=eks.KubectlProviderOptions(kubectl_layer=KubectlV36Layer(stack, "Kubectl")),
    )
    app.synth()


# Both through the real CLI, as a person or the pipeline synthesizes: the full app is the pipeline
# with every stage it deploys (and the same checks as every synth).
SYNTH_COMMANDS = {
    "full": ["cdk", "--no-notices", "synth", "--quiet", "-c", "pipeline=true"],
    "floor": ["cdk", "--no-notices", "synth", "--quiet", "--app", f"{sys.executable} -m tools.bench _floor"],
}


def bench_synth(runs: int) -> None:
    timings: dict[str, list[float]] = {"full": [], "floor": []}
    for _ in range(runs):
        for kind in ("floor", "full"):  # alternately, so drift on the machine hits both alike
            with tempfile.TemporaryDirectory() as outdir:
                started = time.perf_counter()
                subprocess.run([*SYNTH_COMMANDS[kind], "-o", outdir], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
                timings[kind].append(time.perf_counter() - started)
    ratios = [full / floor for full, floor in zip(timings["full"], timings["floor"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"## Synth with the cdk CLI ({runs} runs each, alternating)\n")
    print("| app | median wall time |\n|---|---|")
    print(f"| full (the pipeline with every stage) | {statistics.median(timings['full']):.2f} s |")
    print(f"| floor (VPC + Auto Mode cluster + kubectl provider) | {statistics.median(timings['floor']):.2f} s |")
    verdict = "within" if ratio <= TARGET_SYNTH_RATIO else "OVER"
    print(f"\nmedian ratio full/floor: {ratio:.2f} ({verdict} the target of {TARGET_SYNTH_RATIO})\n")


TARGET_SYNTH_SECONDS, TARGET_TEST_SECONDS = 60, 150


def bench_setup() -> None:
    """Times a fresh clone's `make synth`, then `make test`, with caches that start empty."""
    with tempfile.TemporaryDirectory() as scratch:
        clone, caches = Path(scratch) / "clone", Path(scratch) / "caches"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        env = {
            **os.environ,
            "UV_CACHE_DIR": str(caches / "uv"),
            "npm_config_cache": str(caches / "npm"),
            "PIP_NO_CACHE_DIR": "1",
        }
        timings = {}
        for target in ("synth", "test"):
            started = time.perf_counter()
            subprocess.run(["make", target], cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL)
            timings[target] = time.perf_counter() - started
        installer = "uv" if (clone / ".venv" / "bin" / "uv").exists() else "pip"
    print(f"## Set-up from a fresh clone (empty download caches; installer: {installer})\n")
    print("| step | wall time | target |\n|---|---|---|")
    print(f"| `make synth` | {timings['synth']:.1f} s | {TARGET_SYNTH_SECONDS} s |")
    total = timings["synth"] + timings["test"]
    print(
        f"| then `make test` (total from the clone) | {timings['test']:.1f} s ({total:.1f} s) "
        f"| {TARGET_TEST_SECONDS} s |\n"
    )


def bench_tests() -> None:
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss_bytes(process.pid))
        time.sleep(0.1)
    elapsed, cpu = time.perf_counter() - started, _children_cpu_seconds() - cpu_before
    if process.returncode:
        sys.exit(f"the test suite failed (exit {process.returncode}); its timing would mean nothing")
    print("\n## Test suite\n")
    print(
        f"wall time {elapsed:.1f} s, CPU time {cpu:.1f} s on {os.cpu_count()} cores, peak memory "
        f"{peak / 2**20:.0f} MiB (all its processes together)\n"
    )


def _children_cpu_seconds() -> float:
    """The user and system CPU time of this process's ended children and all they waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += rss.get(current, 0)
        pending.extend(children.get(current, []))
    return total


def bench_plan(assembly: Path) -> None:
    manifest = json.loads((assembly / "manifest.json").read_text())
    stacks = {
        artifact_id: artifact
        for artifact_id, artifact in manifest["artifacts"].items()
        if artifact["type"] == "aws:cloudformation:stack"
    }
    needs = {
        stack_id: [dependency for dependency in artifact.get("dependencies", []) if dependency in stacks]
        for stack_id, artifact in stacks.items()
    }
    depth: dict[str, int] = {}

    def wave_of(stack_id: str) -> int:
        if stack_id not in depth:
            depth[stack_id] = 1 + max((wave_of(dependency) for dependency in needs[stack_id]), default=0)
        return depth[stack_id]

    waves: dict[int, list[str]] = {}
    for stack_id in stacks:
        waves.setdefault(wave_of(stack_id), []).append(stacks[stack_id]["properties"]["stackName"])
    print(f"## Deploy plan of {assembly.name}\n")
    print("| wave | stacks CloudFormation can create in parallel |\n|---|---|")
    for wave in sorted(waves):
        print(f"| {wave} | {', '.join(sorted(waves[wave]))} |")
    last = max(depth, key=lambda stack_id: depth[stack_id])
    chain = [last]
    while needs[chain[-1]]:
        chain.append(max(needs[chain[-1]], key=lambda stack_id: depth[stack_id]))
    names = [stacks[stack_id]["properties"]["stackName"] for stack_id in reversed(chain)]
    print(f"\ncritical path ({len(names)} stacks, one after another): {' → '.join(names)}\n")


def bench_scale(stage: str, models: int) -> None:
    import copy
    import shutil

    from app import add_checks, cdk_json_context, project_app
    from settings import load_stage_settings, parse_stage_settings
    from settings.yaml_files import load_yaml
    from stacks.stage import InferencePlatformStage
    from stacks.template_size import TEMPLATE_MAX_BYTES

    data = load_yaml((ROOT / "settings" / "stages" / f"{stage}.yaml").read_text())
    first = data["models"][0]
    data["models"] = [
        {**copy.deepcopy(first), "name": f"model-{index:02d}", "service_name": f"model-{index:02d}"}
        for index in range(models)
    ]
    load_stage_settings(stage)  # the stage file as it is must load too
    started = time.perf_counter()
    settings = parse_stage_settings(stage, data)
    with tempfile.TemporaryDirectory() as outdir:
        app = project_app(context=cdk_json_context(), outdir=outdir)
        add_checks(app)
        InferencePlatformStage(app, stage, settings=settings)
        app.synth()
        seconds = time.perf_counter() - started
        sizes = {path.name: path.stat().st_size for path in Path(outdir).glob("**/*.template.json")}
        shutil.rmtree(outdir, ignore_errors=True)
    largest = max(sizes, key=lambda name: sizes[name])
    print(f"## A stage `{stage}` of {models} models\n")
    print(f"- built and synthesized, with every check, in {seconds:.1f} s: {len(sizes)} stacks")
    print(
        f"- largest template: {largest}, {sizes[largest]:,} bytes, {sizes[largest] / TEMPLATE_MAX_BYTES:.0%} of "
        f"CloudFormation's {TEMPLATE_MAX_BYTES:,}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("synth").add_argument("--runs", type=int, default=5)
    commands.add_parser("tests")
    commands.add_parser("setup")
    commands.add_parser("plan").add_argument("assembly", type=Path, nargs="+")
    scale = commands.add_parser("scale")
    scale.add_argument("--stage", default="prod")
    scale.add_argument("--models", type=int, default=30)
    commands.add_parser("_floor")
    args = parser.parse_args()
    if args.command == "_floor":
        synth_floor_app()
        return
    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}\n")
    if args.command == "synth":
        bench_synth(args.runs)
    elif args.command == "tests":
        bench_tests()
    elif args.command == "setup":
        bench_setup()
    elif args.command == "scale":
        bench_scale(args.stage, args.models)
    else:
        for assembly in args.assembly:
            bench_plan(assembly)


if __name__ == "__main__":
    main()
