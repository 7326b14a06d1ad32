"""The agent `bench/run` serves: one async tool that stamps when it started and when it returned.

The stamps (time.monotonic(), CLOCK_MONOTONIC: the same clock in every process on this machine) travel back
inside the tool response, so the load generator can split the bridge's tool path into "toolCall received ->
handler started" and "handler returned -> tool_response sent" without any hook in the bridge.
"""

from __future__ import annotations

import os
import time

from phonebridge import Agent

agent = Agent(
    instructions="You are a benchmark agent. Answer briefly.",
    greeting="Greet the caller.",
    hold_sound_after_s=5.0,  # the tool answers at once: the hold sound must never start
)


def _answer(order_id: str) -> dict[str, object]:
    started = time.monotonic()
    return {"order_id": order_id, "status": "out for delivery", "started": started, "returned": time.monotonic()}


if os.environ.get("PHONEBRIDGE_BENCH_SYNC_TOOL"):  # bench/run --sync-tool: a plain def, run in a pool thread

    @agent.tool
    def lookup_order(order_id: str) -> dict[str, object]:
        """Look up an order by its id."""
        return _answer(order_id)

else:

    @agent.tool
    async def lookup_order(order_id: str) -> dict[str, object]:
        """Look up an order by its id."""
        return _answer(order_id)
