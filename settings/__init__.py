"""Stage settings: one YAML file per stage under settings/stages/, checked by settings.model."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from settings.model import PipelineSettings, StageSettings

STAGES_DIR = Path(__file__).parent / "stages"
PIPELINE_FILE = Path(__file__).parent / "pipeline.yaml"
PIPELINE_FILE = Path(__file__).parent / "pipeline.yaml"
DEFAULT_STAGE = "dev"

__all__ = [
    "DEFAULT_STAGE",
    "PIPELINE_FILE",
    "STAGES_DIR",
    "PipelineSettings",
    "SettingsError",
    "StageSettings",
    "load_pipeline_settings",
    "load_stage_settings",
    "stage_names",
]


class SettingsError(Exception):
    """A stage's settings cannot be used; the message says which stage, which field and what is allowed."""


def stage_names(stages_dir: Path = STAGES_DIR) -> list[str]:
    return sorted(path.stem for path in stages_dir.glob("*.yaml"))


def load_stage_settings(stage: str, stages_dir: Path = STAGES_DIR) -> StageSettings:
    """Read and check settings/stages/<stage>.yaml."""
    path = stages_dir / f"{stage}.yaml"
    if not path.is_file():
        raise SettingsError(
            f"unknown stage {stage!r}; stages: {', '.join(stage_names(stages_dir))} (files in {stages_dir})"
        )
    return parse_stage_settings(stage, _read_yaml(path, f"stage {stage!r}"))


def parse_stage_settings(stage: str, data: Any) -> StageSettings:
    """Check one stage's settings, already read from YAML, against the model."""
    return _validate(StageSettings, data, f"stage {stage!r}")


def load_pipeline_settings(path: Path = PIPELINE_FILE) -> tuple[PipelineSettings, dict[str, StageSettings]]:
    """The pipeline's settings and, in deployment order, each stage's settings aimed at its account."""
    return parse_pipeline_settings(_read_yaml(path, "pipeline"))


def parse_pipeline_settings(data: Any) -> tuple[PipelineSettings, dict[str, StageSettings]]:
    pipeline = _validate(PipelineSettings, data, "pipeline")
    stages = {}
    for target in pipeline.stages:
        stage = load_stage_settings(target.name)
        if stage.account not in (None, target.account):
            raise SettingsError(
                f"pipeline: stages[{target.name}].account is {target.account}, but stage {target.name!r} "
                f"says account {stage.account}; give it in one place"
            )
        stages[target.name] = stage.model_copy(update={"account": target.account})
    return pipeline, stages


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"{what}: {path} is not valid YAML: {error}") from None


def _validate(model: type[BaseModel], data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise SettingsError(f"{what}: settings must be a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(problem, model)}" for problem in _root_causes(error.errors()))
        raise SettingsError(f"{what} has invalid settings:\n{problems}") from None


def _root_causes(problems: list[Any]) -> list[Any]:
    """Drop a list's "too short" when it only follows from an invalid item inside the list."""
    return [
        problem
        for problem in problems
        if problem["type"] != "too_short"
        or not any(other["loc"][: len(problem["loc"])] == problem["loc"] and other is not problem for other in problems)
    ]


def _describe(problem: dict[str, Any], model: type[BaseModel]) -> str:
    """One line per problem: the field's path, what is wrong and, where known, what is allowed."""
    location = _field_path(problem["loc"])
    if problem["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(model, problem["loc"][:-1]))
        return f"{location}: unknown field; allowed fields here: {allowed}"
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "missing":
        return f"{location}: required field is missing"
    if problem["type"] != "value_error" and "input" in problem and not isinstance(problem["input"], (dict, list)):
        message += f" (got {problem['input']!r})"
    return f"{location}: {message}" if location else message


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names the model accepts at a location, to list them next to an unknown one."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            model = typing.get_args(model)[0]  # the element type of a tuple[...]
        else:
            model = model.model_fields[part].annotation
    while not (isinstance(model, type) and issubclass(model, BaseModel)):
        model = next(arg for arg in typing.get_args(model) if arg is not type(None))
    return list(model.model_fields)
