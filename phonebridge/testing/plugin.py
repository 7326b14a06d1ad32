"""phonebridge's pytest plugin: offline fixtures for testing a phonebridge agent.

Registered through the ``pytest11`` entry point, so installing phonebridge is enough: no conftest needed.
The fixtures are async and function-scoped; they need pytest-asyncio (phonebridge's ``test`` extra), and
without it this plugin defines nothing rather than break pytest.

``live_emulator``
    A started :class:`phonebridge.testing.live_emulator.LiveEmulator` with ``speed=math.inf`` and the
    default script; point the google-genai client at it with ``live_emulator.http_options()`` or
    ``live_emulator.client_env()``. Stopped at teardown.

``twilio_rest``
    A started :class:`phonebridge.testing.twilio_rest.TwilioRestEmulator` (default account and token);
    ``twilio_rest.client()`` is a real ``twilio.rest.Client`` that reaches it. Stopped at teardown.

``twilio_caller_factory``
    ``make(server_url, **kwargs) -> TwilioCaller``: simulated Twilio call legs
    (:class:`phonebridge.testing.twilio_caller.TwilioCaller`, same keyword arguments). Every caller made is
    hung up and closed at teardown.

No configuration needed: an ``async def`` test that uses one of these fixtures, or sits in a module that
imports from ``phonebridge.testing`` (``BridgeHarness``, the emulators, ``live_script``), is marked
``@pytest.mark.asyncio`` at collection, so it runs under pytest-asyncio's default strict mode without
``asyncio_mode = "auto"``. A test already marked for asyncio, anyio or trio is left as it is.

Example::

    async def test_greets(live_emulator, twilio_caller_factory, my_server_url):
        async with twilio_caller_factory(my_server_url, speed=math.inf) as caller:
            await caller.wait_heard(1.0)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from phonebridge.testing.live_emulator import LiveEmulator
    from phonebridge.testing.twilio_caller import TwilioCaller
    from phonebridge.testing.twilio_rest import TwilioRestEmulator

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - a user without pytest-asyncio still gets a working pytest
    pytest_asyncio = None  # type: ignore[assignment]


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def live_emulator() -> AsyncIterator[LiveEmulator]:
        # Imported here: the emulator pulls in TLS and script machinery a test may never use.
        from phonebridge.testing.live_emulator import LiveEmulator

        emulator = LiveEmulator(speed=math.inf)
        async with emulator:
            yield emulator

    @pytest_asyncio.fixture
    async def twilio_rest() -> AsyncIterator[TwilioRestEmulator]:
        from phonebridge.testing.twilio_rest import TwilioRestEmulator

        emulator = TwilioRestEmulator()
        async with emulator:
            yield emulator

    @pytest_asyncio.fixture
    async def twilio_caller_factory() -> AsyncIterator[Callable[..., TwilioCaller]]:
        from phonebridge.testing.twilio_caller import TwilioCaller

        made: list[TwilioCaller] = []

        def make(server_url: str, **kwargs: Any) -> TwilioCaller:
            caller = TwilioCaller(server_url, **kwargs)
            made.append(caller)
            return caller

        yield make
        for caller in made:
            await caller.hangup()

    FIXTURES = frozenset({"live_emulator", "twilio_rest", "twilio_caller_factory"})
    _OTHER_RUNNERS = frozenset({"asyncio", "anyio", "trio"})

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
        """Mark our users' async tests for pytest-asyncio before it looks at them (then let pytest collect)."""
        if not (inspect.iscoroutinefunction(obj) and collector.funcnamefilter(name)):  # type: ignore[attr-defined]
            return
        module = getattr(collector, "module", None)
        owners = (obj, getattr(collector, "obj", None), module)  # the function, its class or module, the module
        if {name for owner in owners for name in _mark_names(owner)} & _OTHER_RUNNERS:
            return
        uses_fixtures = bool(FIXTURES & set(inspect.signature(obj).parameters))
        if uses_fixtures or (isinstance(module, ModuleType) and _imports_our_testing(module)):
            pytest.mark.asyncio(obj)

    def _mark_names(owner: object) -> set[str]:
        """The names of the marks on a function, class or module (`pytestmark` may be one mark or a list)."""
        marks = getattr(owner, "pytestmark", [])
        marks = marks if isinstance(marks, (list, tuple)) else [marks]
        return {str(getattr(m, "name", "")) for m in marks}

    def _imports_our_testing(module: ModuleType) -> bool:
        """Whether a test module imported anything from phonebridge.testing (a class, a function, a module)."""
        for value in vars(module).values():
            home = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(home, str) and (home == "phonebridge.testing" or home.startswith("phonebridge.testing.")):
                return True
        return False
