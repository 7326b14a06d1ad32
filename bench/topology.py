"""`bench/topology`: the production topology on one machine. nginx terminates TLS (a test CA) and proxies to
`phonebridge serve` instances, configured from the shipped deploy/nginx/phonebridge.conf; the instances talk
to one LiveEmulator; real-time TwilioCallers sign over the PUBLIC https/wss URL and dial through the proxy.

Scenarios (each its own nginx and instances, everything stopped by pid at the end):
- signatures: webhooks (with a query string), status callbacks and upgrades signed over the public URL pass
  through the proxy and validate; one signed over an instance's own URL is refused.
- rolling restart: calls up on A and B, a trickle of new ones arriving; SIGTERM A. A deploy controller (this
  script) polls A's /readyz, and when it answers 503 removes A from the upstream and reloads nginx (nginx OSS
  has no active health checks; a draining instance still accepts connections, so only the controller can take
  it out). A's calls finish, A exits 0, a replacement C starts and is added when its /readyz answers 200.
- kill -9: calls up on A and B; SIGKILL A. A's calls end (Twilio would run the TwiML after <Connect>), B's
  go on, and new calls reach B: nginx's passive check (connection refused -> proxy_next_upstream, max_fails)
  routes them with no controller at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

# This checkout's phonebridge, for this process and (through PYTHONPATH) the instances it starts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phonebridge.testing.live_emulator import LiveEmulator  # noqa: E402
from topology_calls import Load, call_script, has_fallback_after_connect  # noqa: E402
from topology_procs import AUTH_TOKEN, Instance, Nginx, start_instance, start_nginx  # noqa: E402

PROBE_PERIOD_S = 0.2  # the controller's readiness probe period (Kubernetes' readinessProbe periodSeconds)
LAG_BOUND_S = 0.25  # a bucket bound of phonebridge_event_loop_lag_seconds: an instance stalled this long
READY_PATH = "/readyz"  # what the controller probes; tests/test_deploy.py checks the manifests probe it too


@dataclass
class Plan:
    wave: int = 4  # calls up when the instance is stopped
    trickle_s: float = 0.5  # a new call every this many seconds during the restart
    after_replacement: int = 4  # trickled calls after the replacement joined
    turns: int = 2  # caller utterances per call (each answered); a call lasts ~1 + 1.8 * turns s
    drain_timeout_s: float = 60.0


class Topology:
    """An emulator, instances and nginx in one work directory; `close()` stops whatever still runs."""

    def __init__(self, workdir: Path, emulator: LiveEmulator) -> None:
        self.workdir, self.emulator = workdir, emulator
        self.instances: dict[str, Instance] = {}
        self.nginx: Nginx | None = None

    async def start(self, names: list[str]) -> None:
        self.nginx = await start_nginx(self.workdir / "nginx", [])
        await asyncio.gather(*(self.add(name) for name in names))
        await self.route(names)

    async def add(self, name: str, drain_timeout_s: float = 60.0) -> Instance:
        assert self.nginx is not None
        workdir = self.workdir / name
        workdir.mkdir(exist_ok=True)
        instance = await start_instance(name, workdir, self.emulator.client_env(), self.nginx.url, drain_timeout_s)
        self.instances[name] = instance
        return instance

    async def route(self, names: list[str]) -> None:
        """The controller's move: the upstream is exactly these instances."""
        assert self.nginx is not None
        await self.nginx.reload([self.instances[n].address for n in names])

    def served_by(self, since: int = 0) -> dict[str, Counter[str]]:
        """Per request path, how many requests each instance answered last (after nginx's retries), counting
        from access-log line `since`."""
        assert self.nginx is not None
        names = {i.address: name for name, i in self.instances.items()}
        table: dict[str, Counter[str]] = {}
        for row in self.nginx.requests()[since:]:
            table.setdefault(row["path"], Counter())[names.get(row["upstream"], row["upstream"])] += 1
        return table

    def crossed(self, since: int = 0) -> dict[str, int]:
        """Calls whose stream landed on another instance than their webhook. A caller's webhook and upgrade
        share one client connection to nginx (keep-alive), so nginx's connection number pairs them."""
        assert self.nginx is not None
        by_conn: dict[str, dict[str, str]] = {}
        for row in self.nginx.requests()[since:]:
            by_conn.setdefault(row["conn"], {})[row["path"]] = row["upstream"]
        pairs = [c for c in by_conn.values() if "/twilio/voice" in c and "/twilio/media" in c]
        return {"paired": len(pairs), "crossed": sum(c["/twilio/voice"] != c["/twilio/media"] for c in pairs)}

    async def close(self) -> None:
        for instance in self.instances.values():
            await instance.kill()
            (self.workdir / f"{instance.name}.log").write_text("\n".join(instance.lines) + "\n")
        if self.nginx is not None:
            await self.nginx.stop()
            (self.workdir / "nginx.log").write_text("\n".join(self.nginx.lines) + "\n")


async def check_signatures(topo: Topology) -> dict[str, Any]:
    """Signed over the public URL: accepted through the proxy. Signed over an instance's own URL: refused."""
    assert topo.nginx is not None
    nginx, validator = topo.nginx, RequestValidator(AUTH_TOKEN)
    form = {"CallSid": "CA" + "1" * 32, "From": "+15551230001", "To": "+15557654321", "AccountSid": "AC" + "5" * 32}
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(ssl=nginx.tls.client)
    async with aiohttp.ClientSession(connector=connector) as session:
        for label, path, signed_over in (
            ("voice_with_query", "/twilio/voice?direction=inbound&x=a%20b", nginx.url),
            ("status", "/twilio/status", nginx.url),
            ("voice_signed_over_instance_url", "/twilio/voice", next(iter(topo.instances.values())).url),
        ):
            body = {**form, "CallStatus": "ringing"} if "voice" in path else {**form, "StreamEvent": "stream-started"}
            signature = validator.compute_signature(signed_over + path, body)
            async with session.post(nginx.url + path, data=body, headers={"X-Twilio-Signature": signature}) as r:
                results[label] = r.status
                if label == "voice_with_query":
                    results["stream_url"] = (await r.text()).split('url="', 1)[1].split('"', 1)[0]
    return results


async def rolling_restart(topo: Topology, plan: Plan) -> dict[str, Any]:
    assert topo.nginx is not None
    a, events = topo.instances["A"], {}
    load = Load(topo.nginx, plan.turns)
    await load.wave(plan.wave)
    before = {name: await i.active_calls() for name, i in topo.instances.items()}
    trickle = asyncio.create_task(load.trickle(plan.trickle_s))
    t0 = time.time()
    a.proc.send_signal(signal.SIGTERM)
    await a.wait_count("draining:")
    events["readyz_503_after_s"] = await wait_ready(a, 503) - t0
    await topo.route(["B"])
    removed_at = time.time()
    events["removed_after_s"] = removed_at - t0
    replacement = asyncio.create_task(topo.add("C", plan.drain_timeout_s))
    events["A_exit_code"] = await a.wait_exit(timeout=plan.drain_timeout_s + 30)
    events["A_exited_after_s"] = time.time() - t0
    await replacement
    await wait_ready(topo.instances["C"], 200)
    await topo.route(["B", "C"])
    events["C_added_after_s"] = time.time() - t0
    await load.dialled(len(load.records) + plan.after_replacement)
    load.stop_trickle()
    await trickle
    await load.finish()
    lag = {name: await topo.instances[name].loop_lag_over(LAG_BOUND_S) for name in ("B", "C")}
    late_on_a = [r for r in topo.nginx.requests() if r["upstream"] == a.address and float(r["t"]) > removed_at
                 and r["path"] == "/twilio/voice"]
    return {**load.counts(), "active_at_sigterm": before, **{k: round(v, 2) if isinstance(v, float) else v
            for k, v in events.items()}, "webhooks_on_A_after_removal": len(late_on_a),
            "served_by": {path: dict(c) for path, c in topo.served_by().items()},
            "webhook_and_stream_pairs": topo.crossed(),
            f"instance_loop_lag_samples_over_{LAG_BOUND_S}s": lag,
            "A_drain_log": [line for line in a.lines if "drain" in line], "longest_gaps": load.worst(),
            "details": load.details()}


async def kill_nine(topo: Topology, plan: Plan, victim: str, survivor: str) -> dict[str, Any]:
    assert topo.nginx is not None
    dead, alive = topo.instances[victim], topo.instances[survivor]
    for instance in (dead, alive):  # the earlier scenario's calls have left, so the counts below are exact
        await wait_until(instance, "/healthz", lambda status, body: body["active_calls"] == 0)
    logged = len(topo.nginx.requests())
    load = Load(topo.nginx, plan.turns)
    first = await load.wave(plan.wave)
    before = {victim: await dead.active_calls(), survivor: await alive.active_calls()}
    dead.proc.send_signal(signal.SIGKILL)
    await dead.wait_exit(timeout=20)
    killed_at = time.time()
    after = await load.wave(plan.after_replacement)  # no controller: nginx's passive check alone
    await load.finish()
    dropped = [r for r in first if r.outcome == "dropped"]
    return {**load.counts(), "active_at_kill": before,
            "dropped_with_fallback_twiml": sum(has_fallback_after_connect(r.twiml) for r in dropped),
            "first_wave_completed": sum(r.outcome == "completed" for r in first),
            "after_kill_completed": sum(r.outcome == "completed" for r in after),
            "webhooks_on_victim_after_kill": sum(r["path"] == "/twilio/voice" and r["upstream"] == dead.address
                                                 and float(r["t"]) > killed_at for r in topo.nginx.requests()),
            "retried_on_survivor": sum("," in r["tried"] for r in topo.nginx.requests()[logged:]),
            "served_by": {path: dict(c) for path, c in topo.served_by(since=logged).items()},
            "details": load.details(), "longest_gaps": load.worst()}


async def wait_ready(instance: Instance, status: int, timeout: float = 60.0) -> float:
    """Probe /readyz (as an orchestrator does) until it answers `status`; returns when it did."""
    await wait_until(instance, READY_PATH, lambda got, body: got == status, timeout)
    return time.time()


async def wait_until(instance: Instance, path: str, done: Any, timeout: float = 60.0) -> None:
    """GET `path` every PROBE_PERIOD_S until `done(status, body)`: polling is what a probe is."""
    async with asyncio.timeout(timeout):
        while not done(*(await instance.get(path))):
            await asyncio.sleep(PROBE_PERIOD_S)


async def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    """One topology: A and B behind nginx; signatures; A replaced by C in a rolling restart; then B killed."""
    # The machine's load average: on a shared box the gaps are partly other jobs' (the outcomes are not).
    report: dict[str, Any] = {"plan": plan.__dict__, "loadavg_before": [round(x, 1) for x in os.getloadavg()]}
    began = time.monotonic()
    lag = asyncio.create_task(_loop_lag(report))
    async with LiveEmulator(lambda setup: call_script(plan.turns), speed=1.0) as emulator:
        topo = Topology(workdir, emulator)
        try:
            await topo.start(["A", "B"])
            report["startup_s"] = round(time.monotonic() - began, 2)
            report["signatures"] = await check_signatures(topo)
            report["rolling_restart"] = await rolling_restart(topo, plan)
            report["kill_9"] = await kill_nine(topo, plan, victim="B", survivor="C")
        finally:
            await topo.close()
            # What the model side saw go wrong (a WaitForCaller that timed out: the caller's turn never heard).
            failures = Counter(f.split(": ", 1)[-1][:120] for f in emulator.failures)
            report["emulator_failures"] = dict(failures)
    lag.cancel()
    report["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
    report["total_s"] = round(time.monotonic() - began, 2)
    return report


async def _loop_lag(report: dict[str, Any]) -> None:
    """This process's own event-loop lag (callers and emulator share it): a stall here is heard as a gap."""
    loop, worst = asyncio.get_running_loop(), 0.0
    while True:
        due = loop.time() + 0.05
        await asyncio.sleep(0.05)
        worst = max(worst, loop.time() - due)
        report["driver_loop_lag_max_s"] = round(worst, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/topology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults sized for a 2-core box: callers and the LiveEmulator share one driver process, and past ~10
    # concurrent real-time calls its own loop lag (the emulator wakes every waiting step on every message)
    # is what the callers would hear (see deploy/README.md).
    parser.add_argument("--calls", type=int, default=8, help="calls up when an instance is stopped")
    parser.add_argument("--turns", type=int, default=2, help="caller utterances per call")
    parser.add_argument("--trickle", type=float, default=0.5, help="seconds between new calls during the restart")
    parser.add_argument("--after", type=int, default=4, help="calls after the replacement joined / after the kill")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the logs (default: a temp dir)")
    args = parser.parse_args(argv)
    plan = Plan(wave=args.calls, trickle_s=args.trickle, after_replacement=args.after, turns=args.turns)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(plan, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="phonebridge-topology-") as tmp:
            report = asyncio.run(run(plan, Path(tmp)))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    rolling, killed = report["rolling_restart"], report["kill_9"]
    ok = rolling["dropped"] == 0 and rolling["error"] == 0 and killed["error"] == 0
    print(f"rolling restart: {rolling['started']} calls, {rolling['completed']} completed, {rolling['dropped']} dropped,"
          f" {rolling['refused']} refused politely, longest gap {rolling['longest_gap_s']} s;"
          f" kill -9: {killed['dropped']} dropped (on the killed instance), {killed['completed']} completed",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
