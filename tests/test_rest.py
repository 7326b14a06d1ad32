"""TwilioRest against a tiny fake of Twilio's REST API (real twilio client, real HTTP over loopback)."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from phonebridge.errors import ConfigError, TwilioApiError
from phonebridge.twilio.rest import TwilioRest, dial_twiml

ACCOUNT, TOKEN = "AC" + "1" * 32, "secret-token"
PREFIX = f"/2010-04-01/Accounts/{ACCOUNT}"


@dataclass
class FakeTwilio:
    """Records requests; answers each from `script` (status, body) first, then with a plausible success."""

    requests: list[tuple[str, str, dict[str, str], bool]] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        form.update(request.query)
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        self.requests.append((request.method, request.path, form, request.headers.get("Authorization") == expected))
        if self.script:
            status, body = self.script.pop(0)
            return web.json_response(body, status=status)
        return web.json_response(self.success(request.path, form))

    def success(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        if path.endswith("/IncomingPhoneNumbers.json"):
            number = {"sid": "PN1", "phone_number": form.get("PhoneNumber"), "voice_url": "https://old"}
            return {"incoming_phone_numbers": [number] if form.get("PhoneNumber") == "+15550100" else [],
                    "next_page_uri": None, "page": 0, "page_size": 1}
        if "/IncomingPhoneNumbers/" in path:
            return {"sid": "PN1", "phone_number": "+15550100", "voice_url": form["VoiceUrl"],
                    "voice_method": form["VoiceMethod"], "status_callback": form.get("StatusCallback")}
        if path.endswith("/Calls.json"):
            return {"sid": "CA" + "9" * 32, "status": "queued", "to": form["To"], "from": form["From"]}
        return {"sid": path.rsplit("/", 1)[-1][:-5], "status": form.get("Status", "in-progress"),
                "from": "+15550001", "to": "+15550002", "direction": "inbound", "duration": None}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", twilio.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    twilio.base = f"http://127.0.0.1:{port}"
    yield twilio
    await runner.cleanup()


def rest(fake: FakeTwilio, **kwargs: Any) -> TwilioRest:
    return TwilioRest(ACCOUNT, TOKEN, api_base=fake.base, backoff_s=0.0, **kwargs)


def not_in_progress() -> tuple[int, dict[str, Any]]:
    return 400, {"code": 21220, "message": "Call is not in-progress. Cannot redirect.", "status": 400}


async def test_hang_up_posts_status_completed_off_the_loop_thread(fake: FakeTwilio) -> None:
    # The fake serves on this test's event loop: a request made on the loop thread would deadlock.
    assert await rest(fake).hang_up("CA123") is True
    assert fake.requests == [("POST", f"{PREFIX}/Calls/CA123.json", {"Status": "completed"}, True)]


async def test_transfer_posts_dial_twiml(fake: FakeTwilio) -> None:
    client = rest(fake)
    assert await client.transfer("CA1", "+1 555 010 0199", caller_id="+15550100") is True
    assert await client.transfer("CA1", "sip:desk@pbx.example.com") is True
    assert [r[2] for r in fake.requests] == [
        {"Twiml": '<?xml version="1.0" encoding="UTF-8"?><Response><Dial callerId="+15550100">'
                  "<Number>+15550100199</Number></Dial></Response>"},
        {"Twiml": '<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Sip>sip:desk@pbx.example.com</Sip>'
                  "</Dial></Response>"},
    ]


async def test_call_already_completed_counts_as_done(fake: FakeTwilio) -> None:
    fake.script = [not_in_progress(), not_in_progress()]
    client = rest(fake)
    assert await client.hang_up("CA1") is False
    assert await client.transfer("CA1", "+15550100199") is False
    assert len(fake.requests) == 2  # not retried


async def test_transient_failures_are_retried_then_succeed(fake: FakeTwilio) -> None:
    fake.script = [(503, {"code": 20503, "message": "unavailable", "status": 503}),
                   (429, {"code": 20429, "message": "Too Many Requests", "status": 429})]
    assert await rest(fake, retries=2).hang_up("CA1") is True
    assert len(fake.requests) == 3


async def test_retries_exhausted_raise_twilio_api_error(fake: FakeTwilio) -> None:
    fake.script = [(500, {"code": 20500, "message": "boom", "status": 500})] * 3
    with pytest.raises(TwilioApiError, match="Twilio refused to hang up: HTTP 500, code 20500: Unable to update record: boom") as info:
        await rest(fake, retries=2).hang_up("CA1")
    assert (info.value.status, info.value.code, len(fake.requests)) == (500, 20500, 3)


async def test_client_errors_are_not_retried(fake: FakeTwilio) -> None:
    fake.script = [(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})]
    with pytest.raises(TwilioApiError, match="Twilio refused to hang up: HTTP 404, code 20404") as info:
        await rest(fake).hang_up("CAmissing")
    assert info.value.code == 20404 and len(fake.requests) == 1


async def test_create_call_does_not_retry_server_errors(fake: FakeTwilio) -> None:
    fake.script = [(502, {"code": 20502, "message": "bad gateway", "status": 502})]
    with pytest.raises(TwilioApiError):
        await rest(fake).create_call("+15550002", "+15550001", url="https://agent.example.com/twilio/voice")
    assert len(fake.requests) == 1
    sid = await rest(fake).create_call("+15550002", "+15550001", twiml="<Response/>", status_callback="https://s")
    assert sid == "CA" + "9" * 32
    assert fake.requests[-1][2] == {"To": "+15550002", "From": "+15550001", "Twiml": "<Response/>",
                                    "StatusCallback": "https://s", "StatusCallbackMethod": "POST"}
    with pytest.raises(ValueError, match="exactly one of twiml or url"):
        await rest(fake).create_call("+1", "+2")


async def test_fetch_find_and_configure(fake: FakeTwilio) -> None:
    client = rest(fake)
    call = await client.fetch_call("CA7")
    assert (call["sid"], call["status"], call["from"], call["to"]) == ("CA7", "in-progress", "+15550001", "+15550002")
    assert await client.find_number("+15559999") is None
    number = await client.find_number("+15550100")
    assert number is not None and number["sid"] == "PN1"
    configured = await client.configure_number("PN1", "https://agent.example.com/twilio/voice", "https://s")
    assert configured["voice_url"] == "https://agent.example.com/twilio/voice"
    assert fake.requests[-1] == (
        "POST", f"{PREFIX}/IncomingPhoneNumbers/PN1.json",
        {"VoiceUrl": "https://agent.example.com/twilio/voice", "VoiceMethod": "POST",
         "StatusCallback": "https://s", "StatusCallbackMethod": "POST"}, True,
    )


async def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TwilioRest(ACCOUNT, TOKEN, api_base=f"http://127.0.0.1:{port}", retries=1, backoff_s=0.0)
    with pytest.raises(TwilioApiError, match="could not be reached to hang up") as info:
        await client.hang_up("CA1")
    assert info.value.status is None


def test_config_and_twiml_validation() -> None:
    with pytest.raises(ConfigError):
        TwilioRest("", TOKEN)
    with pytest.raises(ValueError, match="transfer target"):
        dial_twiml("front desk")
