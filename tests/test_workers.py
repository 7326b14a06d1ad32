"""serve --workers: core counting, the supervisor (stop, restart, start-up failure, kill), and a real 2-worker server."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phonebridge.server.workers import Supervisor, default_workers, resolve_workers

CORES = len(os.sched_getaffinity(0))


class SteppingClock:
    """Each reading is `step` seconds after the previous one: uptimes look long, deadlines pass at once."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


# -- worker targets (module level: spawned interpreters import them by name) ---------------------------------

def _wait_for_sigterm(ready: Any) -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    ready.put(os.getpid())
    stopped.wait()


def _crash_first_time(marker: str, ready: Any) -> None:
    if not os.path.exists(marker):
        Path(marker).write_text("crashed once")
        raise SystemExit(3)
    _wait_for_sigterm(ready)


def _crash(code: int) -> None:
    raise SystemExit(code)


def _ignore_sigterm(ready: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.put(os.getpid())
    threading.Event().wait()


def _sigterm_self_after(ready: Any, count: int) -> threading.Thread:
    """Once `count` workers reported ready, SIGTERM this (the supervising) process, as an operator would."""
    def run() -> None:
        for _ in range(count):
            ready.get(timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- core counting ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", CORES), ("100000 100000\n", 1), ("150000 100000\n", min(CORES, 2)), ("50000 100000\n", 1)],
)
def test_default_workers_is_cores_capped_by_the_cgroup_quota(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert default_workers(path) == expected


def test_default_workers_without_a_cgroup_file_is_the_affinity_set(tmp_path: Path) -> None:
    assert default_workers(tmp_path / "absent") == CORES


def test_resolve_workers() -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == default_workers()
    with pytest.raises(ValueError, match="--workers"):
        resolve_workers(-1)


# -- the supervisor ------------------------------------------------------------------------------------------

def test_sigterm_stops_every_worker_and_returns_0() -> None:
    ready = multiprocessing.get_context("spawn").Queue()
    _sigterm_self_after(ready, 2)
    supervisor = Supervisor(2, _wait_for_sigterm, (ready,), kill_after_s=60)
    assert supervisor.run() == 0
    assert sorted(supervisor.exits) == [(0, 0), (1, 0)]


def test_a_worker_that_dies_after_start_up_is_restarted(tmp_path: Path) -> None:
    ready = multiprocessing.get_context("spawn").Queue()
    _sigterm_self_after(ready, 1)
    supervisor = Supervisor(
        1, _crash_first_time, (str(tmp_path / "marker"), ready), kill_after_s=1e9, clock=SteppingClock(10.0)
    )
    assert supervisor.run() == 0
    assert supervisor.exits == [(0, 3), (0, 0)]


def test_a_worker_failing_at_start_up_is_not_restarted_and_stops_the_others() -> None:
    supervisor = Supervisor(2, _crash, (7,), kill_after_s=60, clock=SteppingClock(0.001))
    assert supervisor.run() == 1
    # The first failure stops the other worker (which may have failed too, or been stopped while starting).
    assert len(supervisor.exits) == 2 and supervisor.exits[0][1] == 7
    assert {code for _, code in supervisor.exits} <= {7, -signal.SIGTERM}


def test_a_worker_still_running_after_the_drain_timeout_is_killed() -> None:
    ready = multiprocessing.get_context("spawn").Queue()
    _sigterm_self_after(ready, 1)
    supervisor = Supervisor(1, _ignore_sigterm, (ready,), kill_after_s=5.0, clock=SteppingClock(10.0))
    assert supervisor.run() == 1
    assert supervisor.exits == [(0, -signal.SIGKILL)]


# -- the real thing: `phonebridge serve --workers 2` ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthz(port: int) -> dict[str, Any]:
    # A new connection per request: SO_REUSEPORT balances connections, not requests.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.status == 200
        return dict(json.loads(response.read()))
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    agent = tmp_path / "agent.py"
    agent.write_text('from phonebridge import Agent\nagent = Agent(instructions="x")\n')
    port = _free_port()
    # serve refuses to start without credentials the SDK can use; no call is placed, so any key does.
    env = {**os.environ, "PHONEBRIDGE_VALIDATE_SIGNATURES": "false", "PHONEBRIDGE_DRAIN_TIMEOUT_S": "5",
           "GEMINI_API_KEY": "test-key"}
    for name in ("PHONEBRIDGE_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "phonebridge.cli", "serve", "--agent", str(agent), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_workers_share_the_port_and_stop_cleanly_on_sigterm(server: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server
    assert process.stderr is not None
    serving = 0
    for line in process.stderr:  # await both workers' "serving" lines (JSON logs: stderr is not a terminal)
        serving += "phonebridge serving" in line
        if serving == 2:
            break
    assert serving == 2, "the workers never both started"
    assert "pid" in _healthz(port), "/healthz must report the answering worker's pid (app.py healthz)"
    pids = {_healthz(port)["pid"] for _ in range(200)}
    assert len(pids) == 2 and process.pid not in pids
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    rest = process.stderr.read()
    assert rest.count("phonebridge stopped") == 2
