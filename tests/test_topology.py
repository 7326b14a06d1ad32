"""The production topology on one machine (bench/topology, shortened): nginx rendered from the shipped
deploy/nginx/phonebridge.conf terminates TLS in front of `phonebridge serve` instances; signed calls through
it; a rolling restart under load loses no call; a kill -9 ends only the killed instance's calls.

The pure parts (config rendering, gap arithmetic, fallback detection) run in every suite; the topology itself
is marked slow (deselect with `-m "not slow"`) and needs Debian's nginx (.ci/packages.txt installs it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import topology  # noqa: E402
import topology_calls  # noqa: E402
import topology_procs  # noqa: E402

SHIPPED = topology_procs.SHIPPED_CONF.read_text()


def rendered(upstreams: list[str]) -> str:
    return topology_procs.render_site(SHIPPED, port=8443, cert=Path("/t/c.pem"), key=Path("/t/c.key"),
                                      access_log=Path("/t/access.log"), upstreams=upstreams)


def test_the_rendered_config_changes_only_addresses_and_paths() -> None:
    site = rendered(["127.0.0.1:1001", "127.0.0.1:1002"])
    directives = re.sub(r"#.*", "", site)
    assert "listen 127.0.0.1:8443 ssl;" in directives
    assert "10.0.0.1" not in directives and "agent.example.com" not in directives and "/var/log" not in directives
    assert re.findall(r"^\s*server (\S+) (.*);$", site, flags=re.MULTILINE) == [
        ("127.0.0.1:1001", "max_fails=1 fail_timeout=10s"), ("127.0.0.1:1002", "max_fails=1 fail_timeout=10s"),
    ]
    strip = re.compile(r"^\s*(server |listen|server_name|ssl_certificate|access_log).*\n", re.MULTILINE)
    assert strip.sub("", site) == strip.sub("", SHIPPED)  # every proxy setting is the shipped one


@pytest.mark.parametrize("line", ["listen 443 ssl;", "server 10.0.0.12:8080 max_fails=1 fail_timeout=10s;",
                                  "access_log /var/log/nginx/phonebridge.access.log phonebridge;"])
def test_a_shipped_line_the_topology_substitutes_cannot_change_unnoticed(line: str) -> None:
    with pytest.raises(topology_procs.ConfigDrift):
        topology_procs.render_site(SHIPPED.replace(line, "# " + line), port=1, cert=Path("c"), key=Path("k"),
                                   access_log=Path("a"), upstreams=["127.0.0.1:2"])


def test_longest_gap_counts_dead_air_but_not_the_callers_own_turn() -> None:
    tone, silent = b"\x10" * 800, b"\xff" * 160  # 0.1 s of audio; 20 ms of mu-law silence
    heard = [(0.0, tone), (0.1, tone), (0.5, tone), (2.0, tone)]  # 0.3 s dropout, then a reply after speech
    sent = [(0.6 + i * 0.02, b"\x20" * 160) for i in range(40)] + [(1.4 + i * 0.02, silent) for i in range(10)]
    gap, at = topology_calls.longest_gap(heard, sent)
    assert (round(gap, 3), at) == (0.6, 2.0)  # the caller stopped at 1.4 s; the reply came at 2.0 s
    assert topology_calls.longest_gap(heard[:3], [])[0] == pytest.approx(0.3)


def test_fallback_is_detected_only_after_connect() -> None:
    connect = '<Connect><Stream url="wss://x/twilio/media" /></Connect>'
    assert topology_calls.has_fallback_after_connect(f"<Response>{connect}<Say>Sorry</Say></Response>")
    assert not topology_calls.has_fallback_after_connect(f"<Response><Say>Hi</Say>{connect}</Response>")


needs_nginx = pytest.mark.skipif(not os.access(topology_procs.NGINX, os.X_OK),
                                 reason=f"{topology_procs.NGINX} missing: install Debian's nginx (.ci/packages.txt)")


@needs_nginx
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    tls = topology_procs.ProxyTLS.make(tmp_path)
    topology_procs.write_site(tmp_path, topology_procs.free_port(), tls, ["127.0.0.1:1001", "127.0.0.1:1002"])
    conf = tmp_path / "nginx.conf"
    conf.write_text(topology_procs.main_conf(tmp_path, tmp_path / "phonebridge.conf"))
    check = subprocess.run([topology_procs.NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "syntax is ok" in check.stderr, check.stderr


@pytest.mark.slow
@needs_nginx
@pytest.mark.timeout(240)
async def test_rolling_restart_and_kill_9_behind_nginx(tmp_path: Path) -> None:
    plan = topology.Plan(wave=4, trickle_s=1.0, after_replacement=3, turns=1, drain_timeout_s=60.0)
    report = await topology.run(plan, tmp_path)
    print(report)  # the figures, in the test's output (-s) or on failure

    signatures = report["signatures"]
    assert signatures["voice_with_query"] == 200 and signatures["status"] == 204
    assert signatures["voice_signed_over_instance_url"] == 403  # signatures are over the PUBLIC URL only
    assert re.fullmatch(r"wss://localhost:\d+/twilio/media", signatures["stream_url"])

    rolling = report["rolling_restart"]
    assert rolling["active_at_sigterm"]["A"] >= 1, rolling  # A had calls to drain
    assert (rolling["dropped"], rolling["error"]) == (0, 0), rolling
    assert rolling["completed"] + rolling["refused"] == rolling["started"], rolling
    assert rolling["A_exit_code"] == 0 and rolling["webhooks_on_A_after_removal"] == 0, rolling
    assert rolling["served_by"]["/twilio/media"].get("C", 0) >= 1, rolling  # the replacement takes calls

    killed = report["kill_9"]
    victim_calls = killed["active_at_kill"]["B"]
    assert victim_calls >= 1 and killed["error"] == 0, killed
    assert killed["dropped"] == killed["dropped_with_fallback_twiml"] == victim_calls, killed
    assert killed["first_wave_completed"] == killed["active_at_kill"]["C"], killed  # untouched
    assert killed["after_kill_completed"] == plan.after_replacement, killed
    assert killed["webhooks_on_victim_after_kill"] == 0, killed
