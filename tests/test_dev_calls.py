"""`phonebridge dev`'s recorded calls at /calls: a real call through the dev server is listed and opens in the
viewer; the token guards both doors; names cannot leave the record dir; a broken cassette is a page, not a 500."""

from __future__ import annotations

import asyncio
import gzip
import html
import io
import json
import logging
import math
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from phonebridge.server.app import RUNTIME
from phonebridge.dev.calls import CallPages, summarise, valid_name
from phonebridge.dev.server import DevServer
from tests.test_dev_server import PageLeg, _events, _next, _write_agent

CASSETTES = Path(__file__).with_name("cassettes")


@pytest.fixture
async def dev(tmp_path) -> AsyncIterator[DevServer]:
    agent_file = tmp_path / "agent.py"
    _write_agent(agent_file, "v1", 1)
    server = DevServer(str(agent_file), port=0, record_dir=str(tmp_path / "calls"), emulator_speed=math.inf,
                       poll_s=3600, out=io.StringIO())
    await server.start()
    yield server
    await server.stop()


def _base(dev: DevServer) -> str:
    return dev.url.split("/?")[0]


def _token(dev: DevServer) -> str:
    assert dev.routes is not None
    return dev.routes.token


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, dict[str, str]]:
    async with session.get(URL(url, encoded=True)) as response:  # as typed: no client-side normalising
        return response.status, await response.text(), dict(response.headers)


async def test_a_call_is_listed_while_in_progress_then_opens_in_the_viewer(dev):
    base, token = _base(dev), _token(dev)
    async with aiohttp.ClientSession() as session:
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_events(session, dev, queue))
        await _next(queue, lambda e: e["kind"] == "agent")
        leg = PageLeg(session, dev)
        await leg.dial()
        sid, viewer = leg.info["callSid"], leg.info["viewerPath"]
        assert viewer == f"/calls/{sid}.jsonl?token={token}"
        said = [(await _next(queue, lambda e: e["kind"] == "transcript"))["text"]]

        status, page, _ = await _get(session, f"{base}/calls?token={token}")
        assert status == 200 and sid in page and "in progress" in page
        status, page, _ = await _get(session, base + viewer)
        assert status == 200 and "still in progress" in page  # not the viewer's "cut short" warning

        await leg.say()
        result = await _next(queue, lambda e: e["kind"] == "tool_result")
        assert result["response"] == {"result": "v1"}
        said += [(await _next(queue, lambda e: e["kind"] == "transcript" and e["who"] == "agent"))["text"]]
        await leg.hang_up()
        assert (await _next(queue, lambda e: e["kind"] == "call_end"))["stats"]["outcome"] == "caller_hung_up"
        assert await dev.app[RUNTIME].wait_idle(10)  # the session leaves only once its cassette is closed
        reader.cancel()

        status, page, headers = await _get(session, f"{base}/calls?token={token}")
        assert status == 200 and "caller_hung_up" in page and "in progress" not in page
        assert f'href="/calls/{sid}.jsonl?token={token}"' in page and " s</td>" in page
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")

        status, page, headers = await _get(session, base + viewer)
        assert status == 200 and page.startswith("<!doctype html>") and f"Call {sid}" in page
        for text in said:
            assert html.escape(text) in page, text
        assert "which_version" in page  # the tool call is on the timeline
        csp = headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-") and "script-src 'sha256-" in csp
        assert f'content="{csp.split("; base-uri")[0]}"' in page  # the page's own policy, as sent
        assert "frame-ancestors 'none'" in csp and headers["Referrer-Policy"] == "no-referrer"
        assert (await _get(session, base + viewer))[1] == page
        assert dev.routes.calls is not None and len(dev.routes.calls._pages) == 1  # rendered once, then kept


async def test_both_doors_want_the_token(dev):
    base = _base(dev)
    shutil.copy(CASSETTES / "tool_call.jsonl", Path(dev.record_dir) / "CAknown.jsonl")
    async with aiohttp.ClientSession() as session:
        for path in ("/calls", "/calls/CAknown.jsonl", "/calls/CAnothere.jsonl", "/calls/..%2Fagent.py"):
            for query in ("", "?token=", "?token=wrong", "?token=" + "x" * len(_token(dev))):
                status, page, _ = await _get(session, base + path + query)
                assert status == 403, (path, query)
                assert "CAknown" not in page
        status, page, _ = await _get(session, f"{base}/calls/CAknown.jsonl?token={_token(dev)}")
        assert status == 200 and "Call CA" in page


async def test_a_gzipped_cassette_is_listed_complete_and_opens(dev):
    data = (CASSETTES / "tool_call.jsonl").read_bytes()
    (Path(dev.record_dir) / "CAzipped.jsonl.gz").write_bytes(gzip.compress(data))
    last_t = json.loads(data.splitlines()[-1])["t"]
    async with aiohttp.ClientSession() as session:
        status, page, _ = await _get(session, f"{_base(dev)}/calls?token={_token(dev)}")
        assert status == 200 and f"{last_t:.1f} s" in page and "ended" in page and "cut short" not in page
        status, page, _ = await _get(session, f"{_base(dev)}/calls/CAzipped.jsonl.gz?token={_token(dev)}")
        assert status == 200 and "lookup_order" in page


async def test_names_cannot_leave_the_record_dir(dev, tmp_path):
    base, token = _base(dev), _token(dev)
    calls = Path(dev.record_dir)
    shutil.copy(CASSETTES / "tool_call.jsonl", tmp_path / "secret.jsonl")  # a valid cassette outside
    (calls / "CAlink.jsonl").symlink_to(tmp_path / "secret.jsonl")
    (calls / "CAdir.jsonl").mkdir()
    (calls / "CAdir.jsonl" / "x.jsonl").write_text("")
    shutil.copy(CASSETTES / "tool_call.jsonl", calls / "notes.txt")
    attempts = [
        "..", "..%2Fsecret.jsonl", "%2e%2e%2fsecret.jsonl", "..%5Csecret.jsonl", "%2Ftmp%2Fsecret.jsonl",
        f"{'%2F'.join(str(tmp_path / 'secret.jsonl').split('/'))}", "CAdir.jsonl%2Fx.jsonl", "CAlink.jsonl",
        "CAdir.jsonl", "notes.txt", "secret.jsonl", "CA1.jsonl%00.txt", "CA1.jsonl.", ".jsonl", "CAnothere.jsonl",
        "x" * 200 + ".jsonl",
    ]
    async with aiohttp.ClientSession() as session:
        for name in attempts:
            status, page, _ = await _get(session, f"{base}/calls/{name}?token={token}")
            assert status == 404, name
            assert "tool_call" not in page and "lookup_order" not in page, name
        for raw in ("/calls/../secret.jsonl", "/calls//tmp/secret.jsonl", "/calls/CAdir.jsonl/x.jsonl"):
            status, _, _ = await _get(session, f"{base}{raw}?token={token}")
            assert status == 404, raw
        status, page, _ = await _get(session, f"{base}/calls?token={token}")
        assert status == 200 and "No calls recorded yet" in page  # the symlink, the dir, notes.txt: not listed


def test_the_name_rule_is_the_recorders():
    assert valid_name("CA" + "0" * 32 + ".jsonl") and valid_name("CAx-2.jsonl") and valid_name("CAx.jsonl.gz")
    for name in ("../CA.jsonl", "/CA.jsonl", "CA.jsonl/", "CA\\x.jsonl", "CA x.jsonl", "CA.json", "é.jsonl"):
        assert not valid_name(name), name


async def test_a_broken_cassette_is_a_clear_page_and_no_traceback(dev, caplog):
    base, token = _base(dev), _token(dev)
    calls = Path(dev.record_dir)
    header = (CASSETTES / "tool_call.jsonl").read_text().splitlines()[0]
    broken = {
        "CAgarbage.jsonl": ("not a cassette\n", "line 1: not JSON"),
        "CAempty.jsonl": ("", "empty file"),
        "CAhalf.jsonl": (header + '\n{"t": 0.1, "kind": "twilio_in", "da', "line 2: not JSON"),
        "CAbinary.jsonl": (b"\xff\xfe\x00garbage", "not UTF-8"),
        "CAback.jsonl": (header + '\n{"t": 2, "kind": "tool", "data": {}}\n{"t": 1, "kind": "tool", "data": {}}\n',
                         "goes back in time"),
    }
    for name, (content, _) in broken.items():
        (calls / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        status, page, _ = await _get(session, f"{base}/calls?token={token}")
        assert status == 200 and all(name in page for name in ("CAgarbage", "CAempty", "CAhalf", "CAbinary"))
        for name, (_, why) in broken.items():
            status, page, headers = await _get(session, f"{base}/calls/{name}?token={token}")
            assert status == 422, name
            assert "The viewer cannot read this cassette" in page and why in page, (name, page)
            assert str(calls) not in page  # the file's name, not where the record dir is
            assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text
    assert sum("cannot show the recorded call" in r.getMessage() for r in caplog.records) == len(broken)


async def test_without_a_record_dir_the_list_says_recording_is_off(tmp_path, monkeypatch):
    monkeypatch.delenv("PHONEBRIDGE_RECORD_DIR", raising=False)
    agent_file = tmp_path / "agent.py"
    _write_agent(agent_file, "v1", 1)
    dev = DevServer(str(agent_file), port=0, emulator_speed=math.inf, poll_s=3600, out=io.StringIO())
    await dev.start()
    try:
        async with aiohttp.ClientSession() as session:
            status, page, _ = await _get(session, f"{_base(dev)}/calls?token={_token(dev)}")
            assert status == 200 and "Recording is off" in page
            status, _, _ = await _get(session, f"{_base(dev)}/calls/CA1.jsonl?token={_token(dev)}")
            assert status == 404
        assert isinstance(dev.routes.calls, CallPages) and dev.routes.calls.viewer_path("CA1") is None
    finally:
        await dev.stop()


async def test_the_softphone_links_to_the_calls(dev):
    async with aiohttp.ClientSession() as session:
        status, script, _ = await _get(session, f"{_base(dev)}/softphone/softphone.js")
        assert status == 200 and '"/calls?token=" + encodeURIComponent(token)' in script
        assert "viewerLink(state.viewerPath)" in script
        status, page, _ = await _get(session, dev.url)
        assert status == 200 and 'id="calls-link"' in page


def test_a_hand_edited_header_time_falls_back_to_the_files_own(tmp_path):
    path = tmp_path / "CAodd.jsonl"
    for started_at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", None, "yesterday", 5):
        path.write_text(json.dumps({"cassette": 1, "call_sid": "CAodd", "started_at": started_at}) + "\n")
        summary = summarise(path, os.stat(path))
        assert summary.started == pytest.approx(os.stat(path).st_mtime) and summary.call_sid == "CAodd"
