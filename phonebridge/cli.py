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

from phonebridge.errors import ConfigError, PhonebridgeError

log = logging.getLogger("phonebridge.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from phonebridge.logs import setup_logging

    level_problem = _log_level_problem(args.log_level)
    setup_logging("INFO" if level_problem else args.log_level)
    try:
        if level_problem:
            if args.command != "serve":
                raise ConfigError(level_problem)
            args.problems = [level_problem]  # serve reports it with everything else it finds
        return int(args.run(args) or 0)
    except PhonebridgeError as exc:
        print(f"phonebridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _log_level_problem(level: str) -> str | None:
    if isinstance(logging.getLevelName(level.upper()), int):
        return None
    return f"log level {level!r} (--log-level or PHONEBRIDGE_LOG_LEVEL): use DEBUG, INFO, WARNING or ERROR"


def _parser() -> argparse.ArgumentParser:
    # Defaults read the environment as text and are checked by serve with everything else (preflight.py):
    # a bad PORT must be one line among the other problems, not a traceback while building this parser.
    parser = _Parser(prog="phonebridge", description="A Gemini Live voice agent on a phone number.")
    parser.add_argument("--log-level", default=os.environ.get("PHONEBRIDGE_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (env PHONEBRIDGE_LOG_LEVEL)")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", parser_class=_Parser
    )

    serve = sub.add_parser("serve", help="run the bridge",
                           description="Run the bridge. Everything is checked before it listens: settings, "
                                       "port, agent and Gemini credentials; any problem exits 2.")
    serve.add_argument("--agent", required=True, help="agent file (agent.py) or module (pkg.mod[:name])")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on (env HOST)")
    serve.add_argument("--port", default=os.environ.get("PORT", "8080"), help="port to listen on (env PORT)")
    serve.add_argument("--workers", default=os.environ.get("PHONEBRIDGE_WORKERS", "0"),
                       help="processes sharing the port (SO_REUSEPORT); 0 = one per core (env PHONEBRIDGE_WORKERS)")
    serve.add_argument("--record-dir", default=None,
                       help="write one cassette per call here (env PHONEBRIDGE_RECORD_DIR)")
    serve.set_defaults(run=_serve)

    from phonebridge.commands import add_commands

    add_commands(sub)
    from phonebridge.inspect_cli import add_parser as add_inspect

    add_inspect(sub)
    return parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless there is none to show (None, an off switch, a required option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """Every command's --help shows its defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _serve(args: argparse.Namespace) -> int:
    from phonebridge.preflight import check_serve

    plan = check_serve(args)
    log.info("Gemini Live endpoint: %s", plan.endpoint)
    if plan.workers != 1:
        from phonebridge.workers import serve_workers

        args.port, args.workers = plan.port, plan.workers
        return serve_workers(args, plan.settings)
    return run_loop(serve(plan.agent, plan.settings, plan.host, plan.port))


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
    try:
        await site.start()
    except OSError as exc:  # taken since serve's check (preflight.py): still one line, exit 2
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
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
