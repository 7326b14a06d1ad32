"""Samplers of the server during a step's measured window (`bench/run --profile`, `--perf`).

py-spy gives the Python stacks; perf (Debian's linux-perf, sampling the cpu-clock, so it works where a VM
offers no hardware counters) gives what no Python profiler can: how the server's CPU splits between the
interpreter, the kernel (the sockets' syscalls and loopback TCP), OpenSSL, numpy and the other shared objects.
That split says what any faster Python could still win, and what only moving work out of Python could.

The load generator starts them when its window opens, so dialling and handshakes are not in them (before
2026-12-03 py-spy started with the server and took in the dialling too). Each stops by itself after the
window; the generator waits for them, bounded, before it reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

# What each group's shared objects are called in `perf report --sort dso` (first match wins).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Python interpreter", ("libpython", "python3")),
    ("kernel", ("[kernel",)),
    ("OpenSSL", ("libcrypto", "libssl", "_ssl.")),
    ("numpy + BLAS", ("_multiarray", "libscipy_openblas", "libopenblas", "libblas", "_umath")),
    ("libc", ("libc.so", "libm.so", "ld-linux", "[vdso]")),
    ("uvloop", ("loop.cpython",)),
)
OTHER = "other C extensions"
_DSO_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def start(pid: int, seconds: float, profile: str | None, perf: str | None) -> list[subprocess.Popen[bytes]]:
    """Start whichever samplers were asked for on `pid`, for `seconds`: each writes its file and exits."""
    procs = []
    for out, begin, tool in ((profile, py_spy, "py-spy (the bench extra)"), (perf, perf_record, "perf (linux-perf)")):
        if not out:
            continue
        proc = begin(pid, seconds, Path(out))
        if proc is None:  # asked for and not there: said, not silently an empty table
            print(f"samplers: {tool} is not installed, so no {out}", file=sys.stderr, flush=True)
        else:
            procs.append(proc)
    return procs


def finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for samplers that stop by themselves; end any that do not within `timeout`."""
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def py_spy_path() -> str | None:
    """py-spy on PATH, or beside this Python (the bench extra installs it into the venv); None if neither."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return spy if Path(spy).exists() else None


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = py_spy_path()
    if spy is None:
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--format", "raw",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def perf_record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    perf = shutil.which("perf")
    if perf is None:
        return None
    return subprocess.Popen(
        [perf, "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(out), "--",
         "sleep", f"{seconds:g}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def perf_split(data: Path) -> dict[str, float]:
    """Share of the samples in `data` (a perf.data) per group, largest first; {} when perf cannot read it."""
    perf = shutil.which("perf")
    if perf is None or not data.exists():
        return {}
    report = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso", "--stdio"],
                            capture_output=True, text=True, timeout=120)
    return split(report.stdout)


def split(report: str) -> dict[str, float]:
    """`perf report --sort dso --stdio` text -> {group: share in 0..1}, largest first."""
    shares: dict[str, float] = {}
    for line in report.splitlines():
        found = None if line.startswith("#") else _DSO_LINE.match(line)
        if found is not None:
            group = group_of(found.group(2))
            shares[group] = shares.get(group, 0.0) + float(found.group(1)) / 100
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def group_of(dso: str) -> str:
    return next((name for name, prefixes in GROUPS if dso.startswith(prefixes)), OTHER)
