"""The example agent (examples/pizzeria.py) as users run it: loaded by path and by module, then a scripted
call through the whole bridge (real aiohttp app, real google-genai client to the LiveEmulator, TwilioCaller)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import (
    CallTools,
    Say,
    Script,
    ToolCallSpec,
    WaitForText,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pizzeria.py"
OWN_TOOLS = ["get_menu", "price", "order_status", "book_table"]


def test_pizzeria_loads_by_file_path_and_by_module_name():
    by_path = load_agent(str(EXAMPLE))
    by_module = load_agent("phonebridge.examples.pizzeria")
    by_attr = load_agent("phonebridge.examples.pizzeria:agent")
    assert isinstance(by_path, Agent)
    # The checkout's file re-exports the packaged agent: one agent, whichever way it is named.
    assert by_path is by_module is by_attr
    assert by_module.tools.names == OWN_TOOLS
    assert by_module.transfer_to == "+15550100199"


def _declared(setup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in setup["tools"][0]["functionDeclarations"]}


async def test_a_call_to_the_pizzeria_uses_every_business_handler():
    agent = load_agent(str(EXAMPLE))
    book = {"name": "Ada", "day": "2026-05-01", "time": "19:30", "party_size": 4, "seating": "patio"}
    script = Script([
        WaitForText(),
        Say("Luigi's pizzeria, how can I help?"),
        CallTools((ToolCallSpec("get_menu", {"vegetarian_only": True}, id="menu"),)),
        Say("We have margherita and quattro formaggi."),
        # One toolCall mixing sync (price) and async (order_status) handlers, one of them refusing.
        CallTools((
            ToolCallSpec("price", {"pizza": "Diavola", "size": "small", "quantity": 2}, id="price"),
            ToolCallSpec("order_status", {"order_id": "a-1042"}, id="known"),
            ToolCallSpec("order_status", {"order_id": "Z-9"}, id="unknown"),
        )),
        Say("Twenty-two dollars; your order is on its way."),
        CallTools((ToolCallSpec("book_table", book, id="book"),)),
        CallTools((ToolCallSpec("book_table", {**book, "seating": "roof"}, id="roof"),)),
        CallTools((ToolCallSpec("book_table", {**book, "name": "Bob", "seating": "inside"}, id="book2"),)),
        Say("You're booked on the patio."),
    ])
    async with BridgeHarness(agent, script) as h:
        async with h.caller() as caller:
            await h.emulator.wait_for(lambda: bool(h.emulator.conversations))
            conv = h.emulator.conversations[0]
            await h.emulator.wait_for(lambda: conv.turns_spoken == 4)
        await h.wait_idle()
    got = {r.id: (r.name, r.response) for r in conv.tool_responses}
    assert list(got) == ["menu", "price", "known", "unknown", "book", "roof", "book2"]
    assert got["menu"] == ("get_menu", {"result": [
        {"name": "margherita", "small": 9.0, "large": 13.0, "vegetarian": True},
        {"name": "quattro formaggi", "small": 11.5, "large": 16.0, "vegetarian": True},
    ]})
    assert got["price"] == ("price", {"pizza": "diavola", "size": "small", "quantity": 2, "total_usd": 22.0})
    assert got["known"] == ("order_status", {"result": "out for delivery, about 10 minutes away"})
    # A ToolError's message is what the model is told.
    assert got["unknown"] == ("order_status", {
        "error": "No order Z-9 was found. Ask the caller to check the number on their receipt."
    })
    # The date and the Literal arrive typed; the caller's number comes from the call itself.
    assert got["book"] == ("book_table", {"reference": "B-001", "name": "Ada", "day": "2026-05-01", "time": "19:30",
                                          "guests": 4, "seating": "patio", "phone": caller.from_number})
    name, roof = got["roof"]
    assert name == "book_table" and roof["error"].startswith("Invalid arguments for book_table: ")
    assert "'seating'" in roof["error"]
    # Per-call state (call.state) numbers the bookings of this call; the refused one took no number.
    assert got["book2"][1]["reference"] == "B-002"
    # What the model was told about the tools: the date's format and the Literal's
    # choices.
    declared = _declared(h.emulator.connections[0].raw_setup)
    assert list(declared) == [*OWN_TOOLS, "end_call", "transfer_call"]
    props = declared["book_table"]["parameters"]["properties"]
    assert props["seating"]["enum"] == ["inside", "patio"]
    assert props["day"] == {"type": "STRING", "description": "(YYYY-MM-DD)"}
    assert "call" not in props  # the CallContext parameter is injected, never declared
    assert h.runtime.finished[-1].tool_calls == 7
    h.emulator.check()
