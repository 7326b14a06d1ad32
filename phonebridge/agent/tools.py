"""Business handlers: typed Python functions the model may call, and their dispatch.

gemini-3.1-flash-live-preview calls functions synchronously: it says nothing until the tool response
arrives. So the dispatcher's one promise is that every function call id gets exactly one response, whatever
the handler does (returns, raises, hangs) and whatever the model sent (an unknown name, arguments of the
wrong type). The only calls left unanswered are those the model itself cancelled (toolCallCancellation).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from phonebridge.agent import eager
from phonebridge.agent.context import CallContext, normalize_transfer_target
from phonebridge.errors import ConfigError, ToolArgumentError, ToolError, ToolResponseError
from phonebridge.agent.handler_pool import HandlerPool, capture, unwrap
from phonebridge.agent.schema import HandlerSignature, inspect_handler
from phonebridge.agent.tool_response import to_response
from phonebridge.call.tool_types import ToolCall, ToolResult

if TYPE_CHECKING:  # only for the annotations: the SDK's types stay with the model link and the schema
    from google.genai.types import FunctionDeclaration

    from phonebridge.agent.definition import Agent

__all__ = [
    "ToolArgumentError",
    "ToolDispatcher",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
    "all_tools",
    "builtin_tools",
    "to_response",
]

_log = logging.getLogger("phonebridge.tools")
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
Status = Literal["ok", "error", "timeout", "unknown", "invalid", "cancelled"]
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class ToolSpec:
    """A registered handler. `timeout_s` None means the agent's default."""

    name: str
    description: str
    fn: Callable[..., Any] = field(repr=False)
    is_async: bool
    timeout_s: float | None
    context_param: str | None
    declaration: FunctionDeclaration = field(repr=False)
    signature: HandlerSignature = field(repr=False, compare=False)

    def bind(self, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """The model's JSON args as the handler's Python types; ToolArgumentError names the bad parameter."""
        return self.signature.bind(args)


def make_spec(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> ToolSpec:
    """Validate fn as a tool (ConfigError if the model could not be told how to call it)."""
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not _TOOL_NAME.fullmatch(tool_name):
        raise ConfigError(f"tool name {tool_name!r}: use letters, digits, _ . : - (max 128, not a digit first)")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError(f"tool {tool_name!r}: timeout_s must be > 0")
    signature = inspect_handler(fn, context_type=CallContext, description=description)
    if not signature.description:
        _log.warning("tool %r has no docstring or description: the model will guess when to call it", tool_name)
    return ToolSpec(
        name=tool_name,
        description=signature.description,
        fn=fn,
        is_async=inspect.iscoroutinefunction(fn),
        timeout_s=timeout_s,
        context_param=signature.context_param,
        declaration=signature.declaration(tool_name),
        signature=signature,
    )


class ToolRegistry:
    """The tools of one agent, by name, in registration order."""

    def __init__(self) -> None:
        self._specs: dict[str, ToolSpec] = {}

    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> ToolSpec:
        return self.add(make_spec(fn, name=name, description=description, timeout_s=timeout_s))

    def add(self, spec: ToolSpec) -> ToolSpec:
        if spec.name in self._specs:
            raise ConfigError(f"two tools are named {spec.name!r}: tool names must be unique")
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(list(self._specs.values()))

    def declarations(self) -> list[FunctionDeclaration]:
        return [spec.declaration for spec in self._specs.values()]


def builtin_tools(agent: Agent) -> list[ToolSpec]:
    """`end_call` (if agent.end_call) and `transfer_call` (if agent.transfer_to is set)."""
    specs: list[ToolSpec] = []
    if agent.end_call:

        def end_call(call: CallContext) -> dict[str, str]:
            """End the phone call. First say a short goodbye to the caller; the line is hung up once your
            goodbye has played. Use it when the caller is done or asks to hang up."""
            call.hang_up()
            return {"result": "the call will end after your goodbye"}

        specs.append(make_spec(end_call, timeout_s=5.0))
    if agent.transfer_to:
        try:
            target = normalize_transfer_target(agent.transfer_to)
        except ValueError as exc:
            raise ConfigError(f"Agent.transfer_to: {exc}") from exc

        def transfer_call(call: CallContext, reason: str | None = None) -> dict[str, str]:
            """Transfer the caller to a human colleague. First tell the caller you are transferring them.

            Args:
                reason: why the caller needs a human, in a few words
            """
            call.transfer(target)
            return {"result": "the caller will be transferred after you finish speaking"}

        specs.append(make_spec(transfer_call, timeout_s=5.0))
    return specs


def all_tools(agent: Agent) -> ToolRegistry:
    """The agent's own tools plus the enabled built-ins; a name clash is a ConfigError."""
    registry = ToolRegistry()
    for spec in (*agent.tools, *builtin_tools(agent)):
        if registry.get(spec.name) is not None:
            raise ConfigError(f"tool {spec.name!r} clashes with a built-in tool: rename it")
        registry.add(spec)
    return registry


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
        try:
            status, response = await self._run(name, args)
        except asyncio.CancelledError:
            self._record(call, name, args, None, "cancelled", started)
            raise
        self._record(call, name, args, response, status, started)
        return ToolResult(call.id, name, response)

    async def _run(self, name: str, args: dict[str, Any]) -> tuple[Status, dict[str, Any]]:
        spec = self._registry.get(name)
        if spec is None:
            known = ", ".join(self._registry.names) or "none"
            return "unknown", {"error": f"There is no tool named {name!r}. The available tools are: {known}."}
        timeout_s = spec.timeout_s if spec.timeout_s is not None else self._default_timeout_s
        try:
            # Binding is inside: a parameter type's own validator is handler code too, and may raise anything.
            kwargs = spec.bind(args)
            if spec.context_param:
                kwargs[spec.context_param] = self._context
            async with asyncio.timeout(timeout_s):
                value = await self._invoke(spec, kwargs)
            return "ok", to_response(value)
        except ToolResponseError as exc:
            self._log.warning("tool %s %s", name, exc)
            return "error", {"error": f"The {name} tool failed: it {exc}. Tell the caller it could not be done "
                             "right now and offer another way to help."}
        except ToolArgumentError as exc:
            return "invalid", {"error": f"Invalid arguments for {name}: {exc}. Call it again with corrected ones."}
        except TimeoutError:
            self._log.warning("tool %s timed out after %.1f s", name, timeout_s)
            return "timeout", {"error": f"The {name} tool did not answer within {timeout_s:g} seconds and was stopped."}
        except ToolError as exc:
            self._log.info("tool %s refused: %s", name, exc)
            return "error", {"error": str(exc) or f"The {name} tool failed."}
        except asyncio.CancelledError:
            if _cancelling():
                raise
            # The handler raised CancelledError on its own: still an answer is owed for this id.
            self._log.error("tool %s raised CancelledError without being cancelled", name)
            return "error", _internal_error(name)
        except Exception as exc:  # the model must get an answer; the traceback goes to the log only
            if _cancelling():
                # Our cancellation, turned into another exception by the handler's cleanup.
                raise asyncio.CancelledError from exc
            self._log.exception("tool %s raised", name)
            return "error", _internal_error(name)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit: the handler's, not ours
            if _cancelling():
                raise asyncio.CancelledError from exc
            self._log.error("tool %s raised %s: answered as an error; the call and the server go on",
                            name, type(exc).__name__, exc_info=exc)
            return "error", _internal_error(name)

    async def _invoke(self, spec: ToolSpec, kwargs: dict[str, Any]) -> Any:
        if spec.is_async:
            return await spec.fn(**kwargs)
        # copy_context: logging and tracing context vars follow the call into the worker thread.
        job = functools.partial(contextvars.copy_context().run, spec.fn, **kwargs)
        if self._share is not None:
            return await self._share.run(job, spec.name)
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
