"""The emulator script `phonebridge dev` derives from an agent's tool declarations (pure)."""

from __future__ import annotations

from phonebridge.dev.script import BUILT_IN_TOOLS, declarations_of, derived_script, example_args, example_value
from phonebridge.examples.pizzeria import agent as pizzeria
from phonebridge.testing import live_wire
from phonebridge.testing.live_script import CallTools, Say, WaitForCaller, WaitForText
from phonebridge.agent.tools import all_tools


def _setup(agent) -> dict:
    decls = [d.model_dump(exclude_none=True, mode="json") for d in all_tools(agent).declarations()]
    return live_wire.normalise({"tools": [{"function_declarations": decls}]})


def test_every_own_tool_is_called_once_with_arguments_from_its_schema():
    script = derived_script(declarations_of(_setup(pizzeria)))
    calls = [s.calls[0] for s in script.steps if isinstance(s, CallTools)]
    assert [(c.name, dict(c.args)) for c in calls] == [
        ("get_menu", {}),  # only required parameters: vegetarian_only has a default
        ("price", {"pizza": "example pizza"}),
        ("order_status", {"order_id": "A-1042"}),  # "the order number, like A-1042"
        ("book_table", {"name": "example name", "day": "2030-01-15", "time": "19:30", "party_size": 2}),
    ]
    assert not BUILT_IN_TOOLS & {c.name for c in calls}  # the page's hang-up button ends the call


def test_the_script_greets_then_waits_for_the_caller_before_each_tool_and_loops_at_the_end():
    script = derived_script(declarations_of(_setup(pizzeria)))
    assert isinstance(script.steps[0], WaitForText) and isinstance(script.steps[1], Say)
    for index, step in enumerate(script.steps):
        if isinstance(step, CallTools):
            assert isinstance(script.steps[index - 2], WaitForCaller)
    assert script.loop_from is not None and isinstance(script.steps[script.loop_from], WaitForCaller)
    assert not isinstance(derived_script([], greets=False).steps[0], WaitForText)  # no greeting prompt to wait for


def test_example_values_follow_the_schema():
    assert example_value({"type": "STRING", "enum": ["small", "large"]}) == "small"
    assert example_value({"type": "integer", "minimum": 5}) == 5
    assert example_value({"type": "NUMBER"}) == 2.0
    assert example_value({"type": "BOOLEAN"}) is True
    assert example_value({"type": "ARRAY", "items": {"type": "STRING", "description": "e.g. P-7"}}) == ["P-7"]
    assert example_value({"type": "STRING", "format": "date-time"}) == "2030-01-15T19:30:00Z"
    assert example_args({"type": "OBJECT", "properties": {"sku": {"type": "STRING"}}, "required": ["sku"]},
                        "Find a product by SKU, e.g. SKU-99.") == {"sku": "SKU-99"}
    assert example_args(None) == {}
