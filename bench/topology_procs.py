"""The parts of bench/topology, each a real process started and stopped by pid: `phonebridge serve`
instances and an nginx whose config is rendered from the shipped deploy/nginx/phonebridge.conf.

Every wait is on a process's own log line or on an HTTP answer, never a sleep. Only loopback addresses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import trustme

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONF = REPO / "deploy" / "nginx" / "phonebridge.conf"
NGINX = os.environ.get("PHONEBRIDGE_NGINX", "/usr/sbin/nginx")
PUBLIC_HOST = "localhost"  # the "public" name the proxy's certificate carries (loopback only here)
AUTH_TOKEN = "topology-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
AGENT_FILE = '''
from phonebridge import Agent
agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoggedProcess:
    """A subprocess whose stderr is read to its end in the background (the pipe never fills); lines kept."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name, self.proc = name, proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            try:
                line = json.loads(line)["msg"]
            except (ValueError, KeyError, TypeError):
                pass  # not a JSON log line (nginx, a traceback): keep it as it is
            self.lines.append(line)
            self._changed.set()
        self._changed.set()

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines)

    async def wait_count(self, fragment: str, count: int = 1, timeout: float = 30.0) -> None:
        """Until `count` log lines contain `fragment`; fails with the log if the process ends first."""
        async with asyncio.timeout(timeout):
            while self.count(fragment) < count:
                if self._reader.done():
                    raise AssertionError(f"{self.name} ended before logging {fragment!r}:\n" + self.tail())
                self._changed.clear()
                await self._changed.wait()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    async def wait_exit(self, timeout: float = 60.0) -> int:
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def kill(self) -> None:
        """Ensure the process is gone (cleanup); a no-op once it exited."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


class Instance(LoggedProcess):
    """`phonebridge serve --workers 1` on 127.0.0.1:port, the Live emulator reached by the SDK's environment."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, port: int) -> None:
        super().__init__(name, proc)
        self.port, self.url = port, f"http://127.0.0.1:{port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            return response.status, await response.json()

    async def loop_lag_over(self, threshold_s: float) -> int:
        """How many of the instance's 10 Hz loop-lag samples exceeded `threshold_s` (a bucket bound)."""
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as response:
            text = await response.text()
        total = over = 0.0
        for line in text.splitlines():
            if line.startswith("phonebridge_event_loop_lag_seconds_count"):
                total = float(line.split()[-1])
            elif line.startswith(f'phonebridge_event_loop_lag_seconds_bucket{{le="{threshold_s}"}}'):
                over = float(line.split()[-1])
        return int(total - over)

    async def active_calls(self) -> int:
        return int((await self.get("/healthz"))[1]["active_calls"])


async def start_instance(name: str, workdir: Path, client_env: dict[str, str], public_url: str,
                         drain_timeout_s: float) -> Instance:
    agent = workdir / "agent.py"
    agent.write_text(AGENT_FILE)
    port = free_port()
    env = {**os.environ, **client_env, "PHONEBRIDGE_PUBLIC_URL": public_url, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "PHONEBRIDGE_DRAIN_TIMEOUT_S": str(drain_timeout_s),
           "PHONEBRIDGE_LOG_LEVEL": "INFO", "PHONEBRIDGE_HEAP_TRIM_S": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phonebridge.cli", "serve", "--agent", str(agent), "--workers", "1",
        "--host", "127.0.0.1", "--port", str(port), env=env, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    instance = Instance(name, proc, port)
    try:
        await instance.wait_count("phonebridge serving", timeout=60)
    except BaseException:
        await instance.kill()
        raise
    return instance


# -- nginx ---------------------------------------------------------------------------------------------------

class ConfigDrift(AssertionError):
    """The shipped nginx example no longer has a line the topology substitutes: update both together."""


def _sub(pattern: str, replacement: str, text: str, count: int = 1, indent: bool = False) -> str:
    """Replace `pattern` exactly `count` times (ConfigDrift otherwise); `indent` keeps group 1 (the indent)."""
    new, n = re.subn(pattern, lambda m: (m.group(1) if indent else "") + replacement, text, flags=re.MULTILINE)
    if n != count:
        raise ConfigDrift(f"deploy/nginx/phonebridge.conf: {pattern!r} matched {n} times, expected {count}")
    return new


def render_site(shipped: str, *, port: int, cert: Path, key: Path, access_log: Path, upstreams: list[str]) -> str:
    """The shipped example with only addresses and paths replaced: every proxy setting is the shipped one."""
    server_line = re.search(r"^(\s*)server 10\.0\.0\.11:8080( [^;]*)?;$", shipped, flags=re.MULTILINE)
    if server_line is None:
        raise ConfigDrift("deploy/nginx/phonebridge.conf: no `server 10.0.0.11:8080 ...;` upstream line")
    indent, params = server_line.group(1), server_line.group(2) or ""
    servers = "\n".join(f"{indent}server {address}{params};" for address in upstreams) or f"{indent}server 127.0.0.1:9 down;"
    text = _sub(r"^\s*server 10\.0\.0\.1\d:8080[^;]*;\n", "", shipped, count=2)
    text = _sub(r"^(upstream phonebridge \{\n)", "upstream phonebridge {\n" + servers + "\n", text)
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("server_name agent.example.com;", f"server_name {PUBLIC_HOST};"),
                     ("ssl_certificate     /etc/ssl/certs/agent.example.com.pem;", f"ssl_certificate {cert};"),
                     ("ssl_certificate_key /etc/ssl/private/agent.example.com.key;", f"ssl_certificate_key {key};"),
                     ("access_log /var/log/nginx/phonebridge.access.log ", f"access_log {access_log} ")):
        # Anchored at the start of a directive line: the same words in a comment do not count.
        text = _sub(r"^(\s*)" + re.escape(old), new, text, indent=True)
    return text


def main_conf(prefix: Path, site: Path) -> str:
    """The top of the config (the part a distribution's /etc/nginx/nginx.conf is): everything in `prefix`."""
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would switch to `nobody`, who cannot enter a private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log stderr notice;\n"
            f"events {{ worker_connections 1024; }}\nhttp {{\n{temp}\n    access_log off;\n    include {site};\n}}\n")


@dataclass
class ProxyTLS:
    cert: Path
    key: Path
    client: ssl.SSLContext

    @classmethod
    def make(cls, workdir: Path) -> ProxyTLS:
        ca = trustme.CA(organization_name="phonebridge topology test CA")
        leaf = ca.issue_cert(PUBLIC_HOST, "127.0.0.1")
        cert, key = workdir / "proxy.pem", workdir / "proxy.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(cert), append=True)
        leaf.private_key_pem.write_to_path(str(key))
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(client)
        return cls(cert, key, client)


class Nginx(LoggedProcess):
    """nginx in the foreground (`daemon off`), its prefix, pid, temp paths and logs in `prefix`."""

    def __init__(self, proc: asyncio.subprocess.Process, prefix: Path, port: int, tls: ProxyTLS) -> None:
        super().__init__("nginx", proc)
        self.prefix, self.port, self.tls = prefix, port, tls
        self.url = f"https://{PUBLIC_HOST}:{port}"
        self.access_log = prefix / "access.log"
        self.reloads: list[tuple[float, list[str]]] = []  # (time.time() the new config serves, upstreams)

    def write_site(self, upstreams: list[str]) -> None:
        write_site(self.prefix, self.port, self.tls, upstreams)

    async def reload(self, upstreams: list[str]) -> None:
        """What a deploy controller does: rewrite the upstream list, SIGHUP, wait until the old worker stopped
        accepting (it keeps its open WebSockets until they end: a reload drops no call)."""
        import time

        self.write_site(upstreams)
        done = self.count("gracefully shutting down") + 1
        self.proc.send_signal(signal.SIGHUP)
        await self.wait_count("gracefully shutting down", done, timeout=20)
        self.reloads.append((time.time(), list(upstreams)))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: the test is over
            await self.wait_exit(timeout=20)

    def requests(self) -> list[dict[str, str]]:
        """The access log: request, status, the instance that answered last (after retries), time, all tried."""
        rows = []
        pattern = re.compile(r'"(\S+) (\S+) [^"]*" (\d+) .*upstream=(.*) ustatus=(.*) msec=([\d.]+) conn=(\d+)$')
        for line in self.access_log.read_text().splitlines() if self.access_log.exists() else []:
            match = pattern.search(line)
            if match:
                method, uri, status, upstream, ustatus, msec, conn = match.groups()
                tried = [u.strip() for u in re.split(r"[,:] (?=\d)", upstream) if u.strip()]
                rows.append({"method": method, "path": uri.split("?")[0], "status": status, "upstream": tried[-1],
                             "tried": ",".join(tried), "ustatus": ustatus, "t": msec, "conn": conn})
        return rows


def write_site(prefix: Path, port: int, tls: ProxyTLS, upstreams: list[str]) -> None:
    site = render_site(SHIPPED_CONF.read_text(), port=port, cert=tls.cert, key=tls.key,
                       access_log=prefix / "access.log", upstreams=upstreams)
    (prefix / "phonebridge.conf").write_text(site)


async def start_nginx(prefix: Path, upstreams: list[str]) -> Nginx:
    if not os.access(NGINX, os.X_OK):
        raise FileNotFoundError(f"{NGINX} not found: install Debian's nginx package (or set PHONEBRIDGE_NGINX)")
    prefix.mkdir(parents=True, exist_ok=True)
    tls, port = ProxyTLS.make(prefix), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, prefix / "phonebridge.conf"))
    write_site(prefix, port, tls, upstreams)
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    nginx = Nginx(proc, prefix, port, tls)
    try:
        await nginx.wait_count("start worker process ", timeout=20)
    except BaseException:
        await nginx.kill()
        raise
    return nginx
