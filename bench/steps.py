"""One load step in separate processes: the load generator (bench/loadgen.py: Live server + callers) and
`phonebridge serve --workers 1`, each pinned to its own core when taskset exists. Everything is bounded: each
wait has a deadline and every process started here is terminated, then killed, by its pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import samplers

BENCH = Path(__file__).resolve().parent
PUBLIC_URL = "https://bench.example.com"
AUTH_TOKEN = "bench-auth-token"
ACCOUNT_SID = "AC" + "b" * 32


def _pinned(core: int | None, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if core is None or taskset is None or (os.cpu_count() or 1) < 2:
        return argv
    return [taskset, "-c", str(core), *argv]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_json_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({proc.poll()}) before answering")
        if line.startswith("{"):
            return dict(json.loads(line))
    raise TimeoutError("load generator did not answer in time")


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"phonebridge serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)  # another process's start-up: nothing to await but the port
    raise TimeoutError("phonebridge serve did not become healthy")


def _stop(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


SERIES = {
    "inbound": r'phonebridge_bridge_latency_seconds_bucket\{direction="inbound",le="([^"]+)"\} (\S+)',
    "outbound": r'phonebridge_bridge_latency_seconds_bucket\{direction="outbound",le="([^"]+)"\} (\S+)',
    # How late the server's loop ran its timers: queueing behind other calls, which the histogram above misses.
    "loop_lag": r'phonebridge_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)',
    # The bridge's own reaction times (its clock: message off the socket -> clear / handler / response sent).
    **{f"reaction_{kind}": rf'phonebridge_reaction_seconds_bucket\{{kind="{kind}",le="([^"]+)"\}} (\S+)'
       for kind in ("clear", "tool_start", "tool_reply")},
}


def scrape_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as response:
        return str(response.read().decode())


def p99_buckets(after: str, before: str = "") -> dict[str, float]:
    """The bridge's own view, from its Prometheus histograms: the upper bound of the bucket holding the p99 of
    each series, over the samples added between the `before` and `after` scrapes (the measured window: not
    the dialling, whose TLS handshakes hold the loop)."""
    out: dict[str, float] = {}
    for name, pattern in SERIES.items():
        earlier = {le: float(n) for le, n in re.findall(pattern, before)}
        out[name] = _p99_bucket([(le, float(n) - earlier.get(le, 0.0)) for le, n in re.findall(pattern, after)])
    return out


def _p99_bucket(found: list[tuple[str, float]]) -> float:
    buckets = [(float(le), n) for le, n in found]
    total = buckets[-1][1] if buckets else 0.0
    return next((le for le, n in buckets if total and n >= 0.99 * total), float("nan"))


def tree_env(tree: Path) -> dict[str, str]:
    """The environment and working directory under which a Python process imports phonebridge from `tree`
    (a checkout of another revision, say): PYTHONPATH comes before the venv's own path entries, and the working
    directory, which `python -m` puts first, is that tree too."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}


def imported_from(env: dict[str, str], cwd: Path) -> str:
    """Where a process started like the server imports phonebridge from: proof that a baseline is the baseline."""
    code = "import phonebridge, os; print(os.path.dirname(os.path.dirname(os.path.abspath(phonebridge.__file__))))"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def run_step(
    calls: int, seconds: float, profile: Path | None = None, tree: Path | None = None, lockstep: bool = False,
    perf: Path | None = None,
) -> dict[str, Any]:
    """Start the load generator and a fresh server, run `calls` calls for `seconds`, return the numbers.

    With `tree`, the server imports phonebridge from that checkout (bench/run --baseline); the load generator
    and the agent are this tree's either way, so both servers face the very same load. `profile` and `perf`
    (paths) sample the server through the measured window (bench/samplers.py)."""
    python = sys.executable
    root = tree if tree is not None else BENCH.parent
    base_env = tree_env(tree) if tree is not None else dict(os.environ)
    gen = subprocess.Popen(
        _pinned(1, [python, str(BENCH / "loadgen.py")]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=BENCH,
    )
    serve: subprocess.Popen[bytes] | None = None
    try:
        live = _read_json_line(gen, time.monotonic() + 30)
        port = _free_port()
        env = {
            **base_env, "GOOGLE_GEMINI_BASE_URL": live["base_url"], "SSL_CERT_FILE": live["ca_file"],
            "GEMINI_API_KEY": "bench", "PHONEBRIDGE_PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "PHONEBRIDGE_MAX_CALLS": "100000", "PHONEBRIDGE_DRAIN_TIMEOUT_S": "5",
        }
        serve = subprocess.Popen(_pinned(0, [
            python, "-m", "phonebridge.cli", "--log-level", "WARNING", "serve", "--agent", str(BENCH / "agent.py"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]), env=env, cwd=root)
        _wait_healthy(port, serve)
        spec = {"server_url": f"http://127.0.0.1:{port}", "serve_pid": serve.pid, "calls": calls,
                "seconds": seconds, "public_url": PUBLIC_URL, "auth_token": AUTH_TOKEN, "account_sid": ACCOUNT_SID,
                "lockstep": lockstep, "profile": profile and str(profile), "perf": perf and str(perf)}
        assert gen.stdin is not None
        gen.stdin.write(json.dumps(spec) + "\n")
        gen.stdin.flush()
        result = dict(_read_json_line(gen, time.monotonic() + seconds + calls * 0.2 + 65)["result"])
        result["bridge_p99_bucket"] = p99_buckets(result.pop("metrics_after", ""), result.pop("metrics_before", ""))
        result["tree"] = str(root)
        if perf is not None:
            result["perf_split"] = samplers.perf_split(perf)
        return result
    finally:
        for proc in (serve, gen):
            if proc is not None:
                _stop(proc)

