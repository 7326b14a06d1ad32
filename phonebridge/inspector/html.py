"""A Timeline as one self-contained HTML page: inline style and script, the call's audio inside.

The page works from a file:// URL with nothing else: its Content-Security-Policy allows only its own inline
style and script (by hash) and forbids every fetch, so a page that needed the network would fail visibly.
Everything from the cassette is escaped: text into HTML with html.escape, data into the embedded JSON with
`<` escaped, so a transcript saying `</script>` stays text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import Any

from phonebridge.inspector.assets import SCRIPT, STYLE
from phonebridge.inspector.audio import RATE, Envelope
from phonebridge.inspector.model import Timeline, ToolCall

MAX_AUDIO_S = 30 * 60  # past this the page draws the call but does not embed its audio (8 KB/s a track)


def render_html(timeline: Timeline) -> str:
    """The whole page as a string."""
    title = f"Call {timeline.header.get('call_sid') or '(no call sid)'}"
    csp = (f"default-src 'none'; style-src '{_sha256(STYLE)}'; script-src '{_sha256(SCRIPT)}'; "
           "img-src data:; media-src data: blob:")
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} · phonebridge</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        _header(timeline, title),
        _timeline_panel(timeline),
        _log(timeline),
        f'<script type="application/json" id="call-data">{_data_json(timeline)}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]) + "\n"


def _header(tl: Timeline, title: str) -> str:
    found = tl.header.get("custom_parameters")
    params: dict[str, Any] = found if isinstance(found, dict) else {}
    who = " → ".join(str(params[k]) for k in ("From", "To") if params.get(k))
    facts = [who, str(tl.header.get("started_at") or ""), f"{tl.duration_s:.1f} s on the line",
             f"phonebridge {tl.header.get('phonebridge', '?')}"]
    warnings = []
    if not tl.complete:
        warnings.append("this cassette has no end line: the recording was cut short (the process died?)")
    if tl.dropped:
        warnings.append(f"{tl.dropped} records were dropped while recording: the call is incomplete here")
    sent, echoed = tl.count("mark"), tl.count("echo")
    first = f"{tl.first_audio_s * 1000:.0f} ms" if tl.first_audio_s is not None else "none"
    chips = [
        (len(tl.utterances), _plural(len(tl.utterances), "transcript line")),
        (len(tl.tools), _plural(len(tl.tools), "tool call")), (len(tl.barge_ins), _plural(len(tl.barge_ins), "barge-in")),
        (f"{sent} / {echoed}", "marks sent / echoed"), (tl.count("clear"), _plural(tl.count("clear"), "clear")),
        (tl.reconnects, _plural(tl.reconnects, "reconnect")), (first, "first agent audio"),
    ]
    return "\n".join([
        '<header><h1>' + _e(title) + '</h1>',
        '<p class="facts">' + " · ".join(_e(f) for f in facts if f) + "</p>",
        *(f'<p class="warning">{_e(w)}</p>' for w in warnings),
        '<ul class="chips">' + "".join(f"<li><b>{_e(str(v))}</b> {_e(k)}</li>" for v, k in chips) + "</ul>",
        "</header>",
    ])


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def _timeline_panel(tl: Timeline) -> str:
    audio = "" if _audio_embedded(tl) else (
        f'<span class="note">audio not embedded: the call is longer than {MAX_AUDIO_S // 60} minutes</span>')
    legend = "".join(f'<span class="key {k}">{_e(v)}</span>' for k, v in (
        ("caller", "caller"), ("agent", "agent (as heard)"), ("tool", "tool call"), ("barge", "barge-in / clear"),
        ("mark", "mark"), ("reconnect", "reconnect"), ("dtmf", "keypad")))
    return "\n".join([
        '<section class="panel" id="timeline-panel">',
        '<div class="controls"><button id="play" type="button">▶ Play</button>',
        '<span id="clock">0.00 s</span>',
        '<button id="zoom-out" type="button" title="zoom out">−</button>',
        '<button id="zoom-in" type="button" title="zoom in">+</button>',
        f'{audio}<span class="legend">{legend}</span></div>',
        '<div id="scroller"><canvas id="timeline" width="1000" height="320"></canvas></div>',
        "</section>",
    ])


def _log(tl: Timeline) -> str:
    entries: list[tuple[float, int, str]] = []
    for u in tl.utterances:
        cut = f' <del class="unheard" title="never heard: cut by the barge-in">{_e(u.unheard)}</del>' if u.unheard else ""
        entries.append((u.at, 0 if u.who == "caller" else 2, _entry(u.at, u.who, "Caller" if u.who == "caller" else "Agent",
                                        f'<span class="text">{_e(u.text)}</span>{cut}')))
    entries += [(t.at, 1, _tool_entry(t)) for t in tl.tools]  # at a tie: the caller asks, the tool runs, the agent answers
    for b in tl.barge_ins:
        body = (f"the caller cut in on turn {b.turn}: heard {b.heard_s:.2f} s of the {b.sent_s:.2f} s sent "
                f"({b.confirmed_s:.2f} s proven by echoed marks); Twilio's buffer was cleared")
        heard = f'<div class="quote">heard: “{_e(b.heard_text)}”</div>' if b.heard_text else ""
        cut = f'<div class="quote">cut: <del>{_e(b.unheard_text)}</del></div>' if b.unheard_text else ""
        entries.append((b.at, 3, _entry(b.at, "barge", "Barge-in", _e(body) + heard + cut)))
    labels = {"reconnect": "Reconnect", "dtmf": "Keypad", "go_away": "goAway", "cancel": "Cancelled",
              "stop": "Hang-up", "prompt": "To the model"}
    for event in tl.events:
        if event.kind in labels:
            entries.append((event.at, 4, _entry(event.at, event.kind, labels[event.kind], _e(event.label))))
    entries.sort(key=lambda e: (e[0], e[1]))
    return '<section class="panel"><h2>The call, in order</h2><ol id="log">' + "".join(e[2] for e in entries) + "</ol></section>"


def _entry(at: float, kind: str, who: str, body: str) -> str:
    return (f'<li class="entry {kind}" data-at="{at:.3f}"><span class="at">{at:6.2f} s</span>'
            f'<span class="who">{_e(who)}</span><span class="body">{body}</span></li>')


def _tool_entry(t: ToolCall) -> str:
    latency = f" · {t.latency_s * 1000:.1f} ms" if t.latency_s is not None else ""
    head = (f'<code class="call">{_e(t.name)}({_e(_args(t.args))})</code> '
            f'<span class="status {_e(t.status)}">{_e(t.status)}</span>{_e(latency)}')
    response = f'<pre class="response">{_e(json.dumps(t.response, ensure_ascii=False, default=str))}</pre>'
    return _entry(t.at, "tool", "Tool", head + response)


def _args(args: Any) -> str:
    if isinstance(args, dict):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in args.items())
    return json.dumps(args, ensure_ascii=False, default=str)


def _data_json(tl: Timeline) -> str:
    data = {
        "duration": tl.duration_s,
        "rate": RATE,
        "caller": _envelope(tl.caller_envelope),
        "agent": _envelope(tl.agent_envelope),
        "audio": {"caller": _runs(tl.caller_audio), "agent": _runs(tl.agent_audio)} if _audio_embedded(tl) else None,
        "utterances": [[u.at, u.who, u.text, u.unheard] for u in tl.utterances],
        "tools": [[t.at, t.done_at, t.name, t.status] for t in tl.tools],
        "bargeIns": [[b.at, b.heard_s] for b in tl.barge_ins],
        "events": [[e.at, e.kind, e.label] for e in tl.events if e.kind != "echo"],
    }
    # `<` escaped: nothing in the data can close the script element it sits in.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _envelope(env: Envelope) -> dict[str, Any]:
    return {"bucket": env.bucket_s, "lows": _b64(bytes(v & 0xFF for v in env.lows)),
            "highs": _b64(bytes(v & 0xFF for v in env.highs))}


def _runs(runs: tuple[tuple[float, bytes], ...]) -> list[list[Any]]:
    return [[round(start * RATE), _b64(ulaw)] for start, ulaw in runs]


def _audio_embedded(tl: Timeline) -> bool:
    return tl.duration_s <= MAX_AUDIO_S


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
