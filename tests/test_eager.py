"""phonebridge.agent.eager: a task whose first step runs inside start(), as its own task, on both event loops.

On 3.11 (CI) these test the hand-made eager start; on 3.12+ the same tests hold asyncio's own eager_start to
what the dispatcher relies on, so either interpreter keeps the promise.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from phonebridge.agent import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def _loops() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.fixture(params=_loops())
def run(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    def runner(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=request.param) as r:
            return r.run(coro)
    return runner


def test_the_first_step_runs_inside_start_as_the_new_task(run):
    seen: list[Any] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        return "answer"

    async def main() -> None:
        outer = asyncio.current_task()
        task = eager.start(handler(), name="tool:x")
        assert seen == [task], "ran before start() returned, with itself as the current task"
        assert asyncio.current_task() is outer
        assert task.get_name() == "tool:x"
        assert await task == "answer"

    run(main())


def test_a_task_that_waits_goes_on_from_where_its_first_step_stopped(run):
    steps: list[str] = []

    async def handler(gate: asyncio.Future[str]) -> str:
        steps.append("first")
        value = await gate
        steps.append(f"woke with {value}")
        await asyncio.sleep(0)
        return value.upper()

    async def main() -> None:
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = eager.start(handler(gate))
        assert steps == ["first"] and not task.done()
        await asyncio.sleep(0)  # the task takes its first step's wait over: still waiting
        assert steps == ["first"]
        gate.set_result("ok")
        assert await task == "OK"
        assert steps == ["first", "woke with ok"]

    run(main())


def test_asyncio_timeout_in_the_first_step_cancels_the_handler_not_the_reader(run):
    async def handler() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.get_running_loop().create_future()  # never done
        except TimeoutError:
            return "timed out"
        return "not reached"

    async def main() -> None:
        outer = asyncio.current_task()
        assert outer is not None
        task = eager.start(handler())
        assert await task == "timed out"
        assert outer.cancelling() == 0 and not outer.cancelled()
        await asyncio.sleep(0.02)  # had the timeout bound the reader, it would be cancelled by now
        assert outer.cancelling() == 0

    run(main())


def test_cancelled_before_it_runs_again_the_handler_sees_it_where_it_waits(run):
    seen: list[str] = []

    async def handler(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled at its wait")
            raise

    async def main() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = eager.start(handler(gate))
        task.cancel()  # before the task's own first turn on the loop
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and seen == ["cancelled at its wait"]
        assert gate.cancelled(), "what it waited on is cancelled, as a task's cancel() cancels its future"

    run(main())


def test_a_first_step_that_finished_keeps_its_answer_or_ends_cancelled(run):
    async def handler() -> int:
        return 7

    async def main() -> None:
        task = eager.start(handler())
        cancelled = task.cancel()
        if eager.SHIM:  # the 3.11 task is not done until its first turn: the cancel wins, as for any pending task
            assert cancelled
            with pytest.raises(asyncio.CancelledError):
                await task
        else:  # 3.12's eager task is done at once
            assert not cancelled and task.result() == 7

    run(main())


def test_what_the_first_step_raises_is_the_tasks_exception(run):
    async def handler() -> None:
        raise ValueError("bad handler")

    async def main() -> None:
        task = eager.start(handler())
        with pytest.raises(ValueError, match="bad handler"):
            await task

    run(main())


def test_the_task_has_its_own_context(run):
    async def handler() -> str:
        inherited = VAR.get()
        VAR.set("inner")
        await asyncio.sleep(0)
        return f"{inherited}/{VAR.get()}"

    async def main() -> None:
        VAR.set("outer")
        task = eager.start(handler())
        assert VAR.get() == "outer", "the handler's set stays in its own context"
        assert await task == "outer/inner"

    run(main())


def test_started_from_a_plain_callback_and_nested(run):
    order: list[str] = []

    async def inner() -> None:
        order.append(f"inner as {asyncio.current_task().get_name()}")  # type: ignore[union-attr]

    async def outer() -> None:
        order.append(f"outer as {asyncio.current_task().get_name()}")  # type: ignore[union-attr]
        eager.start(inner(), name="b")
        order.append(f"outer again as {asyncio.current_task().get_name()}")  # type: ignore[union-attr]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: done.set_result(eager.start(outer(), name="a")))  # no task is current here
        task = await done
        await task
        assert order == ["outer as a", "inner as b", "outer again as a"]

    run(main())


def test_without_the_hooks_it_is_a_plain_task(run, monkeypatch):
    monkeypatch.setattr(eager, "_NATIVE", False)
    monkeypatch.setattr(eager, "SHIM", False)
    ran: list[bool] = []

    async def handler() -> None:
        ran.append(True)

    async def main() -> None:
        task = eager.start(handler())
        assert ran == []  # a loop turn later, as create_task does
        await task
        assert ran == [True]

    run(main())
