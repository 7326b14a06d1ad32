"""phonebridge: a Google Gemini Live voice agent on a Twilio phone number."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Our numpy work is many tiny operations on the event loop thread; a multi-threaded BLAS only adds
# contention (a filter design took seconds instead of milliseconds on a busy 2-core machine). Applies when
# phonebridge is imported before numpy; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from phonebridge import _moved

_moved.install()  # the old flat import paths keep working

__version__ = "0.1.0"
__all__ = ["Agent", "CallContext", "__version__"]

if TYPE_CHECKING:
    from phonebridge.agent.definition import Agent
    from phonebridge.agent.context import CallContext


def __getattr__(name: str) -> Any:
    # Lazy, so that `import phonebridge.audio` does not pull in google-genai.
    if name == "Agent":
        from phonebridge.agent.definition import Agent

        return Agent
    if name == "CallContext":
        from phonebridge.agent.context import CallContext

        return CallContext
    raise AttributeError(name)
