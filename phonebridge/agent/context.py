"""What a business handler knows about the call it serves, and what it may do to it.

A handler asks for it by type::

    @agent.tool
    def transfer_to_manager(call: CallContext) -> str:
        call.transfer("+15550100")
        return "transferring"

The context only *requests* a hang-up or transfer; the bridge (a `CallControl`) carries it out once the
agent's current audio has played, so the caller hears the goodbye before the line drops.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

_E164 = re.compile(r"\+[1-9]\d{1,14}")
# Separators people (and models) put in numbers: "+1 (555) 010-0100" is still a number.
_NUMBER_PUNCTUATION = re.compile(r"[\s\-().]")
_SIP_URI = re.compile(r"sips?:[^\s<>\"]+")


class CallControl(Protocol):
    """What the bridge implements; both calls return at once and act after the current audio has played."""

    def request_hang_up(self) -> None: ...

    def request_transfer(self, target: str) -> None: ...


class RecordingCallControl:
    """A CallControl that only records requests: for users' unit tests of their handlers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []

    def request_hang_up(self) -> None:
        self.requests.append(("hang_up", None))

    def request_transfer(self, target: str) -> None:
        self.requests.append(("transfer", target))


def normalize_transfer_target(target: str) -> str:
    """An E.164 number (punctuation removed) or a sip:/sips: URI; anything else raises ValueError."""
    text = target.strip()
    if text.lower().startswith(("sip:", "sips:")):
        if not _SIP_URI.fullmatch(text):
            raise ValueError(f"transfer target {target!r} is not a valid SIP URI (sip:user@host)")
        return text
    number = _NUMBER_PUNCTUATION.sub("", text)
    if not _E164.fullmatch(number):
        raise ValueError(f"transfer target {target!r} is neither an E.164 number (+15550100) nor a sip: URI")
    return number


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass(kw_only=True)
class CallContext:
    """One call's identity, a dict for handler state, and the hang-up/transfer actions.

    Sync handlers run in worker threads; `hang_up()` and `transfer()` are safe to call from there (the
    request is handed to the event loop the context was created on). `state` is a plain dict: if sync
    handlers of the same call share it concurrently, guard it yourself.
    """

    call_sid: str
    stream_sid: str
    from_number: str
    to_number: str
    direction: str = "inbound"
    parameters: Mapping[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    _control: CallControl = field(repr=False)
    # The loop that owns `_control`; captured at construction when built inside the bridge's coroutine.
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._loop is None:
            self._loop = _running_loop()

    @property
    def control(self) -> CallControl:
        """The bridge's control (a RecordingCallControl for contexts from `for_test`)."""
        return self._control

    def hang_up(self) -> None:
        """Ask the bridge to end the call once what the agent is saying now has played."""
        self._on_loop(self._control.request_hang_up)

    def transfer(self, target: str) -> None:
        """Ask the bridge to transfer the call to an E.164 number or sip: URI (ValueError if neither)."""
        normalized = normalize_transfer_target(target)
        self._on_loop(self._control.request_transfer, normalized)

    def _on_loop(self, action: Any, *args: str) -> None:
        # The control belongs to the event loop; a sync handler calls us from a worker thread.
        loop = self._loop
        if loop is None or loop is _running_loop() or loop.is_closed():
            action(*args)
        else:
            loop.call_soon_threadsafe(action, *args)

    @classmethod
    def for_test(cls, **overrides: Any) -> CallContext:
        """A context with placeholder identity whose control records requests (`ctx.control.requests`)."""
        values: dict[str, Any] = {
            "call_sid": "CA" + "0" * 32,
            "stream_sid": "MZ" + "0" * 32,
            "from_number": "+15550100001",
            "to_number": "+15550100002",
            "_control": RecordingCallControl(),
        }
        values.update(overrides)
        return cls(**values)
