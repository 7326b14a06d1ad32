"""The old home of a call's function-call handling, kept for the import paths and settings that name it.

The bookkeeping (one answer per id, epochs, kept results) and when the hold sound plays are sans-I/O now,
in phonebridge.tool_turns, driven by the call core; the pump (phonebridge.bridge) runs the handlers through
phonebridge.tools.ToolDispatcher and sends the answers. HOLD_AFTER_RESPONSE_MAX_S is read here when a call
starts, so a deployment (or a test) that sets it on this module still sets it for new calls.
"""

from __future__ import annotations

from phonebridge.tool_turns import HOLD_AFTER_RESPONSE_MAX_S, HOLD_FRAME_S, MAX_KEPT_RESULTS

__all__ = ["HOLD_AFTER_RESPONSE_MAX_S", "HOLD_FRAME_S", "MAX_KEPT_RESULTS"]

_MOVED = {
    "HoldPlayer": "the hold sound is phonebridge.tool_turns.ToolTurns' (its frames come out of phonebridge.call_core.Call)",
    "ToolCallRunner": "tool answers are phonebridge.tool_turns.ToolTurns' (phonebridge.bridge sends them)",
}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise AttributeError(f"phonebridge.tool_calls.{name} is gone: {_MOVED[name]}")
    raise AttributeError(f"module 'phonebridge.tool_calls' has no attribute {name!r}")
