"""Security at the app's edge: Twilio signatures on all three entry points (against URLs rebuilt from
PHONEBRIDGE_PUBLIC_URL), refusing to start without a token, no secrets or audio in logs, and the
concurrent-call limit. The real aiohttp app on loopback; signatures computed by twilio's own validator."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from phonebridge.agent import Agent
from phonebridge.app import make_app
from phonebridge.config import DEFAULT_BUSY_SAY, Settings
from phonebridge.errors import ConfigError
from phonebridge.logs import setup_logging
from phonebridge.testing.harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    BridgeHarness,
)
from phonebridge.testing.live_script import Say, Script, WaitForCaller, WaitForText
from phonebridge.testing.twilio_caller import CallRejected

FORM = {"AccountSid": ACCOUNT_SID, "CallSid": "CA" + "1" * 32, "From": "+15551230001", "To": "+15557654321",
        "CallStatus": "ringing", "Direction": "inbound"}
STATUS_FORM = {"AccountSid": ACCOUNT_SID, "CallSid": "CA" + "1" * 32, "CallStatus": "completed"}
OLD_TOKEN = "the-token-before-rotation"


def make_agent() -> Agent:
    return Agent(instructions="You are a test agent.", greeting="Greet the caller.")


def greeting() -> Script:
    return Script([WaitForText(), Say("Hello there.", seconds=0.3), WaitForCaller()])


def sign(url: str, params: Mapping[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, dict(params))


# name -> (signature for the voice webhook, for the status callback, for the upgrade); None: header absent
def bad_signatures(local_url: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    voice, status, media = PUBLIC_URL + "/twilio/voice", PUBLIC_URL + "/twilio/status", "wss://agent.example.com/twilio/media"
    return {
        "missing": (None, None, None),
        "forged": ("bm90IGEgc2lnbmF0dXJl", "bm90IGEgc2lnbmF0dXJl", "bm90IGEgc2lnbmF0dXJl"),
        "stale_token": (sign(voice, FORM, OLD_TOKEN), sign(status, STATUS_FORM, OLD_TOKEN), sign(media, {}, OLD_TOKEN)),
        "other_host": (sign("https://evil.example.com/twilio/voice", FORM),
                       sign("https://evil.example.com/twilio/status", STATUS_FORM),
                       sign("wss://evil.example.com/twilio/media", {})),
        # What a server rebuilding URLs from its socket (not the public URL) would have accepted.
        "local_address": (sign(local_url + "/twilio/voice", FORM), sign(local_url + "/twilio/status", STATUS_FORM),
                          sign(local_url.replace("http", "ws") + "/twilio/media", {})),
        "other_path": (sign(PUBLIC_URL + "/twilio/status", FORM), sign(PUBLIC_URL + "/twilio/voice", STATUS_FORM),
                       sign("wss://agent.example.com/twilio/other", {})),
        "other_params": (sign(PUBLIC_URL + "/twilio/voice", {**FORM, "From": "+15550000000"}),
                         sign(PUBLIC_URL + "/twilio/status", {**STATUS_FORM, "CallStatus": "busy"}),
                         sign("wss://agent.example.com/twilio/media", {"x": "1"})),
        "https_for_the_upgrade": (None, None, sign(PUBLIC_URL + "/twilio/media", {})),
    }


def headers(signature: str | None) -> dict[str, str]:
    return {} if signature is None else {"X-Twilio-Signature": signature}


async def test_every_bad_signature_is_refused_on_all_three_entry_points_and_opens_no_session():
    async with BridgeHarness(make_agent(), greeting()) as h, aiohttp.ClientSession() as session:
        for name, (voice, status, media) in bad_signatures(h.server_url).items():
            # Spoofed forwarding headers change nothing: URLs come from the configured public URL only.
            spoof = {"X-Forwarded-Host": "evil.example.com", "X-Forwarded-Proto": "https", "Host": "evil.example.com"}
            async with session.post(h.server_url + "/twilio/voice", data=FORM, headers={**headers(voice), **spoof}) as r:
                assert (name, r.status) == (name, 403)
            async with session.post(h.server_url + "/twilio/status", data=STATUS_FORM,
                                    headers={**headers(status), **spoof}) as r:
                assert (name, r.status) == (name, 403)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(h.server_url + "/twilio/media", headers={**headers(media), **spoof})
            assert (name, refused.value.status) == (name, 403)
        assert h.emulator.connections == [] and h.runtime.finished == []


async def test_good_signatures_over_the_public_url_are_accepted_including_the_query_string():
    async with BridgeHarness(make_agent(), greeting()) as h, aiohttp.ClientSession() as session:
        voice = PUBLIC_URL + "/twilio/voice?direction=outbound"
        async with session.post(h.server_url + "/twilio/voice?direction=outbound", data=FORM,
                                headers=headers(sign(voice, FORM))) as r:
            assert r.status == 200 and "<Connect><Stream" in await r.text()
        # The same signature without the query string it covered is refused.
        async with session.post(h.server_url + "/twilio/voice", data=FORM, headers=headers(sign(voice, FORM))) as r:
            assert r.status == 403
        async with session.post(h.server_url + "/twilio/status", data=STATUS_FORM,
                                headers=headers(sign(PUBLIC_URL + "/twilio/status", STATUS_FORM))) as r:
            assert r.status == 204
        ws = await session.ws_connect(h.server_url + "/twilio/media",
                                      headers=headers(sign("wss://agent.example.com/twilio/media", {})))
        await ws.close()
        await h.wait_idle()


async def test_behind_a_proxy_with_a_path_prefix_the_public_url_is_what_is_signed():
    public = "https://proxy.example.net/voice-bot"
    settings = Settings(public_url=public, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                        model_connect_timeout_s=5.0, reconnect_attempts=2)
    async with BridgeHarness(make_agent(), greeting(), settings=settings) as h:
        caller = h.caller(public_url=public, continuous=False)
        async with caller:
            assert caller.stream_url == "wss://proxy.example.net/voice-bot/twilio/media"
            await caller.wait_heard(0.2)
        with pytest.raises(CallRejected) as rejected:
            await h.caller(public_url="https://proxy.example.net").dial()  # signed without the prefix
        assert rejected.value.status == 403


def test_without_an_auth_token_the_app_refuses_to_start_unless_validation_is_explicitly_off(caplog):
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        make_app(Settings(public_url=PUBLIC_URL), make_agent())
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        Settings.from_env({"PHONEBRIDGE_PUBLIC_URL": PUBLIC_URL}).check()
    with pytest.raises(ConfigError, match="PHONEBRIDGE_PUBLIC_URL"):
        Settings.from_env({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}).check()
    caplog.set_level(logging.WARNING)
    Settings.from_env({"PHONEBRIDGE_VALIDATE_SIGNATURES": "false"}).check()
    assert "SIGNATURE VALIDATION IS OFF" in caplog.text
    with pytest.raises(ConfigError):
        Settings.from_env({"PHONEBRIDGE_VALIDATE_SIGNATURES": "maybe"})


async def test_with_validation_explicitly_off_unsigned_requests_pass():
    settings = Settings(public_url=PUBLIC_URL, validate_signatures=False, model_connect_timeout_s=5.0,
                        reconnect_attempts=2)
    async with BridgeHarness(make_agent(), greeting(), settings=settings) as h:
        caller = h.caller(sign=False, continuous=False)
        async with caller:
            await caller.wait_heard(0.2)


# -- logs ---------------------------------------------------------------------------------------------

BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{120,}")


async def test_a_whole_call_logs_no_token_key_signature_caller_number_or_audio(caplog):
    caplog.set_level(logging.DEBUG, "phonebridge")
    caplog.set_level(logging.DEBUG, "aiohttp")
    script = Script([WaitForText(), Say("Hello there.", seconds=0.5), WaitForCaller(), Say("Goodbye.", seconds=0.3)])
    async with BridgeHarness(make_agent(), script, speed=20) as h:
        async with h.caller(from_number="+15551230001", continuous=False) as caller:
            await caller.wait_heard(0.4)
            await caller.say("I would like to order a pizza please")
            await caller.silence(0.6)
            await h.emulator.wait_for(lambda: h.emulator.conversations[0].turns_spoken == 2, timeout=20)
            signature = sign("wss://agent.example.com/twilio/media", {})
        await h.wait_idle()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "call started" in text and "call ended" in text  # the logs were captured at all
    for secret in (AUTH_TOKEN, "emulator-key", signature, "+15551230001", "5551230001", "+15557654321"):
        assert secret not in text
    assert BASE64_RUN.search(text) is None  # no payload, no handle, no audio


def test_debug_logging_keeps_the_sdk_and_websockets_quiet_so_handshake_headers_never_reach_the_log():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("websockets", "google_genai")})
    try:
        setup_logging("DEBUG", json_lines=True)
        # websockets logs every handshake header (x-goog-api-key included) at DEBUG.
        assert not logging.getLogger("websockets.client").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("google_genai.live").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def test_caller_numbers_are_logged_when_configured(caplog):
    caplog.set_level(logging.INFO, "phonebridge")
    settings = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                        log_caller_numbers=True, model_connect_timeout_s=5.0, reconnect_attempts=2)
    async with BridgeHarness(make_agent(), greeting(), settings=settings) as h:
        async with h.caller(from_number="+15551230001", continuous=False) as caller:
            await caller.wait_heard(0.2)
        await h.wait_idle()
    assert "+15551230001" in caplog.text


# -- the concurrent-call limit --------------------------------------------------------------------------


class MediaHandlersDone:
    """A middleware counting media WebSocket handlers that returned: the call is off the books by then."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def install(self, app: web.Application) -> None:
        @web.middleware
        async def watch(request: web.Request, handler: Any) -> web.StreamResponse:
            try:
                return await handler(request)
            finally:
                if request.path == "/twilio/media":
                    self.count += 1
                    self._changed.set()

        app.middlewares.append(watch)

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


async def test_above_the_call_limit_the_webhook_answers_polite_reject_twiml_and_the_upgrade_is_refused():
    settings = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                        max_calls=2, model_connect_timeout_s=5.0, reconnect_attempts=2)
    done = MediaHandlersDone()
    async with BridgeHarness(make_agent(), greeting(), settings=settings, app_setup=done.install) as h, \
            aiohttp.ClientSession() as session:
        first, second = h.caller(continuous=False), h.caller(continuous=False)
        await first.dial()
        await second.dial()
        await first.wait_heard(0.2)
        async with session.get(h.server_url + "/readyz") as r:
            assert r.status == 503 and (await r.json()) == {"ready": False, "draining": False, "model_down": False}
        with pytest.raises(CallRejected) as rejected:
            await h.caller().dial()
        assert rejected.value.status == 200
        assert rejected.value.body == (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Say>' + DEFAULT_BUSY_SAY + "</Say><Hangup /></Response>"
        )
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(h.server_url + "/twilio/media",
                                     headers=headers(sign("wss://agent.example.com/twilio/media", {})))
        assert refused.value.status == 503
        assert len(h.emulator.connections) == 2
        await first.hangup()
        await done.wait(2)  # the first call, and the refused upgrade
        async with h.caller(continuous=False) as third:  # a freed line takes the next call
            await third.wait_heard(0.2)
        await second.hangup()
        await h.wait_idle()
    assert len(h.runtime.finished) == 3
