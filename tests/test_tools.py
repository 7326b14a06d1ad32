from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.agent.context import CallContext, RecordingCallControl
from phonebridge.errors import ConfigError, ToolError
from phonebridge.agent.tools import ToolDispatcher, ToolOutcome, ToolRegistry, all_tools, builtin_tools, to_response

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pizzeria.py"


def fc(tool: str, call_id: str, /, **args: Any) -> types.FunctionCall:
    return types.FunctionCall(id=call_id, name=tool, args=args)


def dispatcher(registry: ToolRegistry, **kwargs: Any) -> tuple[ToolDispatcher, CallContext]:
    ctx = CallContext.for_test()
    return ToolDispatcher(registry, ctx, default_timeout_s=kwargs.pop("default_timeout_s", 5.0), **kwargs), ctx


def responses(items: list[types.FunctionResponse]) -> list[tuple[str | None, str | None, Any]]:
    return [(r.id, r.name, r.response) for r in items]


# --- registry ---------------------------------------------------------------------------------------------


def test_register_builds_spec_and_declarations() -> None:
    registry = ToolRegistry()

    async def lookup(order_id: str, call: CallContext) -> dict[str, str]:
        """Look up an order."""
        return {}

    spec = registry.register(lookup, timeout_s=2.0)
    assert (spec.name, spec.description, spec.is_async, spec.timeout_s, spec.context_param) == (
        "lookup", "Look up an order.", True, 2.0, "call"
    )
    assert registry.names == ["lookup"] and len(registry) == 1 and list(registry) == [spec]
    assert registry.get("lookup") is spec and registry.get("nope") is None
    assert registry.declarations() == [spec.declaration]
    assert spec.bind({"order_id": "A-1"}) == {"order_id": "A-1"}


def test_register_name_override_duplicates_and_missing_docstring(caplog: pytest.LogCaptureFixture) -> None:
    registry = ToolRegistry()

    def f() -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="phonebridge.tools"):
        registry.register(f, name="first", description=None)
    assert "tool 'first' has no docstring" in caplog.text
    with pytest.raises(ConfigError, match="two tools are named 'first'"):
        registry.register(f, name="first")
    with pytest.raises(ConfigError, match="tool name '9bad'"):
        registry.register(f, name="9bad")
    with pytest.raises(ConfigError, match="timeout_s must be > 0"):
        registry.register(f, name="other", timeout_s=0)


def test_agent_tool_decorator_registers() -> None:
    agent = Agent(instructions="x")

    @agent.tool(name="renamed", description="Explicit.", timeout_s=1.0)
    def f(n: int) -> int:
        return n

    assert agent.tools.get("renamed") is not None
    assert agent.tools.get("renamed").description == "Explicit."  # type: ignore[union-attr]


def test_builtins_and_all_tools() -> None:
    agent = Agent(instructions="x", transfer_to="+1 555 010 0100")
    assert [s.name for s in builtin_tools(agent)] == ["end_call", "transfer_call"]
    assert "say a short goodbye" in builtin_tools(agent)[0].description
    assert builtin_tools(Agent(instructions="x", end_call=False)) == []

    @agent.tool
    def menu() -> list[str]:
        """The menu."""
        return []

    assert all_tools(agent).names == ["menu", "end_call", "transfer_call"]

    @agent.tool
    def end_call() -> None:
        """Clash."""

    with pytest.raises(ConfigError, match="'end_call' clashes with a built-in"):
        all_tools(agent)
    with pytest.raises(ConfigError, match="Agent.transfer_to"):
        builtin_tools(Agent(instructions="x", transfer_to="front desk"))


async def test_builtins_call_the_control() -> None:
    agent = Agent(instructions="x", transfer_to="sip:desk@pbx.example.com")
    d, ctx = dispatcher(all_tools(agent))
    out = await d.dispatch([fc("end_call", "1"), fc("transfer_call", "2", reason="wants a manager")])
    assert responses(out) == [
        ("1", "end_call", {"result": "the call will end after your goodbye"}),
        ("2", "transfer_call", {"result": "the caller will be transferred after you finish speaking"}),
    ]
    assert isinstance(ctx.control, RecordingCallControl)
    assert sorted(ctx.control.requests, key=str) == [("hang_up", None), ("transfer", "sip:desk@pbx.example.com")]


def test_to_response_conversions() -> None:
    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Slot:
        at: datetime.datetime
        colour: Colour

    assert to_response({"a": 1}) == {"a": 1}
    assert to_response("x") == {"result": "x"}
    assert to_response(None) == {"result": "done"}
    assert to_response(Slot(datetime.datetime(2026, 5, 1, 19, 30), Colour.RED)) == {
        "result": {"at": "2026-05-01T19:30:00", "colour": "red"}
    }
    assert to_response({"when": datetime.date(2026, 5, 1), 3: {4}}) == {"when": "2026-05-01", "3": [4]}


# --- dispatch ---------------------------------------------------------------------------------------------


async def test_sync_handler_runs_off_the_loop_thread_with_context_injected() -> None:
    registry = ToolRegistry()
    seen: dict[str, Any] = {}

    def where(call: CallContext, n: int) -> int:
        """Where."""
        seen["thread"] = threading.get_ident()
        call.state["n"] = n
        return n * 2

    registry.register(where)
    d, ctx = dispatcher(registry)
    out = await d.dispatch([fc("where", "c1", n=4.0)])
    assert responses(out) == [("c1", "where", {"result": 8})]
    assert seen["thread"] != threading.get_ident()
    assert ctx.state == {"n": 4}


async def test_each_failure_mode_gets_an_answer(caplog: pytest.LogCaptureFixture) -> None:
    registry = ToolRegistry()

    async def boom() -> None:
        """Boom."""
        raise KeyError("secret-internal-detail")

    def refuse() -> None:
        """Refuse."""
        raise ToolError("We are closed on Mondays.")

    def typed(n: int) -> int:
        """Typed."""
        return n

    for fn in (boom, refuse, typed):
        registry.register(fn)
    d, _ = dispatcher(registry)
    with caplog.at_level(logging.ERROR, logger="phonebridge.tools"):
        out = await d.dispatch([fc("boom", "1"), fc("refuse", "2"), fc("typed", "3", n="x"), fc("nope", "4")])
    assert responses(out) == [
        ("1", "boom", {"error": "The boom tool failed with an internal error. Tell the caller it could not be "
                                "done right now and offer another way to help."}),
        ("2", "refuse", {"error": "We are closed on Mondays."}),
        ("3", "typed", {"error": "Invalid arguments for typed: argument 'n': Input should be a valid integer, unable "
                                 "to parse string as an integer (got 'x') (the parameters are: n). Call it again "
                                 "with corrected ones."}),
        ("4", "nope", {"error": "There is no tool named 'nope'. The available tools are: boom, refuse, typed."}),
    ]
    assert "secret-internal-detail" not in str(out)
    assert "Traceback" in caplog.text and "secret-internal-detail" in caplog.text
    assert sorted((o.id, o.status) for o in d.outcomes) == [
        ("1", "error"), ("2", "error"), ("3", "invalid"), ("4", "unknown")
    ]


async def test_timeout_cancels_async_handler_and_answers() -> None:
    registry = ToolRegistry()
    cancelled = asyncio.Event()

    async def slow() -> None:
        """Slow."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry.register(slow, timeout_s=0.05)
    d, _ = dispatcher(registry, default_timeout_s=60)
    out = await d.dispatch([fc("slow", "t1")])
    assert responses(out) == [("t1", "slow", {"error": "The slow tool did not answer within 0.05 seconds and was stopped."})]
    assert cancelled.is_set()
    assert d.outcomes[0].status == "timeout" and d.open_ids == frozenset()


async def test_sync_handler_timeout_uses_agent_default_and_discards_result() -> None:
    registry = ToolRegistry()
    release, finished = threading.Event(), threading.Event()

    def stuck() -> str:
        """Stuck."""
        release.wait(10)
        finished.set()
        return "late"

    registry.register(stuck)
    d, _ = dispatcher(registry, default_timeout_s=0.05)
    out = await d.dispatch([fc("stuck", "s1")])
    assert out[0].response == {"error": "The stuck tool did not answer within 0.05 seconds and was stopped."}
    release.set()
    assert await asyncio.to_thread(finished.wait, 5)
    assert len(d.outcomes) == 1


async def test_calls_run_concurrently_and_are_answered_together_in_call_order() -> None:
    registry = ToolRegistry()
    b_started = asyncio.Event()

    async def a() -> str:
        """A waits for B: only possible if both run at once."""
        await b_started.wait()
        return "a"

    async def b() -> str:
        """B."""
        b_started.set()
        return "b"

    registry.register(a)
    registry.register(b)
    d, _ = dispatcher(registry)
    out = await d.dispatch([fc("a", "1"), fc("b", "2")])
    assert responses(out) == [("1", "a", {"result": "a"}), ("2", "b", {"result": "b"})]


def register_wait_forever(registry: ToolRegistry) -> tuple[asyncio.Event, asyncio.Event]:
    """Register a `wait_forever` tool that never returns; the events say it started and was cancelled."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever() -> None:
        """Waits."""
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry.register(wait_forever)
    return started, cancelled


async def test_cancellation_sends_nothing_and_cancels_the_handler() -> None:
    registry = ToolRegistry()
    started, cancelled = register_wait_forever(registry)

    async def quick() -> str:
        """Quick."""
        await started.wait()
        return "ok"

    registry.register(quick)
    outcomes: list[ToolOutcome] = []
    d, _ = dispatcher(registry, on_outcome=outcomes.append)
    job = asyncio.create_task(d.dispatch([fc("wait_forever", "w"), fc("quick", "q")]))
    await started.wait()
    assert "w" in d.open_ids
    d.cancel(["w", "unknown-id"])
    out = await job
    assert responses(out) == [("q", "quick", {"result": "ok"})]
    assert cancelled.is_set()
    assert sorted((o.id, o.status, o.response) for o in outcomes) == [
        ("q", "ok", {"result": "ok"}), ("w", "cancelled", None)
    ]
    assert all(o.finished >= o.started for o in outcomes)


async def test_aclose_cancels_everything_and_leaves_no_task() -> None:
    registry = ToolRegistry()
    started = asyncio.Event()

    async def hang() -> None:
        """Hang."""
        started.set()
        await asyncio.Event().wait()

    registry.register(hang)
    d, _ = dispatcher(registry)
    before = asyncio.all_tasks()
    job = asyncio.create_task(d.dispatch([fc("hang", "h1"), fc("hang", "h2")]))
    await started.wait()
    await d.aclose()
    assert await job == []
    assert asyncio.all_tasks() == before
    assert [o.status for o in d.outcomes] == ["cancelled", "cancelled"]
    assert await d.dispatch([fc("hang", "h3")]) == []


async def test_handler_raising_cancelled_error_itself_still_gets_an_answer() -> None:
    registry = ToolRegistry()

    async def odd() -> None:
        """Odd."""
        raise asyncio.CancelledError

    registry.register(odd)
    d, _ = dispatcher(registry)
    out = await d.dispatch([fc("odd", "o1")])
    assert out[0].response is not None and "internal error" in out[0].response["error"]


async def test_failing_on_outcome_does_not_cost_the_answer() -> None:
    registry = ToolRegistry()

    def ok() -> str:
        """Ok."""
        return "fine"

    def explode(outcome: ToolOutcome) -> None:
        raise RuntimeError("metrics down")

    registry.register(ok)
    d, _ = dispatcher(registry, on_outcome=explode)
    assert responses(await d.dispatch([fc("ok", "k")])) == [("k", "ok", {"result": "fine"})]


# --- the example agent ------------------------------------------------------------------------------------


async def test_example_pizzeria_loads_and_its_declarations_build() -> None:
    agent = load_agent(str(EXAMPLE))
    registry = all_tools(agent)
    assert {"get_menu", "order_status", "book_table", "end_call", "transfer_call"} <= set(registry.names)
    for decl in registry.declarations():
        assert decl.name and decl.description
    types.LiveConnectConfig(tools=[types.Tool(function_declarations=registry.declarations())])
    d, _ = dispatcher(registry)
    out = await d.dispatch([fc("get_menu", "m"), fc("order_status", "s", order_id="A-1042")])
    assert [r.response is not None and "error" not in r.response for r in out] == [True, True]


async def test_example_pizzeria_handlers_answer_as_documented() -> None:
    registry = all_tools(load_agent(str(EXAMPLE)))
    d, ctx = dispatcher(registry)
    out = await d.dispatch(
        [
            fc("price", "p", pizza="Diavola", size="small", quantity=2.0),
            fc("book_table", "b", name="Ada", day="2026-05-01", time="19:30", party_size=4),
            fc("book_table", "late", name="Ada", day="2026-05-01", time="23:30", party_size=4),
            fc("order_status", "o", order_id="Z-1"),
        ]
    )
    assert responses(out) == [
        ("p", "price", {"pizza": "diavola", "size": "small", "quantity": 2, "total_usd": 22.0}),
        ("b", "book_table", {"reference": "B-001", "name": "Ada", "day": "2026-05-01", "time": "19:30",
                             "guests": 4, "seating": "inside", "phone": "+15550100001"}),
        ("late", "book_table", {"error": "We take bookings between 12:00 and 22:30 only."}),
        ("o", "order_status", {"error": "No order Z-1 was found. Ask the caller to check the number on their "
                                        "receipt."}),
    ]
    assert ctx.state == {"bookings": ["B-001"]}


async def test_a_lone_call_cancelled_by_the_model_gets_no_response_and_ours_propagates() -> None:
    registry = ToolRegistry()
    started, stopped = register_wait_forever(registry)
    d, _ = dispatcher(registry)
    # toolCallCancellation for the only call: nothing to answer.
    job = asyncio.create_task(d.dispatch([fc("wait_forever", "w")]))
    await started.wait()
    d.cancel(["w"])
    assert await job == []
    # The call ending (our task cancelled) is not a cancelled tool call: it propagates, and the handler stops.
    started.clear()
    stopped.clear()
    job = asyncio.create_task(d.dispatch([fc("wait_forever", "w2")]))
    await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert stopped.is_set()


async def test_a_handler_that_answers_at_once_is_answered_inside_start() -> None:
    """The dispatcher starts handlers eagerly (phonebridge.agent.eager): an async handler that does not wait,
    and a failing one, report their outcomes before start() returns, in the caller's own step; one that waits
    has started (and not finished) by then; a sync one is in its thread's queue, answered later."""
    registry = ToolRegistry()
    gate = asyncio.Event()
    began: list[str] = []

    @registry.register
    async def quick(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    @registry.register
    async def broken() -> None:
        raise SystemExit(3)

    @registry.register
    async def slow() -> str:
        began.append("slow")
        await gate.wait()
        return "done"

    @registry.register
    def blocking() -> str:
        return "from a thread"

    outcomes: list[ToolOutcome] = []
    tools, _ = dispatcher(registry, on_outcome=outcomes.append)
    tasks = tools.start([fc("quick", "1", order_id="A-1"), fc("broken", "2"), fc("slow", "3"), fc("blocking", "4")])
    assert [(o.id, o.status) for o in outcomes] == [("1", "ok"), ("2", "error")]
    assert began == ["slow"] and tools.open_ids >= {"3", "4"}
    gate.set()
    results = await tools.collect(tasks)
    assert [r.response for r in results] == [
        {"order_id": "A-1"}, results[1].response, {"result": "done"}, {"result": "from a thread"}]
    assert "internal error" in results[1].response["error"]
