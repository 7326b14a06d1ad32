"""The stream guard and webhook refusals with `phonebridge serve` as a real subprocess: what the server logs
(no traceback, refusals logged sparingly) is what an operator sees. Waits are on log lines and traffic."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL
from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.live_script import Say, Script, WaitForCaller, WaitForText
from phonebridge.testing.twilio_caller import TwilioCaller
from phonebridge.testing.twilio_rest import TwilioRestEmulator
from tests.test_drain import Server, start_server

pytestmark = pytest.mark.timeout(60)


async def serve(tmp_path: Path, emu: LiveEmulator, rest: TwilioRestEmulator) -> Server:
    return await start_server(tmp_path, emu, 3600, extra_env={"PHONEBRIDGE_TWILIO_API_URL": rest.api_base})


async def test_served_hostile_webhooks_and_a_forged_start_are_refused_quietly(tmp_path: Path) -> None:
    async with LiveEmulator(Script([WaitForText(), Say("Hello.", seconds=0.2)])) as emu, \
            TwilioRestEmulator(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as rest:
        server = await serve(tmp_path, emu, rest)
        try:
            async with aiohttp.ClientSession() as session:
                for n in range(200):  # unsigned, undecodable: 500 and a traceback each before issue 14
                    async with session.post(server.url + "/twilio/voice", data=b"\xff\xfe=\xff",
                                            headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                        assert (n, r.status) == (n, 403)
            victim = "CA" + "7" * 32
            rest.add_inbound_call(victim, to="+15557654321", from_="+15551230001")
            attacker = TwilioCaller(server.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                                    speed=float("inf"), continuous=False, start_overrides={"callSid": victim})
            await attacker.dial()
            await attacker.closed()
            assert attacker.close_code == 1008
            await server.wait_log("refused the media stream of call " + victim)
        finally:
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code() == 0
    assert emu.connections == [] and rest.requests == []
    assert rest.calls[victim]["status"] == "in-progress"
    assert not [line for line in server.lines if "Traceback" in line or "Error handling request" in line]
    assert sum("refused POST /twilio/voice" in line for line in server.lines) == 5
    assert sum(len(line) for line in server.lines) < 16 * 1024  # was 201 KiB for 200 requests


def caller_for(server: Server, **overrides: object) -> TwilioCaller:
    return TwilioCaller(server.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                        speed=float("inf"), continuous=False, **overrides)  # type: ignore[arg-type]


async def test_a_replayed_start_with_the_live_call_s_genuine_token_is_refused_and_cannot_act_on_it(
    tmp_path: Path,
) -> None:
    """The token is stateless, so whoever captured a call's `start` could replay it, token and all. Before:
    the replay opened a second Live session for the victim's callSid, and when it went silent its media
    timeout hung the victim up through REST. One stream per callSid, once, on an instance."""
    async with LiveEmulator(Script([WaitForText(), Say("Hello.", seconds=0.2), WaitForCaller()])) as emu, \
            TwilioRestEmulator(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as rest:
        server = await serve(tmp_path, emu, rest)
        victim = caller_for(server)
        legs = [victim]
        try:
            rest.add_inbound_call(victim.call_sid, to="+15557654321", from_="+15551230001")
            await victim.dial()
            await victim.wait_heard(0.1)
            replay = {"callSid": victim.call_sid, "customParameters": dict(victim.parameters)}  # token and all
            legs += [attacker := caller_for(server, start_overrides=replay), late := caller_for(server, start_overrides=replay)]
            await attacker.dial()
            await attacker.closed()
            assert attacker.close_code == 1008
            await server.wait_log("duplicate_stream")
            assert len(emu.connections) == 1 and victim.up
            await victim.hangup()
            await server.wait_log("call ended: caller_hung_up")
            await late.dial()  # the same start after the call ended
            await late.closed()
            assert late.close_code == 1008
            await server.wait_log("replayed_stream")
        finally:
            for leg in legs:
                await leg.close()
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code() == 0
    assert len(emu.connections) == 1
    assert rest.requests == [] and rest.calls[victim.call_sid]["status"] == "in-progress"


async def test_a_flood_of_forged_starts_is_logged_sparingly_end_lines_included(tmp_path: Path) -> None:
    async with LiveEmulator(Script([WaitForText(), Say("Hello.", seconds=0.2)])) as emu, \
            TwilioRestEmulator(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as rest:
        server = await serve(tmp_path, emu, rest)
        try:
            for _ in range(30):  # each its own signed upgrade (a captured header), then a start for a made-up call
                attacker = caller_for(server, start_overrides={"callSid": "CA" + "5" * 32})
                try:
                    await attacker.dial()
                    await attacker.closed()
                finally:
                    await attacker.close()
                assert attacker.close_code == 1008
        finally:
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code() == 0
    assert emu.connections == []
    assert sum("refused the media stream" in line for line in server.lines) == 5  # the guard's own: sparse
    assert sum("stream_refused" in line for line in server.lines) <= 5  # every line about them, not 30
