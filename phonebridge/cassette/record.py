"""Cassettes: one call's wire traffic as a versioned JSONL file, written as the call goes.

Format (version 1), one JSON object per line::

    {"cassette": 1, "phonebridge": "0.1.0", "call_sid": "CA..", "stream_sid": "MZ..", "started_at": "..", ...}
    {"t": 0.0, "kind": "twilio_in", "data": {"event": "start", ...}}
    {"t": 0.012, "kind": "model_connect", "data": {"cause": "start", "resumed": false, "seeded": false, "config": {..}}}
    {"t": 0.020, "kind": "model_out", "data": {"realtime_input": {"text": "Greet the caller."}}}
    {"t": 0.300, "kind": "model_in", "data": {"server_content": {..}}}       # LiveServerMessage, snake_case JSON
    {"t": 0.310, "kind": "twilio_out", "data": {"event": "media", ...}}
    {"t": 1.200, "kind": "tool", "data": {"id", "name", "args", "status", "response", "latency_s"}}
    {"t": 9.000, "kind": "end", "data": {"records": 812, "dropped": 0}}

`t` is seconds since the call's start. Twilio frames that are not a JSON object are kept as {"raw": text}.
Bytes are base64 (standard alphabet, except inside model_in where pydantic's URL-safe form is used; both
decode with `decode_bytes`). A cassette without its `end` line was cut short (the process died).

The recorder is on the call's hot path: `record` only appends the raw object to a bounded queue (never
blocks, never raises). A writer task serialises and writes in a worker thread every second and at the end,
so a crash loses at most the last second. If the writer falls behind, records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import enum
import gzip
import json
import logging
import os
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from phonebridge import __version__
import phonebridge.twilio.protocol as twilio
from phonebridge.errors import PhonebridgeError

log = logging.getLogger("phonebridge.recording")

CASSETTE_VERSION = 1
FLUSH_INTERVAL_S = 1.0
MAX_PENDING = 10_000  # ~100 s of a call's records waiting for the writer: past that, drop and count
KINDS = frozenset({"twilio_in", "twilio_out", "model_connect", "model_in", "model_out", "tool", "end"})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Reading bounds: a recorded line is at most a few hundred KiB (a model_connect config); a call lasts hours, not
# days. Past these a file is no cassette, and `replay --realtime` would otherwise wait as long as `t` says.
MAX_LINE_CHARS = 16 * 2**20
MAX_T_S = 24 * 3600.0


class CassetteError(PhonebridgeError, ValueError):
    """A cassette file is malformed or of a version this phonebridge cannot read; the message says where."""


# -- writing -----------------------------------------------------------------------------------------------


def recorder_factory(
    record_dir: str | os.PathLike[str],
    *,
    max_pending: int = MAX_PENDING,
    flush_interval_s: float = FLUSH_INTERVAL_S,
) -> Callable[[twilio.Start], CallRecorder]:
    """What CallServices calls at each call's `start`: opens `<record_dir>/<callSid>.jsonl` (mode 0600)."""
    directory = Path(record_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def open_recorder(start: twilio.Start) -> CallRecorder:
        path, file = _create_private(directory, start.call_sid)
        return CallRecorder(
            file, cassette_header(start), path=str(path), max_pending=max_pending, flush_interval_s=flush_interval_s
        )

    return open_recorder


def cassette_header(start: twilio.Start, *, now: datetime.datetime | None = None) -> dict[str, Any]:
    started = now or datetime.datetime.now(datetime.timezone.utc)
    return {
        "cassette": CASSETTE_VERSION, "phonebridge": __version__, "call_sid": start.call_sid,
        "stream_sid": start.stream_sid, "account_sid": start.account_sid,
        "started_at": started.isoformat(timespec="milliseconds"), "tracks": list(start.tracks),
        "custom_parameters": dict(start.custom_parameters),
        "media_format": {"encoding": start.encoding, "sampleRate": start.sample_rate, "channels": start.channels},
    }


def _create_private(directory: Path, call_sid: str) -> tuple[Path, IO[str]]:
    """A new file only its owner can read (callers' voices and numbers are in it); never overwrite one."""
    stem = _UNSAFE_NAME.sub("_", call_sid)[:64] or "call"
    for attempt in range(1, 1000):
        path = directory / (f"{stem}.jsonl" if attempt == 1 else f"{stem}-{attempt}.jsonl")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "w", encoding="utf-8")
    raise FileExistsError(f"no free cassette name for {stem} in {directory}")


class CallRecorder:
    """One call's cassette. `record` is O(1) and safe on the hot path; `aclose` writes the rest and the end."""

    def __init__(
        self,
        file: IO[str],
        header: dict[str, Any],
        *,
        path: str | None = None,
        max_pending: int = MAX_PENDING,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        name = getattr(file, "name", None)
        self.path = path if path is not None else name if isinstance(name, str) else None
        self.dropped = 0
        self.written = 0
        self._file, self._clock, self._t0 = file, clock, clock()
        self._max, self._interval = max_pending, flush_interval_s
        self._pending: deque[tuple[float, str, Any]] = deque()
        self._header: dict[str, Any] | None = header
        self._closing = asyncio.Event()
        self._failed = False
        self._lock = asyncio.Lock()  # one batch at a time reaches the file, in order
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def record(self, kind: str, payload: Any) -> None:
        """Queue one record (the raw object: serialised later, off the hot path)."""
        if self._closing.is_set():
            return
        if len(self._pending) >= self._max or self._failed:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("cassette %s: the writer is behind, dropping records (counted in its end line)", self.path)
            return
        self._pending.append((self._clock() - self._t0, kind, payload))

    async def flush(self) -> None:
        """Write what is queued now (the writer does this every `flush_interval_s` anyway)."""
        await self._write_batch(final=False)

    async def aclose(self) -> None:
        """Write everything queued, then the `end` line; close the file. Never raises."""
        self._closing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._writer)

    async def _write_loop(self) -> None:
        try:
            while not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):  # not wait_for: it can swallow a cancel on 3.11
                        await self._closing.wait()
                await self._write_batch(final=False)
            await self._write_batch(final=True)
        finally:
            self._close_file()  # flushed after every batch: closing does not wait on the disk

    async def _write_batch(self, *, final: bool) -> None:
        async with self._lock:
            await self._write_locked(final)

    async def _write_locked(self, final: bool) -> None:
        batch = list(self._pending)
        self._pending.clear()  # record() appends only from the loop thread, so nothing is lost in between
        if self._failed or not (batch or final or self._header):
            return
        header, self._header = self._header, None
        end = (self._clock() - self._t0, "end", None) if final else None
        try:
            await asyncio.to_thread(self._write, header, batch, end)
        except (OSError, ValueError) as exc:  # disk full, file gone: the call goes on unrecorded
            self._failed = True
            self.dropped += len(batch)
            log.error("cassette %s: writing failed, recording stops: %r", self.path, exc)

    def _write(self, header: dict[str, Any] | None, batch: list[tuple[float, str, Any]],
               end: tuple[float, str, Any] | None) -> None:
        # Runs in a worker thread: serialising audio to base64 JSON is the expensive part.
        lines = [json.dumps(header, separators=(",", ":"))] if header is not None else []
        lines += [encode_record(t, kind, payload) for t, kind, payload in batch]
        self.written += len(batch)
        if end is not None:
            lines.append(encode_record(end[0], "end", {"records": self.written, "dropped": self.dropped}))
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def _close_file(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def encode_record(t: float, kind: str, payload: Any) -> str:
    """One cassette line for a raw record as the bridge hands it over."""
    if kind in ("twilio_in", "twilio_out"):
        data = _twilio_json(payload)
    elif kind == "model_in" and hasattr(payload, "model_dump"):
        data = payload.model_dump(mode="json", exclude_none=True)
    else:
        data = payload
    return json.dumps({"t": round(t, 4), "kind": kind, "data": data}, separators=(",", ":"), default=_jsonable)


def _twilio_json(text: Any) -> Any:
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError):  # the bridge records what it got, even "[" * 10000
        return {"raw": text if isinstance(text, str) else repr(text)}
    return data if isinstance(data, dict) else {"raw": text}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


# -- reading -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    t: float
    kind: str
    data: Any
    line: int = 0  # where it was read (0: not read from a file), for error messages


@dataclass(frozen=True)
class Cassette:
    """A cassette read back. `complete` is False when the `end` line is missing (a cut-short recording)."""

    path: str
    header: dict[str, Any]
    records: tuple[Record, ...]
    complete: bool
    dropped: int

    def of_kind(self, *kinds: str) -> list[Record]:
        return [r for r in self.records if r.kind in kinds]


def load_cassette(path: str | os.PathLike[str]) -> Cassette:
    """Read a .jsonl (or .jsonl.gz) cassette; CassetteError names the line that is wrong.

    Checked here, for every reader: one JSON object a line (bounded in length and nesting), a version 1 header,
    then records whose `t` is a finite number of seconds in [0, MAX_T_S] that never goes back, whose `kind` is
    known and whose `data` is an object, as the writer makes them. What a replay needs beyond that is checked
    by phonebridge.cassette.replay.check_replayable."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise CassetteError(f"{path}: empty file, not a cassette")
    header = _parse_line(path, lines[0][0], lines[0][1])
    if header.get("cassette") != CASSETTE_VERSION:
        raise CassetteError(f"{path}: line 1 is not a version {CASSETTE_VERSION} cassette header: {lines[0][1][:120]}")
    records, end = _parse_records(path, lines[1:])
    dropped = (end or {}).get("dropped", 0)
    if type(dropped) is not int or dropped < 0:
        raise CassetteError(f"{path}: the end line's 'dropped' must be a non-negative integer, got {dropped!r:.40}")
    return Cassette(str(path), header, tuple(records), end is not None, dropped)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line; every way a file can fail to be text is a CassetteError."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines: list[tuple[int, str]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as file:
            for number, line in enumerate(iter(lambda: file.readline(MAX_LINE_CHARS + 1), ""), start=1):
                if len(line) > MAX_LINE_CHARS:
                    raise CassetteError(f"{path}: line {number}: longer than {MAX_LINE_CHARS} characters")
                if line.strip():
                    lines.append((number, line.rstrip("\r\n")))
    except UnicodeDecodeError as exc:
        raise CassetteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None
    except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib.error: a truncated or corrupt .gz
        raise CassetteError(f"{path}: cannot read: {exc}") from None
    return lines


def _parse_records(path: Path, lines: Iterable[tuple[int, str]]) -> tuple[list[Record], dict[str, Any] | None]:
    records: list[Record] = []
    end: dict[str, Any] | None = None
    last_t = 0.0
    for number, line in lines:
        item = _parse_line(path, number, line)
        kind, t, data = item.get("kind"), item.get("t"), item.get("data")
        if kind not in KINDS or not isinstance(data, dict):
            raise CassetteError(f"{path}: line {number}: expected {{t, kind, data}} with a known kind and an "
                                f"object as data, got {line[:120]}")
        if not isinstance(t, (int, float)) or type(t) is bool or not 0.0 <= t <= MAX_T_S:  # and NaN, infinities
            raise CassetteError(f"{path}: line {number}: 't' must be a number of seconds from 0 to {MAX_T_S:.0f}, "
                                f"got {str(t)[:40]}")
        if t < last_t:
            raise CassetteError(f"{path}: line {number}: 't' goes back in time ({t} after {last_t})")
        last_t = float(t)
        if end is not None:
            raise CassetteError(f"{path}: line {number}: a record after the end line")
        if kind == "end":
            end = data
        else:
            records.append(Record(float(t), str(kind), data, number))
    return records, end


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except RecursionError:
        raise CassetteError(f"{path}: line {number}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or a number past int()'s digit limit
        raise CassetteError(f"{path}: line {number}: not JSON ({str(exc)[:120]})") from None
    if not isinstance(item, dict):
        raise CassetteError(f"{path}: line {number}: not a JSON object")
    return item


def decode_bytes(text: str) -> bytes:
    """Base64 in either alphabet (standard or URL-safe), padding optional."""
    cleaned = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except binascii.Error as exc:
        raise CassetteError(f"not base64: {text[:40]!r}") from exc
