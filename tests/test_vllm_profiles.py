"""vLLM's versions as profiles: read from a wheel, held to the code, and to what a stage may serve."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import cdk8s
import pytest
import yaml

from charts import DeployedResources, build_charts
from charts.pre_stop_drain import DRAIN_SCRIPT
from charts.queue_autoscaler import queue_query
from charts.vllm_server import vllm_args, vllm_env
from settings import load_stage_settings, parse_stage_settings
from settings.drain import max_request_seconds
from settings.sizing import gpu_memory
from settings.vllm_profiles import (
    Advisory,
    Driver,
    advisories_affecting,
    advisory_warning,
    profile_of,
    reachable,
    recommended_image,
    supported_versions,
    vllm_catalog,
    vllm_version,
)
from stacks.metrics import rules
from tests.conftest import WALKTHROUGH_IMAGE, find, stage_data
from tests.test_settings import rejected
from tools import vllm_profile

CURRENT = "docker.io/vllm/vllm-openai:v0.33.0"
WALKTHROUGH = WALKTHROUGH_IMAGE
METRIC = re.compile(r"vllm:[a-z_]+")


# --- make vllm-profile, against a wheel written here ---


def fake_wheel(path: Path, *, cudart: tuple[bytes, ...] = (b"libcudart.so.13",)) -> Path:
    files = {
        "vllm-9.9.9.dist-info/METADATA": "Version: 9.9.9\nRequires-Dist: torch==2.99.0\n"
        "Requires-Dist: oss-harmony>=0.0.11\nRequires-Dist: flashinfer; extra == 'x'\n",
        "vllm/envs.py": "environment_variables: dict[str, object] = {\n"
        "    'VLLM_PORT': lambda: 1,\n    'VLLM_LOGGING_CONFIG_PATH': lambda: None,\n}\n",
        "vllm/engine/arg_utils.py": "class EngineArgs:\n    max_model_len: int = 0\n    _private: int = 0\n"
        "def add(parser):\n    parser.add_argument('--shutdown-timeout', type=int)\n"
        "big = {UsageContext.OPENAI_API_SERVER: 8192,}\nsmall = {UsageContext.OPENAI_API_SERVER: 2048,}\n"
        "cpu = {UsageContext.OPENAI_API_SERVER: 2048 * world_size}\n",
        "vllm/entrypoints/openai/cli_args.py": "class FrontendArgs:\n    api_key: str = ''\n",
        "vllm/v1/metrics/loggers.py": "name='vllm:num_requests_waiting'\nother=\"vllm:kv_cache_usage_perc\"\n",
        "vllm/v1/attention/backends/registry.py": "class AttentionBackendEnum(Enum):\n    TRITON_ATTN = 1\n"
        "    FLASH_ATTN = 2\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        for number, library in enumerate(cudart):
            wheel.writestr(f"vllm/_C{number}.abi3.so", b"\x7fELF..." + library + b"\x00")
    return path


def test_the_profile_script_reads_a_release_from_its_wheel(tmp_path: Path) -> None:
    facts = vllm_profile.wheel_facts(fake_wheel(tmp_path / "vllm-9.9.9-py3-none-any.whl"))
    assert (facts["version"], facts["torch"], facts["harmony"], facts["cuda_major"]) == (
        "9.9.9",
        "==2.99.0",
        "oss-harmony>=0.0.11",
        13,
    )
    assert facts["flags"] == ["--api-key", "--max-model-len", "--shutdown-timeout"]  # no --private for _private
    assert facts["environment_variables"] == ["VLLM_LOGGING_CONFIG_PATH", "VLLM_PORT"]
    assert facts["metrics"] == ["vllm:kv_cache_usage_perc", "vllm:num_requests_waiting"]
    assert facts["attention_backends"] == ["FLASH_ATTN", "TRITON_ATTN"]
    assert facts["serve_batched_tokens_default"] == 8192
    path = vllm_profile.write_extracted(facts, tmp_path)
    assert yaml.safe_load(path.read_text())["flags"] == facts["flags"]
    assert path.read_text().startswith("# vLLM 9.9.9, as its wheel states it.")


def test_a_wheel_whose_kernels_link_two_cuda_majors_is_refused(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "vllm.whl", cudart=(b"libcudart.so.12", b"libcudart.so.13"))
    with pytest.raises(ValueError, match=r"link CUDA majors \[12, 13\], not one"):
        vllm_profile.wheel_facts(wheel)


def test_the_committed_facts_are_the_ones_their_wheels_named() -> None:
    for version in supported_versions():
        facts = profile_of(f"vllm/vllm-openai:v{version}").extracted
        assert facts.version == version
        assert facts.source["wheel"].startswith(f"vllm-{version}-")
        assert len(facts.source["sha256"]) == 64


# --- the code held to every supported version ---


DOCKER_HUB_SECRET = "arn:aws:secretsmanager:us-west-2:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"


def stage_on(image: str, stage: str = "prod", **changes: Any) -> dict[str, Any]:
    """A stage's settings serving `image`, signed in to Docker Hub (the current release's image comes from there)."""
    data = stage_data(stage)
    data["models"][0] |= {"image": image, **changes}
    data["registry"] = {**data.get("registry", {}), "docker_hub_credential_arn": DOCKER_HUB_SECRET}
    return data


def model_on(image: str, **changes: Any) -> Any:
    return parse_stage_settings("prod", stage_on(image, **changes)).models[0]


@pytest.mark.parametrize("version", supported_versions())
def test_every_metric_the_rules_the_autoscaler_and_the_drain_read_is_the_versions(version: str) -> None:
    used = set(METRIC.findall(yaml.safe_dump(rules(load_stage_settings("prod").metrics))))
    used |= set(METRIC.findall(queue_query("gpt-oss-20b"))) | set(METRIC.findall(DRAIN_SCRIPT))
    names = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert names >= {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds"}
    assert names <= vllm_catalog().profiles[version].extracted.metrics


@pytest.mark.parametrize("image", [profile.images[0].image for profile in vllm_catalog().profiles.values()])
def test_every_flag_and_variable_the_server_gets_is_its_versions(image: str) -> None:
    model = model_on(image)
    facts = model.profile.extracted
    flags = {arg.split("=", 1)[0] for arg in vllm_args(model) if arg.startswith("--")}
    assert flags <= facts.flags
    assert {name for name in vllm_env(model) if name.startswith("VLLM_")} <= facts.environment_variables


def test_a_version_that_drains_itself_gets_its_timeout_and_a_short_pre_stop() -> None:
    model = model_on(CURRENT)
    assert f"--shutdown-timeout={max_request_seconds(model)}" in vllm_args(model)
    assert "--attention-backend=TRITON_ATTN" in vllm_args(model)
    assert "VLLM_ATTENTION_BACKEND" not in vllm_env(model)
    settings = parse_stage_settings("prod", stage_on(CURRENT))
    charts = build_charts(cdk8s.App(), settings, DeployedResources.placeholders(settings))
    pod = find(charts["Model-gpt-oss-20b"].to_json(), "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert int(server["lifecycle"]["preStop"]["exec"]["command"][1]) < pod["terminationGracePeriodSeconds"]


def test_the_walkthroughs_version_keeps_its_variable_and_its_polling_drain() -> None:
    model = model_on(WALKTHROUGH)
    assert vllm_env(model)["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN"
    assert not any(arg.startswith(("--shutdown-timeout", "--attention-backend")) for arg in vllm_args(model))


# --- what a stage may serve ---


@pytest.mark.parametrize(
    ("image", "version"),
    [
        (WALKTHROUGH, "0.11.2"),
        ("vllm/vllm-openai:v0.33.0-cu129@sha256:" + "a" * 64, "0.33.0"),
        ("registry.example.com:5000/vllm:0.33.0", "0.33.0"),
        ("registry.example.com:5000/vllm@sha256:" + "a" * 64, None),
        ("vllm/vllm-openai:nightly", None),
    ],
)
def test_the_version_is_read_from_the_images_tag(image: str, version: str | None) -> None:
    assert vllm_version(image) == version


def test_an_image_whose_version_has_no_profile_is_refused_with_the_supported_ones() -> None:
    data = stage_data()
    data["models"][0]["image"] = "vllm/vllm-openai:v0.12.0"
    assert (
        "models[0]: image: 'vllm/vllm-openai:v0.12.0' serves vLLM 0.12.0, which has no profile; supported versions: "
        "0.11.2, 0.27.1, 0.31.0, 0.33.0, 0.34.0" in rejected(data)
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"env": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}}, "env: set the attention backend with attention_backend"),
        ({"env": {"VLLM_USE_V1": "1"}}, "env: vLLM 0.33.0 reads no VLLM_USE_V1"),
        ({"extra_args": ["--enable-everything"]}, "extra_args: vLLM 0.33.0 has no flag --enable-everything"),
        ({"attention_backend": "XFORMERS"}, "attention_backend: vLLM 0.33.0 has no backend 'XFORMERS'"),
    ],
)
def test_what_the_version_does_not_offer_is_refused(change: dict[str, Any], problem: str) -> None:
    assert f"models[0]: {problem}" in rejected(stage_on(CURRENT, "dev", **change))


def test_a_negated_boolean_flag_is_the_versions() -> None:
    assert model_on(CURRENT, extra_args=["--no-enable-prefix-caching"]).extra_args == ("--no-enable-prefix-caching",)


def test_an_image_whose_cuda_needs_a_newer_driver_than_auto_modes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = Driver(version="570.195.03", source="x")
    older = vllm_catalog().model_copy(update={"auto_mode_nvidia_driver": driver})
    monkeypatch.setattr("settings.vllm_profiles.vllm_catalog", lambda: older)
    data = stage_on(CURRENT, "dev")
    assert (
        "image: 'docker.io/vllm/vllm-openai:v0.33.0' is built with CUDA 13.0, which needs NVIDIA driver 580.65.06 "
        "or newer; EKS Auto Mode's GPU nodes run 570.195.03" in rejected(data)
    )


# --- advisories ---


def advisory(introduced: str = "0", fixed: str | None = None, last_affected: str | None = None) -> Advisory:
    return Advisory(
        id="X",
        summary="s",
        kind="other",
        surface="openai-server",
        feature="f",
        source="s",
        introduced=introduced,
        fixed=fixed,
        last_affected=last_affected,
    )


def test_an_advisorys_range_is_osvs() -> None:
    fixed = advisory(introduced="0.12.0", fixed="0.24.0")
    assert [fixed.affects(v) for v in ("0.11.2", "0.12.0", "0.23.9", "0.24.0")] == [False, True, True, False]
    last = advisory(last_affected="0.19.0")
    assert [last.affects(v) for v in ("0.19.0", "0.19.1")] == [True, False]
    post = advisory(last_affected="0.5.0.post1")
    assert [post.affects(v) for v in ("0.5.0", "0.5.0.post1", "0.5.1", "0.10.0")] == [True, True, False, False]


def test_the_walkthroughs_version_is_affected_and_the_current_one_is_not() -> None:
    affecting = {found.id for found in advisories_affecting("0.11.2")}
    assert {"PYSEC-2026-2298", "PYSEC-2026-3407"} <= affecting  # unbounded n; the OpenAI serving path
    assert "PYSEC-2026-2303" not in affecting  # introduced in 0.12.0
    assert advisories_affecting("0.31.0") == advisories_affecting("0.33.0") == advisories_affecting("0.34.0") == []


def test_a_feature_advisory_counts_only_where_its_flag_turns_the_feature_on() -> None:
    lora = advisory().model_copy(update={"surface": "lora"})
    assert (reachable(lora, ()), reachable(lora, ("--enable-lora",)), reachable(advisory(), ())) == (False, True, True)


def test_synth_names_the_advisories_of_a_pinned_version() -> None:
    warning = advisory_warning("gpt-oss-20b", WALKTHROUGH, ())
    assert warning is not None
    assert warning.startswith("gpt-oss-20b: vLLM 0.11.2 (")
    assert "PYSEC-2026-2298" in warning
    assert warning.endswith("Supported versions affected by none: 0.31.0, 0.33.0, 0.34.0.")
    assert advisory_warning("gpt-oss-20b", CURRENT, ()) is None


def test_the_image_for_a_new_stage_is_the_newest_unaffected_one_the_driver_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Deep Learning Container free of advisories (0.31.0) comes before a newer upstream image (0.34.0), and 0.27.1's
    # serves the route two advisories reach.
    assert (
        recommended_image().image
        == "public.ecr.aws/deep-learning-containers/vllm:0.31.0-gpu-py312-cu130-ubuntu24.04-ec2"
    )
    # Where no Deep Learning Container is free of them, the newest upstream image.
    catalog = vllm_catalog()
    without = catalog.model_copy(update={"profiles": {v: p for v, p in catalog.profiles.items() if v != "0.31.0"}})
    monkeypatch.setattr("settings.vllm_profiles.vllm_catalog", lambda: without)
    assert recommended_image().image == "docker.io/vllm/vllm-openai:v0.34.0"
    # A driver older than CUDA 13's leaves no such image.
    older = catalog.model_copy(update={"auto_mode_nvidia_driver": Driver(version="575.57.08", source="x")})
    monkeypatch.setattr("settings.vllm_profiles.vllm_catalog", lambda: older)
    with pytest.raises(ValueError, match="no supported vLLM version is free of published advisories"):
        recommended_image()


def test_a_version_that_schedules_more_tokens_at_once_sizes_a_sliding_window_model_bigger() -> None:
    # gpt-oss's sliding-window layers hold their window and the tokens scheduled at once: 8192 for 0.11.2's
    # `vllm serve` at most, 16384 for 0.33.0's on the largest GPUs.
    assert profile_of(WALKTHROUGH).extracted.serve_batched_tokens_default == 8192
    assert profile_of(CURRENT).extracted.serve_batched_tokens_default == 16384
    assert gpu_memory(model_on(CURRENT)).kv_cache > gpu_memory(model_on(WALKTHROUGH)).kv_cache
