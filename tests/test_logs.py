"""Log lines: JSON off a terminal, every call event carrying its callSid, one summary line per call."""

from __future__ import annotations

import json
import logging

from phonebridge.agent.definition import Agent
from phonebridge.server.logs import JsonFormatter
from phonebridge.testing.harness import BridgeHarness
from phonebridge.testing.live_script import Say, Script, WaitForText


def test_json_lines_carry_the_call_sid_and_extra_fields():
    record = logging.LogRecord("phonebridge.call", logging.INFO, __file__, 1, "caller pressed %s", ("4",), None)
    record.call_sid = "CA123"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "caller pressed 4" and line["call_sid"] == "CA123"
    assert line["level"] == "info" and line["logger"] == "phonebridge.call" and line["ts"].endswith("Z")


async def test_every_call_event_is_logged_with_its_call_sid_and_a_summary_line(caplog):
    caplog.set_level(logging.INFO, "phonebridge")
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
    async with BridgeHarness(agent, Script([WaitForText(), Say("Hello there.")])) as h:
        async with h.caller(continuous=False) as caller:
            await h.emulator.wait_for(lambda: any(c.turns_spoken == 1 for c in h.emulator.conversations))
            await caller.wait_for(lambda c: c.heard_seconds > 0.3 and c.playback_idle)
        await h.wait_idle()
    call_records = [r for r in caplog.records if r.name == "phonebridge.call"]
    messages = [r.getMessage() for r in call_records]
    assert any(m.startswith("call started") for m in messages)
    assert any("agent: Hello there." in m for m in messages)
    (summary,) = [m for m in messages if m.startswith("call ended")]
    assert "caller_hung_up" in summary and "turns" in summary and "first audio" in summary
    after_start = call_records[[m.startswith("call started") for m in messages].index(True):]
    assert {getattr(r, "call_sid", None) for r in after_start} == {caller.call_sid}
