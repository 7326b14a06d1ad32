"""`phonebridge inspect CASSETTE [-o call.html]`: one recorded call as a self-contained HTML page.

The thin I/O layer: read the cassette (phonebridge.cassette.record), build the timeline and the page
(phonebridge.inspector.model, phonebridge.inspector.html, both pure), write the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from phonebridge.errors import PhonebridgeError


def add_parser(sub: Any) -> None:
    inspect = sub.add_parser(
        "inspect", help="one recorded call as a self-contained HTML timeline",
        description="Write one recorded call as a single HTML file that needs nothing else (no network): both "
                    "tracks as waveforms, the transcript, tool calls, barge-ins, marks, clears and reconnects.",
    )
    inspect.add_argument("cassette", metavar="CASSETTE", help="a cassette (.jsonl or .jsonl.gz) from --record-dir")
    inspect.add_argument("-o", "--output", default=None,
                         help="the HTML file to write (default: the cassette's name with .html)")
    inspect.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else default_output(args.cassette)
    write_call_html(args.cassette, output)
    print(f"wrote {output}")
    return 0


def default_output(cassette: str | os.PathLike[str]) -> Path:
    path = Path(cassette)
    name = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return path.with_name(f"{name or 'call'}.html")


def write_call_html(cassette: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Read, build, write. A malformed cassette or an unwritable output is a PhonebridgeError (one line)."""
    from phonebridge.inspector.html import render_html  # numpy and the cassette reader: only when inspecting
    from phonebridge.inspector.model import build_timeline
    from phonebridge.cassette.record import load_cassette

    page = render_html(build_timeline(load_cassette(cassette)))
    output = Path(output)
    try:  # 0600 like the cassette: the caller's voice and number are in it
        with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            file.write(page)
    except OSError as exc:
        raise PhonebridgeError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output
