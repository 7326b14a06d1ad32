"""`phonebridge call NUMBER` and `phonebridge twilio configure --number NUMBER`: Twilio from the command line.

Both read the same environment as the server (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PHONEBRIDGE_PUBLIC_URL,
PHONEBRIDGE_TWILIO_API_URL) and talk to Twilio through phonebridge.twilio.rest.TwilioRest, so what works here
works for the server's hang-ups and transfers too.

`call` places the call with its `Url` on this bridge's voice webhook (`/twilio/voice?direction=outbound&...`),
not with inline TwiML: the stream must carry a token bound to the call's CallSid, which Twilio assigns only
when the call is created, so it is the webhook, answering with that CallSid in hand, that writes the TwiML.
That costs one Twilio fetch when the call is answered. The call's context rides in the URL's query
(Direction=outbound, plus `--param NAME=VALUE`), which Twilio signs with the rest of the URL; the webhook
turns it into `<Parameter>`s beside From and To, and adds the server's own fallback verbs
(PHONEBRIDGE_FALLBACK_SAY/DIAL), so a call the bridge cannot serve still hears the apology.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from typing import Any, TextIO
from urllib.parse import urlencode

from twilio.base.exceptions import TwilioException

from phonebridge.server.config import Settings
from phonebridge.errors import ConfigError, TwilioApiError
from phonebridge.twilio.rest import TwilioRest
from phonebridge.twilio.signatures import SignatureChecker

VOICE_PATH, MEDIA_PATH, STATUS_PATH = "/twilio/voice", "/twilio/media", "/twilio/status"
ENDED = frozenset({"completed", "canceled", "failed", "busy", "no-answer"})
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SHOWN = ("voice_url", "voice_method", "status_callback")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `call` and `twilio configure` on the CLI's subparsers."""
    call = sub.add_parser("call", help="place an outbound call that connects to this bridge")
    call.add_argument("number", help="the number to call, E.164 (+15550100)")
    call.add_argument("--from", dest="from_", default=None, metavar="NUMBER",
                      help="caller id: a number on your Twilio account (default: PHONEBRIDGE_FROM_NUMBER)")
    call.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="extra <Parameter> for the agent's CallContext.parameters (repeatable)")
    call.add_argument("--no-follow", dest="follow", action="store_false",
                      help="print the call SID and return instead of following the call's status")
    call.add_argument("--agent", default=None, metavar="A",
                      help="the agent the bridge runs (file or module): checked before dialling, so a broken agent "
                           "never rings a phone; the running server answers with its own agent")
    call.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS", help="seconds between status checks")
    call.set_defaults(run=_run_call)

    twilio = sub.add_parser("twilio", help="Twilio account set-up")
    twilio_sub = twilio.add_subparsers(dest="twilio_command", required=True)
    configure = twilio_sub.add_parser(
        "configure", help="point a number's voice webhook and status callback at PHONEBRIDGE_PUBLIC_URL"
    )
    configure.add_argument("--number", required=True, help="a number on your Twilio account, E.164")
    configure.set_defaults(run=_run_configure)


# -- pure parts --------------------------------------------------------------------------------------------

def e164(number: str, what: str = "number") -> str:
    """`number` without spaces, dashes, dots or parentheses, if it is E.164; ConfigError otherwise."""
    cleaned = re.sub(r"[\s\-.()]", "", number)
    if not _E164.fullmatch(cleaned):
        raise ConfigError(f"{what} {number!r} is not an E.164 phone number like +15550100")
    return cleaned


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {pair!r}: use NAME=VALUE")
        params[name] = value
    return params


def _public(settings: Settings) -> SignatureChecker:
    """The URL builder for PHONEBRIDGE_PUBLIC_URL (the checker's URL rules, whatever the token)."""
    if not settings.public_url:
        raise ConfigError("PHONEBRIDGE_PUBLIC_URL is not set: Twilio needs the https URL where this bridge runs")
    return SignatureChecker(settings.twilio_auth_token or "-", settings.public_url)


def outbound_url(settings: Settings, extra: dict[str, str]) -> str:
    """The voice webhook URL Twilio fetches when the call is answered; `extra` become the stream's parameters."""
    query = urlencode({"direction": "outbound", **{k: v for k, v in extra.items() if k != "direction"}})
    return _public(settings).webhook_url(VOICE_PATH, query)


# -- against Twilio -----------------------------------------------------------------------------------------

def make_rest(settings: Settings, **kwargs: Any) -> TwilioRest:
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise ConfigError("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (from the Twilio console)")
    return TwilioRest(
        settings.twilio_account_sid, settings.twilio_auth_token, api_base=settings.twilio_api_url, **kwargs
    )


async def place_call(
    rest: TwilioRest, settings: Settings, to: str, from_: str, *, extra: dict[str, str] | None = None,
    follow: bool = True, poll_s: float = 1.0, out: TextIO | None = None,
) -> int:
    """Place the call, print its SID, then (with `follow`) print each status until it ends.

    Returns 0 when the call completed (or was not followed), 1 when it ended unanswered or failed. Cancelled
    while following (Ctrl-C), it hangs up the call it placed before the cancellation goes on: a call
    nobody follows any more must not ring on, or stay up, on the user's account.
    """
    out = out or sys.stdout
    url = outbound_url(settings, extra or {})
    status_callback = _public(settings).webhook_url(STATUS_PATH)
    # Shielded: a Ctrl-C while the create is in flight must still learn the SID, to hang that call up.
    creating = asyncio.ensure_future(_credentials(rest.create_call(to, from_, url=url, status_callback=status_callback)))
    try:
        sid = await asyncio.shield(creating)
    except asyncio.CancelledError:
        await _hang_up_placed(rest, await creating, out)
        raise
    print(sid, file=out, flush=True)
    if not follow:
        return 0
    try:
        return await _follow(rest, sid, poll_s, out)
    except asyncio.CancelledError:
        await _hang_up_placed(rest, sid, out)
        raise


async def _hang_up_placed(rest: TwilioRest, sid: str, out: TextIO) -> None:
    """Status=completed: ends an answered call, cancels one still queued or ringing."""
    ended = await rest.hang_up(sid)
    print(f"{sid} hung up" if ended else f"{sid} had already ended", file=out, flush=True)


async def _follow(rest: TwilioRest, sid: str, poll_s: float, out: TextIO) -> int:
    last = ""
    while True:
        status = str((await rest.fetch_call(sid))["status"])
        if status != last:
            print(f"{sid} {status}", file=out, flush=True)
            last = status
        if status in ENDED:
            return 0 if status == "completed" else 1
        await asyncio.sleep(poll_s)  # Twilio has no push channel for a CLI: poll, gently


async def configure(rest: TwilioRest, settings: Settings, number: str, *, out: TextIO | None = None) -> int:
    """Point `number`'s voice webhook (POST) and status callback at this bridge; a no-op when already so."""
    out = out or sys.stdout
    public = _public(settings)
    wanted = {"voice_url": public.webhook_url(VOICE_PATH), "voice_method": "POST",
              "status_callback": public.webhook_url(STATUS_PATH)}  # fmt: skip
    found = await _credentials(rest.find_number(number))
    if found is None:
        raise ConfigError(f"{number} is not a phone number on Twilio account {settings.twilio_account_sid}")
    print(f"{number} ({found['sid']}) before:", file=out)
    _show(found, out)
    if all(found.get(key) == value for key, value in wanted.items()):
        print("already configured: nothing to change", file=out)
        return 0
    updated = await _credentials(rest.configure_number(found["sid"], wanted["voice_url"], wanted["status_callback"]))
    print("after:", file=out)
    _show(updated, out)
    return 0


def _show(number: dict[str, Any], out: TextIO) -> None:
    for key in _SHOWN:
        print(f"  {key}: {number.get(key) or '-'}", file=out)


async def _credentials(awaitable: Any) -> Any:
    """Await a REST call, turning Twilio's 401 into the error the user can act on."""
    try:
        return await awaitable
    except TwilioApiError as exc:
        if exc.status == 401:
            raise _bad_credentials() from exc
        raise
    except TwilioException as exc:
        # twilio's list() pages raise the bare TwilioException("Unable to fetch page", response) on any
        # non-200, which TwilioRest does not translate (yet): read the status off the response.
        response = exc.args[1] if len(exc.args) > 1 else None
        if getattr(response, "status_code", None) == 401:
            raise _bad_credentials() from exc
        raise TwilioApiError(f"Twilio refused the request: {exc}", status=getattr(response, "status_code", None)) from exc


def _bad_credentials() -> ConfigError:
    return ConfigError("Twilio rejected the credentials (HTTP 401): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")


# -- argparse entry points ------------------------------------------------------------------------------------

def _run_call(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    to = e164(args.number)
    from_ = args.from_ or _env_from()
    if args.agent:
        from phonebridge.agent.definition import load_agent

        load_agent(args.agent)  # a ConfigError here stops before any request is made
    return asyncio.run(place_call(
        make_rest(settings), settings, to, e164(from_, "--from"), extra=parse_params(args.param),
        follow=args.follow, poll_s=args.poll_interval,
    ))


def _env_from() -> str:
    value = os.environ.get("PHONEBRIDGE_FROM_NUMBER")
    if not value:
        raise ConfigError("give --from NUMBER (a number on your Twilio account) or set PHONEBRIDGE_FROM_NUMBER")
    return value


def _run_configure(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    return asyncio.run(configure(make_rest(settings), settings, e164(args.number)))
