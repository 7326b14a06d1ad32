"""The pytest plugin: its fixtures reach this suite through the pytest11 entry point alone (no conftest)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pytest
from aiohttp import web

from phonebridge.testing.live_emulator import LiveEmulator
from phonebridge.testing.twilio_caller import TwilioCaller
from phonebridge.testing.twilio_rest import TwilioRestEmulator

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    assert [e.value for e in entry_points(group="pytest11") if e.name == "phonebridge"] == [
        "phonebridge.testing.plugin"
    ]


def test_fixtures_are_offered_to_a_fresh_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from phonebridge.testing.live_emulator import LiveEmulator
        from phonebridge.testing.twilio_caller import TwilioCaller
        from phonebridge.testing.twilio_rest import TwilioRestEmulator

        async def test_rest(twilio_rest):
            assert isinstance(twilio_rest, TwilioRestEmulator)

        async def test_live(live_emulator):
            assert isinstance(live_emulator, LiveEmulator)

        async def test_factory(twilio_caller_factory):
            assert isinstance(twilio_caller_factory("http://127.0.0.1:1"), TwilioCaller)
        """
    )
    result = pytester.runpytest("-q", "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=3)


def test_async_tests_using_phonebridge_run_without_asyncio_mode(pytester: pytest.Pytester) -> None:
    """pytest-asyncio's default, strict mode: no asyncio_mode, no markers written by the user."""
    pytester.makepyfile(
        test_fixture="""
        async def test_rest(twilio_rest):
            assert twilio_rest.api_base.startswith("http")
        """,
        test_harness="""
        import asyncio
        from phonebridge.testing.harness import BridgeHarness

        async def test_uses_the_harness_module():
            await asyncio.sleep(0)
            assert BridgeHarness
        """,
        test_unrelated="""
        async def test_not_ours():  # no phonebridge here: not ours to mark
            pass
        """,
    )
    result = pytester.runpytest("-q", "-o", "asyncio_mode=strict", "-o", "asyncio_default_fixture_loop_scope=function",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_unrelated.py::test_not_ours*"])


async def test_twilio_rest_fixture_is_started(twilio_rest: TwilioRestEmulator) -> None:
    sid = twilio_rest.add_number("+15557654321")
    client = twilio_rest.client()
    numbers = await asyncio.to_thread(lambda: client.incoming_phone_numbers.list(phone_number="+15557654321"))
    assert [n.sid for n in numbers] == [sid]


async def test_live_emulator_fixture_is_started_at_infinite_speed(live_emulator: LiveEmulator) -> None:
    assert live_emulator.speed == math.inf
    assert live_emulator.base_url.startswith("https://127.0.0.1:")


async def test_callers_from_the_factory_are_hung_up_at_teardown(
    twilio_caller_factory: Callable[..., TwilioCaller],
) -> None:
    stops: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def voice(request: web.Request) -> web.Response:
        twiml = '<Response><Connect><Stream url="wss://agent.example.com/twilio/media"/></Connect></Response>'
        return web.Response(text=twiml, content_type="text/xml")

    async def media(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if '"stop"' in message.data:
                stops.append(message.json())
        ended.set()
        return ws

    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    app.router.add_get("/twilio/media", media)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    caller = twilio_caller_factory(f"http://127.0.0.1:{runner.addresses[0][1]}", speed=math.inf)
    await caller.dial()
    assert caller.up
    # What the fixture's teardown does, run here so the test can see the server's side.
    await caller.hangup()
    await ended.wait()
    await runner.cleanup()
    assert len(stops) == 1 and not caller.up


def test_tests_already_marked_for_another_runner_or_by_module_are_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest
        from phonebridge.testing.harness import BridgeHarness

        pytestmark = pytest.mark.asyncio  # one mark, not a list: the form many suites use

        async def test_module_marked():
            assert BridgeHarness
        """,
        test_trio="""
        import pytest
        from phonebridge.testing.harness import BridgeHarness

        pytestmark = [pytest.mark.trio]

        async def test_for_trio():  # not ours to run on asyncio: pytest reports it unsupported, as before
            pass
        """,
    )
    result = pytester.runpytest("-q", "-o", "asyncio_mode=strict", "-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_trio.py::test_for_trio*"])
