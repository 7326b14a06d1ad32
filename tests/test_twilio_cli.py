"""`phonebridge call` and `phonebridge twilio configure`, run through cli.main against TwilioRestEmulator.

main() runs in a worker thread (it is a blocking command); the emulator serves in the test's loop, and the
test moves the call through its statuses only after seeing the CLI poll, so every line printed is known.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from phonebridge.cli import main
from phonebridge.errors import ConfigError
from phonebridge.testing.twilio_rest import TwilioRestEmulator
from phonebridge.twilio.number_cli import e164, parse_params

ACCOUNT = "AC" + "ab" * 16
TOKEN = "secret-token"
PUBLIC = "https://agent.example.com"
ACCOUNT_PATH = f"/2010-04-01/Accounts/{ACCOUNT}"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """cli.main configures the root logger; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
async def emulator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TwilioRestEmulator]:
    # Status callbacks go to a closed local port: Twilio's side of them is not under test here.
    async with TwilioRestEmulator(
        account_sid=ACCOUNT, auth_token=TOKEN, auto_progress=False, url_map={PUBLIC: "http://127.0.0.1:9"}
    ) as emu:
        for name, value in {
            "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "PHONEBRIDGE_PUBLIC_URL": PUBLIC,
            "PHONEBRIDGE_TWILIO_API_URL": emu.api_base, "PHONEBRIDGE_FALLBACK_SAY": "Sorry, try later.",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("PHONEBRIDGE_FALLBACK_DIAL", raising=False)
        monkeypatch.delenv("PHONEBRIDGE_FROM_NUMBER", raising=False)
        yield emu


def run_cli(*argv: str) -> asyncio.Task[int]:
    return asyncio.create_task(asyncio.to_thread(main, list(argv)))


def fetches(emu: TwilioRestEmulator) -> int:
    return sum(r.method == "GET" and "/Calls/" in r.path for r in emu.requests)


async def test_call_places_a_call_connected_to_the_bridge_and_follows_it(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    task = run_cli("call", "+1 (555) 010-0199", "--from", "+15550100", "--param", "purpose=reminder",
                   "--poll-interval", "0.001")
    for n, status in enumerate(("ringing", "in-progress", "completed"), start=1):
        await emulator.wait_for(lambda e, n=n: fetches(e) >= n)
        (sid,) = emulator.calls
        await emulator.set_call_status(sid, status)
    assert await task == 0

    create = emulator.requests[0]
    assert (create.method, create.path, create.auth_ok) == ("POST", f"{ACCOUNT_PATH}/Calls.json", True)
    assert create.form["To"] == "+15550100199"
    assert create.form["From"] == "+15550100"
    assert create.form["StatusCallback"] == f"{PUBLIC}/twilio/status"
    assert create.form["StatusCallbackMethod"] == "POST"
    # Twilio fetches the bridge's own webhook when the call is answered: only it can issue the stream token,
    # which is bound to the CallSid Twilio assigns at create (tests/test_security.py follows that fetch).
    assert "Twiml" not in create.form
    assert create.form["Url"] == f"{PUBLIC}/twilio/voice?direction=outbound&purpose=reminder"
    assert all(r.auth_ok and r.path == f"{ACCOUNT_PATH}/Calls/{sid}.json" for r in emulator.requests[1:])
    assert capsys.readouterr().out == (
        f"{sid}\n{sid} queued\n{sid} ringing\n{sid} in-progress\n{sid} completed\n"
    )


async def test_a_call_nobody_answers_exits_1(emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    emulator.add_number("+15550100")
    task = run_cli("call", "+15550199", "--from", "+15550100", "--poll-interval", "0.001")
    await emulator.wait_for(lambda e: fetches(e) >= 1)
    (sid,) = emulator.calls
    await emulator.set_call_status(sid, "busy")
    assert await task == 1
    assert capsys.readouterr().out == f"{sid}\n{sid} queued\n{sid} busy\n"


async def test_no_follow_prints_the_sid_only(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHONEBRIDGE_FROM_NUMBER", "+15550100")
    assert await run_cli("call", "+15550199", "--no-follow") == 0
    (sid,) = emulator.calls
    assert capsys.readouterr().out == f"{sid}\n"
    assert [(r.method, r.form.get("From")) for r in emulator.requests] == [("POST", "+15550100")]


async def test_call_without_a_caller_id_or_public_url_is_refused_before_any_request(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await run_cli("call", "+15550199") == 2
    assert "--from NUMBER" in capsys.readouterr().err
    monkeypatch.delenv("PHONEBRIDGE_PUBLIC_URL")
    assert await run_cli("call", "+15550199", "--from", "+15550100") == 2
    assert "PHONEBRIDGE_PUBLIC_URL is not set" in capsys.readouterr().err
    assert emulator.requests == []


async def test_call_with_a_broken_agent_is_refused_before_any_request(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "agent.py"
    broken.write_text("agent = 'not an Agent'\n")
    assert await run_cli("call", "+15550199", "--from", "+15550100", "--agent", str(broken)) == 2
    assert "has no Agent named 'agent'" in capsys.readouterr().err
    assert emulator.requests == []


async def test_configure_points_the_number_at_the_bridge_and_is_idempotent(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    pn = emulator.add_number("+15550100", voice_url="https://old.example.com/voice")
    assert await run_cli("twilio", "configure", "--number", "+1 555-0100") == 0
    assert capsys.readouterr().out == (
        f"+15550100 ({pn}) before:\n"
        "  voice_url: https://old.example.com/voice\n  voice_method: POST\n  status_callback: -\n"
        "after:\n"
        f"  voice_url: {PUBLIC}/twilio/voice\n  voice_method: POST\n  status_callback: {PUBLIC}/twilio/status\n"
    )
    find, update = emulator.requests
    assert (find.method, find.path, find.query, find.auth_ok) == (
        "GET", f"{ACCOUNT_PATH}/IncomingPhoneNumbers.json", {"PhoneNumber": "+15550100", "PageSize": "1"}, True,
    )
    assert (update.method, update.path, update.auth_ok) == ("POST", f"{ACCOUNT_PATH}/IncomingPhoneNumbers/{pn}.json", True)
    assert update.form == {
        "VoiceUrl": f"{PUBLIC}/twilio/voice", "VoiceMethod": "POST",
        "StatusCallback": f"{PUBLIC}/twilio/status", "StatusCallbackMethod": "POST",
    }

    assert await run_cli("twilio", "configure", "--number", "+15550100") == 0
    assert capsys.readouterr().out.endswith("already configured: nothing to change\n")
    assert [r.method for r in emulator.requests] == ["GET", "POST", "GET"]


async def test_configure_an_unknown_number_says_so(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.add_number("+15550100")
    assert await run_cli("twilio", "configure", "--number", "+15550111") == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"phonebridge: +15550111 is not a phone number on Twilio account {ACCOUNT}"
    assert [r.method for r in emulator.requests] == ["GET"]


async def test_bad_credentials_are_named(
    emulator: TwilioRestEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong")
    assert await run_cli("twilio", "configure", "--number", "+15550100") == 2
    assert "Twilio rejected the credentials (HTTP 401)" in capsys.readouterr().err
    assert [r.auth_ok for r in emulator.requests] == [False]
    assert await run_cli("call", "+15550199", "--from", "+15550100") == 2
    assert "Twilio rejected the credentials (HTTP 401)" in capsys.readouterr().err
    assert emulator.calls == {}


def test_e164_and_params() -> None:
    assert e164(" +44 20 7946.0000 ") == "+442079460000"
    for bad in ("5550100", "+0123", "+1555abc", "+1234567890123456"):
        with pytest.raises(ConfigError, match="E.164"):
            e164(bad)
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_params(["novalue"])


@pytest.mark.parametrize(("status", "ended_as"), [("in-progress", "completed"), ("ringing", "canceled")])
async def test_ctrl_c_hangs_up_the_call_it_placed_and_exits_cleanly(
    emulator: TwilioRestEmulator, status: str, ended_as: str
) -> None:
    """A subprocess, as a user runs it: SIGINT while following sends Status=completed for its call."""
    import os
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebridge.cli", "call", "+15550199", "--from", "+15550100", "--poll-interval", "0.02",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT then prints every thread's stack
    )
    try:
        await emulator.wait_for(lambda e: fetches(e) >= 1, timeout=30)
        (sid,) = emulator.calls
        await emulator.set_call_status(sid, status)
        seen = fetches(emulator)
        await emulator.wait_for(lambda e, seen=seen: fetches(e) > seen)  # it saw the new status
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:  # once seen in a loaded full run: the stacks say where it waited
            proc.send_signal(signal.SIGABRT)
            await proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await proc.stdout.read(), await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, (out, err)
    assert b"Traceback" not in err, err.decode()
    hang_ups = [r for r in emulator.requests if r.method == "POST" and r.path == f"{ACCOUNT_PATH}/Calls/{sid}.json"]
    assert [r.form for r in hang_ups] == [{"Status": "completed"}] and all(r.auth_ok for r in hang_ups)
    assert emulator.calls[sid]["status"] == ended_as
    assert out.decode().splitlines()[-1] == f"{sid} hung up"
