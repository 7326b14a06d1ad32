"""The resources every call of one app shares and that must be opened and closed: the handler pool and the
Gemini client. Opened at the app's start-up and closed at its cleanup, through aiohttp's ``cleanup_ctx``.

make_app (app.py) appends :meth:`SharedResources.cleanup_ctx`; aiohttp runs it when the app starts (the
pool and the client are made, and the :class:`CallServices` built on them is handed to the app's Runtime
through ``install``) and again at cleanup, after on_shutdown has ended the calls in progress (the pool stops
taking work, the client we built closes its async transport). Nothing here is made inside make_app, so an
app that is built and never started holds no thread and no connection pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from google import genai
from google.auth.exceptions import GoogleAuthError
from google.genai import types

from phonebridge.call.services import CallServices
from phonebridge.errors import ModelUnavailable
from phonebridge.agent.handler_pool import HandlerPool

GenaiClientOption = genai.Client | Callable[[], genai.Client] | None
"""make_app's `genai_client`: a client, a factory called per call, or None for the SDK's environment."""


class ModelClient:
    """The Gemini client one app's calls share; call it for the client (a call does, as it starts).

    A client or factory given by the caller is handed out as it is and stays the caller's to close. With
    none, it builds ``genai.Client()`` from the SDK's environment (key, GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE)
    with permessage-deflate declined: base64 audio barely compresses and deflate cost ~12% of our CPU.
    It tries at start-up (``open``); without usable credentials it tries again at each call, which then gets
    ModelUnavailable and its fallback. ``aclose`` closes the async client it built, once.
    """

    def __init__(self, given: GenaiClientOption, http_options: types.HttpOptions | None = None) -> None:
        self._given = given
        self._http_options = http_options
        self.built: genai.Client | None = None
        self.closed = False

    @property
    def owned(self) -> bool:
        """True when this object builds (and so closes) the client."""
        return self._given is None

    def open(self) -> None:
        """Build the client now if it is ours to build; a failure waits for the first call to report it."""
        if self.owned:
            try:
                self()
            except ModelUnavailable:
                pass  # no credentials yet: each call tries again and takes its fallback (the log says why)

    def __call__(self) -> genai.Client:
        if isinstance(self._given, genai.Client):
            return self._given
        if self._given is not None:
            return self._given()
        if self.closed:
            raise ModelUnavailable("the app is shutting down: its Gemini client is closed")
        if self.built is None:
            try:
                self.built = genai.Client(http_options=self._http_options)
            except (ValueError, GoogleAuthError) as exc:  # no usable credentials: the call's fallback runs
                raise ModelUnavailable(f"cannot build the Gemini client: {exc}") from exc
        return self.built

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.built is not None:
            await self.built.aio.aclose()  # the sync client has no session we opened: the SDK closes it on GC


class SharedResources:
    """Opens the pool and the client at start-up, hands `install` the services built on them, closes both.

    `build(client, pool)` makes the app's CallServices; `install(services)` puts them where calls find them."""

    def __init__(
        self, client: ModelClient, build: Callable[[ModelClient, HandlerPool], CallServices],
        install: Callable[[CallServices], None],
    ) -> None:
        self.client = client
        self.pool: HandlerPool | None = None
        self._build, self._install = build, install

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # Sync handlers: a bounded share of the pool per call, no thread joined at exit. Its own cleanup_ctx
        # also gives the loop a daemon default executor (see HandlerPool.cleanup_ctx).
        self.pool = pool = HandlerPool()
        pool_lifetime = pool.cleanup_ctx(app)
        await anext(pool_lifetime)
        self.client.open()
        self._install(self._build(self.client, pool))
        yield
        try:
            await self.client.aclose()
        finally:
            await anext(pool_lifetime, None)  # the pool's cleanup: it takes no more work
