"""`phonebridge serve --workers N`: N processes sharing one port (SO_REUSEPORT), each with its own loop.

Calls are independent (no state is shared between calls), so N workers are N copies of the single-process
server; the kernel spreads new connections across them. The parent only supervises:

- Workers are started with the *spawn* method: each is a fresh interpreter that loads the agent itself,
  so nothing the parent imported (threads, sockets, an SDK's client) is inherited half-alive.
- SIGTERM/SIGINT to the parent is forwarded to every worker; each drains (refuses new calls, lets active
  ones finish) exactly as a single server does. The parent waits for them and returns 0 when every worker
  exited 0. A worker still alive `drain_timeout_s + KILL_GRACE_S` after the signal is killed.
- A worker that dies on its own (a crash, the OOM killer) is logged and restarted, so one bad call cannot
  take capacity away for good. A worker that dies within `MIN_UPTIME_S` of starting is not restarted:
  that is a start-up failure (port in use, a broken agent) that a restart would only repeat, so the
  parent stops the others and returns 1.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from phonebridge.server.config import Settings
from phonebridge.server.serving import run_loop, serve

log = logging.getLogger("phonebridge.workers")

MIN_UPTIME_S = 5.0
KILL_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def default_workers(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """One worker per core this process may use: the CPU affinity set, capped by a cgroup v2 CPU quota.

    os.cpu_count() reports the host's cores; in a container limited to 2 CPUs on a 64-core host that
    would start 64 workers fighting over 2 CPUs.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_cpu_max)
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_quota(path: Path) -> int | None:
    """CPUs allowed by cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD"), rounded up; None if unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def resolve_workers(requested: int) -> int:
    """`--workers 0` (the default) means one per core; a positive number is taken as given."""
    if requested < 0:
        raise ValueError(f"--workers must be 0 (one per core) or more, got {requested}")
    return requested or default_workers()


def run_worker(agent_spec: str, settings: Settings, host: str, port: int, log_level: str = "INFO") -> None:
    """A worker's entry point (in its own interpreter): load the agent, serve until signalled."""
    # Until serve() installs its loop's handlers, a stop signal simply ends the worker cleanly.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_cleanly)
    from phonebridge.agent.definition import load_agent
    from phonebridge.server.logs import setup_logging

    setup_logging(log_level)
    agent = load_agent(agent_spec)
    raise SystemExit(run_loop(serve(agent, settings, host, port, reuse_port=True)))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float


class Supervisor:
    """Starts, restarts and stops the worker processes. `target` is the worker function (a parameter for tests)."""

    def __init__(
        self, count: int, target: Callable[..., None], args: tuple[object, ...], *, kill_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count, self._target, self._args = count, target, args
        self._kill_after_s, self._clock = kill_after_s, clock
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._kill_at: float | None = None  # set when stopping; cleared once the stragglers are killed
        self._failed = False
        self._wake_r, self._wake_w = -1, -1
        self.exits: list[tuple[int, int | None]] = []  # (worker index, exit code), in the order they exited

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited; 0 if all stopped cleanly."""
        # The signal handler writes to this pipe: a wait() blocked with no deadline must wake to set one.
        self._wake_r, self._wake_w = os.pipe()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            for index in range(self._count):
                if not self._stopping:  # a signal during start-up: start no more
                    self._start(index)
            while self._workers:
                self._wait_once()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return 1 if self._failed else 0

    def stop(self) -> None:
        """Ask every worker to drain and exit (what SIGTERM to the parent does)."""
        if not self._stopping:
            self._stopping = True
            self._kill_at = self._clock() + self._kill_after_s
        for worker in self._workers.values():
            if worker.process.pid is not None and worker.process.exitcode is None:
                os.kill(worker.process.pid, signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(self._workers))
        self.stop()
        os.write(self._wake_w, b"!")

    def _start(self, index: int) -> None:
        process = self._ctx.Process(
            target=self._target, args=self._args, name=f"phonebridge-worker-{index}", daemon=False
        )
        process.start()
        self._workers[index] = _Worker(index, process, self._clock())
        log.info("worker %d started (pid %s)", index, process.pid)

    def _wait_once(self) -> None:
        # Capped: poll() overflows on huge timeouts, and waking once an hour to recompute costs nothing.
        timeout = None if self._kill_at is None else min(3600.0, max(0.0, self._kill_at - self._clock()))
        sentinels = [w.process.sentinel for w in self._workers.values()]
        ready = multiprocessing.connection.wait([*sentinels, self._wake_r], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 64)
            return  # woken by a stop signal: go round again with the kill deadline
        if not ready and self._kill_at is not None:
            self._kill_remaining()
            return
        for worker in [w for w in self._workers.values() if w.process.sentinel in ready]:
            self._reap(worker)

    def _reap(self, worker: _Worker) -> None:
        worker.process.join()
        code = worker.process.exitcode
        del self._workers[worker.index]
        self.exits.append((worker.index, code))
        if self._stopping:
            # -SIGTERM: the signal reached a worker still importing, before it could serve a call.
            if code not in (0, -signal.SIGTERM):
                self._failed = True
                log.warning("worker %d (pid %s) exited with %s while stopping", worker.index, worker.process.pid, code)
            return
        uptime = self._clock() - worker.started
        if uptime < MIN_UPTIME_S:
            log.error(
                "worker %d (pid %s) exited with %s %.1f s after starting: not restarting; stopping all",
                worker.index, worker.process.pid, code, uptime,
            )
            self._failed = True
            self.stop()
            return
        log.error("worker %d (pid %s) died with %s after %.0f s: restarting it", worker.index, worker.process.pid, code, uptime)
        self._start(worker.index)

    def _kill_remaining(self) -> None:
        for worker in self._workers.values():
            log.error("worker %d (pid %s) still running after the drain timeout: killing it", worker.index, worker.process.pid)
            worker.process.kill()
        self._failed = True
        self._kill_at = None  # killed: now just reap them


def serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --workers N` with N != 1 (0 = one per core): supervise N workers on `args.host:args.port`."""
    count = resolve_workers(args.workers)
    log.info("starting %d workers on %s:%d", count, args.host, args.port)
    supervisor = Supervisor(
        count, run_worker, (args.agent, settings, args.host, args.port, getattr(args, "log_level", "INFO")),
        kill_after_s=settings.drain_timeout_s + KILL_GRACE_S,
    )
    return supervisor.run()
