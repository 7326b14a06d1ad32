"""`phonebridge inspect`: the timeline model on the shipped cassettes, the page it makes, the command."""

from __future__ import annotations

import base64
import html
import json
import math
import stat
from pathlib import Path

import pytest

from phonebridge.cli import main
from phonebridge.inspector.audio import MAX_BUCKETS
from phonebridge.inspector.html import render_html
from phonebridge.inspector.model import build_timeline
from phonebridge.cassette.record import Cassette, CassetteError, Record, load_cassette

CASSETTES = Path(__file__).parent / "cassettes"


def timeline(name: str):
    return build_timeline(load_cassette(CASSETTES / f"{name}.jsonl"))


def lines(tl) -> list[tuple[str, str]]:
    return [(u.who, u.text) for u in tl.utterances]


def test_question_answer_as_a_timeline():
    tl = timeline("question_answer")
    assert lines(tl) == [("agent", "Hello, how can I help?"), ("caller", "Closing time?"), ("agent", "We close at ten.")]
    assert (len(tl.tools), len(tl.barge_ins), tl.count("mark"), tl.count("echo"), tl.count("clear")) == (0, 0, 12, 10, 0)
    assert tl.reconnects == 0 and tl.complete and tl.dropped == 0
    # Recorded flat out (t spans 0.09 s), it is drawn as it sounded: two 0.5 s answers around the question.
    assert [len(audio) for _, audio in tl.agent_audio] == [4014, 4014]
    assert sum(len(audio) for _, audio in tl.caller_audio) == 66 * 160
    assert tl.duration_s == pytest.approx(2.196, abs=0.01)
    assert tl.agent_audio[1][0] >= tl.caller_audio[-1][0] + len(tl.caller_audio[-1][1]) / 8000 - 1e-6


def test_tool_call_as_a_timeline():
    tl = timeline("tool_call")
    assert lines(tl) == [
        ("agent", "Hello, how can I help?"), ("caller", "Order A7?"), ("agent", "It is out for delivery."),
        ("caller", "Bye now."), ("agent", "Goodbye!"),
    ]
    assert [(t.name, t.args, t.status, t.response) for t in tl.tools] == [
        ("lookup_order", {"order_id": "A7"}, "ok", {"order_id": "A7", "status": "out for delivery"}),
        ("end_call", {}, "ok", {"result": "the call will end after your goodbye"}),
    ]
    assert tl.tools[0].latency_s == pytest.approx(6.0108e-05)
    assert (len(tl.barge_ins), tl.count("mark"), tl.count("echo"), tl.count("clear")) == (0, 18, 18, 0)
    # Each tool runs after the caller's question and before the agent's answer.
    caller, agent = tl.utterances[1], tl.utterances[2]
    assert caller.at <= tl.tools[0].at <= agent.at


def test_barge_in_as_a_timeline():
    tl = timeline("barge_in")
    assert lines(tl) == [
        ("agent", "Hello and welcome, let me tell you about"), ("caller", "Stop please."), ("agent", "Sure."),
    ]
    (barge,) = tl.barge_ins
    assert (barge.turn, barge.sent_s, barge.heard_s, barge.confirmed_s) == (1, 1.16, 1.14, 1.1)
    assert barge.heard_text == "Hello and welcome, let me tell you about" and barge.unheard_text == ""
    assert (tl.count("mark"), tl.count("echo"), tl.count("clear"), tl.count("interrupted")) == (17, 17, 1, 1)
    # The caller speaks over the agent before the clear (that is the barge-in), and is drawn doing so.
    assert tl.utterances[1].at < barge.at
    # What the caller heard of the cut turn is what the agent track holds: nothing of it after the clear.
    turn_one = [(start, audio) for start, audio in tl.agent_audio if start < barge.at]
    assert sum(len(audio) for _, audio in turn_one) == 1.14 * 8000
    assert max(start + len(audio) / 8000 for start, audio in turn_one) <= barge.at + 1e-9


def _cassette(tmp_path: Path, records: list[tuple[float, str, object]], *, end: bool = True) -> Path:
    header = {"cassette": 1, "phonebridge": "0.1.0", "call_sid": "CAtest", "stream_sid": "MZtest",
              "custom_parameters": {"From": "+15550001", "To": "+15550002"}}
    rows = [header] + [{"t": t, "kind": kind, "data": data} for t, kind, data in records]
    if end:
        rows.append({"t": 9.0, "kind": "end", "data": {"records": len(records), "dropped": 0}})
    path = tmp_path / "call.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _media(direction: str, nbytes: int, loud: bool = False) -> tuple[float, str, object]:
    payload = base64.b64encode((b"\x80" if loud else b"\xff") * nbytes).decode()
    return (0.0, direction, {"event": "media", "media": {"payload": payload}})


def _said(text: str) -> tuple[float, str, object]:
    return (0.0, "model_in", {"server_content": {"output_transcription": {"text": text}}})


def test_a_cut_turn_splits_its_words_where_the_caller_stopped_hearing(tmp_path):
    path = _cassette(tmp_path, [
        _said("One"), _media("twilio_out", 1600), _said(" two"), _media("twilio_out", 1600),
        _said(" three"), _media("twilio_out", 1600),
        *[_media("twilio_in", 160, loud=True) for _ in range(15)],  # 0.3 s of the caller talking over it
        (0.0, "model_in", {"server_content": {"interrupted": True}}),
        (0.0, "twilio_out", {"event": "clear"}),
        _said(" four"),  # late words of the cut turn: never played
        (0.0, "model_in", {"server_content": {"turn_complete": True}}),
    ])
    tl = build_timeline(load_cassette(path))
    (barge,) = tl.barge_ins
    assert (barge.at, barge.sent_s, barge.heard_s) == (pytest.approx(0.3), 0.6, 0.3)
    assert (barge.heard_text, barge.unheard_text) == ("One two", "three four")
    (agent,) = [u for u in tl.utterances if u.who == "agent"]
    assert (agent.text, agent.unheard) == ("One two", "three four")
    page = render_html(tl)
    assert '<span class="text">One two</span> <del class="unheard"' in page and "three four</del>" in page


def test_a_real_time_recording_keeps_its_own_clock(tmp_path):
    """Twilio sends the caller's frames as they are spoken (here with 0-10 ms of jitter) and echoes marks as the
    audio plays: the line clock is then the recorded one, with no drift."""
    inbound = [((k + 1) * 0.02 + 0.01 * (k % 2), "twilio_in", _media("twilio_in", 160)[2]) for k in range(100)]
    agent: list[tuple[float, str, object]] = []
    for i in range(5):  # 1 s of agent audio sent in a burst at 0.5 s, a mark after each 0.2 s
        agent += [(0.5, "twilio_out", _media("twilio_out", 1600)[2]),
                  (0.5, "twilio_out", {"event": "mark", "mark": {"name": f"m{i}"}}),
                  (0.705 + 0.2 * i, "twilio_in", {"event": "mark", "mark": {"name": f"m{i}"}})]
    records = sorted(inbound + agent, key=lambda r: r[0])
    tl = build_timeline(load_cassette(_cassette(tmp_path, records)))
    assert [(round(start, 3), len(audio)) for start, audio in tl.caller_audio] == [(0.0, 16000)]
    assert [(round(start, 3), len(audio)) for start, audio in tl.agent_audio] == [(0.5, 8000)]
    assert tl.duration_s == pytest.approx(2.0, abs=0.011)
    echoes = [e.at for e in tl.events if e.kind == "echo"]
    assert echoes == pytest.approx([0.705 + 0.2 * i for i in range(5)], abs=0.011)


def test_reconnects_keypresses_and_a_cut_short_recording(tmp_path):
    path = _cassette(tmp_path, [
        (0.0, "model_connect", {"cause": "start", "resumed": False, "seeded": False}),
        (1.0, "twilio_in", {"event": "dtmf", "dtmf": {"digit": "5"}}),
        (2.0, "model_in", {"go_away": {"time_left": "10s"}}),
        (2.5, "model_connect", {"cause": "go_away", "resumed": True, "seeded": False}),
        (3.0, "model_connect", {"cause": "closed", "resumed": False, "seeded": True}),
    ], end=False)
    tl = build_timeline(load_cassette(path))
    assert [(e.at, e.kind, e.label) for e in tl.events] == [
        (1.0, "dtmf", "5"), (2.0, "go_away", "goAway 10s"),
        (2.5, "reconnect", "model reconnected (go_away, resumed)"),
        (3.0, "reconnect", "model reconnected (closed, seeded)"),
    ]
    assert tl.reconnects == 2 and not tl.complete
    page = render_html(tl)
    assert "the recording was cut short" in page and "<b>2</b> reconnects" in page


def test_cassette_text_cannot_escape_into_the_page(tmp_path):
    evil = "</script><script>alert(1)</script><img src=x>"
    path = _cassette(tmp_path, [
        (0.0, "model_in", {"server_content": {"input_transcription": {"text": evil, "finished": True}}}),
        (0.1, "tool", {"id": "1", "name": evil, "args": {"q": evil}, "status": evil, "response": {"r": evil},
                       "latency_s": "soon"}),
    ])
    page = render_html(build_timeline(load_cassette(path)))
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("<script") == 2  # the data and the page's own script, nothing else
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def _in_memory(records: list[tuple[float, str, object]]) -> Cassette:
    """A cassette the reader would refuse (it bounds `t` and wants finite numbers), built past the reader so the
    viewer's own bounds are tested: the viewer must not trust that every Cassette came through load_cassette."""
    rows = tuple(Record(t, kind, data, n + 2) for n, (t, kind, data) in enumerate(records))
    return Cassette("odd.jsonl", {"cassette": 1, "call_sid": "CAtest", "stream_sid": "MZtest"}, rows, True, 0)


def test_the_envelope_is_bounded_whatever_the_recorded_times(tmp_path):
    records = [_media("twilio_in", 160, loud=True), (1e7, "twilio_in", {"event": "stop"})]
    with pytest.raises(CassetteError, match="'t' must be a number of seconds"):
        load_cassette(_cassette(tmp_path, records))  # the reader refuses a 115-day call ...
    tl = build_timeline(_in_memory(records))  # ... and the viewer still bounds what it draws
    assert tl.duration_s == 1e7
    assert len(tl.caller_envelope.lows) <= MAX_BUCKETS
    assert '"audio":null' in render_html(tl)  # too long to embed: drawn, not played


def test_bad_base64_and_non_finite_times_draw_as_nothing(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"cassette": 1}\n'
                    '{"t": NaN, "kind": "twilio_in", "data": {"event": "media", "media": {"payload": "!!!"}}}\n')
    with pytest.raises(CassetteError, match="line 2: 't' must be"):
        load_cassette(path)
    tl = build_timeline(_in_memory([
        (math.nan, "twilio_in", {"event": "media", "media": {"payload": "!!!"}}),
        (math.inf, "twilio_out", {"event": "media", "media": {"payload": 7}}),
        (0.5, "twilio_in", {"event": "stop"}),
    ]))
    assert (tl.duration_s, tl.caller_audio, tl.agent_audio) == (0.5, (), ())
    assert [e.kind for e in tl.events] == ["stop"] and "Hang-up" in render_html(tl)


def test_the_page_needs_nothing_outside_itself():
    page = render_html(timeline("barge_in"))
    assert "default-src 'none'" in page
    assert "http:" not in page and "https:" not in page and " src=" not in page and " href=" not in page


# -- the command ----------------------------------------------------------------------------------------


def test_inspect_writes_a_private_html_file(tmp_path, capsys):
    out = tmp_path / "call.html"
    assert main(["inspect", str(CASSETTES / "tool_call.jsonl"), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "Order A7?" in page
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the caller's voice and number are in it


def test_inspect_writes_beside_the_cassette_by_default(tmp_path):
    cassette = tmp_path / "CA123.jsonl"
    cassette.write_bytes((CASSETTES / "question_answer.jsonl").read_bytes())
    assert main(["inspect", str(cassette)]) == 0
    assert "Closing time?" in (tmp_path / "CA123.html").read_text()


def test_inspect_reads_a_gzipped_cassette(tmp_path):
    import gzip

    cassette = tmp_path / "CA9.jsonl.gz"
    cassette.write_bytes(gzip.compress((CASSETTES / "barge_in.jsonl").read_bytes()))
    assert main(["inspect", str(cassette)]) == 0
    assert "Stop please." in (tmp_path / "CA9.html").read_text()


@pytest.mark.parametrize("content", [
    "",
    "not json\n",
    '{"cassette": 99}\n',
    '{"cassette": 1}\n{"t": 0, "kind": "mystery", "data": {}}\n',
], ids=["empty", "not-json", "other-version", "unknown-kind"])
def test_a_malformed_cassette_is_one_line_and_exit_2(tmp_path, capsys, content):
    cassette = tmp_path / "bad.jsonl"
    cassette.write_text(content)
    assert main(["inspect", str(cassette), "-o", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err  # the cassette reader's own message (recording.CassetteError), on one line
    assert err.startswith(f"phonebridge: {cassette}") and err.count("\n") == 1, err
    assert not (tmp_path / "out.html").exists()


def test_a_missing_cassette_or_unwritable_output_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("phonebridge: ")
    assert main(["inspect", str(CASSETTES / "tool_call.jsonl"), "-o", str(tmp_path / "no" / "dir.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phonebridge: cannot write") and err.count("\n") == 1


async def test_the_demo_writes_call_html_beside_call_wav(tmp_path):
    import io

    from phonebridge.agent.definition import load_agent
    from phonebridge.demo.cli import DEFAULT_AGENT, demo_call

    out = io.StringIO()
    summary = await demo_call(load_agent(DEFAULT_AGENT), tmp_path, speed=20.0, out=out)
    assert summary["ok"], out.getvalue()
    page = (tmp_path / "call.html").read_text()
    assert f"{tmp_path / 'call.html'} (the call's timeline: open it in a browser)" in out.getvalue()
    # The viewer's transcript is the bridge's own, with the words the caller never heard set apart.
    (cassette,) = tmp_path.glob("CA*.jsonl")
    tl = build_timeline(load_cassette(cassette))
    assert [(u.who, f"{u.text} {u.unheard}".strip()) for u in tl.utterances] == [
        (line["who"], line["text"]) for line in summary["transcript"]]
    for u in tl.utterances:
        assert f'<span class="text">{html.escape(u.text)}</span>' in page
    (barge,) = tl.barge_ins
    (cut,) = [u for u in tl.utterances if u.turn == barge.turn]
    assert (cut.text, cut.unheard) == (barge.heard_text, barge.unheard_text)  # how much was heard varies by run
    assert page.count('class="entry tool"') == 3 and page.count('class="entry barge"') == 1
