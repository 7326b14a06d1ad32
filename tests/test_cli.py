"""The CLI's event loop choice: uvloop when installed (the `fast` extra), the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

from phonebridge.cli import main, run_loop


async def _loop_type() -> int:
    return 1 if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else 0


def test_the_standard_loop_on_request(monkeypatch):
    monkeypatch.setenv("PHONEBRIDGE_EVENT_LOOP", "asyncio")
    assert run_loop(_loop_type()) == 0


def test_uvloop_when_installed(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv("PHONEBRIDGE_EVENT_LOOP", raising=False)
    assert run_loop(_loop_type()) == 1


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out
