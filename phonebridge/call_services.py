"""What a call is given and what it reports: the services every call of an app shares, the recorder
interface, and the per-call statistics behind the summary log line, the metrics and the tests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from google import genai
from google.genai import types

from phonebridge import twilio
from phonebridge.agent import Agent
from phonebridge.metrics import Metrics
from phonebridge.tools import ToolRegistry


@dataclass
class CallStats:
    """What happened on one call: for the summary log line, metrics and tests."""

    started: float = field(default_factory=time.monotonic)
    call_sid: str = ""
    outcome: str = "unknown"
    frames_in: int = 0
    frames_out: int = 0
    malformed: int = 0
    ignored: int = 0
    lost_frames: int = 0
    dtmf: list[str] = field(default_factory=list)
    turns: int = 0
    barge_ins: int = 0
    tool_calls: int = 0
    hold_plays: int = 0
    first_audio_s: float | None = None
    prompt_tokens: int = 0
    response_tokens: int = 0
    transcript: list[tuple[float, str, str]] = field(default_factory=list)


class CallServices:
    """What every call of an app shares (immutable from a call's point of view)."""

    def __init__(
        self,
        agent: Agent,
        registry: ToolRegistry,
        genai_client: Callable[[], genai.Client],
        *,
        hang_up: Callable[[str], Awaitable[Any]] | None = None,
        transfer: Callable[[str, str], Awaitable[Any]] | None = None,
        connect_timeout_s: float = 10.0,
        reconnect_attempts: int = 5,
        observers: Sequence[Callable[[str, dict[str, Any]], None]] = (),
        executor: Executor | None = None,
        recorder_factory: Callable[[twilio.Start], Recorder] | None = None,
        metrics: Metrics | None = None,
        log_caller_numbers: bool = False,
    ) -> None:
        self.log_caller_numbers = log_caller_numbers
        self.metrics = metrics
        self.recorder_factory = recorder_factory
        self.agent, self.registry, self.genai_client = agent, registry, genai_client
        # Sync handlers run here, not in the loop's default executor: a stuck handler can't starve others.
        self.executor = executor
        self.declarations: list[types.FunctionDeclaration] = registry.declarations()
        self.hang_up, self.transfer = hang_up, transfer
        self.connect_timeout_s, self.reconnect_attempts = connect_timeout_s, reconnect_attempts
        self.observers = list(observers)


class Recorder(Protocol):
    """Where a call's wire traffic is written (phonebridge.recording): must never block or raise."""

    def record(self, kind: str, payload: Any) -> None: ...

    async def aclose(self) -> None: ...
