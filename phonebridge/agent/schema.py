"""Sans-I/O: a typed Python function -> the FunctionDeclaration the model sees, and the model's JSON args -> Python values.

pydantic (already a google-genai dependency) does the typing work both ways: each parameter gets a
TypeAdapter, which yields a JSON Schema for the declaration and validates the model's arguments (lax mode:
2.0 -> 2, "small" -> Size.SMALL, dicts -> dataclasses and models).

Why not `FunctionDeclaration.from_callable`: its JSON-schema mode fills `parameters_json_schema`, which the
Live API ignores (the model then calls with empty args: googleapis/python-genai#1147, livekit/agents#5560);
its OpenAPI mode knows neither `Annotated` descriptions nor a parameter to inject. So we emit the classic
`parameters` (types.Schema, OpenAPI subset) ourselves, with `$ref`s inlined and titles dropped.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from google.genai import types

from phonebridge.errors import ConfigError, ToolArgumentError

_EMPTY = inspect.Parameter.empty
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_FORMAT_HINTS = {"date": "(YYYY-MM-DD)", "time": "(HH:MM)", "date-time": "(ISO 8601, e.g. 2026-05-01T19:30:00)"}
_MAX_DEPTH = 12


@dataclass(frozen=True)
class Parameter:
    """One declared parameter: its validator, whether the model must supply it, and what the model is told."""

    name: str
    adapter: pydantic.TypeAdapter[Any]
    required: bool
    default: Any
    description: str | None


@dataclass(frozen=True)
class HandlerSignature:
    """What a handler declares to the model and how the model's arguments bind to it."""

    description: str
    parameters: tuple[Parameter, ...]
    context_param: str | None

    def declaration(self, name: str) -> types.FunctionDeclaration:
        if not self.parameters:
            return types.FunctionDeclaration(name=name, description=self.description)
        properties = {p.name: _parameter_schema(p) for p in self.parameters}
        schema = types.Schema(
            type=types.Type.OBJECT,
            properties=properties,
            required=[p.name for p in self.parameters if p.required],
            property_ordering=list(properties),
        )
        return types.FunctionDeclaration(name=name, description=self.description, parameters=schema)

    def bind(self, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate and convert the model's JSON arguments; ToolArgumentError names every bad parameter."""
        args = dict(args or {})
        known = {p.name for p in self.parameters}
        problems = [f"unexpected argument '{k}'" for k in args if k not in known]
        bound: dict[str, Any] = {}
        for param in self.parameters:
            if param.name not in args:
                if param.required:
                    problems.append(f"missing required argument '{param.name}'")
                continue
            try:
                bound[param.name] = param.adapter.validate_python(args[param.name])
            except pydantic.ValidationError as exc:
                if args[param.name] is None and not param.required:
                    continue  # an explicit null for an optional parameter: use its default
                problems.extend(_describe(param.name, exc))
        if problems:
            expected = ", ".join(sorted(known)) or "none"
            raise ToolArgumentError("; ".join(problems) + f" (the parameters are: {expected})")
        return bound


def inspect_handler(
    fn: Callable[..., Any], *, context_type: type, description: str | None = None
) -> HandlerSignature:
    """Read fn's signature and docstring; ConfigError for anything the model could not be told about."""
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"tool {label}: cannot resolve its type hints: {exc}") from exc
    summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    context_param: str | None = None
    params: list[Parameter] = []
    for name, sig_param in inspect.signature(fn).parameters.items():
        if sig_param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ConfigError(f"tool {label}: *args/**kwargs cannot be declared to the model")
        annotation = hints.get(name, _EMPTY)
        if isinstance(annotation, type) and issubclass(annotation, context_type):
            context_param = name
            continue
        if annotation is _EMPTY:
            raise ConfigError(f"tool {label}: parameter '{name}' needs a type annotation")
        params.append(_make_parameter(label, sig_param, annotation, arg_docs.get(name)))
    return HandlerSignature(
        description=(description if description is not None else summary).strip(),
        parameters=tuple(params),
        context_param=context_param,
    )


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description without the Args section, {param: description})."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    args_indent = 0
    for line in doc.splitlines():
        header = _SECTION.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters") and line.strip():
            match = _ARG_LINE.match(line.strip())
            if match and (current is None or _indent(line) <= args_indent):
                current, args_indent = match.group(1).lstrip("*"), _indent(line)
                args[current] = match.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), args


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _make_parameter(label: str, sig_param: inspect.Parameter, annotation: Any, doc: str | None) -> Parameter:
    name = sig_param.name
    if not _PARAM_NAME.fullmatch(name):
        raise ConfigError(f"tool {label}: parameter name '{name}' must be ASCII letters, digits, _ (max 64)")
    annotation, notes = _split_annotated(annotation)
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
        json_schema = adapter.json_schema()
        _convert(json_schema, json_schema.get("$defs", {}), 0)  # reject what the model cannot be told
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError) as exc:
        raise ConfigError(f"tool {label}: parameter '{name}': unsupported type {annotation!r}: {exc}") from exc
    except _Unsupported as exc:
        raise ConfigError(f"tool {label}: parameter '{name}': {exc}") from exc
    required = sig_param.default is _EMPTY
    description = " ".join(part for part in (*notes, doc) if part) or None
    return Parameter(name, adapter, required, None if required else sig_param.default, description)


def _split_annotated(annotation: Any) -> tuple[Any, list[str]]:
    """`Annotated[int, "how many pizzas"]`: plain strings are descriptions; pydantic metadata stays."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation, []
    base, *metadata = typing.get_args(annotation)
    notes = [m for m in metadata if isinstance(m, str)]
    rest = [m for m in metadata if not isinstance(m, str)]
    return (Annotated[(base, *rest)] if rest else base), notes


def _parameter_schema(param: Parameter) -> types.Schema:
    json_schema = param.adapter.json_schema()
    schema = _convert(json_schema, json_schema.get("$defs", {}), 0)
    if param.description:
        schema.description = " ".join(x for x in (param.description, schema.description) if x)
    if not param.required and param.default is not None:
        schema.default = pydantic.TypeAdapter(Any).dump_python(param.default, mode="json")
    return schema


class _Unsupported(Exception):
    """A type pydantic understands but the Live API's schema subset cannot express."""


def _convert(node: dict[str, Any], defs: dict[str, Any], depth: int) -> types.Schema:
    """A pydantic JSON Schema node -> types.Schema (OpenAPI subset), inlining $refs."""
    schema = _convert_node(node, defs, depth)
    if node.get("default") is not None and schema.default is None:
        schema.default = node["default"]
    return schema


def _convert_node(node: dict[str, Any], defs: dict[str, Any], depth: int) -> types.Schema:
    if depth > _MAX_DEPTH:
        raise _Unsupported("the type nests too deeply (recursive types cannot be declared)")
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**target, **extra}, defs, depth + 1)
    if "anyOf" in node:
        return _convert_union(node, defs, depth)
    if "enum" in node or "const" in node:
        return _convert_choices(node)
    kind = node.get("type")
    schema = types.Schema(description=node.get("description"))
    if kind == "object":
        _fill_object(schema, node, defs, depth)
    elif kind == "array":
        if "prefixItems" in node or "items" not in node:
            raise _Unsupported("tuples and untyped lists are not supported: use list[T]")
        schema.type = types.Type.ARRAY
        schema.items = _convert(node["items"], defs, depth + 1)
        schema.min_items, schema.max_items = node.get("minItems"), node.get("maxItems")
    elif kind in ("string", "integer", "number", "boolean"):
        schema.type = types.Type(kind.upper())
        _fill_scalar(schema, node)
    else:
        raise _Unsupported(f"cannot declare {node!r} to the model (Any, None and bare object are not supported)")
    return schema


def _fill_object(schema: types.Schema, node: dict[str, Any], defs: dict[str, Any], depth: int) -> None:
    if "properties" not in node:
        raise _Unsupported("free-form mappings (dict[...]) are not supported: use a dataclass or pydantic model")
    schema.type = types.Type.OBJECT
    schema.properties = {k: _convert(v, defs, depth + 1) for k, v in node["properties"].items()}
    schema.required = list(node.get("required", []))
    schema.property_ordering = list(node["properties"])


def _fill_scalar(schema: types.Schema, node: dict[str, Any]) -> None:
    schema.minimum, schema.maximum = node.get("minimum"), node.get("maximum")
    schema.min_length, schema.max_length = node.get("minLength"), node.get("maxLength")
    schema.pattern = node.get("pattern")
    hint = _FORMAT_HINTS.get(node.get("format", ""))
    if hint:
        schema.description = f"{schema.description} {hint}" if schema.description else hint


def _convert_union(node: dict[str, Any], defs: dict[str, Any], depth: int) -> types.Schema:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    nullable = len(options) < len(node["anyOf"])
    if len(options) == 1:
        schema = _convert({**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}, defs, depth + 1)
    else:
        schema = types.Schema(any_of=[_convert(o, defs, depth + 1) for o in options])
        schema.description = node.get("description")
    schema.nullable = True if nullable else None
    return schema


def _convert_choices(node: dict[str, Any]) -> types.Schema:
    values = node["enum"] if "enum" in node else [node["const"]]
    description = node.get("description")
    if all(isinstance(v, str) for v in values):
        return types.Schema(type=types.Type.STRING, format="enum", enum=list(values), description=description)
    # The API's enum holds strings only: numbers are typed, their choices spelled out for the model.
    if all(isinstance(v, bool) for v in values):
        kind = types.Type.BOOLEAN
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        kind = types.Type.INTEGER
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        kind = types.Type.NUMBER
    else:
        raise _Unsupported(f"choices {values!r} mix types: use all strings or all numbers")
    choices = "One of: " + ", ".join(str(v) for v in values) + "."
    return types.Schema(type=kind, description=f"{description} {choices}" if description else choices)


def _describe(name: str, exc: pydantic.ValidationError) -> list[str]:
    """pydantic's errors as short sentences naming the argument path, e.g. `items[0].size`."""
    out = []
    for error in exc.errors(include_url=False):
        path = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        out.append(f"argument '{path}': {error['msg']} (got {shown})")
    return out
