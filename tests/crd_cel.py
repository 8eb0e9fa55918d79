"""The CEL validation rules of a CustomResourceDefinition (`x-kubernetes-validations`), evaluated offline on a
rendered custom resource, the way the API server evaluates them when the object is created.

A JSON schema validator (tests/scanners.py's crd_problems) checks types, enums and required fields; it cannot read
these rules, and the API server refuses an object that breaks one of them only at apply time, in the middle of a
deploy. The rules run on cel-python (celpy), extended here with what Kubernetes adds to CEL.

What the API server does and this module does too:
- each rule runs where its schema node has a value in the object, `self` bound to that value; at the root `self` is
  the whole object, with only `name` and `generateName` visible in its metadata;
- the object is defaulted from the schema first (`default`), and fields the schema does not declare are invisible
  (pruned);
- property names are escaped (`namespace` is `__namespace__`, `a-b` is `a__dash__b`...); map keys
  (additionalProperties) are not;
- strings of format `byte`, `duration`, `date` and `date-time` are bytes, durations and timestamps;
- numbers compare across int and double, and values of different types are unequal rather than an error
  (cel-go's heterogeneous equality);
- `message`, `messageExpression` (falling back to `message`, then to `failed rule: <rule>`) and `fieldPath`;
- transition rules, those that read `oldSelf`, do not run on create; with `optionalOldSelf: true` they run, `oldSelf`
  being an absent optional (`optional.none()`). `reason` only picks the API server's error type: it is not shown.

Kubernetes' CEL libraries, which celpy lacks, are functions here: the strings extension (charAt, indexOf,
lastIndexOf, lowerAscii, upperAscii, replace, split, substring, trim, join, reverse, strings.quote, format), lists
(isSorted, sum, min, max, indexOf, lastIndexOf, slice, flatten, distinct, reverse, sort), regex (find, findAll),
sets (sets.contains, sets.equivalent, sets.intersects), url and isURL with their getters, quantity and isQuantity
with their arithmetic and comparisons, ip/cidr and isIP/isCIDR with theirs, and optionals: the `x.?field` and
`x[?key]` syntax (a grammar extension), optional.of, optional.none, optional.ofNonZeroValue, hasValue, value,
orValue, or, optMap, optFlatMap.

What is not checked: the cost budget, the compile-time type check (a rule with a typo in a field name fails only if
it runs on an object; `has(self.a.b)` is false where `a` is absent, not an error), list equality ignoring order for
x-kubernetes-list-type set and map, optional list and map literals (`[?x]`, `{?k: v}`) and two-variable
comprehensions. A rule that cannot be parsed, or calls a function that exists neither in celpy nor here, is never
skipped: each object that reaches it reports it (`cannot evaluate rule ...`), and `unevaluable_rules` lists such rules
of a definition.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import itertools
import operator
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import celpy
import lark
import re2
import yaml
from celpy import celtypes
from celpy.evaluation import Activation, CELEvalError, Context, Evaluator, base_functions

# What a CEL expression yields here: celpy's values (celpy.evaluation.Result) and those Kubernetes' libraries add,
# optionals, URLs, quantities, IPs and CIDRs, which celpy's types do not list.
Value = Any

# libyaml's loader where PyYAML was built with it: the Envoy Gateway definitions are megabytes of YAML.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- Optionals -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionalValue:
    """CEL's optional type: what `x.?field` yields, present or absent."""

    present: bool
    value: Any = None

    def __str__(self) -> str:
        return f"optional.of({self.value!r})" if self.present else "optional.none()"


NONE = OptionalValue(False)


def _select_optional(target: Any, key: Any) -> Value:
    """`target.?key` and `target[?key]`: the field, entry or element when there is one, else optional.none()."""
    if isinstance(target, CELEvalError):
        return target
    if isinstance(target, OptionalValue):
        if not target.present:
            return target
        target = target.value
    if isinstance(target, celtypes.MapType):
        return OptionalValue(True, target[key]) if key in target else NONE
    if isinstance(target, celtypes.ListType) and _is_number(key) and float(key).is_integer():
        return OptionalValue(True, target[int(key)]) if 0 <= int(key) < len(target) else NONE
    return CELEvalError(f"no such overload: optional selection on {type(target).__name__}")


def _bare_identifier(tree: Any) -> str | None:
    """The identifier a member expression is made of, when it is nothing more (`optional` in `optional.none()`)."""
    while isinstance(tree, lark.Tree) and tree.data in ("member", "primary") and len(tree.children) == 1:
        tree = tree.children[0]
    if isinstance(tree, lark.Tree) and tree.data == "ident":
        return str(tree.children[0])
    return None


class _Evaluator(Evaluator):
    """celpy's interpreter, plus optional field and index selection (`x.?f`, `x[?k]`, chained through `.` and
    `[]` once optional), the optMap and optFlatMap macros, and functions named in a namespace (`optional.none()`,
    `sets.contains(a, b)`), which celpy would read as a method call on an undeclared variable."""

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        return _Evaluator(ast, activation=self.activation)

    def member_dot_opt(self, tree: lark.Tree) -> Value:
        member_tree, name = tree.children
        return _select_optional(self.visit(cast(lark.Tree, member_tree)), celtypes.StringType(str(name)))

    def member_index_opt(self, tree: lark.Tree) -> Value:
        member_tree, index_tree = tree.children
        target = self.visit(cast(lark.Tree, member_tree))
        index = self.visit(cast(lark.Tree, index_tree))
        return index if isinstance(index, CELEvalError) else _select_optional(target, index)

    def member_dot(self, tree: lark.Tree) -> Value:
        member_tree, name = tree.children
        target = self.visit(cast(lark.Tree, member_tree))
        if isinstance(target, OptionalValue):
            return _select_optional(target, celtypes.StringType(str(name)))
        if isinstance(target, CELEvalError):
            return target
        if isinstance(target, celtypes.MessageType):
            return target.get(str(name))
        if isinstance(target, celtypes.MapType):
            if str(name) in target:
                return target[celtypes.StringType(str(name))]
            return CELEvalError(f"no such key: {name!s}", KeyError, None, tree=tree)
        if isinstance(target, dict):  # A NameContainer: a qualified name (google.protobuf...).
            return target[str(name)].value if str(name) in target else CELEvalError(f"no {name!s}")
        return CELEvalError(f"{type(target).__name__} does not support field selection", TypeError, None, tree=tree)

    def member_index(self, tree: lark.Tree) -> Value:
        target, index = self.visit_children(tree)
        if isinstance(target, OptionalValue):
            return index if isinstance(index, CELEvalError) else _select_optional(target, index)
        for value in (target, index):
            if isinstance(value, CELEvalError):
                return value
        try:
            return self.activation.resolve_function("_[_]")(target, index)
        except (TypeError, KeyError, IndexError) as ex:
            return CELEvalError(f"no such key or index: {index!r}", ex.__class__, ex.args, tree=tree)

    def member_dot_arg(self, tree: lark.Tree) -> Value:
        member_tree, method = tree.children[:2]
        name = str(method)
        namespace = _bare_identifier(member_tree)
        if namespace is not None and f"{namespace}.{name}" in FUNCTIONS and not self._is_variable(namespace):
            arguments = self.visit(cast(lark.Tree, tree.children[2])) if len(tree.children) == 3 else []
            if isinstance(arguments, CELEvalError):
                return arguments
            return self.function_eval(lark.Token("IDENT", f"{namespace}.{name}"), arguments)
        if name in ("optMap", "optFlatMap"):
            target = self.visit(cast(lark.Tree, member_tree))
            if isinstance(target, CELEvalError) or (isinstance(target, OptionalValue) and not target.present):
                return target
            if not isinstance(target, OptionalValue):
                return CELEvalError(f"no such overload: {name} on {type(target).__name__}")
            try:
                mapped = self.build_macro_eval(tree)(target.value)
            except CELEvalError as ex:
                return ex
            if name == "optMap":
                return OptionalValue(True, mapped)
            return mapped if isinstance(mapped, OptionalValue) else CELEvalError("optFlatMap: not an optional")
        return super().member_dot_arg(tree)

    def _is_variable(self, name: str) -> bool:
        try:
            self.activation.identifiers.resolve_name(self.activation.package, name)
        except KeyError:
            return False
        return True


class _Runner(celpy.InterpretedRunner):
    """celpy's interpreted runner, on the extended interpreter, its base activation made once: an evaluation clones
    it and never changes it."""

    def __init__(self, environment: celpy.Environment, ast: lark.Tree, functions: Any = None) -> None:
        super().__init__(environment, ast, functions)
        self.activation: Activation = self.new_activation()

    def evaluate(self, context: Context) -> celtypes.Value:
        return _Evaluator(ast=self.ast, activation=self.activation).evaluate(context)


# celpy's grammar with CEL's optional selection: `x.?field` and `x[?key]`.
_MEMBER_RULE = "member         : member_dot | member_dot_arg | member_index | member_object | primary"
_OPTIONAL_RULES = """ | member_dot_opt | member_index_opt
member_dot_opt : member ".?" IDENT
member_index_opt : member "[" "?" expr "]"
"""


@functools.cache
def _parser() -> lark.Lark:
    grammar = (Path(celpy.__file__).parent / "cel.lark").read_text()
    if _MEMBER_RULE not in grammar:
        raise RuntimeError(f"celpy's grammar changed: no {_MEMBER_RULE!r} to extend with optional selection")
    return lark.Lark(
        grammar.replace(_MEMBER_RULE, _MEMBER_RULE + _OPTIONAL_RULES),
        parser="lalr",
        start="expr",
        g_regex_flags=re.M,
        lexer_callbacks={"IDENT": celpy.CELParser.ambiguous_literals},
        propagate_positions=True,
        maybe_placeholders=False,
        priority="invert",
    )


class _Environment(celpy.Environment):
    """celpy's environment, compiling with the extended grammar and running on the extended interpreter."""

    def __init__(self) -> None:
        super().__init__(runner_class=_Runner)

    def compile(self, text: str) -> lark.Tree:
        try:
            return _parser().parse(text)
        except lark.exceptions.UnexpectedInput as ex:
            raise celpy.CELParseError(
                f"syntax error at line {ex.line} column {ex.column}", line=ex.line, column=ex.column
            ) from ex


@functools.cache
def _environment() -> _Environment:
    return _Environment()


# --- Kubernetes' CEL libraries -------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool | celtypes.BoolType)


def _number(value: Any) -> int | float:
    return float(value) if isinstance(value, float) else int(value)


def _same(a: Any, b: Any) -> bool:
    """CEL equality, heterogeneous as cel-go's: numbers compare by value across int, uint and double, and values of
    different types are unequal."""
    if _is_number(a) and _is_number(b):
        return _number(a) == _number(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(any(_same(k, o) for o in b) and _same(v, _lookup(b, k)) for k, v in a.items())
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, bool | celtypes.BoolType) and isinstance(b, bool | celtypes.BoolType):
        return bool(a) == bool(b)
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except TypeError:
        return False


def _lookup(mapping: dict[Any, Any], key: Any) -> Any:
    return next(value for k, value in mapping.items() if _same(k, key))


def _equal(a: Value, b: Value) -> Value:
    for value in (a, b):
        if isinstance(value, CELEvalError):
            return value
    return celtypes.BoolType(_same(a, b))


def _not_equal(a: Value, b: Value) -> Value:
    equal = _equal(a, b)
    return equal if isinstance(equal, CELEvalError) else celtypes.BoolType(not equal)


def _ordering(name: str, compare: Callable[[Any, Any], bool]) -> Callable[[Value, Value], Value]:
    """A comparison operator that also compares int, uint and double with each other (cel-go's cross-type numeric
    comparisons, which Kubernetes enables)."""
    celpy_operator = base_functions[name]

    def ordering(a: Value, b: Value) -> Value:
        if _is_number(a) and _is_number(b):
            return celtypes.BoolType(compare(_number(a), _number(b)))
        return celpy_operator(a, b)

    return ordering


def _in(item: Value, container: Value) -> Value:
    for value in (item, container):
        if isinstance(value, CELEvalError):
            return value
    if isinstance(container, dict | list):
        return celtypes.BoolType(any(_same(item, element) for element in container))
    return CELEvalError(f"no such overload: in {type(container).__name__}")


def _string(value: str) -> celtypes.StringType:
    return celtypes.StringType(value)


def _int(value: int) -> celtypes.IntType:
    return celtypes.IntType(value)


def _list(values: Iterable[Any]) -> celtypes.ListType:
    return celtypes.ListType(list(values))


def _char_at(text: str, index: int) -> Value:
    if not 0 <= index <= len(text):
        return CELEvalError(f"charAt: index out of range: {index}")
    return _string(text[index : index + 1])


def _index_of(target: Any, item: Any, offset: int = 0) -> Value:
    """indexOf on a string (strings extension, from an offset) or a list (lists library)."""
    if isinstance(target, str):
        if not 0 <= offset <= len(target):
            return CELEvalError(f"indexOf: index out of range: {offset}")
        return _int(target.find(item, offset))
    if isinstance(target, list):
        return _int(next((i for i, element in enumerate(target) if _same(element, item)), -1))
    return CELEvalError(f"no such overload: indexOf on {type(target).__name__}")


def _last_index_of(target: Any, item: Any, offset: int | None = None) -> Value:
    if isinstance(target, str):
        end = len(target) if offset is None else offset
        if not 0 <= end <= len(target):
            return CELEvalError(f"lastIndexOf: index out of range: {offset}")
        return _int(target.rfind(item, 0, end + len(item)))
    if isinstance(target, list):
        return _int(next((i for i in reversed(range(len(target))) if _same(target[i], item)), -1))
    return CELEvalError(f"no such overload: lastIndexOf on {type(target).__name__}")


def _ascii(convert: Callable[[str], str]) -> Callable[[str], Value]:
    """lowerAscii and upperAscii: only ASCII letters change, as in cel-go."""

    def change(text: str) -> Value:
        return _string("".join(convert(c) if c.isascii() else c for c in text))

    return change


def _replace(text: str, old: str, new: str, count: int = -1) -> Value:
    return _string(text.replace(old, new, count))


def _split(text: str, separator: str, limit: int = -1) -> Value:
    """Go's strings.SplitN: at most `limit` parts (all when negative, none when 0); an empty separator splits
    between characters."""
    if limit == 0:
        return _list([])
    if separator == "":
        parts = list(text) if limit < 0 or limit >= len(text) else [*text[: limit - 1], text[limit - 1 :]]
    else:
        parts = text.split(separator, limit - 1 if limit > 0 else -1)
    return _list(map(_string, parts))


def _substring(text: str, start: int, end: int | None = None) -> Value:
    end = len(text) if end is None else end
    if not 0 <= start <= end <= len(text):
        return CELEvalError(f"substring: index out of range: [{start}:{end}] of {len(text)}")
    return _string(text[start:end])


def _join(parts: list[Any], separator: str = "") -> Value:
    if not all(isinstance(part, str) for part in parts):
        return CELEvalError("join: not a list of strings")
    return _string(separator.join(parts))


def _reverse(target: Any) -> Value:
    if isinstance(target, str):
        return _string(target[::-1])
    if isinstance(target, list):
        return _list(reversed(target))
    return CELEvalError(f"no such overload: reverse on {type(target).__name__}")


def _quote(text: str) -> Value:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return _string(f'"{escaped}"')


_FORMAT_VERB = re.compile(r"%(?:\.(\d+))?([sdfeExXob%])")


def _format(template: str, arguments: list[Any]) -> Value:
    """The strings extension's format: the verbs %s, %d, %f, %e, %x, %X, %o, %b and %%, with a precision for
    %f and %e."""
    remaining = iter(arguments)
    try:

        def verb(match: re.Match[str]) -> str:
            precision, kind = match.groups()
            if kind == "%":
                return "%"
            value = next(remaining)
            if kind == "s":
                return _display(value)
            if kind in "fe":
                return f"{float(value):.{6 if precision is None else int(precision)}{kind}}"
            if kind == "d":
                return str(int(value))
            if isinstance(value, str | bytes) and kind in "xX":
                hexadecimal = (value.encode() if isinstance(value, str) else value).hex()
                return hexadecimal if kind == "x" else hexadecimal.upper()
            return format(int(value), {"x": "x", "X": "X", "o": "o", "b": "b"}[kind])

        return _string(_FORMAT_VERB.sub(verb, template))
    except (StopIteration, ValueError, TypeError) as ex:
        return CELEvalError(f"format: {ex or 'too few arguments'}")


def _display(value: Any) -> str:
    if isinstance(value, bool | celtypes.BoolType):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_display(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_display(k)}: {_display(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _is_sorted(values: list[Any]) -> Value:
    try:
        return celtypes.BoolType(all(not (b < a) for a, b in itertools.pairwise(values)))
    except TypeError:
        return CELEvalError("isSorted: elements not comparable")


def _sum(values: list[Any]) -> Value:
    if not values:
        return _int(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _extreme(pick: Callable[..., Any], name: str) -> Callable[..., Value]:
    def extreme(*values: Any) -> Value:
        candidates = values[0] if len(values) == 1 and isinstance(values[0], list) else values
        if not candidates:
            return CELEvalError(f"{name}: empty list")
        try:
            return pick(candidates)
        except TypeError:
            return CELEvalError(f"{name}: elements not comparable")

    return extreme


def _slice(values: list[Any], start: int, end: int) -> Value:
    if not 0 <= start <= end <= len(values):
        return CELEvalError(f"slice: index out of range: [{start}:{end}] of {len(values)}")
    return _list(values[start:end])


def _flatten(values: list[Any], depth: int = 1) -> Value:
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list) and depth > 0:
            flat.extend(cast(list[Any], _flatten(value, depth - 1)))
        else:
            flat.append(value)
    return _list(flat)


def _distinct(values: list[Any]) -> Value:
    kept: list[Any] = []
    for value in values:
        if not any(_same(value, k) for k in kept):
            kept.append(value)
    return _list(kept)


def _sort(values: list[Any]) -> Value:
    try:
        return _list(sorted(values))
    except TypeError:
        return CELEvalError("sort: elements not comparable")


def _find(text: str, pattern: str) -> Value:
    try:
        match = re2.search(pattern, text)
    except re2.error as ex:
        return CELEvalError(f"find: {ex}")
    return _string(match.group(0) if match else "")


def _find_all(text: str, pattern: str, limit: int = -1) -> Value:
    try:
        found = [m.group(0) for m in re2.finditer(pattern, text)]
    except re2.error as ex:
        return CELEvalError(f"findAll: {ex}")
    return _list(map(_string, found if limit < 0 else found[:limit]))


def _sets_contains(a: list[Any], b: list[Any]) -> Value:
    return celtypes.BoolType(all(any(_same(x, y) for y in a) for x in b))


def _sets_equivalent(a: list[Any], b: list[Any]) -> Value:
    return celtypes.BoolType(bool(_sets_contains(a, b)) and bool(_sets_contains(b, a)))


def _sets_intersects(a: list[Any], b: list[Any]) -> Value:
    return celtypes.BoolType(any(_same(x, y) for x in a for y in b))


# URLs, as Kubernetes' url library parses them (Go's url.ParseRequestURI: an absolute URL or an absolute path).


@dataclass(frozen=True)
class URL:
    text: str
    parts: urllib.parse.SplitResult

    def __str__(self) -> str:
        return self.text


def _parse_url(text: str) -> URL | None:
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 -- a port that is not a number raises here.
    except ValueError:
        return None
    if parts.fragment or "#" in text or not (parts.scheme or text.startswith("/")):
        return None
    if parts.scheme and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme):
        return None
    return URL(text, parts)


def _url(text: str) -> Value:
    parsed = _parse_url(text)
    return parsed if parsed is not None else CELEvalError(f"url: not a URL: {text!r}")


def _is_url(text: str) -> Value:
    return celtypes.BoolType(_parse_url(text) is not None)


def _url_getter(read: Callable[[URL], Any]) -> Callable[[Any], Value]:
    def getter(url: Any) -> Value:
        if not isinstance(url, URL):
            return CELEvalError(f"no such overload: not a URL: {type(url).__name__}")
        return read(url)

    return getter


def _host(url: URL) -> str:
    return url.parts.netloc.rpartition("@")[2]


def _hostname(url: URL) -> str:
    host = _host(url)
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rpartition(":")[0] if ":" in host else host


def _port(url: URL) -> str:
    host = _host(url)
    after = host[host.index("]") + 1 :] if host.startswith("[") else host
    return after.rpartition(":")[2] if ":" in after else ""


def _query(url: URL) -> celtypes.MapType:
    parsed = urllib.parse.parse_qs(url.parts.query, keep_blank_values=True)
    return celtypes.MapType({_string(k): _list(map(_string, v)) for k, v in parsed.items()})


# Quantities, as Kubernetes' quantity library parses them (resource.Quantity: "1.5Gi", "500m", "1e3").

_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?")
_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9))},
    **{s: Decimal(10) ** e for s, e in (("T", 12), ("P", 15), ("E", 18))},
}
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Quantity:
    value: Decimal

    def __str__(self) -> str:
        return format(self.value.normalize(), "f")

    def __lt__(self, other: Quantity) -> bool:
        return self.value < other.value


def _parse_quantity(text: str) -> Quantity | None:
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return None
    number, suffix = match.groups()
    try:
        scale = Decimal(1) if not suffix else _SUFFIXES.get(suffix) or Decimal(10) ** int(suffix[1:])
        return Quantity(Decimal(number) * scale)
    except (InvalidOperation, ValueError):
        return None


def _quantity(text: str) -> Value:
    parsed = _parse_quantity(text)
    return parsed if parsed is not None else CELEvalError(f"quantity: not a quantity: {text!r}")


def _is_quantity(text: str) -> Value:
    return celtypes.BoolType(_parse_quantity(text) is not None)


def _amount(value: Any) -> Decimal:
    if isinstance(value, Quantity):
        return value.value
    if _is_number(value) and isinstance(value, int):
        return Decimal(int(value))
    raise TypeError(f"not a quantity or an int: {type(value).__name__}")


def _quantity_method(compute: Callable[[Decimal, Decimal], Any]) -> Callable[[Any, Any], Value]:
    def method(quantity: Any, other: Any) -> Value:
        if not isinstance(quantity, Quantity):
            return CELEvalError(f"no such overload: not a quantity: {type(quantity).__name__}")
        result = compute(quantity.value, _amount(other))
        if isinstance(result, Decimal):
            return Quantity(result)
        return celtypes.BoolType(result) if isinstance(result, bool) else _int(result)

    return method


def _quantity_reader(read: Callable[[Decimal], Any]) -> Callable[[Any], Value]:
    def reader(quantity: Any) -> Value:
        if not isinstance(quantity, Quantity):
            return CELEvalError(f"no such overload: not a quantity: {type(quantity).__name__}")
        return read(quantity.value)

    return reader


def _is_integer(value: Decimal) -> bool:
    return value == value.to_integral_value() and _INT64[0] <= value <= _INT64[1]


def _as_integer(value: Decimal) -> Value:
    return _int(int(value)) if _is_integer(value) else CELEvalError("asInteger: not an int64")


# IP addresses and CIDRs, as Kubernetes' ip and cidr libraries parse them (no zone, no IPv4-mapped IPv6).

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IP:
    address: Address

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True)
class CIDR:
    address: Address
    network: Network

    def __str__(self) -> str:
        return f"{self.address}/{self.network.prefixlen}"


def _parse_ip(text: str) -> IP | None:
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None
    return IP(address)


def _parse_cidr(text: str) -> CIDR | None:
    address, slash, length = text.partition("/")
    ip = _parse_ip(address)
    if ip is None or not slash or not length.isdigit():
        return None
    try:
        return CIDR(ip.address, ipaddress.ip_network(f"{address}/{length}", strict=False))
    except ValueError:
        return None


def _ip(value: Any) -> Value:
    """ip(string), or the address of a CIDR (`cidr.ip()`)."""
    if isinstance(value, CIDR):
        return IP(value.address)
    parsed = _parse_ip(value) if isinstance(value, str) else None
    return parsed if parsed is not None else CELEvalError(f"ip: not an IP address: {value!r}")


def _cidr(text: str) -> Value:
    parsed = _parse_cidr(text)
    return parsed if parsed is not None else CELEvalError(f"cidr: not a CIDR: {text!r}")


def _ip_reader(read: Callable[[Address], Any]) -> Callable[[Any], Value]:
    def reader(ip: Any) -> Value:
        if not isinstance(ip, IP):
            return CELEvalError(f"no such overload: not an IP: {type(ip).__name__}")
        result = read(ip.address)
        return celtypes.BoolType(result) if isinstance(result, bool) else _int(result)

    return reader


def _is_link_local_multicast(address: Address) -> bool:
    """Go's net.IP.IsLinkLocalMulticast: 224.0.0.0/24 and ff02::/16 (Python's is_link_local knows neither)."""
    if isinstance(address, ipaddress.IPv4Address):
        return address in ipaddress.IPv4Network("224.0.0.0/24")
    return address.packed[0] == 0xFF and address.packed[1] & 0x0F == 0x02


def _is_global_unicast(address: Address) -> bool:
    """Go's net.IP.IsGlobalUnicast, which private ranges pass (Python's is_global refuses them)."""
    broadcast = ipaddress.IPv4Address("255.255.255.255")
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address == broadcast
    )


def _contains(cidr: Any, other: Any) -> Value:
    """containsIP and containsCIDR, each taking the parsed value or its string."""
    if not isinstance(cidr, CIDR):
        return CELEvalError(f"no such overload: not a CIDR: {type(cidr).__name__}")
    if isinstance(other, str):
        parsed: IP | CIDR | None = _parse_cidr(other) if "/" in other else _parse_ip(other)
        if parsed is None:
            return CELEvalError(f"not an IP address or a CIDR: {other!r}")
        other = parsed
    if isinstance(other, IP):
        return celtypes.BoolType(other.address in cidr.network)
    if isinstance(other, CIDR):
        return celtypes.BoolType(
            other.network.version == cidr.network.version and other.network.subnet_of(cidr.network)  # type: ignore[arg-type]
        )
    return CELEvalError(f"no such overload: contains {type(other).__name__}")


def _cidr_reader(read: Callable[[CIDR], Any]) -> Callable[[Any], Value]:
    def reader(cidr: Any) -> Value:
        if not isinstance(cidr, CIDR):
            return CELEvalError(f"no such overload: not a CIDR: {type(cidr).__name__}")
        return read(cidr)

    return reader


def _family(value: Any) -> Value:
    if isinstance(value, IP | CIDR):
        return _int(value.address.version)
    return CELEvalError(f"no such overload: family of {type(value).__name__}")


def _is_canonical(text: str) -> Value:
    parsed = _parse_ip(text)
    return celtypes.BoolType(parsed is not None and str(parsed) == text)


# Optionals' functions and methods.


def _optional_method(read: Callable[[OptionalValue], Any]) -> Callable[[Any], Value]:
    def method(target: Any) -> Value:
        if not isinstance(target, OptionalValue):
            return CELEvalError(f"no such overload: not an optional: {type(target).__name__}")
        return read(target)

    return method


def _or_value(target: Any, fallback: Any) -> Value:
    if not isinstance(target, OptionalValue):
        return CELEvalError(f"no such overload: orValue on {type(target).__name__}")
    return target.value if target.present else fallback


def _or(target: Any, other: Any) -> Value:
    if not isinstance(target, OptionalValue) or not isinstance(other, OptionalValue):
        return CELEvalError("no such overload: or needs two optionals")
    return target if target.present else other


def _value(target: OptionalValue) -> Value:
    return target.value if target.present else CELEvalError("optional.none() has no value")


def _of_non_zero_value(value: Any) -> Value:
    zero = value is None or (not value and not isinstance(value, OptionalValue))
    return NONE if zero else OptionalValue(True, value)


# Every function a rule may call beyond celpy's own, by the name CEL calls it: a method `x.f(a)` is f(x, a).
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_==_": _equal,
    "_!=_": _not_equal,
    "_<_": _ordering("_<_", operator.lt),
    "_<=_": _ordering("_<=_", operator.le),
    "_>_": _ordering("_>_", operator.gt),
    "_>=_": _ordering("_>=_", operator.ge),
    "_in_": _in,
    # Strings extension.
    "charAt": _char_at,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "lowerAscii": _ascii(str.lower),
    "upperAscii": _ascii(str.upper),
    "replace": _replace,
    "split": _split,
    "substring": _substring,
    "trim": lambda text: _string(text.strip()),
    "join": _join,
    "reverse": _reverse,
    "format": _format,
    "strings.quote": _quote,
    # Lists library and extension.
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": _extreme(min, "min"),
    "max": _extreme(max, "max"),
    "slice": _slice,
    "flatten": _flatten,
    "distinct": _distinct,
    "sort": _sort,
    # Regex library.
    "find": _find,
    "findAll": _find_all,
    # Sets extension.
    "sets.contains": _sets_contains,
    "sets.equivalent": _sets_equivalent,
    "sets.intersects": _sets_intersects,
    # URL library.
    "url": _url,
    "isURL": _is_url,
    "getScheme": _url_getter(lambda u: _string(u.parts.scheme)),
    "getHost": _url_getter(lambda u: _string(_host(u))),
    "getHostname": _url_getter(lambda u: _string(_hostname(u))),
    "getPort": _url_getter(lambda u: _string(_port(u))),
    "getEscapedPath": _url_getter(lambda u: _string(u.parts.path)),
    "getQuery": _url_getter(_query),
    # Quantity library.
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "sign": _quantity_reader(lambda v: _int((v > 0) - (v < 0))),
    "isInteger": _quantity_reader(lambda v: celtypes.BoolType(_is_integer(v))),
    "asInteger": _quantity_reader(_as_integer),
    "asApproximateFloat": _quantity_reader(lambda v: celtypes.DoubleType(float(v))),
    "add": _quantity_method(operator.add),
    "sub": _quantity_method(operator.sub),
    "isGreaterThan": _quantity_method(operator.gt),
    "isLessThan": _quantity_method(operator.lt),
    "compareTo": _quantity_method(lambda a, b: (a > b) - (a < b)),
    # IP and CIDR libraries.
    "ip": _ip,
    "isIP": lambda text: celtypes.BoolType(_parse_ip(text) is not None),
    "ip.isCanonical": _is_canonical,
    "cidr": _cidr,
    "isCIDR": lambda text: celtypes.BoolType(_parse_cidr(text) is not None),
    "family": _family,
    "isUnspecified": _ip_reader(lambda a: a.is_unspecified),
    "isLoopback": _ip_reader(lambda a: a.is_loopback),
    "isLinkLocalMulticast": _ip_reader(_is_link_local_multicast),
    "isLinkLocalUnicast": _ip_reader(lambda a: a.is_link_local and not a.is_multicast),
    "isGlobalUnicast": _ip_reader(_is_global_unicast),
    "containsIP": _contains,
    "containsCIDR": _contains,
    "prefixLength": _cidr_reader(lambda c: _int(c.network.prefixlen)),
    "masked": _cidr_reader(lambda c: CIDR(c.network.network_address, c.network)),
    # Optionals.
    "optional.of": lambda value: OptionalValue(True, value),
    "optional.none": lambda: NONE,
    "optional.ofNonZeroValue": _of_non_zero_value,
    "hasValue": _optional_method(lambda o: celtypes.BoolType(o.present)),
    "value": _optional_method(_value),
    "orValue": _or_value,
    "or": _or,
}
# The names celpy evaluates itself, not as functions.
_MACROS = {"has", "dyn", "map", "filter", "all", "exists", "exists_one", "reduce", "min", "optMap", "optFlatMap"}


# --- Rules ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    """A compiled CEL expression, or why it could not be compiled."""

    text: str
    runner: celpy.Runner | None
    error: str | None
    reads_old_self: bool


def _calls(tree: lark.Tree) -> Iterable[str]:
    """The functions an expression calls, by the names the function table knows them."""
    for node in tree.iter_subtrees():
        if node.data == "ident_arg":
            yield str(node.children[0])
        elif node.data == "member_dot_arg":
            namespace = _bare_identifier(node.children[0])
            method = str(node.children[1])
            if namespace is None or f"{namespace}.{method}" not in FUNCTIONS:
                yield method


@functools.cache
def _compile(text: str) -> _Program:
    """A rule's program: parsed, its functions resolved (a call nothing implements is a compile error, as it is
    for the API server, rather than an error only on the objects whose values reach it)."""
    environment = _environment()
    try:
        ast = environment.compile(text)
    except celpy.CELParseError as ex:
        return _Program(text, None, str(ex.args[0]).splitlines()[0], reads_old_self=False)
    unknown = sorted({name for name in _calls(ast) if name not in _MACROS | FUNCTIONS.keys() | base_functions.keys()})
    if unknown:
        return _Program(text, None, f"no function {', '.join(unknown)}", reads_old_self=False)
    reads_old_self = any(str(node.children[0]) == "oldSelf" for node in ast.find_data("ident"))
    return _Program(text, environment.program(ast, functions=FUNCTIONS), None, reads_old_self)


def _run(program: _Program, context: dict[str, Any]) -> tuple[Any, str | None]:
    """The program's value on the context, or why it has none."""
    if program.runner is None:
        return None, program.error
    try:
        return program.runner.evaluate(context), None
    except CELEvalError as ex:
        return None, " ".join(str(ex.args[0] if ex.args else "evaluation error").split())[:300]
    except Exception as ex:  # celpy lets Python's own errors through from deep inside a macro.
        return None, " ".join(f"{type(ex).__name__}: {ex}".split())[:300]


@dataclass(frozen=True)
class _Rule:
    program: _Program
    message: str | None
    message_expression: _Program | None
    field_path: str
    optional_old_self: bool

    def problems(self, value: Any, path: str) -> list[str]:
        if self.program.reads_old_self and not self.optional_old_self:
            # A transition rule: it compares an update with the stored object, and there is none on create.
            return []
        context = {"self": value, "oldSelf": NONE}
        result, error = _run(self.program, context)
        if error is None and not isinstance(result, celtypes.BoolType):
            error = f"the rule yields {type(result).__name__}, not a bool"
        if error is not None:
            return [f"{path}: cannot evaluate rule {self.program.text} ({error})"]
        if result:
            return []
        return [f"{path}{self.field_path}: {self._message(context)}"]

    def _message(self, context: dict[str, Any]) -> str:
        if self.message_expression is not None:
            message, error = _run(self.message_expression, context)
            if error is None and isinstance(message, str) and message.strip():
                return str(message)
        return self.message or f"failed rule: {self.program.text}"


def _rule(validation: dict[str, Any]) -> _Rule:
    field_path = str(validation.get("fieldPath", ""))
    if field_path and not field_path.startswith((".", "[")):
        field_path = "." + field_path
    expression = validation.get("messageExpression")
    return _Rule(
        program=_compile(str(validation["rule"])),
        message=validation.get("message"),
        message_expression=_compile(str(expression)) if expression else None,
        field_path=field_path,
        optional_old_self=bool(validation.get("optionalOldSelf")),
    )


# --- Schemas -------------------------------------------------------------------------------------------------------

# CEL's reserved words: a property named like one is `__word__` in a rule.
_RESERVED = {
    *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import"),
    *("let", "loop", "package", "namespace", "return", "var", "void", "while"),
}
_ACCESSIBLE = re.compile(r"[a-zA-Z_.\-/][a-zA-Z0-9_.\-/]*")
_IDENTIFIER = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ABSENT = object()


def _field_name(name: str) -> str | None:
    """A property's name in CEL, escaped as Kubernetes escapes it, or None when CEL cannot reach it."""
    if name in _RESERVED:
        return f"__{name}__"
    if not _ACCESSIBLE.fullmatch(name):
        return None
    for plain, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(plain, escaped)
    return name


@dataclass(frozen=True)
class _Node:
    """A schema node, read once: its rules, its children, and how its values look in CEL."""

    type: str
    format: str
    nullable: bool
    default: Any
    properties: dict[str, tuple[str | None, _Node]] | None
    items: _Node | None
    values: _Node | None
    rules: tuple[_Rule, ...]


def _node(schema: dict[str, Any]) -> _Node:
    properties = schema.get("properties")
    items = schema.get("items")
    values = schema.get("additionalProperties")
    return _Node(
        type=str(schema.get("type", "")),
        format=str(schema.get("format", "")),
        nullable=bool(schema.get("nullable")),
        default=copy.deepcopy(schema["default"]) if "default" in schema else _ABSENT,
        properties=None
        if properties is None
        else {name: (_field_name(name), _node(child)) for name, child in properties.items()},
        items=_node(items) if isinstance(items, dict) else None,
        values=_node(values) if isinstance(values, dict) else None,
        rules=tuple(_rule(v) for v in schema.get("x-kubernetes-validations", [])),
    )


def _rules(node: _Node) -> Iterable[_Rule]:
    yield from node.rules
    for _, child in (node.properties or {}).values():
        yield from _rules(child)
    for inner in (node.items, node.values):
        if inner is not None:
            yield from _rules(inner)


@functools.cache
def _definition(crd: Path, kind: str, version: str) -> _Node:
    """A served version's schema from a CustomResourceDefinition file (Helm template lines dropped; the kind's
    definition where the file holds several), its rules compiled."""
    text = "\n".join(line for line in crd.read_text().splitlines() if "{{" not in line)
    definitions = [doc for doc in yaml.load_all(text, Loader=FAST_LOADER) if doc]
    for definition in definitions:
        if definition["spec"]["names"]["kind"] == kind:
            for served in definition["spec"]["versions"]:
                if served["name"] == version and served.get("served", True):
                    return _node(served["schema"]["openAPIV3Schema"])
    raise LookupError(f"{crd}: no served version {version} of the kind {kind}")


# --- Objects -------------------------------------------------------------------------------------------------------


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{key!r}]"


def _check(value: Any, node: _Node, path: str, problems: list[str]) -> Any:
    """The value in CEL, after its rules' problems then those of the values inside it are added to `problems`."""
    inside: list[str] = []
    converted = _convert(value, node, path, inside)
    for rule in node.rules:
        problems.extend(rule.problems(converted, path))
    problems.extend(inside)
    return converted


def _convert(value: Any, node: _Node, path: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        if node.properties is not None:
            fields: dict[Any, Any] = {}
            for name, (field, child) in node.properties.items():
                present = value.get(name)
                if present is None and child.default is not _ABSENT:
                    present = copy.deepcopy(child.default)
                if present is None:
                    if name in value and child.nullable and field is not None:
                        fields[celtypes.StringType(field)] = None
                    continue
                converted = _check(present, child, _key_path(path, name), problems)
                if field is not None:
                    fields[celtypes.StringType(field)] = converted
            return celtypes.MapType(fields)
        if node.values is not None:
            return celtypes.MapType(
                {
                    celtypes.StringType(key): _check(item, node.values, f"{path}[{key!r}]", problems)
                    for key, item in value.items()
                    if item is not None
                }
            )
        return celpy.json_to_cel(value)
    if isinstance(value, list):
        if node.items is None:
            return celpy.json_to_cel(value)
        return celtypes.ListType([_check(item, node.items, f"{path}[{i}]", problems) for i, item in enumerate(value)])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.DoubleType(value) if node.type == "number" else celtypes.IntType(value)
    if isinstance(value, float):
        return (
            celtypes.IntType(int(value))
            if node.type == "integer" and value.is_integer()
            else celtypes.DoubleType(value)
        )
    if isinstance(value, str):
        return _formatted(value, node.format)
    return celpy.json_to_cel(value)


def _formatted(text: str, string_format: str) -> Any:
    """A string in CEL: bytes, a duration or a timestamp as its schema's format says, else a string (a value
    that does not parse stays a string: the schema check reports it)."""
    try:
        if string_format == "byte":
            return celtypes.BytesType(base64.b64decode(text, validate=True))
        if string_format == "duration":
            return celtypes.DurationType(text)
        if string_format in ("date", "date-time"):
            return celtypes.TimestampType(text if string_format == "date-time" else f"{text}T00:00:00Z")
    except ValueError:
        pass
    return celtypes.StringType(text)


def _root_value(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the root's rules see it: of its metadata, only the name and generateName."""
    metadata = obj.get("metadata") or {}
    return {**obj, "metadata": {k: metadata[k] for k in ("name", "generateName") if k in metadata}}


def cel_problems(obj: dict[str, Any], crd: Path) -> list[str]:
    """The CEL rules of its definition that a custom resource breaks, as `<json path>: <message>` lines (a rule
    that cannot be evaluated, as `<json path>: cannot evaluate rule <rule> (<error>)`), in the object's order:
    a node's own rules before those of the values inside it."""
    root = _definition(crd, obj["kind"], obj["apiVersion"].split("/")[1])
    problems: list[str] = []
    _check(_root_value(obj), root, "$", problems)
    return problems


def unevaluable_rules(crd: Path, kind: str, version: str) -> list[str]:
    """The rules of a definition's version that celpy cannot compile (syntax it does not parse, functions neither
    it nor this module implements), each once, sorted."""
    return sorted({r.program.text for r in _rules(_definition(crd, kind, version)) if r.program.runner is None})
