"""Reloading the agent file while `phonebridge dev` runs.

A call holds the CallServices it started with (agent, tool registry, declarations), so installing new
services on the app's Runtime changes only the calls that start afterwards: a call in progress finishes on
the old code. A file that fails to load (a syntax error, an exception at import, no `agent`) leaves the
last good agent in place and reports the error; the server stays up.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.server.app import RUNTIME
from phonebridge.errors import ConfigError, PhonebridgeError
from phonebridge.agent.tools import all_tools


@dataclass(frozen=True)
class FileSignature:
    """What tells us a file changed without reading it."""

    mtime_ns: int
    size: int


class ChangeDetector:
    """Pure: fed a file's signature each poll, says when it differs from the last one (None: missing)."""

    def __init__(self, first: FileSignature | None) -> None:
        self._last = first

    def changed(self, signature: FileSignature | None) -> bool:
        if signature == self._last:
            return False
        self._last = signature
        return signature is not None  # a file being replaced is missing for a moment: wait for it


def signature_of(path: Path) -> FileSignature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileSignature(st.st_mtime_ns, st.st_size)


@dataclass
class AgentStatus:
    spec: str
    version: int
    loaded_at: float
    tools: list[str]
    error: str | None = None
    watching: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"spec": self.spec, "version": self.version, "loaded_at": self.loaded_at, "tools": self.tools,
                "error": self.error, "watching": self.watching}


class AgentReloader:
    """Loads the agent, and again whenever its file changes. The first load must succeed (ConfigError etc.
    propagate: nothing to serve yet); later failures are kept in `status.error`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        target = spec.partition(":")[0]
        self.path: Path | None = Path(target) if target.endswith(".py") or Path(target).exists() else None
        try:
            self.agent = load_agent(spec)
        except PhonebridgeError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module may raise anything at import
            raise ConfigError(f"cannot load the agent {spec}:\n{_describe(exc)}") from exc
        self.status = AgentStatus(spec, 1, time.time(), tool_names(self.agent), watching=self.path is not None)
        self._detector = ChangeDetector(signature_of(self.path) if self.path is not None else None)

    def poll(self) -> bool:
        """Reload if the file changed; True when something changed (a new agent, or a new error)."""
        if self.path is None or not self._detector.changed(signature_of(self.path)):
            return False
        try:
            agent = load_agent(self.spec)
            tools = tool_names(agent)  # a tool that cannot be declared (a clash with a built-in) fails here
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module may raise anything at import
            self.status.error = _describe(exc)
            self.status.loaded_at = time.time()
            return True
        self.agent = agent
        self.status = AgentStatus(self.spec, self.status.version + 1, time.time(), tools)
        return True


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def _describe(exc: BaseException) -> str:
    """The error and its traceback without phonebridge's and importlib's own frames: where the user's file
    broke is what matters (a SyntaxError then reads as just the line and the caret)."""
    error = traceback.TracebackException.from_exception(exc)
    error.stack = traceback.StackSummary.from_list(
        [f for f in error.stack if not (f.filename.startswith("<frozen") or f.filename.startswith(_PACKAGE_DIR))]
    )
    return "".join(error.format()).rstrip()


def tool_names(agent: Agent) -> list[str]:
    return [str(d.name) for d in all_tools(agent).declarations()]


def install_agent(app: web.Application, agent: Agent) -> None:
    """New calls of `app` run `agent`; calls in progress keep the services they started with."""
    runtime = app[RUNTIME]
    old = runtime.services
    assert old is not None
    new = copy.copy(old)  # the shared parts (model client, executor, observers, metrics) stay the same
    new.agent = agent
    new.registry = all_tools(agent)
    new.declarations = new.registry.declarations()
    runtime.services = new
    runtime.agent = agent
