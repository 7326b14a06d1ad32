"""What a call is given and what it reports: the services every call of an app shares, the recorder
interface, and the per-call statistics behind the summary log line, the metrics and the tests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from google import genai
from google.genai import types

import phonebridge.twilio.protocol as twilio
from phonebridge.agent.definition import Agent
from phonebridge.agent.handler_pool import HandlerPool
from phonebridge.call.effects import CallStats as CallStats  # it lived here; the call core fills it now
from phonebridge.server.metrics import Metrics
from phonebridge.agent.tools import ToolRegistry


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
        executor: Executor | HandlerPool | None = None,
        recorder_factory: Callable[[twilio.Start], Recorder] | None = None,
        metrics: Metrics | None = None,
        log_caller_numbers: bool = False,
    ) -> None:
        self.log_caller_numbers = log_caller_numbers
        self.metrics = metrics
        self.recorder_factory = recorder_factory
        self.agent, self.registry, self.genai_client = agent, registry, genai_client
        # Sync handlers run here, not in the loop's default executor. A HandlerPool gives each call a bounded
        # share of its threads, so one call's hung handlers cannot starve another call's sync tools.
        self.executor = executor
        self.declarations: list[types.FunctionDeclaration] = registry.declarations()
        self.hang_up, self.transfer = hang_up, transfer
        self.connect_timeout_s, self.reconnect_attempts = connect_timeout_s, reconnect_attempts
        self.observers = list(observers)


class Recorder(Protocol):
    """Where a call's wire traffic is written (phonebridge.cassette.record): must never block or raise."""

    def record(self, kind: str, payload: Any) -> None: ...

    async def aclose(self) -> None: ...


class Reactions:
    """The time the bridge itself adds to a reaction, on its own clock (time.monotonic()), from the moment
    the model's message came off the socket: `interrupted` -> clear sent, `toolCall` -> handler started,
    the last handler of a toolCall returned -> tool_response sent (phonebridge_reaction_seconds{kind})."""

    KEEP = 64  # call ids awaiting their handler or their response: a bound against a model that floods calls

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._received: dict[str, float] = {}
        self._finished: dict[str, float] = {}

    def clear_sent(self, received_at: float) -> None:
        self._observe("clear", received_at)

    def tool_calls(self, ids: Sequence[str | None], received_at: float) -> None:
        for call_id in ids:
            if call_id is not None:
                self._keep(self._received, call_id, received_at)

    def tool_finished(self, call_id: str | None, started: float, finished: float) -> None:
        received = self._received.pop(call_id, None) if call_id is not None else None
        if received is not None and self._metrics is not None:
            self._metrics.observe_reaction("tool_start", max(0.0, started - received))
        if call_id is not None:
            self._keep(self._finished, call_id, finished)

    def tool_response_sent(self, ids: Sequence[str | None]) -> None:
        finished = [self._finished.pop(i) for i in ids if i is not None and i in self._finished]
        if finished:
            self._observe("tool_reply", max(finished))

    def _observe(self, kind: str, since: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_reaction(kind, max(0.0, time.monotonic() - since))

    def _keep(self, table: dict[str, float], key: str, value: float) -> None:
        table[key] = value
        while len(table) > self.KEEP:
            table.pop(next(iter(table)))
