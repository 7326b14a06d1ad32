"""`phonebridge dev`'s server without a browser: the token on every door, what /dev/call hands the page,
events tagged with their call, reloading the agent, and `serve` exposing none of it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from phonebridge.agent.definition import Agent
from phonebridge.server.app import make_app
from phonebridge.audio import ulaw_encode
from phonebridge.server.config import Settings
from phonebridge.dev.server import DevServer
from phonebridge.errors import ConfigError
from phonebridge.testing.playback import LegCore
from phonebridge.testing.speech import synth_speech

AGENT = '''
from phonebridge import Agent

agent = Agent(instructions="Say which version you are.", greeting="Greet the caller.")

@agent.tool
def which_version() -> str:
    """Which version of the agent answers."""
    return "{version}"
'''


def _write_agent(path: Path, version: str, tick: int) -> None:
    path.write_text(AGENT.format(version=version))
    os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a new mtime however coarse the filesystem's clock


@pytest.fixture
async def dev(tmp_path) -> AsyncIterator[DevServer]:
    agent_file = tmp_path / "agent.py"
    _write_agent(agent_file, "v1", 1)
    server = DevServer(str(agent_file), port=0, record_dir=str(tmp_path / "calls"), emulator_speed=math.inf,
                       poll_s=3600, out=open(os.devnull, "w"))
    await server.start()
    yield server
    await server.stop()


def _base(dev: DevServer) -> str:
    return dev.url.split("/?")[0]


class PageLeg:
    """What the softphone page does, in Python: /dev/call, then Twilio's JSON over /twilio/media."""

    def __init__(self, session: aiohttp.ClientSession, dev: DevServer) -> None:
        self._session, self._dev = session, dev
        self.info: dict = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def dial(self) -> None:
        assert self._dev.routes is not None
        async with self._session.post(f"{_base(self._dev)}/dev/call?token={self._dev.routes.token}") as response:
            assert response.status == 200, await response.text()
            self.info = await response.json()
        self.leg = LegCore(self.info["streamSid"], self.info["accountSid"], self.info["callSid"])
        self.ws = await self._session.ws_connect(_base(self._dev) + self.info["mediaPath"])
        await self.ws.send_str(self.leg.connected())
        await self.ws.send_str(self.leg.start(self.info["customParameters"]))

    async def say(self, seconds: float = 1.0) -> None:
        """Speech then silence, as fast as the socket takes it (the emulator measures audio time)."""
        ulaw = ulaw_encode(synth_speech("where is my order", 8000, seconds=seconds)) + b"\xff" * 8000
        for i in range(0, len(ulaw), 160):
            await self.ws.send_str(self.leg.media(ulaw[i : i + 160], i / 8000))

    async def hang_up(self) -> None:
        await self.ws.send_str(self.leg.stop())
        await self.ws.close()


async def _events(session: aiohttp.ClientSession, dev: DevServer, queue: asyncio.Queue) -> None:
    async with session.get(f"{_base(dev)}/dev/events?token={dev.routes.token}") as response:
        async for raw in response.content:
            if raw.startswith(b"data: "):
                await queue.put(json.loads(raw[6:]))


async def _next(queue: asyncio.Queue, predicate, timeout: float = 10.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if predicate(event):
                return event


async def test_every_door_wants_the_token(dev):
    base = _base(dev)
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "/"), ("POST", "/dev/call"), ("GET", "/dev/events")):
            for query in ("", "?token=wrong"):
                async with session.request(method, base + path + query) as response:
                    assert response.status == 403, (method, path, query)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(base + "/twilio/media?token=wrong")
        assert refused.value.status == 403
        async with session.get(dev.url) as response:
            assert response.status == 200 and "softphone.js" in await response.text()
        async with session.get(base + "/softphone/worklets.js") as response:
            assert response.status == 200 and "registerProcessor" in await response.text()
        # Twilio's own door is still signed: an unsigned webhook is refused.
        async with session.post(base + "/twilio/voice", data={"CallSid": "CA1"}) as response:
            assert response.status == 403


async def test_dev_call_hands_the_page_the_parameters_of_the_bridges_own_twiml(dev):
    async with aiohttp.ClientSession() as session:
        leg = PageLeg(session, dev)
        await leg.dial()
        parameters = leg.info["customParameters"]
        assert parameters["CallSid"] == leg.info["callSid"] and parameters["Direction"] == "inbound"
        assert leg.info["callSid"].startswith("CA") and leg.info["streamSid"].startswith("MZ")
        await leg.hang_up()


async def test_events_reach_the_page_tagged_with_their_own_call(dev):
    async with aiohttp.ClientSession() as session:
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_events(session, dev, queue))
        status = await _next(queue, lambda e: e["kind"] == "agent")
        assert status["tools"] == ["which_version", "end_call"] and status["error"] is None
        legs = [PageLeg(session, dev), PageLeg(session, dev)]
        for leg in legs:
            await leg.dial()
        sids = {leg.info["callSid"] for leg in legs}
        seen: dict[str, set[str]] = {sid: set() for sid in sids}

        def both_greeted(event: dict) -> bool:
            if event.get("call_sid") in seen:
                seen[event["call_sid"]].add(event["kind"])
            return all("transcript" in kinds for kinds in seen.values())

        await _next(queue, both_greeted)
        assert all({"call_start", "transcript"} <= kinds for kinds in seen.values())
        await legs[0].say()
        result = await _next(queue, lambda e: e["kind"] == "tool_result")
        assert result["call_sid"] == legs[0].info["callSid"] and result["response"] == {"result": "v1"}
        for leg in legs:
            await leg.hang_up()
        ended = {(await _next(queue, lambda e: e["kind"] == "call_end"))["call_sid"] for _ in legs}
        assert ended == sids
        reader.cancel()


async def test_a_reload_changes_new_calls_only_and_a_broken_edit_keeps_the_last_good_agent(dev, tmp_path):
    agent_file = tmp_path / "agent.py"
    async with aiohttp.ClientSession() as session:
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_events(session, dev, queue))
        await _next(queue, lambda e: e["kind"] == "agent")
        old = PageLeg(session, dev)
        await old.dial()
        await _next(queue, lambda e: e["kind"] == "transcript")  # the old call is under way

        _write_agent(agent_file, "v2", 2)
        assert dev.reload_if_changed()
        assert (await _next(queue, lambda e: e["kind"] == "agent"))["version"] == 2
        new = PageLeg(session, dev)
        await new.dial()
        for leg in (old, new):
            await leg.say()
            result = await _next(queue, lambda e: e["kind"] == "tool_result")
            assert result["call_sid"] == leg.info["callSid"]
            assert result["response"] == {"result": "v1" if leg is old else "v2"}  # in progress: old code

        agent_file.write_text("from phonebridge import Agent\nagent = Agent(instructions='x'\n")
        os.utime(agent_file, ns=(3 * 10**9, 3 * 10**9))
        assert dev.reload_if_changed()
        broken = await _next(queue, lambda e: e["kind"] == "agent")
        assert broken["version"] == 2 and "SyntaxError" in broken["error"]
        assert not dev.reload_if_changed()  # unchanged since: nothing to do
        agent_file.write_text(AGENT.format(version="v3").replace("def which_version", "def end_call"))
        os.utime(agent_file, ns=(4 * 10**9, 4 * 10**9))
        assert dev.reload_if_changed()  # loads, but its tool clashes with a built-in: an error, not a crash
        clash = await _next(queue, lambda e: e["kind"] == "agent")
        assert clash["version"] == 2 and "clashes with a built-in" in clash["error"]
        third = PageLeg(session, dev)
        await third.dial()  # the server is still up, on v2
        await third.say()
        assert (await _next(queue, lambda e: e["kind"] == "tool_result"))["response"] == {"result": "v2"}
        for leg in (old, new, third):
            await leg.hang_up()
        reader.cancel()


async def test_serve_has_no_dev_routes_and_still_wants_twilios_signature_on_the_upgrade():
    settings = Settings(public_url="https://agent.example.com", twilio_auth_token="t", twilio_account_sid="AC1")
    app = make_app(settings, Agent(instructions="x"), rest=None)
    async with TestClient(TestServer(app)) as client:
        for path in ("/", "/dev/call", "/dev/events", "/softphone/softphone.js"):
            response = await client.get(path + "?token=anything")
            assert response.status in (404, 405), path
        response = await client.get("/twilio/media?token=anything")
        assert response.status == 403


def test_the_dev_command_prints_its_url_serves_the_page_reloads_and_stops_on_sigint(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI", "GOOGLE", "TWILIO", "PHONEBRIDGE"))}
    agent_file = tmp_path / "agent.py"
    _write_agent(agent_file, "v1", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "phonebridge.cli", "dev", "--agent", str(agent_file), "--port", "0",
         "--record-dir", str(tmp_path / "calls")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "softphone: " in line:
                break
        url = lines[-1].split("softphone: ")[1].strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url, lines
        assert any("the built-in emulator" in line for line in lines)
        import urllib.error
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0], timeout=10)
        assert refused.value.code == 403
        _write_agent(agent_file, "v2", 2)  # the watcher notices within its half-second poll
        for line in proc.stdout:
            if "reloaded" in line:
                assert "(version 2)" in line and "which_version" in line
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_script_file_drives_the_emulator_and_a_reconnect_reaches_the_page(tmp_path):
    script = tmp_path / "script.yaml"
    script.write_text("steps:\n  - wait_for_text: {}\n  - say: Hello from the script\n"
                      "  - go_away: {time_left_s: 0.05}\n  - say: Still here after the reconnect\n")
    agent_file = tmp_path / "agent.py"
    _write_agent(agent_file, "v1", 1)
    dev = DevServer(str(agent_file), port=0, script=str(script), emulator_speed=math.inf, poll_s=3600,
                    record_dir=str(tmp_path / "calls"), out=open(os.devnull, "w"))
    await dev.start()
    try:
        async with aiohttp.ClientSession() as session:
            queue: asyncio.Queue = asyncio.Queue()
            reader = asyncio.create_task(_events(session, dev, queue))
            assert (await _next(queue, lambda e: e["kind"] == "agent"))["script"] == str(script)
            leg = PageLeg(session, dev)
            await leg.dial()
            greeting = await _next(queue, lambda e: e["kind"] == "transcript")
            assert greeting["text"] == "Hello from the script"
            reconnect = await _next(queue, lambda e: e["kind"] == "reconnect")
            assert reconnect["call_sid"] == leg.info["callSid"]
            after = await _next(queue, lambda e: e["kind"] == "transcript")
            assert after["text"] == "Still here after the reconnect"
            await leg.hang_up()
            reader.cancel()
    finally:
        await dev.stop()


async def test_a_broken_script_file_refuses_to_start(tmp_path):
    script = tmp_path / "script.yaml"
    script.write_text("- sing: {}\n")
    dev = DevServer("phonebridge.examples.pizzeria", port=0, script=str(script), out=open(os.devnull, "w"))
    with pytest.raises(ConfigError, match="unknown step 'sing'"):
        await dev.start()


async def test_with_a_key_calls_go_to_the_model_the_sdks_environment_names(tmp_path, monkeypatch):
    # "Real" Gemini here is a LiveEmulator reached only through the SDK's own environment, as a user's key
    # and endpoint would be: the dev server starts no emulator of its own.
    from phonebridge.testing.live_emulator import LiveEmulator
    from phonebridge.testing.live_script import Say, Script, WaitForText

    async with LiveEmulator(Script([WaitForText(), Say("Hello from the far end")]), speed=math.inf) as far:
        for name, value in far.client_env().items():
            monkeypatch.setenv(name, value)
        agent_file = tmp_path / "agent.py"
        _write_agent(agent_file, "v1", 1)
        dev = DevServer(str(agent_file), port=0, live=True, poll_s=3600, record_dir=str(tmp_path / "calls"),
                        out=open(os.devnull, "w"))
        await dev.start()
        try:
            assert dev.emulator is None and dev.hub.status["model"].startswith("Gemini Live")
            async with aiohttp.ClientSession() as session:
                queue: asyncio.Queue = asyncio.Queue()
                reader = asyncio.create_task(_events(session, dev, queue))
                await _next(queue, lambda e: e["kind"] == "agent")
                leg = PageLeg(session, dev)
                await leg.dial()
                said = await _next(queue, lambda e: e["kind"] == "transcript")
                assert said["text"] == "Hello from the far end" and said["call_sid"] == leg.info["callSid"]
                assert far.conversations[0].connections[0].texts() == ["Greet the caller."]
                await leg.hang_up()
                reader.cancel()
        finally:
            await dev.stop()
