"""Function calls and the hold sound through the call core, with `now`: no event loop, no sockets, no handlers.

The pump's part is played by hand: it starts what StartTools names, reports each outcome with
`tool_finished`, sends what SendToolResponse holds and says whether the link took it (`tool_response_sent`).
"""

from __future__ import annotations

import base64
import json

import pytest
from test_call_core import PCM_20MS, mark, opened, sent

from phonebridge.call.core import Call
from phonebridge.call.effects import Cleared, Observe, SendToolResponse, StartTools
from phonebridge.call.hold import HoldSound
from phonebridge.live.events import Interrupted, ToolCalls, TurnComplete
from phonebridge.twilio.stream_guard import StreamGuard
from phonebridge.call.tool_turns import MAX_KEPT_RESULTS
from phonebridge.call.tool_types import ToolCall, ToolResult
from phonebridge.agent.tools import ToolOutcome

MENU = ToolCall("c1", "get_menu", {"vegetarian": True})
HOURS = ToolCall("c2", "get_hours", {})


def outcome(call: ToolCall, response: dict | None, status: str = "ok", at: float = 1.0) -> ToolOutcome:
    return ToolOutcome(call.id, call.name, call.args, response, status, at - 0.5, at)  # type: ignore[arg-type]


def tool_effects(call) -> list:
    return [e for e in call.effects() if not isinstance(e, Observe)]


def again(call: ToolCall, new_id: str) -> ToolCall:
    return ToolCall(new_id, call.name, dict(call.args))


# -- one answer per id --------------------------------------------------------------------------------------

def test_a_tool_calls_answers_go_out_together_in_call_order_once_each_has_one():
    call = opened()
    call.receive_model(ToolCalls((MENU, HOURS), received_at=0.9, epoch=0), 1.0)
    (started,) = tool_effects(call)
    assert started == StartTools((MENU, HOURS)) and started.received_at == 0.9
    call.tool_finished(outcome(HOURS, {"open": "9-5"}), 1.2)
    assert tool_effects(call) == []  # the model waits for the whole toolCall
    call.tool_finished(outcome(MENU, {"items": ["margherita"]}), 1.5)
    assert tool_effects(call) == [SendToolResponse(0, 0, (
        ToolResult("c1", "get_menu", {"items": ["margherita"]}), ToolResult("c2", "get_hours", {"open": "9-5"})))]
    call.tool_response_sent(0, True, 1.6)
    assert tool_effects(call) == []


def test_an_id_already_asked_is_neither_run_nor_answered_again(caplog):
    call = opened()
    call.receive_model(ToolCalls((MENU,)), 1.0)
    call.tool_finished(outcome(MENU, {"items": []}), 1.1)
    assert [type(e) for e in tool_effects(call)] == [StartTools, SendToolResponse]
    call.tool_response_sent(0, True, 1.2)
    with caplog.at_level("WARNING", logger="phonebridge.call"):
        call.receive_model(ToolCalls((MENU,)), 2.0)
    assert tool_effects(call) == []
    assert "model sent call id c1 again" in caplog.text


def test_a_cancelled_call_gets_no_answer_and_the_rest_of_its_tool_call_still_does():
    call = opened()
    call.receive_model(ToolCalls((MENU, HOURS)), 1.0)
    call.effects()
    call.tool_finished(outcome(MENU, None, "cancelled"), 1.1)
    call.tool_finished(outcome(HOURS, {"open": "9-5"}), 1.2)
    assert tool_effects(call) == [SendToolResponse(0, 0, (ToolResult("c2", "get_hours", {"open": "9-5"}),))]


def test_a_tool_call_whose_calls_were_all_cancelled_sends_nothing():
    call = opened()
    call.receive_model(ToolCalls((MENU,)), 1.0)
    call.effects()
    call.tool_finished(outcome(MENU, None, "cancelled"), 1.1)
    assert tool_effects(call) == []


# -- epochs and kept results --------------------------------------------------------------------------------

def test_results_of_an_older_connection_are_kept_and_answer_the_reissued_call_without_running_it(caplog):
    call = opened()
    call.receive_model(ToolCalls((MENU,), epoch=0), 1.0)
    call.effects()
    call.epoch_changed(1)  # the link reconnected while the handler ran
    with caplog.at_level("WARNING", logger="phonebridge.call"):
        call.tool_finished(outcome(MENU, {"items": ["margherita"]}), 1.5)
    assert tool_effects(call) == []  # not sent on the wrong connection
    assert "results kept for the re-issued calls" in caplog.text
    call.receive_model(ToolCalls((again(MENU, "c9"),), epoch=1), 2.0)  # the model resumed and asks again
    assert tool_effects(call) == [SendToolResponse(1, 1, (ToolResult("c9", "get_menu", {"items": ["margherita"]}),))]


def test_a_reissued_call_shares_the_result_still_running_on_the_old_connection():
    call = opened()
    call.receive_model(ToolCalls((MENU,), epoch=0), 1.0)
    assert [type(e) for e in tool_effects(call)] == [StartTools]
    call.receive_model(ToolCalls((again(MENU, "c9"),), epoch=1), 2.0)  # the event says: a new connection
    assert tool_effects(call) == []  # the handler is not run twice
    call.tool_finished(outcome(MENU, {"items": []}), 3.0)
    assert tool_effects(call) == [SendToolResponse(1, 1, (ToolResult("c9", "get_menu", {"items": []}),))]


def test_a_response_the_link_refused_is_kept_for_the_reissued_call():
    call = opened()
    call.receive_model(ToolCalls((MENU,)), 1.0)
    call.tool_finished(outcome(MENU, {"items": []}), 1.1)
    (_, send) = tool_effects(call)
    call.tool_response_sent(send.number, False, 1.2)  # the connection went between the decision and the send
    call.receive_model(ToolCalls((again(MENU, "c9"),), epoch=1), 2.0)
    assert tool_effects(call) == [SendToolResponse(1, 1, (ToolResult("c9", "get_menu", {"items": []}),))]


def test_a_sent_response_is_not_kept():
    call = opened()
    call.receive_model(ToolCalls((MENU,)), 1.0)
    call.tool_finished(outcome(MENU, {"items": []}), 1.1)
    call.effects()
    call.tool_response_sent(0, True, 1.2)
    call.receive_model(ToolCalls((again(MENU, "c9"),)), 2.0)
    assert tool_effects(call) == [StartTools((again(MENU, "c9"),))]  # asked anew: run anew


def test_kept_results_are_bounded_oldest_first():
    call = opened()
    calls = tuple(ToolCall(f"k{i}", "lookup", {"n": i}) for i in range(MAX_KEPT_RESULTS + 3))
    call.receive_model(ToolCalls(calls, epoch=0), 1.0)
    call.effects()
    call.epoch_changed(1)
    for c in calls:
        call.tool_finished(outcome(c, {"n": c.args["n"]}), 2.0)
    assert tool_effects(call) == []
    call.receive_model(ToolCalls((ToolCall("r0", "lookup", {"n": 0}), ToolCall("rN", "lookup", {"n": 34})), epoch=1), 3.0)
    (started,) = tool_effects(call)
    assert started == StartTools((ToolCall("r0", "lookup", {"n": 0}),))  # pushed out: run again; n=34 was kept


# -- the hold sound -----------------------------------------------------------------------------------------

def held() -> Call:
    return opened(guard=StreamGuard(media_timeout_s=1000.0))  # the media deadline out of these tests' way


def frames_of(call) -> list[bytes]:
    return [base64.b64decode(f["media"]["payload"]) for f in sent(call) if f["event"] == "media"]


def test_the_hold_sound_starts_after_hold_after_s_paced_at_20_ms_and_stops_when_the_model_speaks():
    call = held()  # hold_after_s 1.0
    call.receive_model(ToolCalls((MENU,)), 10.0)
    call.effects()
    assert call.next_deadline() == 11.0
    call.handle_timer(10.99)
    assert call.twilio_to_send() == ()
    sound = HoldSound()
    call.handle_timer(11.0)
    assert frames_of(call) == [sound.next_frame()] and call.tools.plays == 1
    assert call.next_deadline() == pytest.approx(11.02)
    call.handle_timer(11.065)  # a late timer catches up, as real time does
    assert frames_of(call) == [sound.next_frame(), sound.next_frame(), sound.next_frame()]
    call.agent_audio(PCM_20MS, 11.07)
    assert len(frames_of(call)) == 1  # the agent's own audio
    call.handle_timer(11.2)
    assert call.twilio_to_send() == ()  # no hold frame after the model spoke


def test_no_hold_sound_for_a_handler_that_answers_in_time():
    call = held()
    call.receive_model(ToolCalls((MENU,)), 10.0)
    call.tool_finished(outcome(MENU, {}), 10.5)
    call.effects()
    call.tool_response_sent(0, True, 10.6)
    call.handle_timer(12.0)
    assert call.twilio_to_send() == () and call.tools.plays == 0 and call.tools.deadline() is None


def test_the_hold_sound_stops_five_seconds_after_the_last_answer_if_the_model_stays_silent():
    call = held()
    call.receive_model(ToolCalls((MENU,)), 10.0)
    call.handle_timer(11.0)
    call.tool_finished(outcome(MENU, {}), 12.0)
    call.effects()
    call.tool_response_sent(0, True, 12.0)
    call.handle_timer(16.99)
    assert len(frames_of(call)) == 300  # 11.00 .. 16.98: the model still has time to speak
    call.handle_timer(17.0)
    assert frames_of(call) == [] and call.tools.deadline() is None


def test_a_chained_tool_call_keeps_the_hold_sound_going():
    call = held()
    call.receive_model(ToolCalls((MENU,)), 10.0)
    call.handle_timer(11.0)
    call.tool_finished(outcome(MENU, {}), 11.5)
    call.effects()
    call.tool_response_sent(0, True, 11.5)
    call.receive_model(ToolCalls((HOURS,)), 11.6)  # no word from the model, a second call at once
    call.handle_timer(20.0)
    assert len(frames_of(call)) == 451 and call.tools.plays == 1  # one hold, on through the second call


def test_the_hold_sound_waits_until_the_agents_queued_audio_has_played():
    call = held()
    call.agent_audio(PCM_20MS, 9.0)
    call.receive_model(TurnComplete(), 9.1)
    (name,) = [f["mark"]["name"] for f in sent(call) if f["event"] == "mark"]
    call.receive_model(ToolCalls((MENU,)), 10.0)
    call.handle_timer(11.0)
    call.handle_timer(11.04)
    assert frames_of(call) == []  # the agent's last words are still being heard
    call.receive_twilio(mark(2, name), 11.05)
    call.handle_timer(11.06)
    assert frames_of(call) == [HoldSound().next_frame()]  # the loop from its start, continuing in time


# -- reactions: the model event's own receive time ----------------------------------------------------------

def test_the_clear_of_a_barge_in_carries_the_interrupted_messages_receive_time():
    call = opened()
    call.agent_audio(PCM_20MS * 3, 1.0)
    call.twilio_to_send()
    call.receive_model(Interrupted(received_at=1.25, epoch=0), 1.3)
    (cleared,) = [e for e in call.effects() if isinstance(e, Cleared)]
    assert cleared.received_at == 1.25
    assert json.loads(call.twilio_to_send()[0])["event"] == "clear"
