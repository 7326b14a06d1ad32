"""The threads sync handlers run in: shared by every call of an app, with a bounded share per call.

A sync handler cannot be stopped once it runs: a hung one holds its thread until it returns, whatever the
timeout answered meanwhile. With one shared pool and no bound, one call whose handlers hang (33 of them)
held every thread and another call's quick sync tool waited in the queue until it timed out. So:

- Each call gets a `CallShare`: at most `per_call` of its sync handlers hold (or wait for) a pool thread at
  once. Its further sync calls wait their turn *within the call's own share*, in order, and that wait counts
  against the tool's timeout: the model gets the tool's answer, or the usual timeout answer. A production
  user expects a burst of parallel lookups to be answered, a little later; a "busy" refusal the model
  could only retry at once would not serve them better. A slot is freed when the thread actually returns
  (or when a queued handler is withdrawn before it started), never at the timeout: a call cannot pile up
  hung threads by timing them out.
- The pool itself is `max_threads` *daemon* threads, started as needed. A ThreadPoolExecutor's threads are
  joined at interpreter exit (concurrent.futures registers that at import), so a hung handler held the
  process for as long as it hung after the drain (SIGTERM took 32-37 s). Daemon threads are not joined:
  `shutdown()` logs the handlers still running, drops the queued ones, and the process exits after the drain.

Nothing a handler raises crosses into the loop's futures as such: the thread catches everything
(BaseException included; StopIteration cannot even be set on an asyncio future) and the awaiting coroutine
re-raises it, so the dispatcher sees a sync handler's exceptions exactly as an async handler's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "HANDLER_THREADS", "HANDLER_THREADS_PER_CALL", "CallShare", "DaemonThreadExecutor", "HandlerPool", "Raised",
    "capture",
]

HANDLER_THREADS = 64  # started only as needed; the bound is against hung handlers accumulating
HANDLER_THREADS_PER_CALL = 4
DEFAULT_JOIN_S = 2.0  # how long the loop's default executor waits for its threads at shutdown
WARN_EVERY = 100  # "every thread is busy" is logged the first time, then every hundredth time

_log = logging.getLogger("phonebridge.handler_pool")
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class Raised:
    """What a handler raised in its thread, carried back as a value (BaseException included)."""

    error: BaseException


def capture(fn: Callable[[], Any]) -> Any:
    """fn()'s value, or Raised(what it raised): nothing escapes into the executor's machinery."""
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - re-raised on the loop by the awaiting coroutine
        return Raised(exc)


def unwrap(value: Any) -> Any:
    if isinstance(value, Raised):
        raise value.error
    return value


class _Taken:
    """What `CallShare.run` returns when its `taken` callback took the handler's result (see there)."""

    def __repr__(self) -> str:
        return "TAKEN"


TAKEN: Any = _Taken()


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any] = field(repr=False)
    name: str
    finished: Callable[[Any], None] = field(repr=False)  # called in the worker thread with capture(fn)
    state: Literal["queued", "running", "withdrawn"] = "queued"


class HandlerPool:
    """Daemon threads for sync handlers; `share()` gives each call its bounded part of them."""

    def __init__(
        self, max_threads: int = HANDLER_THREADS, per_call: int = HANDLER_THREADS_PER_CALL,
        *, thread_name_prefix: str = "phonebridge-tool", what: str = "sync handlers",
    ) -> None:
        if max_threads < 1 or per_call < 1:
            raise ValueError("max_threads and per_call must be at least 1")
        self.max_threads, self.per_call, self._prefix, self._what = max_threads, per_call, thread_name_prefix, what
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # a job is queued (or the pool closed): for idle threads
        self._settled = threading.Condition(self._lock)  # a job finished: for wait_idle
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: set[_Job] = set()
        self._threads = 0
        self._idle = 0
        self._saturated = 0
        self._closed = False

    def share(self, logger: Logger | None = None) -> CallShare:
        """One call's part of the pool (make one per call, on the call's loop)."""
        return CallShare(self, self.per_call, logger or _log)

    @property
    def threads(self) -> int:
        """Threads started and not yet retired (idle ones included)."""
        with self._lock:
            return self._threads

    @property
    def running(self) -> list[str]:
        """Names of the handlers running in a thread now."""
        with self._lock:
            return sorted(job.name for job in self._running)

    @property
    def queued(self) -> int:
        """Handlers waiting for a thread (every thread busy)."""
        with self._lock:
            return len(self._queue)

    async def cleanup_ctx(self, app: object) -> AsyncIterator[None]:
        """For aiohttp's `app.cleanup_ctx`: the pool's threads start as needed; at cleanup it shuts down.

        It also gives the loop a DaemonThreadExecutor as its default executor: an async handler's
        `asyncio.to_thread(...)` left hanging by its timeout must not hold the process at exit either."""
        asyncio.get_running_loop().set_default_executor(DaemonThreadExecutor())
        yield
        self.shutdown()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing runs or waits (False if `timeout_s` passed first). Not on the loop thread."""
        with self._lock:
            return self._settled.wait_for(lambda: not self._running and not self._queue, timeout_s)

    def shutdown(self) -> list[str]:
        """Take no more work, drop what is queued, let idle threads end; returns the handlers still running.

        Running threads are not waited for (they are daemon threads: the process exits without them)."""
        with self._lock:
            if self._closed:
                return sorted(job.name for job in self._running)
            self._closed = True
            dropped = list(self._queue)
            for job in dropped:
                job.state = "withdrawn"
            self._queue.clear()
            self._work.notify_all()
            hung = sorted(job.name for job in self._running)
        for job in dropped:  # whoever still awaits one gets an answer (and its call's slot back)
            job.finished(Raised(RuntimeError("the server is shutting down")))
        if hung:
            _log.warning("%d %s still running at shutdown (%s): not waited for", len(hung), self._what, ", ".join(hung))
        return hung

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler pool is shut down")
            self._queue.append(job)
            if len(self._queue) > self._idle:
                if self._threads < self.max_threads:
                    self._start_thread()
                else:
                    self._saturated += 1
                    if self._saturated % WARN_EVERY == 1:
                        _log.warning("all %d handler threads are busy (hung sync handlers?): %s waits for one",
                                     self.max_threads, job.name)
            self._work.notify()

    def _withdraw(self, job: _Job) -> bool:
        """Take a job back if no thread has started it; True if so (it will never run)."""
        with self._lock:
            if job.state != "queued":
                return False
            job.state = "withdrawn"
            self._queue.remove(job)
            return True

    def _start_thread(self) -> None:
        self._threads += 1
        thread = threading.Thread(target=self._serve, name=f"{self._prefix}_{self._threads}", daemon=True)
        thread.start()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            result = capture(job.fn)
            with self._lock:
                self._running.discard(job)
                self._settled.notify_all()
            try:
                job.finished(result)
            except Exception:  # noqa: BLE001 - our bug, not the handler's: log it, keep the thread serving
                _log.exception("delivering the result of %s failed", job.name)
            del job, result  # a finished handler's value and traceback are not kept alive by an idle thread

    def _next(self) -> _Job | None:
        with self._lock:
            while not self._queue:
                if self._closed:
                    self._threads -= 1
                    return None
                self._idle += 1
                self._work.wait()
                self._idle -= 1
            job = self._queue.popleft()
            job.state = "running"
            self._running.add(job)
            return job


class CallShare:
    """One call's part of a HandlerPool: at most `limit` of its sync handlers hold or wait for a thread."""

    def __init__(self, pool: HandlerPool, limit: int, logger: Logger) -> None:
        self._pool, self._limit, self._log = pool, limit, logger
        self._slots = asyncio.Semaphore(limit)
        self._held = 0
        self._waited = False

    @property
    def held(self) -> int:
        """Slots held: handlers of this call running in (or queued for) a thread, hung ones included."""
        return self._held

    async def run(
        self, fn: Callable[[], Any], name: str = "handler", taken: Callable[[Any], None] | None = None
    ) -> Any:
        """fn() in a pool thread, once this call has a free slot; its value, or what it raised.

        With `taken`, the result (capture()'s: a value or Raised) goes to `taken` instead, in the loop callback
        that brings it back from the thread, and this returns TAKEN: the awaiting task wakes a loop turn later
        than that callback runs, and at 100 calls a turn is milliseconds of a caller's silence. Not called
        once this coroutine was cancelled (a timeout, the model's cancellation): the result is dropped then."""
        if self._slots.locked() and not self._waited:
            self._waited = True  # once per call: a model looping on a hung tool must not flood the log
            self._log.warning("tool %s waits: this call's %d handler threads are all busy", name, self._limit)
        await self._slots.acquire()
        self._held += 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        finished = self._finished if taken is None else functools.partial(self._take, taken)
        # The callback runs in this task's context (a copy), not the worker thread's empty one: what `taken`
        # reports carries the call's context variables (its log and event tags), as the task's report did.
        context = contextvars.copy_context()
        job = _Job(fn, name, lambda result: _deliver_threadsafe(loop, finished, answer, result, context))
        try:
            self._pool._submit(job)
        except BaseException:
            self._release()
            raise
        try:
            return unwrap(await answer)
        except asyncio.CancelledError:
            if self._pool._withdraw(job):
                self._release()  # it never started: the slot is free at once
            raise  # it runs on: its slot is freed when its thread returns

    def _finished(self, answer: asyncio.Future[Any], result: Any) -> None:
        self._release()
        if not answer.done():
            answer.set_result(result)

    def _take(self, taken: Callable[[Any], None], answer: asyncio.Future[Any], result: Any) -> None:
        if answer.done():  # cancelled meanwhile: nobody wants the result, as in _finished
            self._release()
            return
        try:
            taken(result)
        except Exception:  # our bug: the awaiting task still gets the result and answers with it
            self._log.exception("a handler's result could not be taken in its callback: its task answers")
            self._finished(answer, result)
            return
        self._finished(answer, TAKEN)

    def _release(self) -> None:
        self._held -= 1
        self._slots.release()


def _deliver_threadsafe(
    loop: asyncio.AbstractEventLoop, finished: Callable[[asyncio.Future[Any], Any], None],
    answer: asyncio.Future[Any], result: Any, context: contextvars.Context | None = None,
) -> None:
    try:
        loop.call_soon_threadsafe(finished, answer, result, context=context)
    except RuntimeError:
        pass  # the loop is closed (the server stopped while this handler hung): nobody awaits it any more


_NOT_RUN = object()


class DaemonThreadExecutor(ThreadPoolExecutor):
    """The loop's default executor (asyncio.to_thread, run_in_executor(None)) on a HandlerPool's daemon threads.

    A ThreadPoolExecutor subclass only because `loop.set_default_executor` accepts nothing else: none of
    its own thread machinery is used (its threads are joined at interpreter exit). The stock default
    executor held SIGTERM for as long as a thread that a timed-out async handler had started kept hanging:
    the loop's close waits for its threads. Here `shutdown(wait=True)` waits at most `join_timeout_s`, then
    names what still runs and returns; `shutdown(wait=False)` waits for nothing.
    """

    def __init__(self, max_workers: int | None = None, join_timeout_s: float = DEFAULT_JOIN_S) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="phonebridge-default")
        self._daemons = HandlerPool(self._max_workers, self._max_workers, thread_name_prefix="phonebridge-default",
                                    what="default-executor jobs")
        self._join_timeout_s = join_timeout_s

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> Any:
            if not future.set_running_or_notify_cancel():
                return _NOT_RUN  # cancelled while it waited for a thread
            return fn(*args, **kwargs)

        def finished(result: Any) -> None:
            if result is _NOT_RUN:
                return
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: nobody wants it
                if isinstance(result, Raised):
                    future.set_exception(result.error)
                else:
                    future.set_result(result)

        self._daemons._submit(_Job(run, str(getattr(fn, "__qualname__", fn)), finished))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait:
            self._daemons.wait_idle(self._join_timeout_s)
        self._daemons.shutdown()
