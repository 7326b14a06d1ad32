"""Replays: the committed cassettes drive the current bridge and must come out as recorded; a changed agent
must not, and the diff must say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phonebridge.agent import Agent, load_agent
from phonebridge.cli import main
from phonebridge.recording import load_cassette
from phonebridge.replay import Conduct, compare, conduct_of, twilio_runs
from phonebridge.testing import assert_replays, replay_cassette
from tests.cassettes.make_cassettes import make_agent

CASSETTES = Path(__file__).parent / "cassettes"
NAMES = ("question_answer", "tool_call", "barge_in")


@pytest.mark.parametrize("name", NAMES)
async def test_committed_cassettes_replay_as_recorded(name):
    result = await assert_replays(CASSETTES / f"{name}.jsonl", make_agent())
    assert result.ok and result.notes == []
    assert result.actual == result.expected


@pytest.mark.parametrize("name", NAMES)
async def test_without_an_agent_the_recorded_tool_results_answer(name):
    result = await replay_cassette(CASSETTES / f"{name}.jsonl")
    assert result.ok, result.diff


def test_the_cassettes_hold_what_they_are_named_after():
    qa, tool, barge = (conduct_of(load_cassette(CASSETTES / f"{n}.jsonl")) for n in NAMES)
    assert qa.tools == () and [k for k, _ in qa.twilio_out].count("clear") == 0
    assert [(t["name"], t["args"], t["status"]) for t in tool.tools] == [
        ("lookup_order", {"order_id": "A7"}, "ok"), ("end_call", {}, "ok")]
    assert tool.tool_responses[0] == {"id": "fc-1", "name": "lookup_order",
                                      "response": {"order_id": "A7", "status": "out for delivery"}}
    assert [k for k, _ in barge.twilio_out].count("clear") == 1


def changed_agent() -> Agent:
    agent = Agent(instructions="You are the replay test agent.", greeting="Greet the caller.")

    @agent.tool
    async def lookup_order(order_id: str) -> dict[str, str]:
        """Look up an order by its id."""
        return {"order_id": order_id, "status": "lost"}

    return agent


async def test_a_tool_that_now_answers_differently_fails_with_a_readable_diff():
    with pytest.raises(AssertionError) as raised:
        await assert_replays(CASSETTES / "tool_call.jsonl", changed_agent())
    diff = str(raised.value)
    assert "tool_call.jsonl: the replay diverges from the recording" in diff
    assert ('tool call #1:\n      recorded: fc-1 lookup_order({"order_id": "A7"}) -> ok '
            '{"order_id": "A7", "status": "out for delivery"}\n'
            '      replayed: fc-1 lookup_order({"order_id": "A7"}) -> ok {"order_id": "A7", "status": "lost"}') in diff
    assert "tool response #1:" in diff
    assert "twilio out" not in diff  # the emulated model says the same whatever the tool said


async def test_recorded_tools_stand_in_for_the_agents_handlers():
    result = await replay_cassette(CASSETTES / "tool_call.jsonl", changed_agent(), recorded_tools=True)
    assert result.ok, result.diff


async def test_outbound_audio_that_changed_is_reported_by_run_and_byte(tmp_path):
    lines = (CASSETTES / "question_answer.jsonl").read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"kind":"twilio_out"' in line and '"media"' in line)
    record = json.loads(lines[target])
    record["data"]["media"]["payload"] = "AAAA" + record["data"]["media"]["payload"][4:]  # 3 bytes changed
    lines[target] = json.dumps(record)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = await replay_cassette(tampered, make_agent())
    assert not result.ok
    assert len(result.divergences) == 1
    assert result.divergences[0].startswith("twilio out #1: media run differs: recorded ")
    assert "first difference at byte 0 (0.000 s into the run)" in result.divergences[0]


def test_compare_lists_missing_and_extra_items():
    media = ("media", b"\x01\x02")
    want = Conduct((), (), (media, ("mark", "t1.1"), ("clear", None)))
    got = Conduct((), (), (media,))
    assert compare(want, got) == ["twilio outs: recorded 3, replayed 1; missing from #2: mark 't1.1', clear"]
    assert compare(got, want) == ["twilio outs: recorded 1, replayed 3; extra from #2: mark 't1.1', clear"]
    assert compare(want, want) == []


def test_twilio_runs_merge_media_between_marks_and_clears():
    frames = [{"event": "media", "media": {"payload": "AQI="}}, {"event": "media", "media": {"payload": "Aw=="}},
              {"event": "mark", "mark": {"name": "t1.1"}}, {"event": "media", "media": {"payload": "BA=="}},
              {"event": "clear"}]
    assert twilio_runs(frames) == (("media", b"\x01\x02\x03"), ("mark", "t1.1"), ("media", b"\x04"), ("clear", None))


def test_cli_exit_code_is_zero_only_on_a_match(tmp_path, capsys):
    assert main(["replay", str(CASSETTES / "question_answer.jsonl")]) == 0
    assert "question_answer.jsonl: replay matches the recording" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    lines = (CASSETTES / "question_answer.jsonl").read_text().splitlines()
    bad.write_text("\n".join(line for line in lines if '"name":"t2.' not in line) + "\n")  # drop turn 2's marks
    assert main(["replay", str(bad)]) == 1
    assert "bad.jsonl: the replay diverges from the recording" in capsys.readouterr().out


async def test_the_demo_call_replays_from_the_cassette_it_wrote(tmp_path):
    import io

    from phonebridge.demo import DEFAULT_AGENT, demo_call

    agent = load_agent(DEFAULT_AGENT)
    summary = await demo_call(agent, tmp_path, speed=20.0, out=io.StringIO())
    assert summary["ok"], summary
    (cassette,) = tmp_path.glob("*.jsonl")
    result = await replay_cassette(cassette, load_agent(DEFAULT_AGENT))
    assert result.ok, result.diff
    assert [t["name"] for t in result.expected.tools] == ["get_menu", "order_status", "end_call"]
