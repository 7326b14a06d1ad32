from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Annotated, Any, Literal, Optional

import pydantic
import pytest
from google.genai import types

from phonebridge.agent.context import CallContext
from phonebridge.errors import ConfigError, ToolArgumentError
from phonebridge.agent.schema import HandlerSignature, inspect_handler, parse_docstring


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Table(enum.IntEnum):
    PATIO = 1
    INSIDE = 2


@dataclasses.dataclass
class Pizza:
    name: Annotated[str, pydantic.Field(description="name on the menu")]
    size: Size = Size.LARGE
    toppings: list[str] = dataclasses.field(default_factory=list)


class Address(pydantic.BaseModel):
    street: str
    floor: int | None = None


class Opaque:
    """A type pydantic cannot validate."""


def sig(fn: Any) -> HandlerSignature:
    return inspect_handler(fn, context_type=CallContext)


def params(fn: Any) -> dict[str, Any]:
    decl = sig(fn).declaration(fn.__name__)
    dumped = decl.model_dump(mode="json", exclude_none=True)
    assert dumped["name"] == fn.__name__
    return dumped["parameters"]  # type: ignore[no-any-return]


def test_scalars_required_and_defaults() -> None:
    def f(a: str, b: int, c: float = 1.5, d: bool = False) -> None:
        """Do f."""

    assert params(f) == {
        "type": "OBJECT",
        "properties": {
            "a": {"type": "STRING"},
            "b": {"type": "INTEGER"},
            "c": {"type": "NUMBER", "default": 1.5},
            "d": {"type": "BOOLEAN", "default": False},
        },
        "required": ["a", "b"],
        "property_ordering": ["a", "b", "c", "d"],
    }


def test_descriptions_from_annotated_field_and_docstring_args() -> None:
    def f(
        a: Annotated[str, "the order id, e.g. A-1042"],
        b: Annotated[int, pydantic.Field(ge=1, le=12, description="guests")],
        c: str,
    ) -> None:
        """Look things up.

        Args:
            c: a long description
                that wraps.
        Returns:
            nothing
        """

    s = sig(f)
    assert s.description == "Look things up."
    assert params(f)["properties"] == {
        "a": {"type": "STRING", "description": "the order id, e.g. A-1042"},
        "b": {"type": "INTEGER", "description": "guests", "minimum": 1.0, "maximum": 12.0},
        "c": {"type": "STRING", "description": "a long description that wraps."},
    }


def test_literal_and_enum_choices() -> None:
    def f(mode: Literal["pickup", "delivery"], size: Size, table: Table, n: Literal[1, 2] = 1) -> None:
        """F."""

    assert params(f)["properties"] == {
        "mode": {"type": "STRING", "format": "enum", "enum": ["pickup", "delivery"]},
        "size": {"type": "STRING", "format": "enum", "enum": ["small", "large"]},
        "table": {"type": "INTEGER", "description": "One of: 1, 2."},
        "n": {"type": "INTEGER", "description": "One of: 1, 2.", "default": 1},
    }


def test_optional_list_date_and_nested_dataclass_and_model() -> None:
    def f(
        pizzas: list[Pizza], address: Address, day: datetime.date, note: Optional[str] = None, size: Size = Size.SMALL
    ) -> None:
        """F."""

    props = params(f)["properties"]
    assert props["pizzas"] == {
        "type": "ARRAY",
        "items": {
            "type": "OBJECT",
            "properties": {
                "name": {"type": "STRING", "description": "name on the menu"},
                "size": {"type": "STRING", "format": "enum", "enum": ["small", "large"], "default": "large"},
                "toppings": {"type": "ARRAY", "items": {"type": "STRING"}},
            },
            "required": ["name"],
            "property_ordering": ["name", "size", "toppings"],
        },
    }
    assert props["address"] == {
        "type": "OBJECT",
        "properties": {"street": {"type": "STRING"}, "floor": {"type": "INTEGER", "nullable": True}},
        "required": ["street"],
        "property_ordering": ["street", "floor"],
    }
    assert props["day"] == {"type": "STRING", "description": "(YYYY-MM-DD)"}
    assert props["note"] == {"type": "STRING", "nullable": True}
    assert props["size"] == {"type": "STRING", "format": "enum", "enum": ["small", "large"], "default": "small"}


def test_call_context_is_injected_not_declared() -> None:
    def f(call: CallContext, order_id: str) -> None:
        """F."""

    s = sig(f)
    assert s.context_param == "call"
    assert [p.name for p in s.parameters] == ["order_id"]
    assert params(f)["required"] == ["order_id"]


def test_no_parameters_gives_no_schema() -> None:
    def ping(call: CallContext) -> None:
        """Ping."""

    decl = sig(ping).declaration("ping")
    assert decl == types.FunctionDeclaration(name="ping", description="Ping.")


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (dict[str, int], "free-form mappings"),
        (tuple[int, int], "tuples"),
        (Any, "cannot declare"),
        (Opaque, "unsupported type"),
    ],
)
def test_unsupported_annotations_are_config_errors(annotation: Any, message: str) -> None:
    def f(x: Any) -> None:
        """F."""

    f.__annotations__ = {"x": annotation, "return": None}

    with pytest.raises(ConfigError, match=f"parameter 'x'.*{message}"):
        sig(f)


def test_missing_annotation_and_varargs_are_config_errors() -> None:
    def f(x) -> None:  # type: ignore[no-untyped-def]
        """F."""

    def g(*args: int) -> None:
        """G."""

    with pytest.raises(ConfigError, match="parameter 'x' needs a type annotation"):
        sig(f)
    with pytest.raises(ConfigError, match=r"\*args"):
        sig(g)


def test_bind_converts_json_to_python_types() -> None:
    def f(
        n: int, size: Size, pizzas: list[Pizza], address: Address, day: datetime.date, mode: Literal["a", "b"] = "a"
    ) -> None:
        """F."""

    bound = sig(f).bind(
        {
            "n": 2.0,
            "size": "small",
            "pizzas": [{"name": "margherita", "toppings": ["basil"]}],
            "address": {"street": "Via Roma 1"},
            "day": "2026-05-01",
        }
    )
    assert bound == {
        "n": 2,
        "size": Size.SMALL,
        "pizzas": [Pizza("margherita", Size.LARGE, ["basil"])],
        "address": Address(street="Via Roma 1"),
        "day": datetime.date(2026, 5, 1),
    }
    assert type(bound["n"]) is int


def test_bind_null_for_optional_parameter_uses_default() -> None:
    def f(count: int = 3) -> None:
        """F."""

    assert sig(f).bind({"count": None}) == {}
    assert sig(f).bind(None) == {}


def test_bind_errors_name_every_bad_parameter() -> None:
    def f(n: int, size: Size, pizzas: list[Pizza]) -> None:
        """F."""

    with pytest.raises(ToolArgumentError) as info:
        sig(f).bind({"n": 2.5, "pizzas": [{"name": 3}], "colour": "red"})
    assert str(info.value) == (
        "unexpected argument 'colour'; "
        "argument 'n': Input should be a valid integer, got a number with a fractional part (got 2.5); "
        "missing required argument 'size'; "
        "argument 'pizzas[0].name': Input should be a valid string (got 3) "
        "(the parameters are: n, pizzas, size)"
    )


def test_parse_docstring() -> None:
    doc = "Book a table.\n\nMore text.\n\nArgs:\n    when (str): the time\n    guests: how many\n        people\nRaises:\n    X"
    assert parse_docstring(doc) == ("Book a table.\n\nMore text.", {"when": "the time", "guests": "how many people"})
