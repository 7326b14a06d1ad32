"""`phonebridge replay CASSETTE...`: drive the current code with recorded calls and say where it differs.

The comparison is replay.py's, the driver phonebridge.testing.replay's; this module only reads the command
line, replays each cassette in turn and prints the diff. Exit 0 when every cassette replays as recorded,
1 on a divergence; a cassette that cannot be replayed is a CassetteError (main prints one line, exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

from phonebridge.cassette.record import CassetteError


def add_parser(sub: Any) -> None:
    replay = sub.add_parser("replay", help="replay recorded calls against the current code; non-zero exit on divergence")
    replay.add_argument("cassettes", nargs="+", metavar="CASSETTE", help="cassette files (.jsonl) written by --record-dir")
    replay.add_argument("--agent", default=None, help="agent file or module (default: the recorded tool results)")
    replay.add_argument("--recorded-tools", action="store_true", help="answer tool calls with the recorded results")
    replay.add_argument("--realtime", action="store_true", help="replay at the recorded pace instead of flat out")
    replay.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the bridge at each step")
    replay.set_defaults(run=run_replay)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {text!r}")
    return value


def run_replay(args: argparse.Namespace) -> int:
    # Imported when the command runs: building the CLI's parser need not load the emulators and the SDK.
    from phonebridge.agent.definition import load_agent
    from phonebridge.testing.replay import replay_cassette

    agent = load_agent(args.agent) if args.agent else None
    failed = 0
    for path in args.cassettes:
        try:
            result = asyncio.run(replay_cassette(
                path, agent, recorded_tools=args.recorded_tools, speed=1.0 if args.realtime else math.inf,
                step_timeout_s=args.timeout,
            ))
        except CassetteError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            # check_replayable should have refused the file: still one line (main prints it), not a traceback.
            raise CassetteError(f"{path}: cannot replay this cassette ({type(exc).__name__}: {exc})") from exc
        print(result.diff)
        failed += not result.ok
    if len(args.cassettes) > 1:
        print(f"{len(args.cassettes) - failed} of {len(args.cassettes)} cassettes replay as recorded")
    return 1 if failed else 0
