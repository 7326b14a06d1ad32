"""A task whose first step runs now, inside the step that started it: how tool handlers start.

Why: gemini-3.1 says nothing until a tool is answered, and a task made by create_task first runs a loop turn
later, behind every callback already queued. At 100 calls a core that one hop was the whole toolCall ->
handler start reaction on the bridge's own clock (p99 up to 25 ms). Started eagerly, a handler that answers
without waiting answers, and its tool_response is written, in the very step that read the toolCall.

Python 3.12 does this itself (``Task(..., eager_start=True)``). On 3.11 `start` does the same by hand, with
what the 3.12 task does internally: the coroutine's first step runs with the new task as the current task
(so ``asyncio.current_task()``, ``asyncio.timeout`` and cancellation all act on it) and in the task's own
context; the task then carries on from where that step suspended (`_Continuation`). Either way the task's
done callbacks run as for any task; on 3.11 they run a loop turn later even when the first step finished.
Without either (an interpreter lacking asyncio's task-switch hooks) it is a plain create_task.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

_NATIVE = sys.version_info >= (3, 12)
_enter = getattr(asyncio.tasks, "_enter_task", None)
_leave = getattr(asyncio.tasks, "_leave_task", None)
SHIM = not _NATIVE and _enter is not None and _leave is not None


def start(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """The task running `coro`, its first step already run (up to its first real wait, or to its end)."""
    loop = asyncio.get_running_loop()
    if _NATIVE:
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    if not SHIM:
        return loop.create_task(coro, name=name)
    context = contextvars.copy_context()
    continuation = _Continuation(coro)
    task = loop.create_task(continuation, name=name, context=context)
    context.run(_first_step, loop, task, continuation)
    return task


def _first_step(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], continuation: _Continuation[Any]) -> None:
    """The coroutine's first step as the task's own (asyncio's _enter_task/_leave_task, as 3.12's eager start
    swaps the current task); whichever task was current (None from a plain callback) is current again after."""
    assert _enter is not None and _leave is not None
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave(loop, outer)
    _enter(loop, task)
    try:
        continuation.run_first()
    finally:
        _leave(loop, task)
        if outer is not None:
            _enter(loop, outer)


class _Continuation(Coroutine[Any, Any, T]):
    """The coroutine a 3.11 eager task drives: its first step was run already (`run_first`); the task's first
    send hands the task what that step yielded, or its outcome, and every later send or throw goes on to the
    coroutine itself, as `yield from` would."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        # (yielded,) while the task has not yet taken the first step's yield; (None, outcome) once it ended.
        self._first: tuple[Any, ...] | None = None

    def run_first(self) -> None:
        try:
            self._first = (self._coro.send(None),)
        except StopIteration as stop:
            self._first = (None, stop)
        except BaseException as exc:  # the coroutine's own outcome: the task raises it, as it would its own
            self._first = (None, exc)

    def send(self, value: Any) -> Any:
        first, self._first = self._first, None
        if first is None:
            return self._coro.send(value)
        if len(first) == 1:
            return first[0]
        raise first[1]

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """The task's cancellation (or an error) before it took the first step: to the coroutine where it waits,
        whose future is cancelled as a task's own cancel() would have cancelled it."""
        first, self._first = self._first, None
        exc = typ if val is None and isinstance(typ, BaseException) else (val if val is not None else typ())
        if first is not None and len(first) == 2:  # the coroutine had ended: the task ends with what is thrown
            raise exc
        if first is not None and isinstance(exc, asyncio.CancelledError) and asyncio.isfuture(first[0]):
            first[0].cancel()
        return self._coro.throw(exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("an eager task's continuation is driven by its task, never awaited")
