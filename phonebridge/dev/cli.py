"""`phonebridge dev --agent agent.py`: talk to your agent in a browser before you have a phone number.

One process serves the real bridge plus a softphone page on http://127.0.0.1:8080/. The page speaks
Twilio's own Media Streams JSON to the bridge's own /twilio/media handler, so a call from it takes the same
path as a phone call. The model is the real Gemini Live when GEMINI_API_KEY (or GOOGLE_API_KEY) is set,
otherwise the built-in LiveEmulator with a script that exercises the agent's tools (or `--script S.yaml`).
The agent file is reloaded when it changes. The server itself is phonebridge.dev.server.

Safe by default: loopback only, and the page, its event stream and its media socket are authorised by a
random token made for this process and printed in the URL. Nothing here is reachable from `serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phonebridge.dev.server import DevServer

DEFAULT_AGENT = "phonebridge.examples.pizzeria"


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="local development: the bridge plus a browser softphone on loopback")
    dev.add_argument("--agent", default=DEFAULT_AGENT, help="agent file (reloaded on change) or module "
                     "(default: %(default)s)")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                     help="loopback port (default: %(default)s; 0 picks a free one)")
    dev.add_argument("--script", default=None, help="a YAML/JSON script for the emulator instead of the one "
                     "derived from the agent's tools")
    dev.add_argument("--emulator", action="store_true", help="use the built-in emulator even when "
                     "GEMINI_API_KEY is set")
    dev.add_argument("--record-dir", default=os.environ.get("PHONEBRIDGE_RECORD_DIR") or "phonebridge-dev",
                     help="where each call's cassette goes (default: %(default)s)")
    dev.set_defaults(run=run_dev)


def run_dev(args: argparse.Namespace) -> int:
    from phonebridge.dev.server import DevServer  # the bridge, the SDK: not imported for every CLI command

    live = not args.emulator and bool(os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"))
    server = DevServer(args.agent, port=args.port, script=args.script, live=live, record_dir=args.record_dir)
    return asyncio.run(_run_until_signal(server))


async def _run_until_signal(server: DevServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
