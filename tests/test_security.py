"""Security at the app's edge: Twilio signatures on all three entry points (against URLs rebuilt from
PHONEBRIDGE_PUBLIC_URL), refusing to start without a token, no secrets or audio in logs, and the
concurrent-call limit. The real aiohttp app on loopback; signatures computed by twilio's own validator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from phonebridge.agent.definition import Agent
from phonebridge.server.app import METRICS, make_app
from phonebridge.server.config import DEFAULT_BUSY_SAY, Settings
from phonebridge.agent.context import CallContext
from phonebridge.errors import ConfigError
from phonebridge.server.logs import setup_logging
from phonebridge.testing.harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    BridgeHarness,
)
from phonebridge.testing.live_script import (
    CallTools,
    Say,
    Script,
    ToolCallSpec,
    WaitForCaller,
    WaitForText,
)
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


# -- a media stream belongs to the call our webhook answered ---------------------------------------------

TOKEN_PARAMETER = "phonebridgeStreamToken"
OTHER_ACCOUNT = "AC" + "9" * 32


def guarded(h: BridgeHarness) -> dict[str, float]:
    """phonebridge_streams_guarded_total by reason."""
    return {s.labels["reason"]: s.value for family in h.app[METRICS].registry.collect() for s in family.samples
            if s.name == "phonebridge_streams_guarded_total"}


def ending_script(tool: str) -> Script:
    return Script([WaitForText(), Say("Hello.", seconds=0.2), CallTools((ToolCallSpec(tool, {}),)),
                   Say("Bye.", seconds=0.2)])


# name -> (start fields the attacker forges, the refusal reason). The attacker dialled in himself, so
# he holds a genuine token, for his own call.
FORGERIES = {
    "victim_sid_own_token": (lambda victim: {"callSid": victim}, "bad_token"),
    "victim_sid_no_token": (lambda victim: {"callSid": victim, "customParameters": {"CallSid": victim}}, "missing_token"),
    "victim_sid_made_up_token": (
        lambda victim: {"callSid": victim, "customParameters": {TOKEN_PARAMETER: "0" * 64}}, "bad_token"),
    "other_account": (lambda victim: {"accountSid": OTHER_ACCOUNT}, "wrong_account"),
}


@pytest.mark.parametrize("tool", ["end_call", "transfer_call"])
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_start_naming_another_call_is_refused_before_any_session_and_the_victim_is_untouched(
    tool: str, forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of issue 14: a signed upgrade (Twilio signs the same URL for every call), then a `start`
    naming a victim's live callSid, and the model's end_call / transfer_call would reach that call by REST."""
    caplog.set_level(logging.WARNING, "phonebridge")
    forge, reason = FORGERIES[forgery]
    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.", transfer_to="+15550100199")
    async with BridgeHarness(agent, ending_script(tool)) as h:
        victim = h.caller()  # a live call Twilio knows (in the REST emulator), on another instance or not
        attacker = h.caller(start_overrides=forge(victim.call_sid), continuous=False)
        await attacker.dial()
        await attacker.closed()
        await h.wait_idle()
        assert [(r.method, r.path, r.form) for r in h.rest.requests] == []  # no hang-up, no redirect
        assert h.emulator.connections == []  # no Live session was ever opened
        assert (attacker.closed_by_server, attacker.close_code) == (True, 1008)
        assert h.rest.calls[victim.call_sid] == {**h.rest.calls[victim.call_sid], "status": "in-progress",
                                                 "twiml": None}
        assert h.runtime.finished[-1].outcome == "stream_refused"
        assert guarded(h) == {reason: 1.0}
    named = attacker.call_sid if forgery == "other_account" else victim.call_sid
    assert any("refused the media stream of call " + named in r.getMessage() and reason in r.getMessage()
               for r in caplog.records)


async def test_a_legitimate_call_s_agent_never_sees_the_stream_token() -> None:
    seen: list[dict[str, str]] = []
    agent = make_agent()

    @agent.tool
    def whoami(call: CallContext) -> str:
        """Who is calling."""
        seen.append(dict(call.parameters))
        return "ok"

    starts: list[dict[str, Any]] = []
    script = Script([WaitForText(), CallTools((ToolCallSpec("whoami", {}),)), Say("Hi.", seconds=0.2)])
    def observer(kind: str, data: dict[str, Any]) -> None:
        if kind == "call_start":
            starts.append(data)

    async with BridgeHarness(agent, script, observers=[observer]) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_heard(0.1)
            assert TOKEN_PARAMETER in caller.parameters  # it was in the TwiML and came back in `start`
        await h.wait_idle()
    expected = {"CallSid": caller.call_sid, "From": caller.from_number, "To": caller.to_number, "Direction": "inbound"}
    assert seen == [expected]
    assert starts[0]["parameters"] == expected
    assert guarded(h) == {}


async def test_with_a_stream_secret_tokens_are_keyed_by_it_not_by_the_auth_token() -> None:
    settings = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                        stream_secret="shared-by-every-instance", model_connect_timeout_s=5.0, reconnect_attempts=2)
    async with BridgeHarness(make_agent(), greeting(), settings=settings) as h:
        async with h.caller(continuous=False) as caller:
            await caller.wait_heard(0.2)
    message = f"phonebridge-stream-v1\0{ACCOUNT_SID}\0{caller.call_sid}".encode()
    assert caller.parameters[TOKEN_PARAMETER] == hmac.new(b"shared-by-every-instance", message,
                                                          hashlib.sha256).hexdigest()


def quick_settings(**changes: Any) -> Settings:
    return Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                    model_connect_timeout_s=5.0, reconnect_attempts=2, **changes)


async def test_a_signed_socket_that_never_starts_is_closed_after_the_start_timeout(caplog) -> None:
    caplog.set_level(logging.WARNING, "phonebridge")
    async with BridgeHarness(make_agent(), greeting(), settings=quick_settings(start_timeout_s=0.2)) as h, \
            aiohttp.ClientSession() as session:
        ws = await session.ws_connect(h.server_url + "/twilio/media",
                                      headers=headers(sign("wss://agent.example.com/twilio/media", {})))
        await ws.send_str('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
        await ws.send_str('{"event": "future-event"}')  # frames before start do not keep it open
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        await h.wait_idle()
        assert h.runtime.finished[-1].outcome == "no_start"
        assert h.emulator.connections == []
        assert guarded(h) == {"no_start": 1.0}
    assert "no start within" in caplog.text


async def test_a_started_stream_that_goes_silent_ends_the_call_and_its_live_session() -> None:
    async with BridgeHarness(make_agent(), greeting(), settings=quick_settings(media_timeout_s=0.3)) as h:
        caller = h.caller(continuous=False)  # sends start, then nothing
        await caller.dial()
        await caller.closed()
        await h.wait_idle()
        assert caller.closed_by_server
        assert h.runtime.finished[-1].outcome == "media_timeout"
        hang_up = [(r.method, r.path, r.form) for r in h.rest.requests]
        assert hang_up == [("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{caller.call_sid}.json",
                            {"Status": "completed"})]
        await h.emulator.wait_for(lambda: not any(c.open for c in h.emulator.connections))
        assert guarded(h) == {"media_timeout": 1.0}


# -- webhook bodies ------------------------------------------------------------------------------------------


async def test_an_undecodable_webhook_body_gets_403_without_a_traceback_and_refusals_are_logged_sparingly(caplog):
    caplog.set_level(logging.DEBUG)
    async with BridgeHarness(make_agent(), greeting()) as h, aiohttp.ClientSession() as session:
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        bodies = [
            (b"\xff\xfe=\xff", form_type),  # not UTF-8
            (b"a=1", {"Content-Type": "application/x-www-form-urlencoded; charset=no-such-charset"}),
            (b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}),
        ]
        for n in range(200):
            body, content_type = bodies[n % len(bodies)]
            signed = {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"} if n % 2 else {}
            path = "/twilio/voice" if n % 4 < 2 else "/twilio/status"
            async with session.post(h.server_url + path, data=body, headers={**content_type, **signed}) as r:
                assert (n, r.status) == (n, 403)
        assert h.runtime.finished == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused POST")]
    assert len(refusals) == 5  # the first five; then at most one a minute, with the count
    assert refusals[-1].endswith("(5 refused so far)")


async def test_a_webhook_signed_under_webhook_rules_with_a_configured_shared_key_is_accepted():
    settings = quick_settings(webhook_shared_keys="webhooks_sharedkey_01=shared-secret")
    rules = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_01,algorithm=HMAC_SHA256"}
    validator = RequestValidator("shared-secret")
    async with BridgeHarness(make_agent(), greeting(), settings=settings) as h, aiohttp.ClientSession() as session:
        signature = validator.compute_signature(PUBLIC_URL + "/twilio/voice", FORM, "HMAC_SHA256")
        async with session.post(h.server_url + "/twilio/voice", data=FORM,
                                headers={**rules, "X-Twilio-Signature": signature}) as r:
            assert r.status == 200 and "<Connect><Stream" in await r.text()
        other = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_02,algorithm=HMAC_SHA256"}
        async with session.post(h.server_url + "/twilio/voice", data=FORM,
                                headers={**other, "X-Twilio-Signature": signature}) as r:
            assert r.status == 403
        upgrade = validator.compute_signature("wss://agent.example.com/twilio/media", {}, "HMAC_SHA256")
        ws = await session.ws_connect(h.server_url + "/twilio/media", headers={**rules, "X-Twilio-Signature": upgrade})
        await ws.close()
        await h.wait_idle()


async def test_an_outbound_call_s_webhook_issues_its_token_and_carries_its_parameters() -> None:
    """`phonebridge call` gives Twilio the voice webhook's URL (the CallSid, which the token covers, exists only
    once the call is created); when Twilio fetches it, the TwiML carries --param values and the token."""
    from phonebridge.twilio.number_cli import outbound_url

    url = outbound_url(Settings(public_url=PUBLIC_URL), {"purpose": "reminder"})
    assert url == PUBLIC_URL + "/twilio/voice?direction=outbound&purpose=reminder"
    seen: list[dict[str, str]] = []
    agent = make_agent()

    @agent.tool
    def whoami(call: CallContext) -> str:
        """Who is calling."""
        seen.append({**call.parameters, "direction": call.direction})
        return "ok"

    script = Script([WaitForText(), CallTools((ToolCallSpec("whoami", {}),)), Say("Hi.", seconds=0.2)])
    async with BridgeHarness(agent, script) as h:
        caller = h.caller(voice_path=url[len(PUBLIC_URL):], continuous=False)
        async with caller:
            await caller.wait_heard(0.1)
        await h.wait_idle()
    assert "</Connect><Say>" in caller.twiml  # the server's own fallback follows the stream
    assert seen == [{"purpose": "reminder", "CallSid": caller.call_sid, "From": caller.from_number,
                     "To": caller.to_number, "Direction": "outbound", "direction": "outbound"}]
    assert guarded(h) == {}
