"""Graceful drain, with `phonebridge serve` as a real subprocess: SIGTERM turns readiness false, new calls get
the polite reject TwiML, active calls go on until they end or the drain timeout, and the process exits 0.

The LiveEmulator runs in this process and the server reaches it through the SDK's own environment
(GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE). Every wait is on the server's log lines or on observed traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from phonebridge.server.config import DEFAULT_BUSY_SAY
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import (
    Hear,
    Say,
    Script,
    WaitForCaller,
    WaitForText,
)
from phonebridge.testing.twilio_caller import CallRejected, TwilioCaller

pytestmark = pytest.mark.timeout(60)

AGENT_FILE = '''
from phonebridge import Agent
agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
'''
SCRIPT = Script([WaitForText(), Say("Hello, thanks for calling.", seconds=0.4), WaitForCaller(), Hear("When do you close?"),
                 Say("We close at ten.", seconds=0.4), WaitForCaller()])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`phonebridge serve --workers 1` in a subprocess; its JSON log lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port, self.url = proc, port, f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []  # the JSON log records, whole (call_sid, exc, ...)

    async def _next_line(self) -> str | None:
        assert self.proc.stderr is not None
        raw = await self.proc.stderr.readline()
        if not raw:
            return None
        line = raw.decode(errors="replace").rstrip()
        try:
            record = json.loads(line)
            line = record["msg"]
            self.records.append(record)
        except (ValueError, KeyError, TypeError):
            pass
        self.lines.append(line)
        return line

    async def wait_log(self, fragment: str, timeout: float = 20.0) -> str:
        """The first log message (from the start) containing `fragment`."""
        async with asyncio.timeout(timeout):
            for line in self.lines:
                if fragment in line:
                    return line
            while (line := await self._next_line()) is not None:
                if fragment in line:
                    return line
        raise AssertionError(f"server exited before logging {fragment!r}:\n" + "\n".join(self.lines))

    async def exit_code(self, timeout: float = 20.0) -> int:
        """Read the log to its end (the pipe must not fill), then the exit status."""
        async with asyncio.timeout(timeout):
            while await self._next_line() is not None:
                pass
            return await self.proc.wait()


@pytest.fixture
async def emulator() -> AsyncIterator[LiveEmulator]:
    async with LiveEmulator(SCRIPT, speed=4.0) as emu:
        yield emu


async def start_server(
    tmp_path: Path, emu: LiveEmulator, drain_timeout_s: float, agent_source: str = AGENT_FILE,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """`phonebridge serve` with `agent_source` as its agent file, reaching `emu` for the model."""
    agent = tmp_path / "agent.py"
    agent.write_text(agent_source)
    port = free_port()
    env = {**os.environ, **emu.client_env(), "PHONEBRIDGE_PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "PHONEBRIDGE_DRAIN_TIMEOUT_S": str(drain_timeout_s),
           "PHONEBRIDGE_LOG_LEVEL": "INFO", **(extra_env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebridge.cli", "serve", "--agent", str(agent), "--workers", "1",
        "--host", "127.0.0.1", "--port", str(port), env=env, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    server = Server(proc, port)
    try:
        await server.wait_log("phonebridge serving")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return server


def caller_for(server: Server) -> TwilioCaller:
    return TwilioCaller(server.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                        speed=float("inf"), continuous=False)


async def test_sigterm_refuses_new_calls_lets_the_active_one_talk_then_ends_it_at_the_drain_timeout(tmp_path, emulator):
    drain_timeout = 3.0
    server = await start_server(tmp_path, emulator, drain_timeout)
    caller = caller_for(server)
    try:
        await caller.dial()
        await caller.wait_heard(0.35, timeout=20)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/readyz") as r:
                assert r.status == 200
            loop = asyncio.get_running_loop()
            server.proc.send_signal(signal.SIGTERM)
            signalled = loop.time()
            await server.wait_log("draining: 1 active calls")
            async with session.get(server.url + "/readyz") as r:
                assert r.status == 503 and (await r.json()) == {"ready": False, "draining": True, "model_down": False}
            with pytest.raises(CallRejected) as rejected:
                await caller_for(server).dial()
            assert rejected.value.status == 200 and f"<Say>{DEFAULT_BUSY_SAY}</Say><Hangup />" in rejected.value.body
        # The active call goes on: the caller asks and hears the whole answer.
        await caller.say("When do you close tonight?")
        await caller.silence(0.6)
        conv = emulator.conversations[0]
        await emulator.wait_for(lambda: conv.turns_spoken == 2, timeout=20)
        await caller.wait_heard(0.75, timeout=20)
        assert caller.up
        # Then the drain timeout ends it from our side, and the process exits 0.
        await caller.closed(timeout=20)
        ended = loop.time()
        assert caller.closed_by_server
        assert ended - signalled >= drain_timeout - 0.1
        await server.wait_log("drain timeout: ending 1 calls still active")
        assert await server.exit_code() == 0
        assert len(emulator.conversations) == 1  # the refused call never reached the model
        await emulator.wait_for(lambda: not any(c.open for c in emulator.connections))
    finally:
        await caller.close()
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


async def test_when_the_last_call_ends_during_drain_the_process_exits_0_without_waiting_for_the_timeout(
    tmp_path, emulator
):
    server = await start_server(tmp_path, emulator, drain_timeout_s=600)
    caller = caller_for(server)
    try:
        await caller.dial()
        await caller.wait_heard(0.35, timeout=20)
        server.proc.send_signal(signal.SIGTERM)
        await server.wait_log("draining: 1 active calls")
        await caller.hangup()
        assert await server.exit_code(timeout=20) == 0  # well before the 600 s timeout
        assert not any("drain timeout" in line for line in server.lines)
    finally:
        await caller.close()
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


async def test_sigterm_right_after_serving_is_announced_exits_0(tmp_path, emulator):
    server = await start_server(tmp_path, emulator, drain_timeout_s=600)
    server.proc.send_signal(signal.SIGTERM)
    assert await server.exit_code(timeout=20) == 0
    assert any("phonebridge stopped" in line for line in server.lines)
