"""The settings reference, docs/settings.md, written from the settings schema: `make docs`.

Every field of a stage's settings (settings/schema.py), with its type, its default, its limits and what it does: the
field's description, or else the comment above it in the schema. tests/test_docs.py fails when the page is not what
this writes.
"""

from __future__ import annotations

import inspect
import io
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from settings.schema import StageSettings

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "settings.md"
INTRO = """# Settings reference

Every field a stage's settings file (`settings/stages/<stage>.yaml`) takes, written from the settings
schema (`settings/schema.py`) by `make docs`. A field not given keeps its default; the settings are
checked before anything is built, and an error names the stage, the field and what it allows. A
list of mappings is shown as `field[]`, its entries' fields below it.
"""


SPACING = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)


def comments_above_fields(model: type[BaseModel]) -> dict[str, str]:
    """The comment lines right above each field of a class, joined: what the schema says of a field that has no
    description."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.start[1] == 4:
            pending.append(token.string.lstrip("#").strip())
        elif token.type == tokenize.NAME and token.start[1] == 4:
            found.setdefault(token.string, " ".join(pending))
            pending = []
        elif token.type not in SPACING and token.start[1] <= 4:
            pending = []
    return {name: text for name, text in found.items() if text}


def nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings class a field holds, if any, and whether it holds a list of them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (tuple, list) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            found, many = nested_model(arg)
            if found is not None:
                return found, many
    return None, False


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args if arg is not type(None))
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    if isinstance(annotation, type):
        return {
            "str": "text",
            "int": "integer",
            "float": "number",
            "Decimal": "number",
            "IPv4Network": "IPv4 range",
            "bool": "`true` \\| `false`",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def limits(field: FieldInfo) -> str:
    """What a field's constraints allow, as text."""
    words = []
    for item in field.metadata:
        for kind, attribute, word in ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<")):
            if isinstance(item, kind):
                words.append(f"{word} {getattr(item, attribute)}")
        if isinstance(item, MinLen):
            words.append(f"at least {item.min_length} long")
        if isinstance(item, MaxLen):
            words.append(f"at most {item.max_length} long")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            words.append(f"matches `{pattern}`")
    return ", ".join(words)


def default_of(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list) and not value:
        return "`[]`"
    if isinstance(value, tuple | list) and all(isinstance(item, BaseModel) for item in value):
        return f"{len(value)}, with the defaults below"
    if isinstance(value, dict) and not value:
        return "`{}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(str(item) for item in value) + "]`"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(field, type, default, what it does) of a settings class and of the classes its fields hold."""
    comments = comments_above_fields(model)
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        held, many = nested_model(field.annotation)
        what = field.description or comments.get(name, "")
        bounds = limits(field)
        if held is not None:
            # Its own docstring, not one it inherits.
            doc = " ".join(inspect.cleandoc(held.__dict__.get("__doc__") or "").split())
            yield f"`{path}{'[]' if many else ''}`", "list" if many else "mapping", default_of(field), what or doc
            yield from rows(held, f"{path}{'[]' if many else ''}.")
            continue
        text = "; ".join(part for part in (what.rstrip("."), bounds and f"allowed: {bounds}") if part)
        yield f"`{path}`", type_name(field.annotation), default_of(field), text


def page() -> str:
    lines = [INTRO, "| field | type | default | what it does |", "|---|---|---|---|"]
    for field, kind, default, what in rows(StageSettings):
        cells = (field, kind, default, re.sub(r"\s+", " ", what).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    PAGE.write_text(page())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
