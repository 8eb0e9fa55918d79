"""Stage settings: one YAML file per stage under settings/stages/, checked by settings.model."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from settings.model import StageSettings

STAGES_DIR = Path(__file__).parent / "stages"
DEFAULT_STAGE = "dev"

__all__ = ["DEFAULT_STAGE", "STAGES_DIR", "SettingsError", "StageSettings", "load_stage_settings", "stage_names"]


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
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"stage {stage!r}: {path} is not valid YAML: {error}") from None
    return parse_stage_settings(stage, data)


def parse_stage_settings(stage: str, data: Any) -> StageSettings:
    """Check one stage's settings, already read from YAML, against the model."""
    if not isinstance(data, dict):
        raise SettingsError(f"stage {stage!r}: settings must be a mapping of fields, got {type(data).__name__}")
    try:
        return StageSettings.model_validate(data)
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(problem)}" for problem in _root_causes(error.errors()))
        raise SettingsError(f"stage {stage!r} has invalid settings:\n{problems}") from None


def _root_causes(problems: list[Any]) -> list[Any]:
    """Drop a list's "too short" when it only follows from an invalid item inside the list."""
    return [
        problem
        for problem in problems
        if problem["type"] != "too_short"
        or not any(other["loc"][: len(problem["loc"])] == problem["loc"] and other is not problem for other in problems)
    ]


def _describe(problem: dict[str, Any]) -> str:
    """One line per problem: the field's path, what is wrong and, where known, what is allowed."""
    location = _field_path(problem["loc"])
    if problem["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(problem["loc"][:-1]))
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


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the model accepts at a location, to list them next to an unknown one."""
    model: Any = StageSettings
    for part in loc:
        if isinstance(part, int):
            model = typing.get_args(model)[0]  # the element type of a tuple[...]
        else:
            model = model.model_fields[part].annotation
    while not (isinstance(model, type) and issubclass(model, BaseModel)):
        model = next(arg for arg in typing.get_args(model) if arg is not type(None))
    return list(model.model_fields)
