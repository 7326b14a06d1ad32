"""HandlerPool and CallShare: a call's hung sync handlers hold at most its own share of the threads, its
further sync calls wait within that share (and time out there, never starting late), and shutdown waits
for no hung thread. Every wait is on an event a handler sets; the handlers are released at the end."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.genai import types

from phonebridge.agent.context import CallContext
from phonebridge.agent.handler_pool import DaemonThreadExecutor, HandlerPool
from phonebridge.agent.tools import ToolDispatcher, ToolRegistry

CALL: contextvars.ContextVar[str] = contextvars.ContextVar("CALL", default="")
TIMEOUT = {"error": "The hang tool did not answer within 0.3 seconds and was stopped."}


class Hung:
    """A sync `hang` tool whose threads block until released; `quick` answers at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.release = threading.Event()
        self.loop, self.entered_event = loop, asyncio.Event()
        self.entered = 0
        self.names: list[str] = []
        self._lock = threading.Lock()
        self.registry = ToolRegistry()
        self.registry.register(self.hang, name="hang", timeout_s=0.3)
        self.registry.register(self.quick, name="quick")

    def hang(self, n: int = 0) -> str:
        """Blocks."""
        with self._lock:
            self.entered += 1
            self.names.append(threading.current_thread().name)
        self.loop.call_soon_threadsafe(self.entered_event.set)
        self.release.wait(30)  # bounded, so that a broken test cannot hang the suite
        return "late"

    def quick(self) -> str:
        """Quick."""
        return f"quick on {threading.current_thread().name}"


@pytest.fixture
async def hung() -> AsyncIterator[Hung]:
    h = Hung(asyncio.get_running_loop())
    yield h
    h.release.set()


def dispatcher(registry: ToolRegistry, pool: HandlerPool) -> ToolDispatcher:
    return ToolDispatcher(registry, CallContext.for_test(), default_timeout_s=5.0, executor=pool)


def fc(name: str, call_id: str, **args: Any) -> types.FunctionCall:
    return types.FunctionCall(id=call_id, name=name, args=args)


async def test_a_call_with_33_hung_handlers_does_not_delay_another_calls_sync_tool(hung: Hung) -> None:
    pool = HandlerPool(max_threads=8, per_call=2)
    try:
        greedy, other = dispatcher(hung.registry, pool), dispatcher(hung.registry, pool)
        out = await greedy.dispatch([fc("hang", f"h{i}", n=i) for i in range(33)])
        # Every call got its (timeout) answer; only the call's share of threads was ever taken.
        assert [r.response for r in out] == [TIMEOUT] * 33
        assert hung.entered == 2 and pool.threads == 2 and greedy._share is not None and greedy._share.held == 2
        # Another call's sync tool runs at once, in a thread the hung call could not take.
        loop = asyncio.get_running_loop()
        asked = loop.time()
        [answer] = await other.dispatch([fc("quick", "q")])
        assert loop.time() - asked < 1.0
        assert answer.response is not None and answer.response["result"].startswith("quick on phonebridge-tool")
        # The hung call's own next sync call waits in its share, and is answered by the timeout.
        assert [r.response for r in await greedy.dispatch([fc("hang", "h-next")])] == [TIMEOUT]
        assert hung.entered == 2  # the queued ones timed out before a slot freed: none started late
        # Once the hung threads return, the call's slots are free again: its next sync call runs.
        hung.release.set()
        [later] = await greedy.dispatch([fc("quick", "q-later")])
        assert later.response is not None and "result" in later.response
    finally:
        pool.shutdown()


async def test_calls_beyond_the_share_wait_their_turn_and_are_all_answered() -> None:
    pool = HandlerPool(max_threads=8, per_call=2)
    registry = ToolRegistry()
    gate, loop, two_running = threading.Event(), asyncio.get_running_loop(), asyncio.Event()
    running, peak, lock = [0], [0], threading.Lock()

    def work(n: int) -> int:
        """Works."""
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] == 2:
                loop.call_soon_threadsafe(two_running.set)
        gate.wait(10)
        with lock:
            running[0] -= 1
        return n

    registry.register(work)
    try:
        d = dispatcher(registry, pool)
        job = asyncio.create_task(d.dispatch([fc("work", str(i), n=i) for i in range(6)]))
        await asyncio.wait_for(two_running.wait(), 10)
        gate.set()
        out = await job
        assert [r.response for r in out] == [{"result": i} for i in range(6)]
        assert peak[0] == 2
    finally:
        pool.shutdown()


async def test_the_pool_bounds_its_threads_and_queues_beyond_them(hung: Hung) -> None:
    pool = HandlerPool(max_threads=3, per_call=2)
    try:
        calls = [dispatcher(hung.registry, pool) for _ in range(3)]
        jobs = [asyncio.create_task(d.dispatch([fc("hang", f"{i}-{j}") for j in range(2)])) for i, d in enumerate(calls)]
        await asyncio.gather(*jobs)
        assert pool.threads == 3 and hung.entered == 3  # the three threads, taken by the first three handlers
        hung.release.set()
        [answer] = await dispatcher(hung.registry, pool).dispatch([fc("quick", "q")])
        assert answer.response is not None and "result" in answer.response
        assert pool.threads == 3  # threads are reused, never more than the bound
    finally:
        pool.shutdown()


async def test_shutdown_answers_queued_handlers_names_hung_ones_and_waits_for_none(hung: Hung) -> None:
    pool = HandlerPool(max_threads=1, per_call=2)
    stuck = asyncio.create_task(dispatcher(hung.registry, pool).dispatch([fc("hang", "h")]))
    await asyncio.wait_for(hung.entered_event.wait(), 10)
    assert pool.running == ["hang"]
    queued = asyncio.create_task(dispatcher(hung.registry, pool).dispatch([fc("quick", "q")]))
    async with asyncio.timeout(10):
        while pool.queued == 0:  # loop steps, not time: the quick handler's task queues it for the only thread
            await asyncio.sleep(0)
    assert pool.shutdown() == ["hang"]
    [answer] = await queued
    assert answer.response is not None and "internal error" in answer.response["error"]
    assert hung.names == ["phonebridge-tool_1"]
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("phonebridge-tool"))
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.share().run(lambda: None)
    stuck.cancel()
    assert await asyncio.gather(stuck, return_exceptions=True) != []


async def test_the_default_executor_runs_to_thread_on_daemon_threads_and_shutdown_waits_a_bounded_time() -> None:
    executor = DaemonThreadExecutor(max_workers=2, join_timeout_s=0.2)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    try:
        assert await loop.run_in_executor(executor, lambda: threading.current_thread().name) == "phonebridge-default_1"
        with pytest.raises(KeyError):
            await loop.run_in_executor(executor, {}.__getitem__, "missing")
        stuck = loop.run_in_executor(executor, release.wait, 30)
        # What the loop does at close (shutdown_default_executor): wait, but only join_timeout_s.
        started = loop.time()
        await asyncio.to_thread(executor.shutdown, True)
        assert 0.2 <= loop.time() - started < 2.0
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("phonebridge-default"))
        with pytest.raises(RuntimeError, match="shut down"):
            executor.submit(print)
    finally:
        release.set()
    assert await stuck is True


async def test_an_app_gives_its_loop_the_daemon_executor() -> None:
    pool = HandlerPool()
    ctx = pool.cleanup_ctx(object())
    await ctx.__anext__()
    name = await asyncio.to_thread(lambda: threading.current_thread().name)
    assert name.startswith("phonebridge-default") and threading.current_thread().name != name
    with pytest.raises(StopAsyncIteration):
        await ctx.__anext__()


async def test_a_sync_handlers_answer_is_reported_from_the_callback_that_brings_it_back() -> None:
    """One loop turn sooner than its task could: the outcome (and so the tool_response) goes out while the
    handler's task has not yet woken; the task then returns that same answer, and nothing is reported twice.
    A failing handler is answered the same way, with its error."""
    registry = ToolRegistry()

    def lookup(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    registry.register(lookup, name="lookup")

    def broken() -> None:
        raise SystemExit(2)

    registry.register(broken, name="broken")
    pool = HandlerPool(max_threads=4, per_call=2)
    seen: list[tuple[str | None, str, bool]] = []
    reported = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    def on_outcome(outcome: Any) -> None:
        assert CALL.get() == "CA-1", "reported in the call's context: its log lines and events stay tagged"
        seen.append((outcome.id, outcome.status, asyncio.current_task() is None))  # a callback, not the task
        if len(seen) == 2:
            reported.set()

    try:
        tools = ToolDispatcher(registry, CallContext.for_test(), default_timeout_s=5.0, executor=pool,
                               on_outcome=on_outcome)
        CALL.set("CA-1")
        tasks += tools.start([fc("lookup", "1", order_id="A-1")])
        tasks += tools.start([fc("broken", "2")])
        await asyncio.wait_for(reported.wait(), 10)
        assert sorted(seen) == [("1", "ok", True), ("2", "error", True)]
        results = [await t for t in tasks]
        assert [r.response for r in results] == [{"order_id": "A-1"}, results[1].response]
        assert "internal error" in results[1].response["error"]
        assert len(tools.outcomes) == 2
    finally:
        pool.shutdown()


async def test_a_sync_answer_already_sent_stands_when_the_call_is_cancelled_before_its_task_wakes() -> None:
    registry = ToolRegistry()
    registry.register(lambda: "done", name="quick")
    pool = HandlerPool(max_threads=2, per_call=1)
    tasks: list[asyncio.Task[Any]] = []
    try:
        tools = ToolDispatcher(registry, CallContext.for_test(), default_timeout_s=5.0, executor=pool,
                               on_outcome=lambda outcome: tasks[0].cancel())  # the model cancels, too late
        tasks += tools.start([fc("quick", "1")])
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert [(o.status, o.response) for o in tools.outcomes] == [("ok", {"result": "done"})]  # no "cancelled"
    finally:
        pool.shutdown()
