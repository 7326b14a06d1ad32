"""What `phonebridge serve` checks before it listens, so that a server that starts can take calls.

Every problem is collected first and reported in one ConfigError (exit 2, one `phonebridge: ...` message):
the settings (config.py), the listening address and port (free, and allowed), the worker count, the agent
file, and credentials the google-genai SDK can use. The SDK is asked itself (a client is built the way a call
builds it), so its rules for the environment stay its own:

- `GOOGLE_GENAI_USE_VERTEXAI` (or `GOOGLE_GENAI_USE_ENTERPRISE`) true: Vertex AI, with an API key (express
  mode) or `GOOGLE_CLOUD_PROJECT`/`GOOGLE_CLOUD_LOCATION` and application default credentials, which are
  looked up here with google.auth.default() (it reads GOOGLE_APPLICATION_CREDENTIALS or gcloud's file, and
  on Google Cloud asks the metadata server; nothing is sent to Google).
- otherwise the Gemini API with `GOOGLE_API_KEY` or `GEMINI_API_KEY`.
- `GOOGLE_GEMINI_BASE_URL` / `GOOGLE_VERTEX_BASE_URL` move the endpoint; `GOOGLE_GENAI_API_VERSION` picks the
  API version (the SDK's default otherwise). Both are logged at start.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from google import genai
from google.auth.exceptions import GoogleAuthError

from phonebridge.agent.definition import Agent, load_agent
from phonebridge.server.config import Settings, config_error, read_int
from phonebridge.errors import ConfigError

CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
HOW_TO_AUTHENTICATE = (
    "set GEMINI_API_KEY (or GOOGLE_API_KEY), or for Vertex AI GOOGLE_GENAI_USE_VERTEXAI=true with "
    "GOOGLE_CLOUD_PROJECT, GOOGLE_CLOUD_LOCATION and application default credentials"
)


@dataclass(frozen=True)
class ServePlan:
    """Everything `serve` needs, all of it checked."""

    agent: Agent
    settings: Settings
    host: str
    port: int
    workers: int
    endpoint: str  # where the Live sessions go, for the start-up log line


def check_serve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServePlan:
    """Check everything `serve` depends on; one ConfigError listing every problem found."""
    env = os.environ if env is None else env
    problems: list[str] = list(getattr(args, "problems", []))
    settings, found = Settings.parse(env, record_dir=args.record_dir)
    problems += found + settings.problems()
    port = _bounded(f"port {args.port!r} (--port or PORT)", args.port, 1, 65535, problems)
    workers = _bounded(f"workers {args.workers!r} (--workers or PHONEBRIDGE_WORKERS)", args.workers, 0, 1024, problems)
    agent: Agent | None = None
    try:
        agent = load_agent(args.agent)
    except ConfigError as exc:
        problems.append(str(exc))
    if port is not None:
        problems += listen_problems(args.host, port)
    endpoint, found = model_client_problems()
    problems += found
    if problems or agent is None or port is None or workers is None:
        raise config_error(problems)
    settings.warn()
    return ServePlan(agent, settings, args.host, port, workers, endpoint)


def _bounded(label: str, raw: str | int, low: int, high: int, problems: list[str]) -> int | None:
    try:
        value = raw if isinstance(raw, int) else read_int(raw)
    except ValueError as exc:
        problems.append(f"{label}: {exc}")
        return None
    if not low <= value <= high:
        problems.append(f"{label}: must be {low} to {high}")
        return None
    return value


def listen_problems(host: str, port: int) -> list[str]:
    """Whether `host:port` can be listened on, by binding it the way asyncio's server does (SO_REUSEADDR,
    every address `host` resolves to). Held by another process, forbidden or not ours: a problem line."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return [f"cannot listen on {where}: the host does not resolve ({exc})"]
    for family, kind, proto, _, address in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # an address family this machine lacks: asyncio skips it too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return [f"cannot listen on {where}: {_why(exc)}"]
    return []


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use (another server is listening there)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this machine's"
    return exc.strerror or str(exc)


def model_client_problems() -> tuple[str, list[str]]:
    """Build the SDK's client from the environment as a call does: (where Live sessions go, problems)."""
    try:
        client = genai.Client()
    except (ValueError, GoogleAuthError) as exc:
        return "", [f"no credentials the Gemini SDK can use: {HOW_TO_AUTHENTICATE} (google-genai: {exc})"]
    api = client._api_client  # the SDK's resolved settings: read, never changed
    if api.api_key is not None and not api.api_key.strip():
        return "", [f"the Gemini API key in the environment is blank: {HOW_TO_AUTHENTICATE}"]
    problems: list[str] = []
    if client.vertexai and not api.api_key and not api.custom_base_url:
        try:
            import google.auth

            google.auth.default(scopes=[CLOUD_SCOPE])
        except GoogleAuthError as exc:
            problems.append(f"Vertex AI needs application default credentials, and none were found ({exc})")
    return describe_endpoint(client), problems


def describe_endpoint(client: genai.Client) -> str:
    """`wss://host/..., API version v1beta (Gemini API, API key)`: the start-up line's Live endpoint."""
    api = client._api_client
    options = api._http_options
    try:
        url = api._websocket_base_url(options)
    except Exception as exc:  # noqa: BLE001 - only a log line depends on the SDK's private helper
        url = f"{options.base_url} ({type(exc).__name__})"
    if client.vertexai:
        how = "Vertex AI, API key" if api.api_key else f"Vertex AI, project {api.project}, location {api.location}"
    else:
        how = "Gemini API, API key"
    return f"{url}, API version {options.api_version or 'default'} ({how})"
