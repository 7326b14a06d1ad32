"""The handler pool and the Gemini client live from the app's start-up to its cleanup (a cleanup_ctx)."""

from __future__ import annotations

import pytest
from aiohttp import web
from google import genai

from phonebridge import Agent
from phonebridge.server.app import RUNTIME, SHARED, make_app
from phonebridge.server.config import Settings
from phonebridge.errors import ModelUnavailable
from phonebridge.testing.harness import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL

SDK_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE",
           "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_GEMINI_BASE_URL")
SETTINGS = Settings(public_url=PUBLIC_URL, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN)


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    return monkeypatch


async def test_start_up_opens_the_pool_and_the_client_and_cleanup_closes_both(sdk_env):
    sdk_env.setenv("GEMINI_API_KEY", "a-key")  # the SDK's environment: make_app builds the client itself
    app = make_app(SETTINGS, Agent(instructions="x"), rest=None)
    shared = app[SHARED]
    assert shared.pool is None and shared.client.built is None  # make_app itself opens nothing
    assert app[RUNTIME].services is None
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        pool, client = shared.pool, shared.client.built
        assert pool is not None and isinstance(client, genai.Client)
        services = app[RUNTIME].services
        assert services is not None and services.executor is pool
        assert services.genai_client() is client  # every call of the app shares the one client
        assert await pool.share().run(lambda: 42) == 42
    finally:
        await runner.cleanup()
    assert shared.client.closed
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.share().run(lambda: 1)  # the pool takes no more work
    with pytest.raises(ModelUnavailable, match="closed"):
        shared.client()  # and no new client is built after its close


async def test_a_client_the_caller_gives_stays_the_callers(sdk_env):
    given = genai.Client(api_key="a-key")
    app = make_app(SETTINGS, Agent(instructions="x"), rest=None, genai_client=given)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    assert app[RUNTIME].services is not None and app[RUNTIME].services.genai_client() is given
    await runner.cleanup()
    shared = app[SHARED]
    assert not shared.client.owned and shared.client.built is None  # nothing of ours to close
    assert shared.client() is given


async def test_without_credentials_the_app_still_starts_and_each_call_tries_again(sdk_env):
    app = make_app(SETTINGS, Agent(instructions="x"), rest=None)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        client = app[SHARED].client
        assert client.built is None
        with pytest.raises(ModelUnavailable, match="cannot build the Gemini client"):
            client()
        sdk_env.setenv("GEMINI_API_KEY", "a-key")  # credentials that arrive later serve the next call
        assert isinstance(client(), genai.Client)
    finally:
        await runner.cleanup()
    assert app[SHARED].client.closed
