"""A handler's return value as the response the model is sent. Pure; runs on the event loop, so bounded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pydantic_core

from phonebridge.errors import ToolResponseError

MAX_RESPONSE_BYTES = 256 * 1024  # as JSON; ~64k tokens, already more than a voice turn can use


def to_response(value: Any) -> dict[str, Any]:
    """A handler's return value as a JSON-able response: mappings as they are, anything else as `result`.

    This runs on the event loop, so it must be bounded: an iterator is refused rather than drained (an
    endless generator wedged every call of the process), and so is an answer over MAX_RESPONSE_BYTES.
    NaN and infinities become strings: the SDK's json.dumps would send them as bare words, invalid JSON."""
    if isinstance(value, (Iterator, AsyncIterator)):
        raise ToolResponseError(f"returned an iterator ({type(value).__name__}), not a value: return a list")
    encoded = pydantic_core.to_json(value, fallback=str, inf_nan_mode="strings")
    if len(encoded) > MAX_RESPONSE_BYTES:
        raise ToolResponseError(f"returned an answer too large to send ({len(encoded)} bytes of JSON; "
                                f"at most {MAX_RESPONSE_BYTES})")
    jsonable = json.loads(encoded)
    if isinstance(value, Mapping):
        return dict(jsonable)
    return {"result": "done" if value is None else jsonable}
