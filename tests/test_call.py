"""The call's outbound state machine: marks, barge-in, heard audio, ending after the last words."""

from phonebridge.call.state import CallState, HangUp, SendClear, SendMark, SendMedia, Transfer

FRAME = b"\xff" * 160


def media(actions):
    return [a for a in actions if isinstance(a, SendMedia)]


def marks(actions):
    return [a.name for a in actions if isinstance(a, SendMark)]


def test_audio_is_sent_frame_by_frame_with_a_mark_every_100_ms():
    state = CallState()
    actions = state.agent_audio([FRAME] * 4, now=0.0)
    assert [a.ulaw for a in media(actions)] == [FRAME] * 4
    assert marks(actions) == []  # 80 ms: below the mark interval
    actions = state.agent_audio([FRAME], now=0.02)
    assert marks(actions) == ["t1.1"]
    assert isinstance(actions[-1], SendMark)  # the mark follows the audio it covers
    assert state.turn == 1 and state.speaking


def test_turn_complete_marks_the_tail_and_starts_a_new_turn_next_time():
    state = CallState()
    state.agent_audio([FRAME] * 2, now=0.0)
    assert marks(state.agent_turn_complete(now=0.1)) == ["t1.1"]
    assert not state.speaking
    state.agent_audio([FRAME], now=0.2)
    assert state.turn == 2
    assert state.agent_turn_complete(now=0.3) == [SendMark("t2.2")]


def test_all_played_only_after_every_mark_is_echoed():
    state = CallState()
    state.agent_audio([FRAME] * 5, now=0.0)
    state.agent_audio([FRAME] * 5, now=0.0)
    assert not state.all_played
    assert state.twilio_mark("t1.2", now=0.3) == []  # a later mark proves the earlier one played too
    assert state.all_played


def test_barge_in_clears_and_drops_late_audio_of_the_cut_turn():
    state = CallState()
    state.agent_audio([FRAME] * 10, now=0.0)  # 200 ms sent, marks t1.1 and t1.2
    state.twilio_mark("t1.1", now=0.1)  # 100 ms played at t=0.1
    actions = state.agent_interrupted(now=0.15)
    assert actions == [SendClear()]
    assert state.barge_ins[-1].sent_bytes == 1600
    assert state.barge_ins[-1].heard_bytes == 800 + 400  # proven 100 ms + 50 ms since the proof
    # Late chunks of the interrupted turn: nothing goes out.
    assert state.agent_audio([FRAME] * 3, now=0.16) == []
    assert state.dropped_cut_bytes == 480
    # Twilio echoes the written-off mark after the clear: it proves nothing.
    assert state.twilio_mark("t1.2", now=0.17) == []
    assert state.agent_turn_complete(now=0.2) == []
    assert state.all_played
    # The next turn speaks again.
    assert len(media(state.agent_audio([FRAME], now=0.3))) == 1
    assert state.turn == 2


def test_interrupted_when_silent_sends_no_clear_and_records_no_barge_in():
    state = CallState()
    assert state.agent_interrupted(now=0.0) == []
    assert state.barge_ins == []
    assert state.agent_turn_complete(now=0.1) == []


def test_hang_up_waits_for_the_goodbye_to_play():
    state = CallState()
    assert state.request_hang_up(now=0.0) == []
    state.agent_audio([FRAME] * 10, now=0.1)  # the goodbye
    assert state.agent_turn_complete(now=0.2) == []  # still playing
    assert state.twilio_mark("t1.1", now=0.25) == []
    assert state.twilio_mark("t1.2", now=0.35) == [HangUp("agent ended the call")]
    assert state.tick(now=100.0) == []  # fired once only


def test_hang_up_fires_at_the_deadline_if_the_goodbye_never_completes():
    state = CallState(end_action_grace_s=5.0)
    state.request_hang_up(now=1.0)
    state.agent_audio([FRAME] * 10, now=1.1)
    assert state.tick(now=5.9) == []
    assert state.tick(now=6.0) == [HangUp("agent ended the call")]


def test_transfer_after_the_turn_when_nothing_is_queued():
    state = CallState()
    state.request_transfer("+15550100", now=0.0)
    assert state.agent_turn_complete(now=0.1) == [Transfer("+15550100")]


def test_a_cut_turn_does_not_arm_the_hang_up():
    state = CallState()
    state.request_hang_up(now=0.0)
    state.agent_audio([FRAME] * 5, now=0.0)
    state.agent_interrupted(now=0.05)
    assert state.agent_turn_complete(now=0.1) == []
    state.agent_audio([FRAME] * 5, now=0.2)
    actions = state.agent_turn_complete(now=0.3)
    assert actions == []
    name = [n for n in state._marks][0]
    assert state.twilio_mark(name, now=0.4) == [HangUp("agent ended the call")]


def test_unknown_marks_are_ignored():
    state = CallState()
    assert state.twilio_mark("not-ours", now=0.0) == []
