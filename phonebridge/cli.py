"""`phonebridge` on the command line: serve, demo, replay, call, twilio configure."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from phonebridge.errors import ConfigError, PhonebridgeError
from phonebridge.server.serving import run_loop, serve

__all__ = ["main", "run_loop", "serve"]  # run_loop and serve moved to serving.py; still importable from here

log = logging.getLogger("phonebridge.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from phonebridge.server.logs import setup_logging

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
    from phonebridge.inspector.cli import add_parser as add_inspect

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
    from phonebridge.server.preflight import check_serve

    plan = check_serve(args)
    log.info("Gemini Live endpoint: %s", plan.endpoint)
    if plan.workers != 1:
        from phonebridge.server.workers import serve_workers

        args.port, args.workers = plan.port, plan.workers
        return serve_workers(args, plan.settings)
    return run_loop(serve(plan.agent, plan.settings, plan.host, plan.port))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
