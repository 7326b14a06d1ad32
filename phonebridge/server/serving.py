"""One server process: run the aiohttp app on an event loop until SIGTERM/SIGINT, then drain.

Owns the process-level part of serving that both `phonebridge serve` (cli.py) and each worker of
`serve --workers N` (workers.py) run: the event loop choice (uvloop when installed), the signal handlers,
the listening socket, freezing the start-up heap out of the GC, and the drain on a stop signal. The caller
checks the settings and loads the agent first (preflight.py, workers.run_worker), then calls
``run_loop(serve(agent, settings, host, port))`` and exits with what it returns.

Here and not in cli.py so that workers.py need not import the command line that imports it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from phonebridge.errors import ConfigError

# The cyclic GC's young generation is collected after this many net allocations of tracked objects, not
# CPython's 700. Each collection stalls the loop (0.2 ms typically, 1-10 ms for about one in six at 100
# calls, whatever it frees) and some call's step waits behind it: fewer stalls, fewer reactions delayed.
# Measured at 100 calls a core (bench/run, 20 s, one run each): 362 young collections and 518 ms of GC at
# 700, 26 and 178 ms at 10,000; the toolCall -> handler start and handler return -> tool_response p99
# buckets <= 5 ms at 700, <= 0.5 and <= 1 ms at 10,000 (both under 1 ms with the GC off altogether).
# With churn (bench/soak, 60 calls of ~30 s with goAways and drops, 2.5 min, one run each) the GC's stalls
# added up to 336 ms at 10,000 against 739 ms at 700 (415 ms at 3,000), but the longest young collection was
# 39 ms against 12 ms (33 ms at 3,000): fewer stalls, some longer. The cost otherwise: a young reference
# cycle waits longer to be freed, at most this many objects' worth.
YOUNG_GC_THRESHOLD = 10_000

if TYPE_CHECKING:
    from phonebridge.agent.definition import Agent
    from phonebridge.server.config import Settings

log = logging.getLogger("phonebridge.cli")  # the name serve has always logged under


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the server's coroutine on uvloop when it is installed (`pip install phonebridge[fast]`): the
    per-frame socket and TLS work is the bulk of a call's CPU, and uvloop does it in C.
    PHONEBRIDGE_EVENT_LOOP=asyncio forces the standard loop."""
    factory = None
    if os.environ.get("PHONEBRIDGE_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def serve(agent: Agent, settings: Settings, host: str, port: int, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM/SIGINT, then drain: refuse new calls, let active ones finish, exit 0."""
    # Imported here, not above: `phonebridge --help` and the worker supervisor need none of aiohttp or the SDK.
    from aiohttp import web

    from phonebridge.server.app import drain, make_app

    app = make_app(settings, agent)
    # Signal handlers first: the process is never serving without its drain on SIGTERM.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:  # taken since serve's check (preflight.py): still one line, exit 2
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    settle_heap()
    log.info("phonebridge serving %s on http://%s:%d (pid %d)", agent.model, host, port, os.getpid())
    await stop.wait()
    remaining = await drain(app, settings.drain_timeout_s)
    if remaining:
        log.warning("drain timeout: ending %d calls still active", remaining)
    await runner.cleanup()
    log.info("phonebridge stopped")
    return 0


def settle_heap() -> None:
    """Once the server is up. Everything alive now (modules, the SDK's pydantic schemas: ~150,000 objects)
    lives as long as the process: kept out of the cyclic GC's full collections, which otherwise scan it all
    (~40 ms of a stalled loop, every call's audio waiting behind it); and young collections made rarer."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)
