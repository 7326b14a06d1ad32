"""TwilioRestEmulator reached by the real twilio.rest.Client (in a worker thread, as phonebridge does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from phonebridge.twilio.rest import ApiBaseHttpClient
from phonebridge.testing.twilio_rest import TwilioRestEmulator

AC = "AC" + "0" * 32


@pytest.fixture
async def rest() -> AsyncIterator[TwilioRestEmulator]:
    async with TwilioRestEmulator(auto_progress=False) as emulator:
        yield emulator


async def test_calls_create_update_and_fetch_reach_the_emulator(rest: TwilioRestEmulator) -> None:
    client = rest.client()
    call = await asyncio.to_thread(
        lambda: client.calls.create(to="+15550001111", from_="+15557654321", twiml="<Response><Say>hi</Say></Response>")
    )
    assert call.status == "queued" and call.to == "+15550001111" and call._from == "+15557654321"
    assert rest.calls[call.sid]["twiml"] == "<Response><Say>hi</Say></Response>"
    created = rest.requests[-1]
    assert (created.method, created.path, created.auth_ok) == ("POST", f"/2010-04-01/Accounts/{AC}/Calls.json", True)
    assert created.form == {"To": "+15550001111", "From": "+15557654321",
                            "Twiml": "<Response><Say>hi</Say></Response>"}  # fmt: skip

    await rest.set_call_status(call.sid, "in-progress")
    dial = "<Response><Dial>+15550100</Dial></Response>"
    updated = await asyncio.to_thread(lambda: client.calls(call.sid).update(twiml=dial))
    assert updated.status == "in-progress" and rest.calls[call.sid]["twiml"] == dial
    ended = await asyncio.to_thread(lambda: client.calls(call.sid).update(status="completed"))
    assert ended.status == "completed"
    fetched = await asyncio.to_thread(lambda: client.calls(call.sid).fetch())
    assert fetched.status == "completed"

    with pytest.raises(TwilioRestException) as refused:
        await asyncio.to_thread(lambda: client.calls(call.sid).update(twiml=dial))
    assert (refused.value.status, refused.value.code) == (400, 21220)
    with pytest.raises(TwilioRestException) as again:
        await asyncio.to_thread(lambda: client.calls(call.sid).update(status="completed"))
    assert again.value.code == 21220
    with pytest.raises(TwilioRestException) as missing:
        await asyncio.to_thread(lambda: client.calls("CA" + "9" * 32).fetch())
    assert (missing.value.status, missing.value.code) == (404, 20404)


async def test_incoming_phone_numbers_list_and_update(rest: TwilioRestEmulator) -> None:
    sid = rest.add_number("+15557654321")
    rest.add_number("+15550000000")
    client = rest.client()
    found = await asyncio.to_thread(lambda: client.incoming_phone_numbers.list(phone_number="+15557654321"))
    assert [n.sid for n in found] == [sid]
    assert rest.requests[-1].query == {"PhoneNumber": "+15557654321"}
    number = await asyncio.to_thread(
        lambda: client.incoming_phone_numbers(sid).update(
            voice_url="https://agent.example.com/twilio/voice", voice_method="POST",
            status_callback="https://agent.example.com/twilio/status")  # fmt: skip
    )
    assert number.voice_url == "https://agent.example.com/twilio/voice"
    assert rest.numbers[sid]["voice_url"] == "https://agent.example.com/twilio/voice"
    assert rest.numbers[sid]["status_callback"] == "https://agent.example.com/twilio/status"
    assert rest.numbers[sid]["phone_number"] == "+15557654321"


async def test_a_bad_token_gets_401_code_20003(rest: TwilioRestEmulator) -> None:
    client = Client(AC, "wrong-token", http_client=ApiBaseHttpClient(rest.api_base))
    with pytest.raises(TwilioRestException) as refused:
        await asyncio.to_thread(lambda: client.calls.create(to="+1555", from_="+1556", url="https://x.example/t"))
    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert rest.calls == {} and [r.auth_ok for r in rest.requests] == [False]


async def test_fail_next_fails_exactly_that_many_requests(rest: TwilioRestEmulator) -> None:
    rest.fail_next(2, status=503)
    sid = rest.add_number("+15557654321")
    client = rest.client()
    statuses = []
    for _ in range(3):
        try:
            await asyncio.to_thread(lambda: client.incoming_phone_numbers(sid).fetch())
            statuses.append(200)
        except TwilioRestException as exc:
            statuses.append(exc.status)
            assert exc.code == 20503
    assert statuses == [503, 503, 200]


async def test_auto_progress_and_signed_status_callbacks() -> None:
    received: list[tuple[dict[str, str], bool]] = []
    callback_url = "https://agent.example.com/twilio/status"

    async def status(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        ok = RequestValidator("test-auth-token").validate(callback_url, form, request.headers["X-Twilio-Signature"])
        received.append((form, ok))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/twilio/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    local = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with TwilioRestEmulator(url_map={"https://agent.example.com": local}) as rest:
            client = rest.client()
            call = await asyncio.to_thread(lambda: client.calls.create(
                to="+15550001111", from_="+15557654321", url="https://agent.example.com/twilio/voice",
                status_callback=callback_url, status_callback_event=["ringing", "answered", "completed"]))  # fmt: skip
            await rest.wait_for(lambda r: r.calls[call.sid]["status"] == "in-progress", timeout=5)
            await asyncio.to_thread(lambda: client.calls(call.sid).update(status="completed"))
            await rest.wait_for(lambda r: len(r.callbacks) == 3, timeout=5)
    finally:
        await runner.cleanup()
    assert [(form["CallStatus"], ok) for form, ok in received] == [
        ("ringing", True), ("in-progress", True), ("completed", True)]  # fmt: skip
    assert received[0][0]["CallSid"] == call.sid
