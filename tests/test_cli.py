"""The CLI: the event loop choice (uvloop when installed, the standard loop on request), and `serve` refusing
to start, with one message listing every problem, when its configuration is wrong."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from phonebridge.cli import main, run_loop
from phonebridge.testing.harness import AUTH_TOKEN, PUBLIC_URL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# -- `phonebridge serve` refuses to start, with every problem in one message ---------------------------------

GOOD_AGENT = "from phonebridge import Agent\nagent = Agent(instructions='You are a test agent.')\n"
SDK_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE",
           "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "PORT",
           "PHONEBRIDGE_WORKERS")


def _serve(tmp_path: Path, agent_source: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    agent = tmp_path / "agent.py"
    if agent_source is not None:
        agent.write_text(agent_source)
    base = {k: v for k, v in os.environ.items() if k not in SDK_ENV and not k.startswith("PHONEBRIDGE_")}
    base.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true",
                PHONEBRIDGE_PUBLIC_URL=PUBLIC_URL, TWILIO_AUTH_TOKEN=AUTH_TOKEN)
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "phonebridge.cli", "serve", "--agent", str(agent), "--host", "127.0.0.1",
         "--workers", "1", *args],
        check=False, env=base, capture_output=True, text=True, timeout=60,
    )


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "phonebridge serving" not in result.stderr
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("phonebridge: ")]
    return result.stderr[result.stderr.index(message):]


def test_serve_without_gemini_credentials_refuses_to_start(tmp_path):
    message = _refused(_serve(tmp_path, GOOD_AGENT, "--port", str(_free_port())))
    assert message.startswith("phonebridge: no credentials the Gemini SDK can use: set GEMINI_API_KEY")


def test_serve_for_vertex_ai_without_application_default_credentials_refuses_to_start(tmp_path):
    message = _refused(_serve(tmp_path, GOOD_AGENT, "--port", str(_free_port()), GOOGLE_GENAI_USE_VERTEXAI="true",
                              GOOGLE_CLOUD_PROJECT="my-project", GOOGLE_CLOUD_LOCATION="us-central1"))
    assert message.startswith("phonebridge: Vertex AI needs application default credentials")


def test_serve_on_a_port_in_use_refuses_to_start(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        message = _refused(_serve(tmp_path, GOOD_AGENT, "--port", str(port), GEMINI_API_KEY="k"))
    assert message == (f"phonebridge: cannot listen on 127.0.0.1:{port}: "
                       "the port is already in use (another server is listening there)\n")


def test_serve_reports_every_problem_in_one_message(tmp_path):
    result = _serve(
        tmp_path, "from phonebridge import Agent\nagent = Agent(\n", "--port", "70000",
        PHONEBRIDGE_MAX_CALLS="lots", PHONEBRIDGE_DRAIN_TIMEOUT_S="soon", PHONEBRIDGE_FALLBACK_DIAL="call Bob",
        PHONEBRIDGE_FALLBACK_SAY="Sorry\x01", PHONEBRIDGE_LOG_LEVEL="LOUD",
    )
    lines = _refused(result).splitlines()
    assert lines[0] == "phonebridge: 8 configuration problems:"
    assert [line.split(":")[0].split("=")[0] for line in lines[1:]] == [
        "  - log level 'LOUD' (--log-level or PHONEBRIDGE_LOG_LEVEL)",
        "  - PHONEBRIDGE_MAX_CALLS", "  - PHONEBRIDGE_DRAIN_TIMEOUT_S", "  - PHONEBRIDGE_FALLBACK_SAY",
        "  - PHONEBRIDGE_FALLBACK_DIAL", "  - port '70000' (--port or PORT)",
        f"  - agent '{tmp_path / 'agent.py'}' does not compile",
        "  - no credentials the Gemini SDK can use",
    ]


def test_serve_help_shows_the_defaults(capsys, monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 8080)" in out and "(default: 0.0.0.0)" in out and "(default: 0)" in out
