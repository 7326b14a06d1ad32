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

from phonebridge.agent.handler_pool import HandlerPool
from phonebridge.call.services import CallServices
from phonebridge.live.client import GenaiClientOption as GenaiClientOption
from phonebridge.live.client import ModelClient

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
