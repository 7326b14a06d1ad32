"""Logging: readable lines on a terminal, one JSON object per line elsewhere (log collectors).

Every call's records carry its callSid (a LoggerAdapter's `call_sid`), so one call's story can be pulled
out of a busy server's log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _CallSidDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_sid"):
            record.call_sid = "-"
        return True


def setup_logging(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Configure the root logger once: JSON lines unless stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)-7s %(call_sid)s %(message)s")
    )
    handler.addFilter(_CallSidDefault())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK and websockets log every frame at DEBUG; keep them quiet unless asked.
    for noisy in ("websockets", "google_genai", "httpx", "aiohttp.access", "twilio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
