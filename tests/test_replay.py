"""Replays: the committed cassettes drive the current bridge and must come out as recorded; a changed agent
must not, and the diff must say where."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.cli import main
from phonebridge.cassette.record import load_cassette
from phonebridge.cassette.replay import Conduct, compare, conduct_of, twilio_runs
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

    from phonebridge.demo.cli import DEFAULT_AGENT, demo_call

    agent = load_agent(DEFAULT_AGENT)
    summary = await demo_call(agent, tmp_path, speed=20.0, out=io.StringIO())
    assert summary["ok"], summary
    (cassette,) = tmp_path.glob("*.jsonl")
    result = await replay_cassette(cassette, load_agent(DEFAULT_AGENT))
    assert result.ok, result.diff
    assert [t["name"] for t in result.expected.tools] == ["get_menu", "order_status", "end_call"]


# -- hostile cassettes: one clear line and exit 2, never a traceback or a hang -------------------------------

SOURCE = CASSETTES / "tool_call.jsonl"


def _lines() -> list[str]:
    return SOURCE.read_text().splitlines()


def _index(kind: str, event: str | None = None) -> int:
    return next(i for i, line in enumerate(_lines()) if (r := json.loads(line)).get("kind") == kind
                and (event is None or r["data"].get("event") == event))


def _changed(index: int, change) -> str:
    out = _lines()
    record = json.loads(out[index])
    change(record)
    out[index] = json.dumps(record)
    return "\n".join(out) + "\n"


def _set(key: str, value: object):
    return lambda record: record.__setitem__(key, value)


def _set_in(path: tuple[str, ...], value: object):
    def change(record: dict) -> None:
        for key in path[:-1]:
            record = record[key]
        record[path[-1]] = value
    return change


def _file(content: str | bytes, name: str = "c.jsonl"):
    def write(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return write


def _directory(directory: Path) -> Path:
    (directory / "dir.jsonl").mkdir()
    return directory / "dir.jsonl"


def _header_plus(*records: str) -> str:
    return "\n".join([_lines()[0], *records]) + "\n"


# name -> (how to write it, what the one line must say)
HOSTILE_CASSETTES = {
    "empty_file": (_file(""), "empty file, not a cassette"),
    "blank_lines_only": (_file("\n  \n\n"), "empty file, not a cassette"),
    "directory": (_directory, "cannot read: [Errno 21] Is a directory"),
    "missing_file": (lambda d: d / "nope.jsonl", "cannot read: [Errno 2] No such file or directory"),
    "binary_garbage": (_file(bytes(range(256)) * 40), "not UTF-8 text"),
    "not_gzip": (_file(b"not gzip at all", "c.jsonl.gz"), "cannot read: Not a gzipped file"),
    "truncated_gzip": (_file(gzip.compress(SOURCE.read_bytes())[:300], "c.jsonl.gz"),
                       "cannot read: Compressed file ended before the end-of-stream marker was reached"),
    "header_not_json": (_file("hello\n"), "line 1: not JSON (Expecting value"),
    "header_an_array": (_file("[1, 2]\n"), "line 1: not a JSON object"),
    "wrong_version": (_file('{"cassette": 99}\n'), "line 1 is not a version 1 cassette header"),
    "truncated_json_line": (_file("\n".join(_lines()[:5]) + "\n" + _lines()[5][:40] + "\n"),
                            "line 6: not JSON (Unterminated string"),
    "deep_nesting": (_file(_header_plus("[" * 100_000)), "line 2: nested too deeply"),
    "number_5000_digits": (_file(_header_plus('{"t":' + "1" * 5000 + ',"kind":"tool","data":{}}')),
                           "line 2: not JSON (Exceeds the limit (4300 digits)"),
    "huge_line": (_file(_header_plus('{"t":0.1,"kind":"tool","data":{"pad":"' + "x" * (17 * 2**20) + '"}}')),
                  "line 2: longer than 16777216 characters"),
    "t_nan": (_file(_changed(1, _set("t", float("nan")))), "line 2: 't' must be a number of seconds from 0 to 86400, got nan"),
    "t_infinity": (_file(_header_plus('{"t":Infinity,"kind":"twilio_in","data":{}}')), "got inf"),
    "t_1e308": (_file(_changed(3, _set("t", 1e308))), "line 4: 't' must be a number of seconds from 0 to 86400, got 1e+308"),
    "t_negative": (_file(_changed(2, _set("t", -5.0))), "line 3: 't' must be a number of seconds"),
    "t_a_string": (_file(_changed(2, _set("t", "0.5"))), "line 3: 't' must be a number of seconds"),
    "t_a_boolean": (_file(_changed(2, _set("t", True))), "line 3: 't' must be a number of seconds"),
    "non_monotonic": (_file(_changed(_index("model_in") + 3, _set("t", 0.001))), "'t' goes back in time (0.001 after "),
    "unknown_kind": (_file(_changed(2, _set("kind", "telepathy"))), "line 3: expected {t, kind, data} with a known kind"),
    "data_missing": (_file(_changed(2, lambda r: r.pop("data"))), "line 3: expected {t, kind, data}"),
    "data_a_string": (_file(_changed(_index("model_in"), _set("data", "hello"))), "and an object as data"),
    "record_after_end": (_file(SOURCE.read_text() + '{"t":99.0,"kind":"tool","data":{}}\n'), "a record after the end line"),
    "end_dropped_not_a_number": (_file("\n".join(_lines()[:-1]) + '\n{"t":9.0,"kind":"end","data":{"dropped":"x"}}\n'),
                                 "the end line's 'dropped' must be a non-negative integer, got 'x'"),
    "call_sid_not_a_string": (_file(_changed(0, _set("call_sid", ["CA1"]))), "line 1: 'call_sid' must be a string"),
    "model_in_wrong_shape": (_file(_changed(_index("model_in"), _set("data", {"server_content": "x"}))),
                             "model_in record: 1 validation error for LiveServerMessage"),
    "twilio_in_bad_base64": (_file(_changed(_index("twilio_in", "media"), _set_in(("data", "media", "payload"), "@@@"))),
                             "twilio_in record: not base64: '@@@'"),
    "twilio_in_media_a_number": (_file(_changed(_index("twilio_in", "media"), _set_in(("data", "media"), 5))),
                                 "twilio_in record: 'media' must be an object, got int"),
    "twilio_out_bad_base64": (_file(_changed(_index("twilio_out", "media"), _set_in(("data", "media", "payload"), "%%"))),
                              "twilio_out record: not base64: '%%'"),
    "dtmf_digit_invalid": (_file(_changed(_index("twilio_in", "media"), _set("data", {"event": "dtmf", "dtmf": {"digit": "12"}}))),
                           "twilio_in record: 'dtmf.digit' must be one of 0-9 * # A-D, got '12'"),
    "model_out_audio_a_number": (_file(_changed(_index("model_out"), _set("data", {"realtime_input": {"audio": {"data": 5}}}))),
                                 "model_out record: 'realtime_input.audio.data' must be a base64 string, got int"),
    "tool_response_a_string": (_file(_changed(_index("model_out"), _set("data", {"tool_response": "x"}))),
                               "model_out record: 'tool_response' must be an object, got str"),
    "tool_without_name": (_file(_changed(_index("tool"), _set("data", {"pad": 1}))), "tool record: 'name' must be a string"),
    "config_a_string": (_file(_changed(_index("model_connect"), _set_in(("data", "config"), "x"))),
                        "model_connect record: 'config' must be an object, got str"),
    "tool_declaration_invalid": (_file(_changed(_index("model_connect"), _set_in(
        ("data", "config", "tools"), [{"function_declarations": [{"name": 5, "parameters": "x"}]}]))),
        "model_connect record: 2 validation errors for FunctionDeclaration"),
}


@pytest.mark.parametrize(("write", "says"), HOSTILE_CASSETTES.values(), ids=HOSTILE_CASSETTES.keys())
def test_a_hostile_cassette_is_one_clear_line_and_exit_2(tmp_path, capsys, write, says):
    path = write(tmp_path)
    assert main(["replay", str(path), "--realtime", "--timeout", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"phonebridge: {path}: ") and err.endswith("\n") and err.count("\n") == 1, err[:300]
    assert says in err, err[:300]
    assert len(err) < 400


def test_an_unreadable_cassette_is_one_clear_line(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret.jsonl"
    path.write_text(SOURCE.read_text())
    path.chmod(0)
    assert main(["replay", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"phonebridge: {path}: cannot read: [Errno 13] Permission denied")


@pytest.mark.parametrize("name", ["t_1e308", "binary_garbage"])
def test_the_real_command_refuses_a_hostile_cassette_without_a_traceback_or_a_hang(tmp_path, name):
    path = HOSTILE_CASSETTES[name][0](tmp_path)
    done = subprocess.run([sys.executable, "-c", "import sys; from phonebridge.cli import main; sys.exit(main())",
                           "replay", "--realtime", str(path)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr[-500:]
    assert done.stderr.startswith(f"phonebridge: {path}: ") and done.stderr.count("\n") == 1, done.stderr[-500:]


def test_replay_timeout_must_be_a_sane_number_of_seconds(capsys):
    for bad in ("nan", "-1", "0", "1e308"):
        with pytest.raises(SystemExit) as raised:
            main(["replay", str(SOURCE), "--timeout", bad])
        assert raised.value.code == 2
        assert "must be a number of seconds from 0 to 3600" in capsys.readouterr().err
