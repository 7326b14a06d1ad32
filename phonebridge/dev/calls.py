"""`phonebridge dev`'s recorded calls: `GET /calls` lists the cassettes in the record dir, newest first, and
`GET /calls/{name}` shows one in the call viewer (phonebridge.inspector.html), rendered on demand.

Both are behind the dev page's token (DevRoutes.authorised, a constant-time compare). A name is looked up only
as a file directly in the record dir, spelt as the recorder spells it (`CA….jsonl`, `CA…-2.jsonl`; `.jsonl.gz`
for one gzipped by hand): anything else (`..`, absolute paths, encoded slashes, a symlink, a directory) is a
404 before the file system is touched beyond one lstat. A cassette the viewer cannot read is a page saying why
(422), and a call still being recorded says so, instead of a viewer warning that it was "cut short".

Rendering reads the whole cassette and draws its audio, so it runs in a worker thread, one at a time, and the
page is kept (by mtime and size) until the file changes. The viewer page's Content-Security-Policy (hashes,
default-src 'none') goes out as a header too, with what only a header can say (frame-ancestors).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import hashlib
import html
import json
import logging
import os
import re
import stat
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from phonebridge.server.app import RUNTIME, Runtime
from phonebridge.errors import PhonebridgeError

log = logging.getLogger("phonebridge.dev")

# The recorder's names: a sanitised CallSid (at most 64 of [A-Za-z0-9_-]), maybe `-N` for a repeat.
CASSETTE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}(?:-[0-9]{1,3})?\.jsonl(?:\.gz)?")
TAIL_BYTES = 64 * 1024  # the last records of a cassette, for its duration and end line (a media line is ~300 B)
HEAD_CHARS = 64 * 1024  # a header line is well under 1 KiB
PAGE_CACHE = 4  # rendered viewer pages kept (a page embeds the call's audio: ~16 KB per second of call)
_CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')
_HEADER_ONLY_CSP = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
_NO_LEAK = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
STYLE = ("body{font-family:system-ui,sans-serif;color:#1d232b;background:#f4f5f7;margin:0;padding:20px}"
         "h1{font-size:18px;margin:0 0 12px}table{border-collapse:collapse;background:#fff;font-size:13px}"
         "th,td{padding:6px 12px;border-bottom:1px solid #eef0f2;text-align:left}td.n{text-align:right;"
         "font-variant-numeric:tabular-nums}.note{color:#57606a;font-size:13px}.error{color:#cf222e;"
         "white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}")


@dataclass(frozen=True)
class Summary:
    """One cassette as the list shows it (read from its first line and its last few KiB only)."""

    name: str
    call_sid: str
    started: float  # epoch seconds: the header's started_at, or the file's mtime when unreadable
    started_text: str
    duration_s: float | None
    complete: bool
    outcome: str  # the end line's, when it has one
    size: int
    error: str = ""  # why the header could not be read


def valid_name(name: str) -> bool:
    return CASSETTE_NAME.fullmatch(name) is not None


def resolve(directory: Path, name: str) -> Path | None:
    """The regular file `name` directly in `directory`, or None (never a symlink, never outside)."""
    if not valid_name(name):
        return None
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return path if stat.S_ISREG(mode) and path.parent == directory else None


def summarise(path: Path, st: os.stat_result) -> Summary:
    """What the list needs of one cassette; a broken file is a Summary with `error`, never an exception."""
    header, error = _header(path)
    started_at = header.get("started_at")
    try:
        started = datetime.datetime.fromisoformat(str(started_at)).astimezone(datetime.UTC)
        started.timestamp()
    except (ValueError, OverflowError):  # a hand-edited header (year 1 at +01:00): the file's own time
        started = datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
    last, end = _tail(path)
    sid = str(header.get("call_sid") or _sid_from_name(path.name))
    outcome = str((end or {}).get("outcome", "")) if isinstance(end, dict) else ""
    return Summary(path.name, sid, started.timestamp(), started.strftime("%Y-%m-%d %H:%M:%S UTC"), last,
                   end is not None, outcome, st.st_size, error)


def _header(path: Path) -> tuple[dict[str, Any], str]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as file:
            line = file.readline(HEAD_CHARS)
        header = json.loads(line)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {}, f"unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict) or "cassette" not in header:
        return {}, "no cassette header" if line.strip() else "empty"
    return header, ""


def _tail(path: Path) -> tuple[float | None, dict[str, Any] | None]:
    """The `t` of the last whole record, and the end line's data if the file ends with one."""
    try:
        lines = _last_lines(path)
    except (OSError, EOFError, zlib.error):
        return None, None
    for raw in reversed(lines):
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):
            continue  # a line cut by the tail window or still being written
        t = item.get("t") if isinstance(item, dict) else None
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            end = item.get("data") if item.get("kind") == "end" else None
            return float(t), end if isinstance(end, dict) else None
    return None, None


def _last_lines(path: Path) -> list[bytes]:
    """The last TAIL_BYTES of the file's text; a gzipped one is read through (the list caches the result)."""
    if path.suffix != ".gz":
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - TAIL_BYTES))
            return file.read(TAIL_BYTES).splitlines()
    tail = b""
    with gzip.open(path, "rb") as file:
        while block := file.read(TAIL_BYTES):
            tail = tail[-TAIL_BYTES:] + block
    return tail[-2 * TAIL_BYTES:].splitlines()


def _sid_from_name(name: str) -> str:
    stem = name.split(".", 1)[0]
    return re.sub(r"-[0-9]{1,3}$", "", stem)


# -- pages (pure) -----------------------------------------------------------------------------------------


def _page(title: str, body: str, status: int = 200) -> web.Response:
    csp = f"default-src 'none'; style-src '{_sha256(STYLE)}'; {_HEADER_ONLY_CSP}"
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" '
            f'content="no-referrer"><title>{_e(title)} · phonebridge dev</title><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>\n")
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={**_NO_LEAK, "Content-Security-Policy": csp})


def list_page(summaries: list[Summary], directory: Path, token: str, status_of: Callable[[Summary], str]) -> str:
    rows = []
    for s in summaries:
        href = f"/calls/{quote(s.name)}?token={quote(token)}"
        duration = f"{s.duration_s:.1f} s" if s.duration_s is not None else "—"
        rows.append(f'<tr><td>{_e(s.started_text)}</td><td><a href="{_e(href)}">{_e(s.call_sid)}</a></td>'
                    f'<td class="n">{duration}</td><td>{_e(status_of(s))}</td><td class="n">{_size(s.size)}</td></tr>')
    table = ("<table><tr><th>started</th><th>call</th><th>duration</th><th>outcome</th><th>size</th></tr>"
             + "".join(rows) + "</table>") if rows else '<p class="note">No calls recorded yet.</p>'
    back = f'<p class="note"><a href="/?token={_e(quote(token))}">back to the softphone</a></p>'
    return (f"<h1>Recorded calls</h1><p class=\"note\">{len(rows)} cassette{'s' * (len(rows) != 1)} in "
            f"{_e(str(directory))}, newest first</p>{table}{back}")


def message_body(title: str, message: str, token: str, *, error: bool = False) -> str:
    text = f'<p class="error">{_e(message)}</p>' if error else f'<p>{_e(message)}</p>'
    return (f"<h1>{_e(title)}</h1>{text}"
            f'<p class="note"><a href="/calls?token={_e(quote(token))}">all recorded calls</a></p>')


def viewer_csp(page: str) -> str:
    """The viewer page's own policy (its meta tag) plus the header-only directives."""
    found = _CSP_META.search(page, 0, 4096)
    own = html.unescape(found.group(1)) if found else "default-src 'none'"  # none found: strict, never open
    return f"{own}; {_HEADER_ONLY_CSP}"


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.1f} KB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def render_viewer(path: Path) -> str:
    """The viewer page of one cassette (runs in a worker thread); PhonebridgeError if it cannot be read."""
    from phonebridge.inspector.html import (
        render_html,  # numpy and the cassette reader: only when viewing
    )
    from phonebridge.inspector.model import build_timeline
    from phonebridge.cassette.record import load_cassette

    return render_html(build_timeline(load_cassette(path)))


# -- the routes ------------------------------------------------------------------------------------------


class CallPages:
    """`/calls` and `/calls/{name}` over `record_dir`, behind `authorised`."""

    def __init__(self, record_dir: str | None, authorised: Callable[[web.Request], bool], token: str) -> None:
        self.directory = Path(record_dir).resolve() if record_dir else None
        self._authorised, self._token = authorised, token
        self._runtime: Runtime | None = None
        self._summaries: dict[str, tuple[tuple[int, int], Summary]] = {}
        self._pages: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._render_lock = asyncio.Lock()

    def add_to(self, app: web.Application) -> None:
        self._runtime = app[RUNTIME]
        app.router.add_get("/calls", self.index)
        app.router.add_get("/calls/{name}", self.viewer)

    def viewer_path(self, call_sid: str) -> str | None:
        """Where the page finds a call it placed (the recorder names the cassette after its CallSid)."""
        if self.directory is None or not valid_name(f"{call_sid}.jsonl"):
            return None
        return f"/calls/{call_sid}.jsonl?token={quote(self._token)}"

    async def index(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _page("Forbidden", "<p>Open the URL that <code>phonebridge dev</code> printed.</p>", 403)
        if self.directory is None:
            return _page("Recorded calls", message_body("Recorded calls", "Recording is off: start "
                         "`phonebridge dev` with --record-dir to keep each call.", self._token))
        summaries = await asyncio.to_thread(self._scan)
        live, outcomes = self._live_and_outcomes()

        def status_of(s: Summary) -> str:
            if s.call_sid in live and not s.complete:
                return "in progress"
            return s.outcome or outcomes.get(s.call_sid) or s.error or ("ended" if s.complete else "cut short")

        return _page("Recorded calls", list_page(summaries, self.directory, self._token, status_of))

    def _scan(self) -> list[Summary]:
        assert self.directory is not None
        found: dict[str, tuple[tuple[int, int], Summary]] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                if not valid_name(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):  # gone since the listing: leave it out
                    st = entry.stat(follow_symlinks=False)
                    key = (st.st_mtime_ns, st.st_size)
                    cached = self._summaries.get(entry.name)
                    found[entry.name] = cached if cached and cached[0] == key else (key, summarise(Path(entry.path), st))
        self._summaries = found
        return sorted((s for _, s in found.values()), key=lambda s: (s.started, s.name), reverse=True)

    def _live_and_outcomes(self) -> tuple[set[str], dict[str, str]]:
        """CallSids still being recorded (a session leaves `active` only after its cassette is closed), and
        how this process's recent calls ended."""
        if self._runtime is None:
            return set(), {}
        live = {session.stats.call_sid for session in list(self._runtime.active.values())}
        return live, {stats.call_sid: stats.outcome for stats in self._runtime.finished}

    async def viewer(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _page("Forbidden", "<p>Open the URL that <code>phonebridge dev</code> printed.</p>", 403)
        name = request.match_info.get("name", "")
        path = resolve(self.directory, name) if self.directory is not None else None
        if path is None:
            return _page("No such call", message_body("No such call", f"There is no recorded call named "
                         f"{name[:80]!r} in the record dir.", self._token), 404)
        try:
            st = os.stat(path)
        except OSError:
            return _page("No such call", message_body("No such call", "It has just gone.", self._token), 404)
        live, _ = self._live_and_outcomes()
        summary = await asyncio.to_thread(summarise, path, st)
        if summary.call_sid in live and not summary.complete:
            return _page("Call in progress", message_body(
                f"Call {summary.call_sid}", "This call is still in progress: its cassette is being written. "
                "Reload this page when the call has ended.", self._token))
        return await self._viewer_page(path, st)

    async def _viewer_page(self, path: Path, st: os.stat_result) -> web.Response:
        key = (path.name, st.st_mtime_ns, st.st_size)
        page = self._pages.get(key, "")
        if not page:
            async with self._render_lock:  # one render at a time: the calls in progress keep their CPU
                try:
                    page = self._pages.get(key, "") or await asyncio.to_thread(render_viewer, path)
                except PhonebridgeError as exc:
                    message = str(exc).replace(str(path), path.name)
                    log.warning("cannot show the recorded call %s: %s", path.name, message)
                    return _page("Cannot show this call", message_body(
                        "Cannot show this call", f"The viewer cannot read this cassette: {message}", self._token,
                        error=True), 422)
                except Exception:  # a viewer bug on odd data: say so here, keep serving
                    log.exception("the call viewer failed on %s", path.name)
                    return _page("Cannot show this call", message_body(
                        "Cannot show this call", "The call viewer failed on this cassette (a phonebridge bug; "
                        "the traceback is in the terminal).", self._token, error=True), 500)
            self._pages[key] = page
            while len(self._pages) > PAGE_CACHE:
                self._pages.popitem(last=False)
        self._pages.move_to_end(key)
        return web.Response(text=page, content_type="text/html",
                            headers={**_NO_LEAK, "Content-Security-Policy": viewer_csp(page)})
