"""Shared fixtures. Each stage is synthesized once per session, by the real CLI, in parallel.

The CLI runs start with the session and the scanners as soon as they end, in the background; the tests
that wait for them run last (pytest_collection_modifyitems), so the others run meanwhile.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import runpy
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cdk8s
import pytest
import yaml

from charts import DeployedResources, build_charts
from charts.__main__ import write_manifests
from settings import DEFAULT_STAGE, STAGES_DIR, load_stage_settings, names, parse_stage_settings, stage_names
from settings.names import FSX_CSI_ADDON
from settings.schema import MAX_STAGE_NAME_LENGTH
from settings.yaml_files import load_yaml

if TYPE_CHECKING:
    from aws_cdk import Stack

ROOT = Path(__file__).resolve().parent.parent

# Python processes whose PYTHONPATH starts here make full garbage collections rarely; so does this one.
RARE_FULL_COLLECTIONS = ROOT / "tests" / "rare_full_collections"
runpy.run_path(str(RARE_FULL_COLLECTIONS / "sitecustomize.py"))
PIPELINE = "pipeline"
# Scans.linted's key for the templates of the scenarios built in this process.
SCENARIOS = "scenarios"


def synth_env() -> dict[str, str]:
    """The caller's environment without any AWS credentials, profile or region."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CDK_DEFAULT_"))}
    env["CDK_DISABLE_CLI_TELEMETRY"] = "true"
    return env


# The session's background processes (synths and scanners) yield the CPU to the tests in this process, which
# are the suite's longest path: they take the cores whenever a test waits, and the rest of the time only.
BACKGROUND_PRIORITY = ["nice", "-n", "10"]


def start_in_background(
    command: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start one of the session's background processes (a synth, a scanner) on `env` (the caller's by default):
    at a lower CPU priority, its Python processes making full garbage collections rarely, its output kept."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RARE_FULL_COLLECTIONS), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [*BACKGROUND_PRIORITY, *command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def cdk_synth(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`cdk synth` as a user runs it (node_modules/.bin first on PATH, see the Makefile), in the background."""
    process = start_in_background(["cdk", "--no-notices", "synth", "--quiet", *args], cwd=cwd, env=synth_env())
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# The CLI runs and scanners of the session: threads that wait for processes, so the tests go on meanwhile.
BACKGROUND = ThreadPoolExecutor(max_workers=8, thread_name_prefix="background")


@dataclass(frozen=True)
class Assembly:
    """One stage's synthesized cloud assembly."""

    stage: str
    directory: Path
    stderr: str
    manifest: dict[str, Any] = field(repr=False)

    def stacks(self) -> dict[str, dict[str, Any]]:
        """Stack artifacts by their short name: Network, Cluster, Serving."""
        return {
            artifact["displayName"].split("/")[-1]: artifact
            for artifact in self.manifest["artifacts"].values()
            if artifact["type"] == "aws:cloudformation:stack"
        }

    def template(self, stack: str) -> dict[str, Any]:
        artifact = self.stacks()[stack]
        return json.loads((self.directory / artifact["properties"]["templateFile"]).read_text())

    def model_template(self, model: str = "gpt-oss-20b") -> dict[str, Any]:
        """A model's own stack (stacks/model_serving.py)."""
        return self.template(names.model_stack_id(model))

    def depends_on(self, stack: str) -> set[str]:
        """The short names of the stacks a stack deploys after."""
        short = {
            key: artifact["displayName"].split("/")[-1]
            for key, artifact in self.manifest["artifacts"].items()
            if "displayName" in artifact
        }
        return {short[key] for key in self.stacks()[stack].get("dependencies", []) if key in short}


# What checkov's Kubernetes checks must reject, to prove the gate can fail.
BROKEN_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "broken", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "broken"}},
        "template": {
            "metadata": {"labels": {"app": "broken"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
        },
    },
}


def write_manifests_to_scan(outdir: Path) -> None:
    """Every stage's manifests as `python -m charts` writes them (<outdir>/<stage>/), and a broken Deployment
    (<outdir>/broken/), for checkov's Kubernetes checks (scans)."""
    for stage in stage_names():
        write_manifests(stage, outdir)
    (outdir / "broken").mkdir()
    (outdir / "broken" / "deployment.yaml").write_text(yaml.safe_dump(BROKEN_DEPLOYMENT))


def start_synths(new_dir: Callable[[str], Path]) -> dict[str, Future[Assembly]]:
    """Every stage and the pipeline, synthesized at once with no AWS credentials or region in the environment.

    The default stage is synthesized without `-c stage`, so it also proves what the default is.
    `new_dir(name)` gives an empty folder for each cloud assembly.
    """
    running = {}
    for stage in stage_names():
        outdir = new_dir(f"cdk.out-{stage}")
        stage_args = [] if stage == DEFAULT_STAGE else ["-c", f"stage={stage}"]
        running[stage] = BACKGROUND.submit(
            _synthesized, stage, outdir / f"assembly-{stage}", *stage_args, "-o", str(outdir)
        )
    outdir = new_dir("cdk.out-pipeline")
    running[PIPELINE] = BACKGROUND.submit(_synthesized, PIPELINE, outdir, "-c", "pipeline=true", "-o", str(outdir))
    return running


# The processes, when the whole suite runs: they are its longest path, so they start before the
# tests are collected (pytest_sessionstart), in a scratch folder removed at the end.
_EARLY: dict[str, Any] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    chosen = session.config.option.keyword or session.config.option.markexpr
    if session.config.args_source is pytest.Config.ArgsSource.ARGS or chosen:
        return  # chosen tests: the fixtures start what they need
    scratch = Path(tempfile.mkdtemp(prefix="gpu-inference-tests-"))
    _EARLY["scratch"] = scratch

    def new_dir(name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))

    _EARLY["synths"] = start_synths(new_dir)
    _EARLY["unacknowledged_synth"] = start_unacknowledged_synth(new_dir)
    _EARLY["import_tests_on_hub1"] = start_import_tests_on_hub1()


def pytest_sessionfinish(session: pytest.Session) -> None:
    BACKGROUND.shutdown(wait=True)
    if "scratch" in _EARLY:
        shutil.rmtree(_EARLY["scratch"], ignore_errors=True)


@pytest.fixture(scope="session")
def _synths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future[Assembly]]:
    return _EARLY.get("synths") or start_synths(tmp_path_factory.mktemp)


def _synthesized(stage: str, directory: Path, *args: str) -> Assembly:
    run = cdk_synth(*args)
    assert run.returncode == 0, f"cdk synth of {stage} failed:\n{run.stderr}"
    manifest = json.loads((directory / "manifest.json").read_text())
    return Assembly(stage=stage, directory=directory, stderr=run.stderr, manifest=manifest)


@pytest.fixture(scope="session")
def assemblies(_synths: dict[str, Future[Assembly]]) -> dict[str, Assembly]:
    return {stage: _synths[stage].result() for stage in stage_names()}


@pytest.fixture(scope="session")
def pipeline(_synths: dict[str, Future[Assembly]]) -> Assembly:
    """The pipeline's cloud assembly: its stack, with each stage's stacks in a nested assembly."""
    return _synths[PIPELINE].result()


# What checkov's CloudFormation checks (an unencrypted bucket, a log group without a key) and
# cfn-lint (a misspelt property) must reject, to prove each gate can fail.
BROKEN_TEMPLATE = {
    "Resources": {
        "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketNam": "x"}},
        "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {}},
    }
}


@dataclass(frozen=True)
class Scans:
    """checkov's and cfn-lint's findings on every synthesized template and every stage's manifests.

    checkov read <folder>/cloudformation/ (<stage>/, pipeline/ with the pipeline's stack and each stage
    as it deploys them, and broken/) and <folder>/kubernetes/ (<stage>/ and broken/) in one run: its
    start-up is most of its time, and given several folders it attributes results to the wrong ones.
    """

    folder: Path
    checkov: dict[str, list[dict[str, Any]]]
    linted: dict[str, list[Path]] = field(repr=False)  # by stage, the pipeline's, and the scenarios'
    cfn_lint: list[str]  # on the synthesized templates
    cfn_lint_broken: list[str]  # on the broken one

    def checkov_on(self, framework: str, *names: str) -> dict[str, list[dict[str, Any]]]:
        """checkov's results on some of a framework's folders (stages, "pipeline", "broken")."""
        from tests.scanners import checkov_share  # tests.scanners imports this module

        return checkov_share(self.checkov, [self.folder / framework / name for name in names])


@pytest.fixture(scope="session")
def scans(
    _synths: dict[str, Future[Assembly]],
    admins_cluster: Scenario,
    gated_model_serving: Scenario,
    tmp_path_factory: pytest.TempPathFactory,
) -> Future[Scans]:
    """The scans, started in the background as soon as the synths end. The manifests are written here, in
    this thread: cdk8s runs in this process's jsii kernel, which the tests use meanwhile."""
    folder = tmp_path_factory.mktemp("scans")
    write_manifests_to_scan(folder / "kubernetes")
    scenarios = [admins_cluster.path, gated_model_serving.path]
    return BACKGROUND.submit(_scan, _synths, scenarios, folder)


def _scan(synths: dict[str, Future[Assembly]], scenarios: list[Path], folder: Path) -> Scans:
    from tests.scanners import cfn_lint, checkov_results, run_checkov  # tests.scanners imports this module

    synthesized = {name: synth.result() for name, synth in synths.items()}
    templates = folder / "cloudformation"
    for name, assembly in synthesized.items():
        for template in assembly.directory.rglob("*.template.json"):
            target = templates / name / template.relative_to(assembly.directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(template, target)
    broken = templates / "broken" / "broken.template.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps(BROKEN_TEMPLATE))
    checkov = run_checkov(["cloudformation", "kubernetes"], folder)
    # The pipeline's stack, and each stage's stacks as it deploys them, in nested assemblies.
    linted = {
        name: sorted(assembly.directory.glob("**/*.template.json" if name == PIPELINE else "*.template.json"))
        for name, assembly in synthesized.items()
    }
    linted[SCENARIOS] = scenarios
    findings = cfn_lint([*(path for paths in linted.values() for path in paths), broken])
    of_broken = [finding for finding in findings if f" in {broken.name}: " in finding]
    return Scans(
        folder=folder,
        checkov=checkov_results(checkov),
        linted=linted,
        cfn_lint=[finding for finding in findings if finding not in of_broken],
        cfn_lint_broken=of_broken,
    )


def copy_of_the_project(tmp_path: Path) -> Path:
    """The project's sources in a scratch folder, sharing the installed .venv and node_modules."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("app.py", "cdk.json", "package.json", "settings", "stacks", "charts", "workloads"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    for name in (".venv", "node_modules"):
        (project / name).symlink_to(ROOT / name)
    return project


@dataclass(frozen=True)
class StoppedSynth:
    """A `cdk synth` run that should stop: its exit code, what it printed and where it would have written."""

    returncode: int
    stderr: str
    outdir: Path


def start_unacknowledged_synth(new_dir: Callable[[str], Path]) -> Future[StoppedSynth]:
    """`cdk synth` of a copy of the project whose kubectl handler's acknowledgment names another rule: cdk-nag's
    finding must stop it. (Settings errors stop the app before anything is built: tests/test_app.py runs
    those in this process.)"""
    project = copy_of_the_project(new_dir("unacknowledged"))
    findings = project / "stacks" / "reviewed_findings.py"
    source = findings.read_text()
    assert source.count('"AwsSolutions-L1",') == 1
    findings.write_text(source.replace('"AwsSolutions-L1",', '"AwsSolutions-L2",'))
    return BACKGROUND.submit(_stopped, project)


@pytest.fixture(scope="session")
def _unacknowledged_synth(tmp_path_factory: pytest.TempPathFactory) -> Future[StoppedSynth]:
    return _EARLY.get("unacknowledged_synth") or start_unacknowledged_synth(tmp_path_factory.mktemp)


def _stopped(project: Path) -> StoppedSynth:
    run = cdk_synth(cwd=project)
    return StoppedSynth(run.returncode, run.stderr, project / "cdk.out")


@pytest.fixture(scope="session")
def unacknowledged_synth(_unacknowledged_synth: Future[StoppedSynth]) -> StoppedSynth:
    return _unacknowledged_synth.result()


@dataclass(frozen=True)
class Scenario:
    """A stack built in this process for a scenario no stage file has, and its template written to `path`,
    which cfn-lint reads with the stages' (scans): in-process apps leave aws-cdk-lib's own
    validation off, as the app does (app.project_app)."""

    template: dict[str, Any] = field(repr=False)
    path: Path
    # What synth warned of on the stack (Annotations' warnings), as "<id>: <message>".
    warnings: list[str]


def _scenario(name: str, stack: Stack, folder: Path) -> Scenario:
    from aws_cdk.assertions import Template

    template = Template.from_stack(stack).to_json()
    path = folder / f"{name}.template.json"
    path.write_text(json.dumps(template))
    warnings = [str(entry.data) for entry in stack.node.metadata if entry.type == "aws:cdk:warning"]
    return Scenario(template, path, warnings)


ADMIN_ROLE = "arn:aws:iam::123456789012:role/PlatformAdmin"
KEYED_MODEL = "keyed"
PINNED_FSX_CSI_VERSION = "v1.6.0-eksbuild.1"
# The walkthrough's vLLM 0.11.2 image: a supported version without a drain of its own.
WALKTHROUGH_IMAGE = "public.ecr.aws/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2-soci"
ADMIN_USER = "arn:aws:iam::123456789012:user/alice"


@pytest.fixture(scope="session")
def scenario_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    """One stage that no stage file has, built in this process: the longest stage name, admins, a narrowed public
    endpoint, Kubernetes 1.35 and a pinned FSx CSI add-on on its cluster, a gated model with a token secret whose
    replicas share their compile cache, and a second model on the walkthrough's vLLM 0.11.2. Its Cluster and the
    models' templates."""
    from app import cdk_json_context, project_app
    from stacks.stage import InferencePlatformStage

    data = stage_data()
    data["cluster"].update(
        admin_principal_arns=[ADMIN_ROLE, ADMIN_USER],
        public_access_cidrs=["203.0.113.0/24"],
        kubernetes_version="1.35",
        addon_versions={FSX_CSI_ADDON: PINNED_FSX_CSI_VERSION},
    )
    data["models"][0]["hf_token_secret"] = "hf-token"
    data["models"][0]["compile_cache"] = True
    # A second model, reached with its own API keys, on the walkthrough's vLLM, which advisories affect.
    keyed = {**copy.deepcopy(data["models"][0]), "name": KEYED_MODEL, "service_name": "keyed-service"}
    keyed.update(
        model="meta-llama/Llama-3.2-3B-Instruct",
        api_keys_secret="gpt-oss-20b/api-keys",
        compile_cache=False,
        image=WALKTHROUGH_IMAGE,
    )
    del keyed["hf_token_secret"]
    data["models"].append(keyed)
    # The longest stage name the settings take: every name derived from it must fit (settings.names).
    name = "scenario-" + "x" * (MAX_STAGE_NAME_LENGTH - len("scenario-"))
    settings = parse_stage_settings(name, data)
    stage = InferencePlatformStage(project_app(context=cdk_json_context()), name, settings=settings)
    folder = tmp_path_factory.mktemp("scenario")
    return {
        name: _scenario(name, stack, folder)
        for name, stack in (
            ("admins-cluster", stage.cluster),
            ("gated-model-serving", stage.models["gpt-oss-20b"]),
            ("keyed-model-serving", stage.models[KEYED_MODEL]),
        )
    }


@pytest.fixture(scope="session")
def admins_cluster(scenario_stage: dict[str, Scenario]) -> Scenario:
    """The scenario's cluster: with admins, a narrowed public endpoint and Kubernetes 1.35."""
    return scenario_stage["admins-cluster"]


@pytest.fixture(scope="session")
def keyed_model_serving(scenario_stage: dict[str, Scenario]) -> Scenario:
    """The scenario's second model's stack: its model has API keys."""
    return scenario_stage["keyed-model-serving"]


@pytest.fixture(scope="session")
def gated_model_serving(scenario_stage: dict[str, Scenario]) -> Scenario:
    """The scenario's model stack, whose model is gated, with a token secret."""
    return scenario_stage["gated-model-serving"]


# What runs in the background, started with the session when a collected test needs it.
# huggingface_hub 1.x, installed beside the project's 0.x by `make setup` (requirements-hub1.txt).
HUB1 = ROOT / ".hub1"
# The test that waits for the second run, left out of that run.
HUB1_TEST = "test_the_import_works_with_huggingface_hub_1"


def start_import_tests_on_hub1() -> Future[subprocess.CompletedProcess[str]]:
    """tests/test_import_weights.py once more, in the background, with huggingface_hub 1.x first on the path: the
    import Job runs in the vLLM image, whose huggingface_hub is 1.x in vLLM 0.31.0's."""

    def run() -> subprocess.CompletedProcess[str]:
        command = ["python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", f"not {HUB1_TEST}"]
        env = {**os.environ, "PYTHONPATH": str(HUB1)}
        process = start_in_background([*command, "tests/test_import_weights.py"], env=env)
        stdout, stderr = process.communicate(timeout=600)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    return BACKGROUND.submit(run)


@pytest.fixture(scope="session")
def import_tests_on_hub1() -> Future[subprocess.CompletedProcess[str]]:
    return _EARLY.get("import_tests_on_hub1") or start_import_tests_on_hub1()


BACKGROUND_RUNS = ("_synths", "scans", "_unacknowledged_synth", "import_tests_on_hub1")


@pytest.fixture(scope="session", autouse=True)
def _start_background_runs(request: pytest.FixtureRequest) -> None:
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for name in BACKGROUND_RUNS:
        if name in needed:
            request.getfixturevalue(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that wait for a background run go last, in their usual order."""
    items.sort(key=lambda item: any(name in BACKGROUND_RUNS for name in getattr(item, "fixturenames", ())))


def nested_stage(pipeline: Assembly, stage: str) -> Assembly:
    """One stage's stacks as the pipeline deploys them."""
    directory = pipeline.directory / f"assembly-GpuInferencePipeline-{stage}"
    manifest = json.loads((directory / "manifest.json").read_text())
    return Assembly(stage=stage, directory=directory, stderr="", manifest=manifest)


@pytest.fixture(scope="session")
def dev(assemblies: dict[str, Assembly]) -> Assembly:
    return assemblies["dev"]


@pytest.fixture(scope="session")
def prod(assemblies: dict[str, Assembly]) -> Assembly:
    return assemblies["prod"]


def chart_values(chart: str) -> dict[str, Any]:
    """A chart's values.yaml, as tests/fixtures/charts/ keeps it (its README says from where)."""
    return load_yaml((ROOT / "tests" / "fixtures" / "charts" / f"{chart}.values.yaml").read_text())


def stage_data(stage: str = DEFAULT_STAGE) -> dict[str, Any]:
    """A stage's settings as read from its YAML file, free to modify."""
    return copy.deepcopy(_stage_file(stage))


@functools.cache
def _stage_file(stage: str) -> dict[str, Any]:
    return load_yaml((STAGES_DIR / f"{stage}.yaml").read_text())


def keyed_prod_data() -> dict[str, Any]:
    """prod's settings without the gateway, its model reached with its own API keys (models[].api_keys_secret), as a
    single-model stage may be: what the per-model keys and exposure are tested on. Parse it as "prod"."""
    data = stage_data("prod")
    del data["gateway"]
    data["models"][0]["api_keys_secret"] = "gpt-oss-20b/api-keys"
    return data


CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/" + "0" * 36


def gateway_data(stage: str = "dev", **gateway: Any) -> dict[str, Any]:
    """A stage's data with the inference gateway on: two clients, two quotas and an endpoint; no model keys."""
    data = stage_data(stage)
    for model in data["models"]:
        model.pop("api_keys_secret", None)
        model.pop("exposure", None)
    data["gateway"] = {
        "clients_secret": "llm/gateway-clients",
        "clients": [{"id": "team-a"}, {"id": "smoke-test"}],
        "quotas": [
            {"client": "team-a", "limit": 100000},
            {
                "client": "team-a",
                "model": data["models"][0]["model"],
                "tokens": "output",
                "limit": 5000,
                "window": "Minute",
            },
        ],
        "endpoint": {"hostname": "llm.internal.example.com", "certificate_arn": CERTIFICATE},
        **gateway,
    }
    return data


VENDOR = ROOT / "charts" / "vendor"
EG_CRDS = VENDOR / "envoy-gateway" / "charts" / "crds" / "crds"
# Each custom kind the gateway renders, and the vendored definition it must pass (tests/test_gateway.py for the
# schemas, tests/test_crd_cel.py for the CEL rules).
GATEWAY_DEFINITIONS = {
    "GatewayClass": EG_CRDS / "gatewayapi-crds.yaml",
    "Gateway": EG_CRDS / "gatewayapi-crds.yaml",
    "EnvoyProxy": EG_CRDS / "generated" / "gateway.envoyproxy.io_envoyproxies.yaml",
    "SecurityPolicy": EG_CRDS / "generated" / "gateway.envoyproxy.io_securitypolicies.yaml",
    "BackendTrafficPolicy": EG_CRDS / "generated" / "gateway.envoyproxy.io_backendtrafficpolicies.yaml",
    "ClientTrafficPolicy": EG_CRDS / "generated" / "gateway.envoyproxy.io_clienttrafficpolicies.yaml",
    "GatewayConfig": VENDOR / "envoy-ai-gateway-crds" / "templates" / "aigateway.envoyproxy.io_gatewayconfigs.yaml",
    "AIGatewayRoute": VENDOR / "envoy-ai-gateway-crds" / "templates" / "aigateway.envoyproxy.io_aigatewayroutes.yaml",
    "InferencePool": VENDOR
    / "inference-extension-crds"
    / "templates"
    / "inference.networking.k8s.io_inferencepools.yaml",
    "SecretProviderClass": ROOT / "tests" / "fixtures" / "crds" / "secretproviderclasses.yaml",
}
# EKS publishes no schema for IngressClassParams (charts/exposure.py): tests/test_exposure.py asserts its fields.
UNPUBLISHED_DEFINITIONS = {"IngressClassParams"}
BUILT_IN_VERSIONS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}


@functools.cache
def _gateway_objects() -> list[dict[str, Any]]:
    settings = parse_stage_settings("prod", gateway_data("prod"))
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    return [obj for chart_id, chart in charts.items() if "ateway" in chart_id for obj in chart.to_json()]


def charts_of(data: dict[str, Any], stage: str = "prod") -> dict[str, list[dict[str, Any]]]:
    """A stage's charts rendered from its settings' data, by chart id: free to modify, each distinct data rendered
    once per session (many tests compare a changed stage with the same unchanged one)."""
    return copy.deepcopy(_charts_of(json.dumps(data, sort_keys=True), stage))


@functools.cache
def _charts_of(data: str, stage: str) -> dict[str, list[dict[str, Any]]]:
    settings = parse_stage_settings(stage, json.loads(data))
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    return {chart_id: chart.to_json() for chart_id, chart in charts.items()}


def gateway_objects() -> list[dict[str, Any]]:
    """The gateway's objects (its chart and the model's) in prod with every gateway setting given: two clients, two
    quotas, an endpoint; free to modify."""
    return copy.deepcopy(_gateway_objects())


def render_charts(stage: str) -> dict[str, list[dict[str, Any]]]:
    """A stage's charts rendered to Kubernetes objects, by chart id: a copy each caller may change."""
    return copy.deepcopy(_rendered(stage))


@functools.cache
def _rendered(stage: str) -> dict[str, list[dict[str, Any]]]:
    settings = load_stage_settings(stage)
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    return {chart_id: chart.to_json() for chart_id, chart in charts.items()}


def resources(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Every resource of a CloudFormation type in a template."""
    return [resource for resource in template["Resources"].values() if resource["Type"] == kind]


def properties(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The properties of every resource of a CloudFormation type in a template."""
    return [resource["Properties"] for resource in resources(template, kind)]


# The settings' own warnings (stacks/stage.py) reach the CLI's validation report as construct annotations.
SETTINGS_WARNING = "Annotation::gpu-inference:"


def validation_findings(report_file: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """A synth's validation report: the plugins' findings (cdk-nag's, the template size check's), and the settings'
    warnings by rule name."""
    report = json.loads(report_file.read_text())
    findings, warnings = [], []
    for plugin in report["pluginReports"]:
        own = [v for v in plugin["violations"] if v["ruleName"].startswith(SETTINGS_WARNING)]
        warnings += [v["ruleName"].removeprefix(SETTINGS_WARNING) for v in own]
        if len(own) < len(plugin["violations"]):
            findings.append({**plugin, "violations": [v for v in plugin["violations"] if v not in own]})
    return findings, warnings


def model_objects(charts: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """A model's objects, from its chart and the charts of its optional features (charts rendered to objects, or
    cdk8s charts)."""
    ids = [f"Model-{model}", *(f"{feature}-{model}" for feature in ("ApiKeys", "Autoscaler", "Exposure"))]
    return [
        obj
        for chart_id in ids
        if chart_id in charts
        for obj in (charts[chart_id] if isinstance(charts[chart_id], list) else charts[chart_id].to_json())
    ]


def gpu_pool_objects(charts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every GPU pool's NodeClass and NodePool, from the charts of a stage rendered to objects (a chart each)."""
    return [obj for chart_id, objects in charts.items() if chart_id.startswith("GpuNodePool-") for obj in objects]


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of a kind in a chart's output."""
    (found,) = find_all(objects, kind)
    return found


def find_all(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Every object of a kind in a chart's output, in order."""
    return [obj for obj in objects if obj["kind"] == kind]


def stored_check(template: dict[str, Any]) -> list[str]:
    """The smoke test arguments a model's stack stores for the stage's project (stacks/smoke_test_project.py)."""
    (parameter,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SSM::Parameter"]
    return list(json.loads(parameter["Value"]))
