"""`phonebridge` on the command line: serve, demo, replay, call, twilio configure."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from phonebridge.errors import PhonebridgeError

log = logging.getLogger("phonebridge.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from phonebridge.logs import setup_logging

    setup_logging(args.log_level)
    try:
        return int(args.run(args) or 0)
    except PhonebridgeError as exc:
        print(f"phonebridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phonebridge", description="A Gemini Live voice agent on a phone number.")
    parser.add_argument("--log-level", default=os.environ.get("PHONEBRIDGE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the bridge")
    serve.add_argument("--agent", required=True, help="agent file (agent.py) or module (pkg.mod[:name])")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("PHONEBRIDGE_WORKERS", "0")),
                       help="processes sharing the port (SO_REUSEPORT); 0 = one per core")
    serve.add_argument("--record-dir", default=None, help="write one cassette per call here")
    serve.set_defaults(run=_serve)

    from phonebridge.commands import add_commands

    add_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from phonebridge.agent import load_agent
    from phonebridge.config import Settings

    agent = load_agent(args.agent)
    settings = Settings.from_env(record_dir=args.record_dir)
    settings.check()
    if args.workers != 1:
        from phonebridge.workers import serve_workers

        return serve_workers(args, settings)
    return run_loop(serve(agent, settings, args.host, args.port))


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


async def serve(agent: object, settings: object, host: str, port: int, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM/SIGINT, then drain: refuse new calls, let active ones finish, exit 0."""
    from aiohttp import web

    from phonebridge.agent import Agent
    from phonebridge.app import drain, make_app
    from phonebridge.config import Settings

    assert isinstance(agent, Agent) and isinstance(settings, Settings)
    app = make_app(settings, agent)
    # Signal handlers first: the process is never serving without its drain on SIGTERM.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    # Everything alive now (modules, the SDK's pydantic schemas: ~150,000 objects) lives as long as the
    # process: keep it out of the cyclic GC's full collections, which otherwise scan it all (~40 ms of a
    # stalled loop, every call's audio waiting behind it).
    gc.collect()
    gc.freeze()
    log.info("phonebridge serving %s on http://%s:%d (pid %d)", agent.model, host, port, os.getpid())
    await stop.wait()
    remaining = await drain(app, settings.drain_timeout_s)
    if remaining:
        log.warning("drain timeout: ending %d calls still active", remaining)
    await runner.cleanup()
    log.info("phonebridge stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
