"""Business handlers: typed Python functions the model may call, and their dispatch.

gemini-3.1-flash-live-preview calls functions synchronously: it says nothing until the tool response
arrives. So the dispatcher's one promise is that every function call id gets exactly one response, whatever
the handler does (returns, raises, hangs) and whatever the model sent (an unknown name, arguments of the
wrong type). The only calls left unanswered are those the model itself cancelled (toolCallCancellation).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from phonebridge.agent.context import CallContext, normalize_transfer_target
from phonebridge.errors import ConfigError, ToolArgumentError
from phonebridge.agent.schema import HandlerSignature, inspect_handler
from phonebridge.agent.tool_response import to_response

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


# The dispatcher lives in phonebridge.agent.dispatch; its names stay importable from here.
from phonebridge.agent.dispatch import ToolDispatcher, ToolOutcome  # noqa: E402
