"""Sans-I/O: our own function-call types, so that the call, its tools and its pump never see the SDK's.

The model link (phonebridge.live.link, phonebridge.live.events) turns the SDK's `FunctionCall` into a `ToolCall`
on receive and a `ToolResult` into the SDK's `FunctionResponse` on send; everything between speaks these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ToolCall", "ToolResult"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for. `id` None only for a model that sends none (Live always does)."""

    id: str | None
    name: str
    args: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The one answer to a ToolCall: `response` is what the model is told (an {"error": ...} when it failed)."""

    id: str | None
    name: str
    response: dict[str, Any]
