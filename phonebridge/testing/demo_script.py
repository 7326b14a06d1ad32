"""The model's side of `phonebridge demo`, scripted for the LiveEmulator. Pure.

`demo_script()` is Luigi's pizzeria: greeting, a question answered after a tool call, an order status after
another, a long answer the caller cuts into, and a goodbye with end_call. It fits only an agent with the
pizzeria's tools, so any other agent gets `derived_demo_script(...)`: the same derivation `phonebridge dev`
uses (phonebridge.dev.script), one of the agent's own tools per caller turn with example arguments made
from its schema, then a goodbye. The caller's side of both is in phonebridge.demo.cli.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from phonebridge.dev.script import BUILT_IN_TOOLS, example_args
from phonebridge.testing.live_script import (
    CallTools,
    Hear,
    Say,
    Script,
    Step,
    ToolCallSpec,
    WaitForCaller,
    WaitForText,
)

PIZZERIA_TOOLS = frozenset({"get_menu", "order_status", "end_call"})
GOODBYE_LINE = "Thanks, that's all I needed. Goodbye!"
DERIVED_GREETING = "Hello! This is the phonebridge emulator, playing your agent's model. How can I help?"


def fits_pizzeria(tool_names: Collection[str]) -> bool:
    """Whether the pizzeria script's tool calls would all reach real tools of this agent."""
    return PIZZERIA_TOOLS <= set(tool_names)


def own_tools(declarations: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The agent's own declarations, without the built-in end_call and transfer_call."""
    return [d for d in declarations if d.get("name") and d.get("name") not in BUILT_IN_TOOLS]


def caller_line(declaration: Mapping[str, Any]) -> str:
    """What the demo's caller asks for, in words, before the emulator calls this tool."""
    return f"Could you {str(declaration['name']).replace('_', ' ')} for me, please?"


def derived_demo_script(
    declarations: Sequence[Mapping[str, Any]], *, greets: bool = True, ends_call: bool = True
) -> Script:
    """Greet; for each of the agent's own tools, hear the caller ask, call it, say so; then say goodbye
    (calling end_call when the agent has it, else the caller hangs up after the goodbye)."""
    steps: list[Step] = [WaitForText(timeout_s=10.0)] if greets else []
    steps.append(Say(DERIVED_GREETING))
    for declaration in own_tools(declarations):
        name = str(declaration["name"])
        args = example_args(declaration.get("parameters"), str(declaration.get("description") or ""))
        steps += [
            WaitForCaller(),
            Hear(caller_line(declaration)),
            CallTools((ToolCallSpec(name, args),)),
            Say(f"I called {name.replace('_', ' ')}. Anything else?"),
        ]
    steps += [WaitForCaller(), Hear(GOODBYE_LINE)]
    if ends_call:
        steps.append(CallTools((ToolCallSpec("end_call", {}),)))
    steps.append(Say("You're welcome. Goodbye!"))
    return Script(steps, name="demo-derived")


def demo_script() -> Script:
    return Script(
        [
            WaitForText(),
            Say("Hi, thanks for calling Luigi's pizzeria! How can I help you today?"),
            WaitForCaller(),
            Hear("Hi! Which vegetarian pizzas do you have?"),
            CallTools((ToolCallSpec("get_menu", {"vegetarian_only": True}),)),
            Say("We have a margherita and a quattro formaggi. A large margherita is thirteen dollars."),
            WaitForCaller(),
            Hear("Great. And where is my order, A-1042?"),
            CallTools((ToolCallSpec("order_status", {"order_id": "A-1042"}),)),
            Say(
                "Your order A-1042 is out for delivery and about ten minutes away. While you wait, let me tell "
                "you about tonight's specials: a truffle pizza, a seafood linguine, and our famous tiramisu, "
                "all made fresh in house every single day."
            ),
            WaitForCaller(),
            Hear("Sorry to cut in, that's all I needed. Thanks, bye!"),
            CallTools((ToolCallSpec("end_call", {}),)),
            Say("You're welcome, enjoy your pizza. Goodbye!"),
        ],
        name="pizzeria-demo",
    )
