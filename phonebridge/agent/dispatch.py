"""Running a call's function calls: one response per call id, whatever the handler does.

Split from phonebridge.agent.tools (the registry and the typed specs) as the dispatcher grew: async handlers
start eagerly (phonebridge.agent.eager), sync ones in the call's share of the HandlerPool, and a sync
handler's answer is reported from the loop callback that brings it back from its thread, one loop turn sooner
than its task could (`CallShare.run`'s `taken`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from phonebridge.agent import eager
from phonebridge.agent.context import CallContext
from phonebridge.agent.handler_pool import TAKEN, HandlerPool, capture, unwrap
from phonebridge.agent.tool_response import to_response
from phonebridge.call.tool_types import ToolCall, ToolResult
from phonebridge.errors import ToolArgumentError, ToolError, ToolResponseError

if TYPE_CHECKING:  # duck-typed at run time: the registry module imports this one
    from phonebridge.agent.tools import ToolRegistry, ToolSpec

_log = logging.getLogger("phonebridge.tools")
Status = Literal["ok", "error", "timeout", "unknown", "invalid", "cancelled"]
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class ToolOutcome:
    """How one function call ended; times are time.monotonic() seconds."""

    id: str | None
    name: str
    args: Mapping[str, Any]
    response: dict[str, Any] | None
    status: Status
    started: float
    finished: float

    @property
    def latency_s(self) -> float:
        return self.finished - self.started


async def _settled(task: asyncio.Task[ToolResult]) -> Any:
    """`await task` as gather(return_exceptions=True) would report it: its result or its exception (a
    CancelledError when the task itself was cancelled). Our own cancellation still propagates."""
    try:
        return await task
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return exc
    except Exception as exc:  # noqa: BLE001 - reported to the caller, as gather does
        return exc


class ToolDispatcher:
    """Runs one call's function calls: one response per call id, whatever happens.

    Async handlers run as tasks on the loop; sync handlers run in `executor` (the loop's default executor
    if None), never on the loop thread. With a HandlerPool (what the app uses) this call gets its own share
    of the pool's threads, so its hung handlers cannot starve other calls (phonebridge/agent/handler_pool.py).
    A timed-out or cancelled *async* handler is cancelled (it sees CancelledError). A sync handler cannot
    be killed: its thread runs on until the function returns and the result is discarded. Nothing of it
    reaches the loop, but it holds a worker thread (and a slot of its call's share) meanwhile.

    Whatever a handler raises is its answer, BaseException included: SystemExit, KeyboardInterrupt or
    GeneratorExit from a handler would otherwise leave the event loop and take every call down. Only our
    own cancellation (the model's toolCallCancellation, the call ending) keeps its meaning.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        context: CallContext,
        *,
        default_timeout_s: float,
        executor: Executor | HandlerPool | None = None,
        logger: Logger | None = None,
        on_outcome: Callable[[ToolOutcome], None] | None = None,
    ) -> None:
        self._registry = registry
        self._context = context
        self._default_timeout_s = default_timeout_s
        self._log: Logger = logger or _log
        self._executor = None if isinstance(executor, HandlerPool) else executor
        self._share = executor.share(self._log) if isinstance(executor, HandlerPool) else None
        self._on_outcome = on_outcome
        self._running: dict[asyncio.Task[ToolResult], str | None] = {}
        self._closed = False
        self.outcomes: list[ToolOutcome] = []

    @property
    def open_ids(self) -> frozenset[str]:
        """Ids of the calls still running."""
        return frozenset(i for i in self._running.values() if i is not None)

    async def dispatch(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Run calls concurrently; their responses in call order, minus those cancelled meanwhile.

        An empty list means there is nothing to send (every call was cancelled, or the dispatcher closed).
        """
        return await self.collect(self.start(calls))

    def start(self, calls: Sequence[ToolCall]) -> list[asyncio.Task[ToolResult]]:
        """Start the calls' handlers now, inside the caller's own step of the loop (phonebridge.agent.eager):
        every hop through the loop before a handler starts is dead air for the caller (up to 25 ms at p99 at
        100 calls a core). A handler that answers without waiting has its outcome reported before this returns."""
        if self._closed:
            self._log.info("tool calls %s after close: not run", [c.name for c in calls])
            return []
        tasks = []
        for call in calls:
            task = eager.start(self._answer(call), name=f"tool:{call.name}")
            tasks.append(task)
            if not task.done():  # 3.12's eager task may be done already: nothing left to cancel
                self._running[task] = call.id
                task.add_done_callback(self._forget)
        return tasks

    async def collect(self, tasks: Sequence[asyncio.Task[ToolResult]]) -> list[ToolResult]:
        """The started calls' responses in call order, minus those cancelled meanwhile."""
        # A task cancelled through cancel()/aclose() yields CancelledError here, not in collect itself.
        if len(tasks) == 1:  # the usual toolCall: awaited directly, one loop hop sooner than through gather
            results: list[Any] = [await _settled(tasks[0])]
        else:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        responses = []
        for result in results:
            if isinstance(result, ToolResult):
                responses.append(result)
            elif not isinstance(result, asyncio.CancelledError):
                raise result  # a bug in _answer itself: never swallowed
        return responses

    def cancel(self, ids: Iterable[str]) -> None:
        """toolCallCancellation: cancel these calls; no response will be sent for them."""
        wanted = set(ids)
        for task, call_id in list(self._running.items()):
            if call_id in wanted:
                task.cancel()

    async def aclose(self) -> None:
        """Cancel every running call and wait for the tasks (threads of sync handlers are not waited for)."""
        self._closed = True
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, task: asyncio.Task[ToolResult]) -> None:
        self._running.pop(task, None)

    async def _answer(self, call: ToolCall) -> ToolResult:
        name, args = call.name or "", dict(call.args or {})  # `or`: tests and users may pass the SDK's FunctionCall
        started = time.monotonic()
        early: dict[str, Any] | None = None  # a sync handler's answer, once sent from its thread's callback

        def answered(status: Status, response: dict[str, Any]) -> None:
            nonlocal early
            early = response
            self._record(call, name, args, response, status, started)

        try:
            answer = await self._run(name, args, answered)
        except asyncio.CancelledError:
            if early is None:  # answered already from the thread's callback: that answer stands
                self._record(call, name, args, None, "cancelled", started)
            raise
        if answer is None:
            assert early is not None
            return ToolResult(call.id, name, early)
        self._record(call, name, args, answer[1], answer[0], started)
        return ToolResult(call.id, name, answer[1])

    async def _run(
        self, name: str, args: dict[str, Any], answered: Callable[[Status, dict[str, Any]], None]
    ) -> tuple[Status, dict[str, Any]] | None:
        """The handler's answer; None when a sync handler's was given to `answered` as soon as its thread was
        done (one loop turn before this task could give it)."""
        spec = self._registry.get(name)
        if spec is None:
            known = ", ".join(self._registry.names) or "none"
            return "unknown", {"error": f"There is no tool named {name!r}. The available tools are: {known}."}
        timeout_s = spec.timeout_s if spec.timeout_s is not None else self._default_timeout_s
        given = False

        def taken(result: Any) -> None:  # in the loop callback that brings a sync handler's result back
            nonlocal given
            try:
                answer: tuple[Status, dict[str, Any]] = ("ok", to_response(unwrap(result)))
            except BaseException as exc:  # noqa: BLE001 - the handler's, answered as _run answers it
                answer = self._failure(name, timeout_s, exc)
            given = True
            answered(*answer)

        try:
            # Binding is inside: a parameter type's own validator is handler code too, and may raise anything.
            kwargs = spec.bind(args)
            if spec.context_param:
                kwargs[spec.context_param] = self._context
            async with asyncio.timeout(timeout_s):
                value = await self._invoke(spec, kwargs, taken)
            return None if value is TAKEN else ("ok", to_response(value))
        except BaseException as exc:  # noqa: BLE001 - every outcome is an answer; _failure says which
            if given and not isinstance(exc, asyncio.CancelledError):
                return None  # the timeout fired after the answer went: nothing to say, nothing to log
            return self._failure(name, timeout_s, exc)

    def _failure(self, name: str, timeout_s: float, exc: BaseException) -> tuple[Status, dict[str, Any]]:
        """The answer to what a handler (or its binding) raised; our own cancellation propagates."""
        if isinstance(exc, ToolResponseError):
            self._log.warning("tool %s %s", name, exc)
            return "error", {"error": f"The {name} tool failed: it {exc}. Tell the caller it could not be done "
                             "right now and offer another way to help."}
        if isinstance(exc, ToolArgumentError):
            return "invalid", {"error": f"Invalid arguments for {name}: {exc}. Call it again with corrected ones."}
        if isinstance(exc, TimeoutError):
            self._log.warning("tool %s timed out after %.1f s", name, timeout_s)
            return "timeout", {"error": f"The {name} tool did not answer within {timeout_s:g} seconds and was stopped."}
        if isinstance(exc, ToolError):
            self._log.info("tool %s refused: %s", name, exc)
            return "error", {"error": str(exc) or f"The {name} tool failed."}
        if _cancelling():  # our cancellation, perhaps turned into another exception by the handler's cleanup
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            raise asyncio.CancelledError from exc
        if isinstance(exc, asyncio.CancelledError):  # raised by the handler itself: an answer is still owed
            self._log.error("tool %s raised CancelledError without being cancelled", name)
        elif isinstance(exc, Exception):  # the model must get an answer; the traceback goes to the log only
            self._log.error("tool %s raised", name, exc_info=exc)
        else:  # SystemExit, KeyboardInterrupt, GeneratorExit: the handler's, not ours
            self._log.error("tool %s raised %s: answered as an error; the call and the server go on",
                            name, type(exc).__name__, exc_info=exc)
        return "error", _internal_error(name)

    async def _invoke(self, spec: ToolSpec, kwargs: dict[str, Any], taken: Callable[[Any], None]) -> Any:
        if spec.is_async:
            return await spec.fn(**kwargs)
        # copy_context: logging and tracing context vars follow the call into the worker thread.
        job = functools.partial(contextvars.copy_context().run, spec.fn, **kwargs)
        if self._share is not None:
            return await self._share.run(job, spec.name, taken)
        # capture: even what a plain executor's future cannot carry (StopIteration) comes back to be raised here.
        loop = asyncio.get_running_loop()
        return unwrap(await loop.run_in_executor(self._executor, functools.partial(capture, job)))

    def _record(
        self, call: ToolCall, name: str, args: dict[str, Any], response: dict[str, Any] | None,
        status: Status, started: float,
    ) -> None:
        outcome = ToolOutcome(call.id, name, args, response, status, started, time.monotonic())
        self.outcomes.append(outcome)
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:  # a metrics hook must not cost the model its answer
            self._log.exception("on_outcome callback failed for tool %s", name)


def _internal_error(name: str) -> dict[str, Any]:
    return {"error": f"The {name} tool failed with an internal error. Tell the caller it could not be done "
            "right now and offer another way to help."}


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

