"""Whatever a handler raises is its answer to the model, BaseException included; only our own cancellation
keeps its meaning. Without this, SystemExit or KeyboardInterrupt from one handler left the event loop and
exited the whole server (every call dropped), and GeneratorExit left the model without an answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Annotated, Any

import pydantic
import pytest
from google.genai import types

from phonebridge.agent.context import CallContext
from phonebridge.agent.handler_pool import HandlerPool
from phonebridge.agent.tools import ToolDispatcher, ToolRegistry

CALL_SID = "CA" + "f" * 32
INTERNAL = {"error": "The {} tool failed with an internal error. Tell the caller it could not be done right now "
                     "and offer another way to help."}


class Custom(BaseException):
    """A BaseException subclass of the handler's own."""


RAISED = [SystemExit(3), SystemExit(4), KeyboardInterrupt(), GeneratorExit(), Custom("odd")]


@pytest.fixture
def pool() -> Iterator[HandlerPool]:
    pool = HandlerPool(max_threads=4, per_call=2)
    yield pool
    pool.shutdown()


def call_logger() -> logging.LoggerAdapter[logging.Logger]:
    """The call's logger, as the bridge makes it: every line carries the call's identity."""
    return logging.LoggerAdapter(logging.getLogger("phonebridge.call.bridge"), {"call_sid": CALL_SID})


def raising(exc: BaseException, *, is_async: bool) -> ToolRegistry:
    registry = ToolRegistry()

    def sync_tool() -> None:
        """Raises."""
        raise exc

    async def async_tool() -> None:
        """Raises."""
        raise exc

    registry.register(async_tool if is_async else sync_tool, name="lookup")
    return registry


def dispatcher(registry: ToolRegistry, executor: Any = None, timeout_s: float = 30.0) -> ToolDispatcher:
    return ToolDispatcher(registry, CallContext.for_test(), default_timeout_s=timeout_s, executor=executor,
                          logger=call_logger())


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: f"{type(e).__name__}{e.args}")
@pytest.mark.parametrize("where", ["async", "sync-pool", "sync-default-executor"])
async def test_a_handler_raising_any_base_exception_gets_the_error_answer_and_the_call_goes_on(
    exc: BaseException, where: str, pool: HandlerPool, caplog: pytest.LogCaptureFixture
) -> None:
    registry = raising(exc, is_async=where == "async")
    d = dispatcher(registry, executor=pool if where == "sync-pool" else None)
    with caplog.at_level(logging.ERROR):
        out = await d.dispatch([types.FunctionCall(id="x1", name="lookup", args={})])
    assert [(r.id, r.name, r.response) for r in out] == [("x1", "lookup", {"error": INTERNAL["error"].format("lookup")})]
    assert [o.status for o in d.outcomes] == ["error"]
    [record] = [r for r in caplog.records if "tool lookup raised" in r.getMessage()]
    assert getattr(record, "call_sid", None) == CALL_SID
    assert type(exc).__name__ in record.getMessage() or record.exc_info is not None
    assert record.exc_info is not None and record.exc_info[1] is exc
    # The dispatcher still serves the call: the next call of the same tool is answered too.
    again = await d.dispatch([types.FunctionCall(id="x2", name="lookup", args={})])
    assert [r.id for r in again] == ["x2"]


async def test_a_sync_handler_raising_stop_iteration_is_answered_at_once_not_at_its_timeout() -> None:
    # StopIteration cannot be set on an asyncio future: through run_in_executor the answer never came, and
    # the model waited for the timeout.
    registry = raising(StopIteration(), is_async=False)
    d = dispatcher(registry, timeout_s=30.0)
    out = await asyncio.wait_for(d.dispatch([types.FunctionCall(id="s", name="lookup", args={})]), 5)
    assert out[0].response == {"error": INTERNAL["error"].format("lookup")}


def _exit_on(value: int) -> int:
    raise SystemExit(value)


async def test_a_parameter_validator_raising_system_exit_is_the_handlers_error_answer() -> None:
    registry = ToolRegistry()

    def book(party: Annotated[int, pydantic.AfterValidator(_exit_on)]) -> str:
        """Book."""
        return "booked"

    registry.register(book)
    d = dispatcher(registry)
    out = await d.dispatch([types.FunctionCall(id="b", name="book", args={"party": 2})])
    assert out[0].response == {"error": INTERNAL["error"].format("book")}


async def test_our_cancellation_still_propagates_when_the_handler_turns_it_into_keyboard_interrupt() -> None:
    registry = ToolRegistry()
    started = asyncio.Event()

    async def stubborn() -> None:
        """Turns cancellation into KeyboardInterrupt in its cleanup."""
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            raise KeyboardInterrupt

    registry.register(stubborn)
    d = dispatcher(registry)
    # The model's toolCallCancellation: no answer is sent for the id.
    job = asyncio.create_task(d.dispatch([types.FunctionCall(id="c1", name="stubborn", args={})]))
    await started.wait()
    d.cancel(["c1"])
    assert await job == []
    # The call ending (our task cancelled): CancelledError propagates, not an answer.
    started.clear()
    job = asyncio.create_task(d.dispatch([types.FunctionCall(id="c2", name="stubborn", args={})]))
    await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert [o.status for o in d.outcomes] == ["cancelled", "cancelled"]


# -- what a handler returns (converted on the event loop, so the conversion itself must be bounded) --------

def _never_past_the_first() -> Iterator[int]:
    yield 1
    raise AssertionError("the dispatcher iterated the handler's generator")  # itertools.count(): forever


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def returning(value: Any) -> ToolRegistry:
    registry = ToolRegistry()

    def lookup() -> Any:
        """Returns something odd."""
        return value() if callable(value) else value

    registry.register(lookup, name="lookup")
    return registry


@pytest.mark.parametrize("value, answer", [
    # A generator was iterated on the event loop: itertools.count() wedged every call of the process.
    (_never_past_the_first, "returned an iterator"),
    (lambda: iter([1, 2]), "returned an iterator"),
    # 1 MiB and more went to the model as one frame (the Live session's limits are not ours to find out).
    (lambda: "x" * (2 * 1024 * 1024), "too large"),
    (lambda: {"rows": list(range(400_000))}, "too large"),
    (_Unprintable, None),  # neither str nor repr: the internal error, not an exception
])
async def test_a_handler_s_unsendable_return_value_is_its_error_answer(
    value: Any, answer: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatcher(returning(value))
    with caplog.at_level(logging.WARNING):
        out = await asyncio.wait_for(d.dispatch([types.FunctionCall(id="r", name="lookup", args={})]), 10)
    [response] = [r.response for r in out]
    assert response is not None and set(response) == {"error"}
    assert [o.status for o in d.outcomes] == ["error"]
    if answer is not None:
        assert answer in response["error"]
        assert any(answer in r.getMessage() for r in caplog.records)


def test_non_finite_floats_become_strings_not_the_invalid_json_the_sdk_would_send() -> None:
    # json.dumps (the SDK's) writes NaN and Infinity as bare words, which no strict JSON parser accepts.
    import json

    from phonebridge.agent.tools import to_response

    response = to_response({"ratio": float("nan"), "max": [float("inf"), -float("inf")]})
    json.dumps(response, allow_nan=False)
    assert response == {"ratio": "NaN", "max": ["Infinity", "-Infinity"]}
