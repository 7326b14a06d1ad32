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
from typing import Any, Literal, TypeVar, overload

from phonebridge.errors import ConfigError
from phonebridge.tools import ToolRegistry

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
    """Load `agent` from a file path (`examples/pizzeria.py`) or a module (`pkg.mod` or `pkg.mod:name`)."""
    target, _, attr = spec.partition(":")
    attr = attr or "agent"
    path = Path(target)
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise ConfigError(f"agent file {target!r} does not exist")
        module_name = f"phonebridge_agent_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot load agent file {target!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import agent module {target!r}: {exc}") from exc
    agent = getattr(module, attr, None)
    if not isinstance(agent, Agent):
        raise ConfigError(f"{spec!r} has no Agent named {attr!r}")
    return agent
