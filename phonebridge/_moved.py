"""Old import paths: phonebridge's modules were flat (`phonebridge.bridge`), now they live in subpackages.

`import phonebridge.bridge` (or `from phonebridge.model import LiveLink`) keeps working and gives the very module
at its new path (`phonebridge.call.bridge`), so monkeypatching through either name patches the same globals.
A name that was a module and is now a package (`phonebridge.twilio`, `.call`, `.agent`, `.dev`, `.demo`) needs no
alias: the package re-exports what the module had.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    "twiml": "twilio.twiml", "signatures": "twilio.signatures", "stream_guard": "twilio.stream_guard",
    "rest": "twilio.rest", "twilio_cli": "twilio.number_cli",
    "model": "live.link", "model_wire": "live.wire", "model_events": "live.events", "live_config": "live.config",
    "live_resend": "live.resend",
    "call_core": "call.core", "call_effects": "call.effects", "bridge": "call.bridge",
    "hold": "call.hold", "call_services": "call.services", "tool_calls": "call.tool_turns",
    "tools": "agent.tools", "schema": "agent.schema", "context": "agent.context", "tool_response": "agent.tool_response",
    "handler_pool": "agent.handler_pool",
    "app": "server.app", "workers": "server.workers", "config": "server.config", "metrics": "server.metrics",
    "logs": "server.logs", "heap": "server.heap", "preflight": "server.preflight",
    "recording": "cassette.record", "replay": "cassette.replay",
    "dev_calls": "dev.calls", "dev_reload": "dev.reload", "dev_routes": "dev.routes", "dev_script": "dev.script",
    "dev_server": "dev.server",
    "inspect_assets": "inspector.assets", "inspect_audio": "inspector.audio", "inspect_cli": "inspector.cli",
    "inspect_html": "inspector.html", "inspect_model": "inspector.model",
    "demo_report": "demo.report",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `phonebridge.<old>` and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.partition(".")
        if package != "phonebridge" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"phonebridge.{MOVED[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system is about to stamp the alias's spec on it
        return module

    def exec_module(self, module: ModuleType) -> None:
        alias = module.__spec__
        if alias is not None and isinstance(alias.loader_state, importlib.machinery.ModuleSpec):
            module.__spec__ = alias.loader_state


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
