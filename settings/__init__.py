"""Stage settings: one YAML file per stage under settings/stages/, checked by settings.schema."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from settings import names
from settings.autoscaling import autoscaling_problems
from settings.cold_start import file_system_problems
from settings.drain import drain_problems
from settings.schema import PipelineSettings, StageName, StageSettings
from settings.sizing import sizing_problems
from settings.yaml_files import load_yaml

STAGES_DIR = Path(__file__).parent / "stages"
PIPELINE_FILE = Path(__file__).parent / "pipeline.yaml"
DEFAULT_STAGE = "dev"

__all__ = [
    "DEFAULT_STAGE",
    "PIPELINE_FILE",
    "STAGES_DIR",
    "PipelineSettings",
    "SettingsError",
    "StageSettings",
    "check_shared_names",
    "check_shared_registries",
    "check_stages_together",
    "load_pipeline_settings",
    "load_stage_settings",
    "stage_names",
]

_STAGE_NAME = TypeAdapter(StageName)


class SettingsError(Exception):
    """A stage's settings cannot be used; the message says which stage, which field and what is allowed."""


def stage_names(stages_dir: Path = STAGES_DIR) -> list[str]:
    return sorted(path.stem for path in stages_dir.glob("*.yaml"))


def load_stage_settings(stage: str, stages_dir: Path = STAGES_DIR) -> StageSettings:
    """Read and check settings/stages/<stage>.yaml, and that it can share an account with the other stages."""
    settings = _load_stage_file(stage, stages_dir)
    check_stages_together([settings, *_other_stages(stage, stages_dir)])
    return settings


def _load_stage_file(stage: str, stages_dir: Path) -> StageSettings:
    _check_stage_name(stage)
    path = stages_dir / f"{stage}.yaml"
    if not path.is_file():
        raise SettingsError(
            f"unknown stage {stage!r}; stages: {', '.join(stage_names(stages_dir))} (files in {stages_dir})"
        )
    return parse_stage_settings(stage, _read_yaml(path, f"stage {stage!r}"))


def parse_stage_settings(stage: str, data: Any) -> StageSettings:
    """Check one stage's settings, already read from YAML, against the model; the stage's name is its own."""
    _check_stage_name(stage)
    what = f"stage {stage!r}"
    data = _mapping(data, StageSettings, what, "the stage's")
    if "name" in data:
        raise SettingsError(
            f"{what} has invalid settings:\n  name: set by the file name settings/stages/{stage}.yaml; remove it"
        )
    settings = _validate(StageSettings, {**data, "name": stage}, what)
    # Against the GPU instances that could run it: only once every field is valid.
    problems = (
        sizing_problems(settings)
        + drain_problems(settings)
        + autoscaling_problems(settings)
        + file_system_problems(settings)
    )
    if problems:
        raise SettingsError(f"{what} has invalid settings:\n" + "\n".join(f"  {problem}" for problem in problems))
    return settings


def load_pipeline_settings(path: Path = PIPELINE_FILE) -> tuple[PipelineSettings, dict[str, StageSettings]]:
    """The pipeline's settings and, in deployment order, each stage's settings aimed at its account."""
    return parse_pipeline_settings(_read_yaml(path, "pipeline"))


def parse_pipeline_settings(data: Any) -> tuple[PipelineSettings, dict[str, StageSettings]]:
    pipeline = _validate(PipelineSettings, _mapping(data, PipelineSettings, "pipeline", "the pipeline's"), "pipeline")
    stages = {}
    for target in pipeline.stages:
        stage = load_stage_settings(target.name)
        if stage.account not in (None, target.account):
            raise SettingsError(
                f"pipeline: stages[{target.name}].account is {target.account}, but stage {target.name!r} "
                f"says account {stage.account}; give it in one place"
            )
        stages[target.name] = stage.model_copy(update={"account": target.account})
    check_stages_together(list(stages.values()))
    return pipeline, stages


def check_stages_together(stages: list[StageSettings]) -> None:
    """Stages that may deploy into one account (and region) must not collide there; the first is the one
    being loaded, which the message names."""
    check_shared_registries(stages)
    check_shared_names(stages)


def _may_share(first: StageSettings, second: StageSettings) -> tuple[bool, bool]:
    """Whether two stages may deploy into one account, and into one account and region. Stages whose account
    is unset deploy wherever their credentials point, so they may meet any stage."""
    same_account = None in (first.account, second.account) or first.account == second.account
    return same_account, same_account and first.region == second.region


def check_shared_names(stages: list[StageSettings]) -> None:
    """Two stages that may share an account must not give AWS the same physical name (settings.names.
    CLUSTER_FIXED_NAMES): the second deploy would fail on a name the first one holds, or take it over."""
    for index, first in enumerate(stages):
        for second in stages[index + 1 :]:
            same_account, same_region = _may_share(first, second)
            clashes = [
                f"{fixed.what} {fixed.derive(first.cluster.name)}"
                for fixed in names.CLUSTER_FIXED_NAMES
                if fixed.derive(first.cluster.name) == fixed.derive(second.cluster.name)
                and (same_region if fixed.unique_in == "region" else same_account)
            ]
            if clashes:
                where = f"{first.region}" if same_region else f"{first.region} and {second.region}"
                account = first.account or second.account or "unset"
                raise SettingsError(
                    f"stage {first.name!r} has invalid settings:\n  cluster.name: stages {first.name} and "
                    f"{second.name} may deploy into one account ({account}; {where}) and would both create "
                    f"{'; '.join(clashes)}; give one of them another cluster.name"
                )


def check_shared_registries(stages: list[StageSettings]) -> None:
    """Stages that may deploy into one account and region share its ECR registry; they must not collide there.

    Each stage's pull-through cache lives under a prefix of its own (StageSettings.image_cache_prefix),
    but the registry scanning configuration is one per registry (AWS::ECR::RegistryScanningConfiguration
    is identified by the registry id): one of those stages at most owns it. Stages whose account is unset
    deploy wherever their credentials point, so they may meet any stage of their region.
    """
    for index, first in enumerate(stages):
        for second in stages[index + 1 :]:
            _, shared = _may_share(first, second)
            owners = first.registry.owns_scanning_configuration and second.registry.owns_scanning_configuration
            if shared and owners:
                account = first.account or second.account or "unset"
                raise SettingsError(
                    f"stage {first.name!r} has invalid settings:\n  registry.owns_scanning_configuration: stages "
                    f"{first.name} and {second.name} may deploy into one account and region ({first.region}, account "
                    f"{account}), where ECR keeps one registry scanning configuration; set "
                    "owns_scanning_configuration: false in all but one of them (its rule scans every repository under "
                    f"{first.registry.cache_prefix}/)"
                )


def _other_stages(stage: str, stages_dir: Path) -> list[StageSettings]:
    """The other stages' settings, those that are valid: an invalid one stops its own synth, not this one's."""
    others = []
    for name in stage_names(stages_dir):
        if name != stage:
            try:
                others.append(_load_stage_file(name, stages_dir))
            except SettingsError:
                continue
    return others


def _check_stage_name(stage: str) -> None:
    """Before any file is read: the name becomes a file name and prefixes the stack names (<stage>-ModelStore)."""
    try:
        _STAGE_NAME.validate_python(stage)
    except ValidationError:
        raise SettingsError(
            f"stage {stage!r} is not a valid stage name: expected {_declared_at(StageName, ())[1]} "
            "(it prefixes the stack names, as in <stage>-ModelStore)"
        ) from None


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"{what}: {path} is not valid YAML: {error}") from None


def _mapping(data: Any, model: type[BaseModel], what: str, whose: str) -> dict[str, Any]:
    """The settings read from a file, which must be a mapping of fields."""
    required = [name for name in _file_fields(model) if model.model_fields[name].is_required()]
    expected = f"expected {whose} settings ({', '.join(required)}, …)"
    if data is None:
        raise SettingsError(f"{what}: the file is empty; {expected}")
    if not isinstance(data, dict):
        raise SettingsError(f"{what}: settings must be a mapping of fields, got {_in_words(data)}; {expected}")
    return data


def _in_words(data: Any) -> str:
    """What YAML read, as a user would call it."""
    words = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false"}
    return words.get(type(data), f"a {type(data).__name__}")


def _file_fields(model: type[BaseModel]) -> list[str]:
    """The fields a settings file may give: all but the stage's name, which the file's name gives."""
    return [name for name in model.model_fields if not (model is StageSettings and name == "name")]


def _validate(model: type[BaseModel], data: dict[str, Any], what: str) -> Any:
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
    """One line per problem: the field's path, what is wrong and, where known, what is allowed, in words."""
    location = _field_path(problem["loc"])
    message = _reworded(problem, model)
    if message is None:
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] != "value_error" and "input" in problem and not isinstance(problem["input"], (dict, list)):
            message += f" (got {problem['input']!r})"
    return f"{location}: {message}" if location else message


def _reworded(problem: dict[str, Any], model: type[BaseModel]) -> str | None:
    """The problems pydantic words for programmers (a pattern, a Python type), in words; None for the rest."""
    kind, value, context = problem["type"], problem.get("input"), problem.get("ctx", {})
    if kind == "extra_forbidden":
        declared, _ = _declared_at(model, problem["loc"][:-1])
        return f"unknown field; allowed fields here: {', '.join(_file_fields(declared))}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        _, description = _declared_at(model, problem["loc"])
        return f"{value!r} is not {description}" if description else None
    if kind in ("too_short", "too_long"):
        bound = context["min_length"] if kind == "too_short" else context["max_length"]
        got = context.get("actual_length")
        return (
            f"should have {'at least' if kind == 'too_short' else 'at most'} {bound} item{'' if bound == 1 else 's'}"
            + ("" if got is None else f", got {got}")
        )
    if kind in ("tuple_type", "list_type"):
        return f"should be a list, got {_in_words(value)}"
    return None


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker of a bad mapping key, which the path already ends with
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _declared_at(root: Any, loc: tuple[Any, ...]) -> tuple[Any, str | None]:
    """The type declared at a location in the settings, and its description in words.

    The innermost description wins: a field's own description says what it is for, the one on its
    constrained type (settings.schema.BinarySize, say) what it accepts.
    """
    if loc[-1:] == ("[key]",):  # pydantic locates a bad key at (..., key, "[key]")
        loc = (*loc[:-2], "[key]")
    declared, description = _unwrapped(root, None)
    for part in loc:
        if isinstance(declared, type) and issubclass(declared, BaseModel):
            field = declared.model_fields[part]
            declared, description = field.annotation, field.description
        elif typing.get_origin(declared) is dict:
            key, value = typing.get_args(declared)
            declared, description = (key if part == "[key]" else value), None
        else:  # an item of a tuple[...]
            declared, description = typing.get_args(declared)[0], None
        declared, description = _unwrapped(declared, description)
    return declared, description


def _unwrapped(declared: Any, description: str | None) -> tuple[Any, str | None]:
    """A type without its Annotated constraints (keeping their description) and without `| None`."""
    while True:
        if typing.get_origin(declared) is Annotated:
            declared, *metadata = typing.get_args(declared)
            description = next(
                (item.description for item in metadata if isinstance(item, FieldInfo) and item.description),
                description,
            )
        elif typing.get_origin(declared) in (typing.Union, types.UnionType):
            declared = next(arg for arg in typing.get_args(declared) if arg is not type(None))
        else:
            return declared, description
