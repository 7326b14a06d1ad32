"""Configuration checked before serving, all at once: Settings (pure, from an env mapping), the agent file,
the listening port and the Gemini credentials; and a call that still cannot build its model client falls back."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
from aiohttp import web

from phonebridge import Agent
from phonebridge.agent.definition import load_agent
from phonebridge.server.app import RUNTIME, make_app
from phonebridge.server.config import DEFAULT_FALLBACK_SAY, ENV_VARS, Settings, config_error
from phonebridge.errors import ConfigError
from phonebridge.server.preflight import listen_problems, model_client_problems
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL
from phonebridge.testing.twilio_caller import TwilioCaller

SIGNED = {"PHONEBRIDGE_PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
SDK_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE",
           "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL",
           "GOOGLE_GENAI_API_VERSION", "GOOGLE_APPLICATION_CREDENTIALS")


# -- Settings: pure ----------------------------------------------------------------------------------------

def test_every_unreadable_variable_is_reported_and_keeps_its_default():
    settings, problems = Settings.parse({
        **SIGNED, "PHONEBRIDGE_MAX_CALLS": "lots", "PHONEBRIDGE_DRAIN_TIMEOUT_S": "soon",
        "PHONEBRIDGE_HEAP_TRIM_S": "nan", "PHONEBRIDGE_VALIDATE_SIGNATURES": "maybe",
    })
    assert problems == [
        "PHONEBRIDGE_VALIDATE_SIGNATURES='maybe': use true or false",
        "PHONEBRIDGE_MAX_CALLS='lots': not a whole number",
        "PHONEBRIDGE_DRAIN_TIMEOUT_S='soon': not a number",
        "PHONEBRIDGE_HEAP_TRIM_S='nan': not a finite number",
    ]
    assert (settings.max_calls, settings.drain_timeout_s, settings.heap_trim_s) == (200, 3600.0, 60.0)


@pytest.mark.parametrize("raw", ["1e3", "1_000", "٣", "9" * 5000, "12.5", " ", "0x10"])
def test_a_count_is_plain_decimal_digits(raw):
    _, problems = Settings.parse({**SIGNED, "PHONEBRIDGE_MAX_CALLS": raw})
    shown = repr(raw) if len(raw) < 50 else repr(raw)[:60] + f"... ({len(raw) + 2} characters)"
    assert problems == [f"PHONEBRIDGE_MAX_CALLS={shown}: not a whole number"]


def test_empty_numbers_mean_the_default_and_an_empty_fallback_say_means_silence():
    settings = Settings.from_env({**SIGNED, "PHONEBRIDGE_MAX_CALLS": "", "PHONEBRIDGE_FALLBACK_SAY": ""})
    assert settings.max_calls == 200 and settings.fallback_say is None
    assert Settings.from_env(SIGNED).fallback_say == DEFAULT_FALLBACK_SAY


@pytest.mark.parametrize(("name", "value", "why"), [
    ("PHONEBRIDGE_FALLBACK_DIAL", "call Bob", "use a phone number (+15550100) or a sip: URI"),
    ("PHONEBRIDGE_FALLBACK_SAY", "Sorry\x07", "use printable text: control characters cannot be spoken or sent in TwiML"),
    ("PHONEBRIDGE_MAX_CALLS", "0", "must be at least 1"),
    ("PHONEBRIDGE_DRAIN_TIMEOUT_S", "-1", "must be at least 0"),
    ("PHONEBRIDGE_HEAP_TRIM_S", "-5", "must be at least 0"),
    ("PHONEBRIDGE_PUBLIC_URL", "agent.example.com", "not an absolute https URL"),
])
def test_values_every_webhook_would_fail_on_are_refused_at_start(name, value, why):
    settings = Settings.from_env({**SIGNED, name: value})
    shown = getattr(settings, next(v.field for v in ENV_VARS if v.name == name))
    assert settings.problems() == [f"{name}={shown!r}: {why}"]


@pytest.mark.parametrize("target", ["+15550100", "(555) 010-0199", "sip:desk@example.com", "sips:desk@example.com"])
def test_phone_numbers_and_sip_uris_are_fine_dial_targets(target):
    assert Settings.from_env({**SIGNED, "PHONEBRIDGE_FALLBACK_DIAL": target}).problems() == []


def test_settings_built_in_code_are_checked_the_same_way():
    with pytest.raises(ConfigError, match="fallback_dial|PHONEBRIDGE_FALLBACK_DIAL"):
        make_app(Settings(public_url=PUBLIC_URL, twilio_auth_token=AUTH_TOKEN, fallback_dial="call Bob"),
                 Agent(instructions="x"))
    assert Settings(busy_say="\x00").problems()[0].startswith("busy_say='\\x00': use printable text")


def test_load_reports_every_problem_in_one_error():
    with pytest.raises(ConfigError) as raised:
        Settings.load({"PHONEBRIDGE_MAX_CALLS": "x", "PHONEBRIDGE_FALLBACK_DIAL": "call Bob"})
    lines = str(raised.value).splitlines()
    assert lines[0] == "4 configuration problems:"
    assert len(lines) == 5 and all(line.startswith("  - ") for line in lines[1:])
    assert "PHONEBRIDGE_MAX_CALLS='x'" in lines[1] and "PHONEBRIDGE_FALLBACK_DIAL='call Bob'" in lines[2]
    assert "TWILIO_AUTH_TOKEN is not set" in lines[3] and "PHONEBRIDGE_PUBLIC_URL is not set" in lines[4]


def test_one_problem_is_one_line():
    assert str(config_error(["a thing is wrong"])) == "a thing is wrong"


def test_every_variable_sets_a_real_field():
    names = {f.name for f in dataclasses.fields(Settings)}
    assert all(v.field in names for v in ENV_VARS)
    assert len({v.name for v in ENV_VARS}) == len(ENV_VARS)


# -- the agent file ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "message"), [
    ("from phonebridge import Agent\nagent = Agent(instructions='x'\n", "does not compile: {path}:2: '(' was never closed"),
    ("import no_such_module_here\n", "cannot import agent '{path}': No module named 'no_such_module_here'"),
    ("x = 1\nraise RuntimeError('no database')\n", "failed while loading: {path}:2: RuntimeError: no database"),
    ("helper = 1\n", "has no Agent named 'agent' (it has nothing by that name)"),
    ("agent = 'me'\n", "has no Agent named 'agent' (it has a str)"),
    ("from phonebridge import Agent\nagent = Agent(instructions=' ')\n", "Agent.instructions is empty"),
])
def test_an_agent_file_that_cannot_load_is_one_clear_config_error(tmp_path, source, message):
    path = tmp_path / "agent.py"
    path.write_text(source)
    with pytest.raises(ConfigError) as raised:
        load_agent(str(path))
    assert message.format(path=path) in str(raised.value)


def test_a_missing_agent_file_or_module():
    with pytest.raises(ConfigError, match="agent file 'nowhere/agent.py' does not exist"):
        load_agent("nowhere/agent.py")
    with pytest.raises(ConfigError, match="cannot import agent 'no_such_pkg.agent'"):
        load_agent("no_such_pkg.agent")


# -- the port ----------------------------------------------------------------------------------------------

def test_a_port_in_use_is_a_problem_and_a_free_one_is_not():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert listen_problems("127.0.0.1", port) == [
            f"cannot listen on 127.0.0.1:{port}: the port is already in use (another server is listening there)"]
    assert listen_problems("127.0.0.1", port) == []
    assert listen_problems("no-such-host.invalid", 8080)[0].startswith("cannot listen on no-such-host.invalid:8080: ")


# -- Gemini credentials: the SDK's own rules, from the environment ------------------------------------------

@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application default credentials file either
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    return monkeypatch


def test_without_a_key_there_are_no_credentials(sdk_env):
    endpoint, problems = model_client_problems()
    assert endpoint == "" and len(problems) == 1
    assert problems[0].startswith("no credentials the Gemini SDK can use: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
    sdk_env.setenv("GEMINI_API_KEY", "   ")
    assert "blank" in model_client_problems()[1][0]


def test_with_a_key_the_endpoint_and_api_version_are_described(sdk_env):
    sdk_env.setenv("GEMINI_API_KEY", "a-key")
    endpoint, problems = model_client_problems()
    assert problems == [] and "a-key" not in endpoint
    assert endpoint.startswith("wss://generativelanguage.googleapis.com") and "(Gemini API, API key)" in endpoint
    sdk_env.setenv("GOOGLE_GENAI_API_VERSION", "v1alpha")
    sdk_env.setenv("GOOGLE_GEMINI_BASE_URL", "https://proxy.example.net")
    assert model_client_problems() == ("wss://proxy.example.net, API version v1alpha (Gemini API, API key)", [])


def test_vertex_ai_with_application_default_credentials(sdk_env, tmp_path):
    adc = tmp_path / "adc.json"  # gcloud's user credentials: loaded from the file, nothing sent anywhere
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "s", "refresh_token": "r"}))
    sdk_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    sdk_env.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    sdk_env.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    sdk_env.setenv("GOOGLE_CLOUD_LOCATION", "us-central1")
    endpoint, problems = model_client_problems()
    assert problems == []
    assert endpoint.startswith("wss://us-central1-aiplatform.googleapis.com/, API version v1")  # the SDK's default
    assert endpoint.endswith("(Vertex AI, project my-project, location us-central1)")
    sdk_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert "Vertex AI needs application default credentials" in model_client_problems()[1][0]


# -- at call time: no client, the fallback ------------------------------------------------------------------

async def test_a_call_that_cannot_build_its_model_client_gets_the_fallback(sdk_env, caplog):
    settings = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN)
    app = make_app(settings, Agent(instructions="x"), rest=None)  # the SDK's environment: no key
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        caller = TwilioCaller(url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                              speed=float("inf"), continuous=False)
        async with caller:
            await caller.closed(timeout=10)
            assert caller.closed_by_server
            assert f"</Connect><Say>{DEFAULT_FALLBACK_SAY}</Say>" in caller.twiml
        assert await app[RUNTIME].wait_idle(10)
        assert [s.outcome for s in app[RUNTIME].finished] == ["model_unavailable"]
        assert app[RUNTIME].model_known_down()
    finally:
        await runner.cleanup()
    assert "cannot build the Gemini client" in caplog.text
    assert "Error handling request" not in caplog.text

