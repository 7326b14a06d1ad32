"""TwiML builders: exact XML out, and the refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from phonebridge.twilio.twiml import (
    MAX_PARAMETER_CHARS,
    MAX_TWIML_CHARS,
    connect_stream,
    dial,
    fallback_verbs,
    reject,
    say,
)

DECL = '<?xml version="1.0" encoding="UTF-8"?>'
URL = "wss://agent.example.com/twilio/media"


def test_connect_stream_with_parameters() -> None:
    assert connect_stream(URL, {"caller": "+15550100", "lang": "it"}) == (
        DECL + '<Response><Connect><Stream url="wss://agent.example.com/twilio/media">'
        '<Parameter name="caller" value="+15550100" /><Parameter name="lang" value="it" />'
        "</Stream></Connect></Response>"
    )


def test_connect_stream_without_parameters_with_status_callback() -> None:
    assert connect_stream(URL, {}, status_callback="https://agent.example.com/twilio/status") == (
        DECL + '<Response><Connect><Stream statusCallback="https://agent.example.com/twilio/status" '
        'url="wss://agent.example.com/twilio/media" /></Connect></Response>'
    )


def test_connect_stream_escapes_and_cleans_parameter_values() -> None:
    xml = connect_stream(URL, {"name": 'Rossi & "Figli" <srl>\x00\x1f'})
    assert xml == (
        DECL + '<Response><Connect><Stream url="wss://agent.example.com/twilio/media">'
        '<Parameter name="name" value="Rossi &amp; &quot;Figli&quot; &lt;srl&gt;" /></Stream></Connect></Response>'
    )
    parameter = ET.fromstring(xml).find("Connect/Stream/Parameter")
    assert parameter is not None and parameter.get("value") == 'Rossi & "Figli" <srl>'


def test_connect_stream_truncates_long_values_to_the_parameter_limit() -> None:
    assert MAX_PARAMETER_CHARS == 500
    xml = connect_stream(URL, {"note": "x" * 600})
    parameter = ET.fromstring(xml).find("Connect/Stream/Parameter")
    assert parameter is not None and parameter.get("value") == "x" * 496


def test_connect_stream_with_fallback_verbs_after_connect() -> None:
    fallback = fallback_verbs("Sorry, please hold.", "+15550100")
    assert connect_stream(URL, {"a": "1"}, fallback=fallback) == (
        DECL + '<Response><Connect><Stream url="wss://agent.example.com/twilio/media">'
        '<Parameter name="a" value="1" /></Stream></Connect>'
        '<Say>Sorry, please hold.</Say><Dial timeout="30"><Number>+15550100</Number></Dial></Response>'
    )


def test_connect_stream_fallback_from_say_and_reject() -> None:
    assert connect_stream(URL, {}, fallback=say("Goodbye.")) == (
        DECL + '<Response><Connect><Stream url="wss://agent.example.com/twilio/media" /></Connect>'
        "<Say>Goodbye.</Say></Response>"
    )
    assert connect_stream(URL, {}, fallback=reject("Goodbye.")).endswith("<Say>Goodbye.</Say><Hangup /></Response>")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream_url": "https://a.example.com/m"}, "stream url must be a wss:// URL, got 'https://a.example.com/m'"),
        ({"stream_url": "wss:///m"}, "stream url must be a wss:// URL, got 'wss:///m'"),
        (
            {"stream_url": "wss://a.example.com/m?call=1"},
            "stream url must have no query or fragment (Twilio drops them; use parameters), got 'wss://a.example.com/m?call=1'",
        ),
        ({"parameters": {"": "v"}}, "parameter name must be a non-empty string, got ''"),
        ({"parameters": {"a\x00": "v"}}, "parameter name contains characters XML cannot carry: 'a\\x00'"),
        (
            {"parameters": {"n" * 500: "v"}},
            f"parameter name of 500 characters leaves no room for its value: {'n' * 40!r}...",
        ),
        (
            {"status_callback": "wss://a.example.com/s"},
            "status callback must be an http(s) URL, got 'wss://a.example.com/s'",
        ),
        ({"fallback": "<Say>hi"}, "fallback is not TwiML: no element found: line 1, column 7"),
        ({"fallback": "<Say>hi</Say>"}, "fallback must be a <Response> document, got <Say>"),
    ],
)
def test_connect_stream_refusals(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"stream_url": URL, "parameters": {}}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        connect_stream(**args)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_connect_stream_refuses_a_non_string_value() -> None:
    with pytest.raises(TypeError, match="^parameter 'n' must be a string, got int$"):
        connect_stream(URL, {"n": 5})  # type: ignore[dict-item]


def test_connect_stream_over_the_inline_limit_is_refused() -> None:
    parameters = {f"p{i}": "v" * 400 for i in range(10)}
    with pytest.raises(ValueError, match=r"^TwiML of 4\d{3} characters exceeds Twilio's 4000-character limit$"):
        connect_stream(URL, parameters)


def test_say() -> None:
    assert say("Hello & welcome") == DECL + "<Response><Say>Hello &amp; welcome</Say></Response>"
    assert say("Ciao", voice="Polly.Carla") == DECL + '<Response><Say voice="Polly.Carla">Ciao</Say></Response>'


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("", "message must be a non-empty string, got ''"),
        ("  ", "message must be a non-empty string, got '  '"),
        ("bell\x07", "message contains characters XML cannot carry: 'bell\\x07'"),
    ],
)
def test_say_refusals(message: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        say(message)
    assert str(info.value) == error


def test_say_over_the_limit() -> None:
    budget = MAX_TWIML_CHARS - len(DECL + "<Response><Say></Say></Response>")
    assert len(say("a" * budget)) == MAX_TWIML_CHARS
    with pytest.raises(ValueError, match="^TwiML of 4001 characters exceeds Twilio's 4000-character limit$"):
        say("a" * (budget + 1))


def test_reject() -> None:
    assert reject() == DECL + "<Response><Reject /></Response>"
    assert reject("We are closed.") == DECL + "<Response><Say>We are closed.</Say><Hangup /></Response>"


def test_dial_number() -> None:
    assert dial("+15550100") == DECL + '<Response><Dial timeout="30"><Number>+15550100</Number></Dial></Response>'
    assert dial(" +1 (555) 010-0100 ", caller_id="+15550199", timeout_s=20) == (
        DECL + '<Response><Dial callerId="+15550199" timeout="20"><Number>+15550100100</Number></Dial></Response>'
    )


def test_dial_sip() -> None:
    assert dial("sip:desk@pbx.example.com;transport=tls") == (
        DECL + '<Response><Dial timeout="30"><Sip>sip:desk@pbx.example.com;transport=tls</Sip></Dial></Response>'
    )
    assert "<Sip>SIPS:desk@pbx.example.com</Sip>" in dial("SIPS:desk@pbx.example.com")


@pytest.mark.parametrize(
    ("target", "kwargs", "error"),
    [
        ("manager", {}, "dial target must be a phone number or a sip: URI, got 'manager'"),
        ("+1", {}, "dial target must be a phone number or a sip: URI, got '+1'"),
        ("+1234567890123456", {}, "dial target must be a phone number or a sip: URI, got '+1234567890123456'"),
        ("sip:", {}, "dial target must be a phone number or a sip: URI, got 'sip:'"),
        ("+15550100", {"timeout_s": 4}, "dial timeout must be 5 to 600 seconds, got 4"),
        ("+15550100", {"timeout_s": 601}, "dial timeout must be 5 to 600 seconds, got 601"),
        ("+15550100", {"caller_id": ""}, "caller_id must be a non-empty string, got ''"),
    ],
)
def test_dial_refusals(target: str, kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError) as info:
        dial(target, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == error


def test_fallback_verbs() -> None:
    assert fallback_verbs("Sorry.", None) == DECL + "<Response><Say>Sorry.</Say></Response>"
    assert fallback_verbs(None, "sip:desk@example.com") == (
        DECL + '<Response><Dial timeout="30"><Sip>sip:desk@example.com</Sip></Dial></Response>'
    )
    assert fallback_verbs(None, None) == DECL + "<Response />"
    assert connect_stream(URL, {}, fallback=fallback_verbs(None, None)) == (
        DECL + '<Response><Connect><Stream url="wss://agent.example.com/twilio/media" /></Connect></Response>'
    )


def test_the_stream_token_parameter_fits_whole() -> None:
    from phonebridge.twilio.signatures import STREAM_TOKEN_PARAMETER, StreamTokens

    token = StreamTokens("auth-token").issue("CA" + "1" * 32, "AC" + "2" * 32)
    document = connect_stream(URL, {STREAM_TOKEN_PARAMETER: token})
    assert f'<Parameter name="{STREAM_TOKEN_PARAMETER}" value="{token}" />' in document
    assert len(STREAM_TOKEN_PARAMETER) + len(token) < MAX_PARAMETER_CHARS  # never truncated
