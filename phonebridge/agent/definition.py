"""The agent a user writes: instructions, voice, greeting and typed business handlers.

    agent = Agent(instructions="You are the front desk of ...", greeting="Greet the caller.")

    @agent.tool
    async def lookup_order(order_id: str) -> dict: ...
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar, overload

from phonebridge.errors import ConfigError
from phonebridge.agent.tools import ToolRegistry

DEFAULT_MODEL = "gemini-3.1-flash-live-preview"
ThinkingLevel = Literal["minimal", "low", "medium", "high"]
Sensitivity = Literal["high", "low"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Agent:
    """What the model is told, how it sounds, and what it may do on a call."""

    instructions: str
    greeting: str | None = "Greet the caller warmly and ask how you can help."
    voice: str = "Kore"
    model: str = DEFAULT_MODEL
    thinking_level: ThinkingLevel = "minimal"
    language_code: str | None = None
    # Automatic activity detection (the model's own VAD); None keeps the service's default.
    start_of_speech_sensitivity: Sensitivity | None = None
    end_of_speech_sensitivity: Sensitivity | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    # Handlers: the default timeout, and when the caller starts hearing the hold sound.
    tool_timeout_s: float = 10.0
    hold_sound_after_s: float = 1.0
    # Built-in tools: `end_call` lets the model hang up after its goodbye; `transfer_call` is offered when
    # a transfer target is set.
    end_call: bool = True
    transfer_to: str | None = None
    tools: ToolRegistry = field(default_factory=ToolRegistry)

    def __post_init__(self) -> None:
        if not self.instructions.strip():
            raise ConfigError("Agent.instructions is empty: the model needs to know who it is")
        if self.thinking_level not in ("minimal", "low", "medium", "high"):
            raise ConfigError(f"Agent.thinking_level {self.thinking_level!r}: use minimal, low, medium or high")
        if self.tool_timeout_s <= 0 or self.hold_sound_after_s < 0:
            raise ConfigError("Agent.tool_timeout_s must be > 0 and hold_sound_after_s >= 0")

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self, /, *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Register a typed function (sync or async) as a tool the model may call."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.tools.register(f, name=name, description=description, timeout_s=timeout_s)
            return f

        return register(fn) if fn is not None else register


def load_agent(spec: str) -> Agent:
    """Load `agent` from a file path (`examples/pizzeria.py`) or a module (`pkg.mod` or `pkg.mod:name`).

    Whatever goes wrong (no such file, a syntax error, an import or any error while the module runs, no
    Agent) is a ConfigError saying where: the server refuses to start with one clear line."""
    target, _, attr = spec.partition(":")
    attr = attr or "agent"
    path = Path(target)
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise ConfigError(f"agent file {target!r} does not exist")
        module = _run_agent_code(target, lambda: _exec_file(path))
    else:
        module = _run_agent_code(target, lambda: importlib.import_module(target))
    agent = getattr(module, attr, None)
    if not isinstance(agent, Agent):
        found = "nothing by that name" if agent is None else f"a {type(agent).__name__}"
        raise ConfigError(f"agent {spec!r} has no Agent named {attr!r} (it has {found})")
    return agent


def _exec_file(path: Path) -> ModuleType:
    module_name = f"phonebridge_agent_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _run_agent_code(target: str, load: Callable[[], ModuleType]) -> ModuleType:
    """Run the user's module: its own failures become one ConfigError line (where, and what)."""
    try:
        return load()
    except ConfigError as exc:  # the module built an invalid Agent: Agent's own message says what
        raise ConfigError(f"agent {target!r}: {exc}") from exc
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else target
        raise ConfigError(f"agent {target!r} does not compile: {where}: {exc.msg}") from exc
    except ImportError as exc:
        raise ConfigError(f"cannot import agent {target!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any error in the user's module, reported at start, not as a trace
        raise ConfigError(f"agent {target!r} failed while loading: {_where(exc)}{type(exc).__name__}: {exc}") from exc


def _where(exc: BaseException) -> str:
    """`file:line: ` of the innermost frame the error came through, or nothing."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}: " if tb is not None else ""
