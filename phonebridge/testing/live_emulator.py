"""LiveEmulator: a local Gemini Live (BidiGenerateContent) server over TLS that the real google-genai SDK
connects to, scripted per call, as strict as gemini-3.1-flash-live-preview where the docs say so.

    async with LiveEmulator(Script([WaitForText(), Say("Hello")]), speed=math.inf) as emu:
        client = genai.Client(api_key="test", http_options=emu.http_options())
        async with client.aio.live.connect(model="gemini-3.1-flash-live-preview", config=...) as session:
            ...
        emu.check()

Or point a subprocess at it with `emu.client_env()` (GOOGLE_GEMINI_BASE_URL, SSL_CERT_FILE, GEMINI_API_KEY).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from google.genai import types

from phonebridge.testing import live_wire as wire
from phonebridge.testing.live_dispatch import decode, dispatch
from phonebridge.testing.live_runner import run_conversation, send_resumable
from phonebridge.testing.live_script import Script, default_script
from phonebridge.testing.live_state import (
    Connection, ConnectionGone, Conversation, ConversationState, Received, ToolResponseRecord,
)
from phonebridge.testing.tls import LocalTLS

__all__ = ["LiveEmulator", "LiveQuirks", "Connection", "Conversation", "Received", "ToolResponseRecord"]

LiveQuirks = wire.LiveQuirks

_PATH_SUFFIXES = tuple(
    f"/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContent" for v in ("v1", "v1beta", "v1alpha")
)
_UNKNOWN_HANDLE = "Invalid argument: session resumption handle is invalid or has expired."
_NO_KEY = "Missing API key: pass one in the x-goog-api-key header."
_SETUP_TIMEOUT_S = 10.0
_CLOSE_AFTER_TURN_S = 30.0  # close_reply_after_turn: the longest the rest of a turn may take
ScriptSource = Script | Callable[[dict[str, Any]], Script] | None


class LiveEmulator:
    """A Gemini Live server on loopback TLS. See the module docstring.

    `speed` scales all pacing (1.0 real time, math.inf none); step timeouts stay wall time. `script` is one
    Script for every call, a callable given each call's normalised setup, or None for `default_script`.
    `strict` refuses (1007) what gemini-3.1-flash-live-preview refuses. `unknown_handle_close` answers a
    resumption handle that is unknown or older than `resumption_handle_ttl_s`. `unknown_tool_response_close`
    answers a tool_response for a call that is not open (None: only record a failure; an empty reason means
    "name the ids"): what the real service does there is unconfirmed. Barge-in: caller input louder than
    `barge_in_threshold_dbfs` for `barge_in_ms` of audio while an interruptible Say is speaking. `quirks`
    (a LiveQuirks) adds what the real 3.1 service is reported to do beyond its docs: input transcription
    without `finished`, clientContent refused with 1007, audio messages with extra fields.
    `close_reply_after_turn`: a far end that sends the rest of the turn it is sending before it answers the
    client's close frame (RFC 6455 lets it send until its own close frame): a client that stopped reading never
    sees the answer, and must not wait long for it.
    """

    def __init__(
        self,
        script: ScriptSource = None,
        *,
        speed: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        binary_frames: bool = True,
        resumption_handle_ttl_s: float = 7200.0,
        strict: bool = True,
        unknown_handle_close: tuple[int, str] = (1007, _UNKNOWN_HANDLE),
        unknown_tool_response_close: tuple[int, str] | None = (1007, ""),
        api_key_required: bool = True,
        barge_in_threshold_dbfs: float = -40.0,
        barge_in_ms: float = 100.0,
        quirks: wire.LiveQuirks | None = None,
        close_reply_after_turn: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive (math.inf for no pacing)")
        self.speed = speed
        self.barge_in_threshold_dbfs = barge_in_threshold_dbfs
        self.barge_in_ms = barge_in_ms
        self.quirks = quirks or wire.LiveQuirks()
        self._close_after_turn = close_reply_after_turn
        self.connections: list[Connection] = []
        self.conversations: list[Conversation] = []
        self._script = script
        self._host, self._port = host, port
        self._binary, self._strict, self._key_required = binary_frames, strict, api_key_required
        self._ttl = resumption_handle_ttl_s
        self._unknown_handle_close = unknown_handle_close
        self._unknown_response_close = unknown_tool_response_close
        self._handles: dict[str, tuple[Conversation, float, ConversationState]] = {}
        self._changed = asyncio.Event()
        self._next_connection = 0
        self._started_at = 0.0
        self._runner: web.AppRunner | None = None
        self._tls: LocalTLS | None = None
        self.base_url = ""

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> LiveEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._tls = LocalTLS()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls.server_context())
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"https://{self._host}:{port}"
        self._started_at = self.now()

    async def stop(self) -> None:
        """Close every connection, wait for every task, remove the CA file."""
        for conn in list(self.connections):
            if conn.open:
                await conn.close(1001, "Server shutting down.")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for conn in self.connections:
            await conn.wait_timers()
        if self._tls is not None:
            self._tls.close()

    # ---- what clients need ----------------------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        return str(self._require_tls().ca_file)

    @property
    def ssl_context(self) -> Any:
        return self._require_tls().client_context()

    def http_options(self, api_version: str | None = None) -> types.HttpOptions:
        return types.HttpOptions(base_url=self.base_url, api_version=api_version, async_client_args={"ssl": self.ssl_context})

    def client_env(self) -> dict[str, str]:
        return {"GOOGLE_GEMINI_BASE_URL": self.base_url, "SSL_CERT_FILE": self.ca_file, "GEMINI_API_KEY": "test-key"}

    def _require_tls(self) -> LocalTLS:
        if self._tls is None:
            raise RuntimeError("the emulator is not started")
        return self._tls

    # ---- assertions and waiting -----------------------------------------------------------------------------

    @property
    def failures(self) -> list[str]:
        return [failure for conv in self.conversations for failure in conv.failures]

    def check(self) -> None:
        """Raise AssertionError listing every failure the scripts recorded (missing tool responses...)."""
        if self.failures:
            raise AssertionError("Live emulator failures:\n" + "\n".join(self.failures))

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once `predicate()` holds, re-checked on every recorded event; TimeoutError otherwise."""
        if not await self.wait_until(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout:g} s")

    async def next_connection(self, timeout: float = 10.0) -> Connection:
        """The next connection not yet returned by this method, in order of arrival."""
        await self.wait_for(lambda: len(self.connections) > self._next_connection, timeout)
        self._next_connection += 1
        return self.connections[self._next_connection - 1]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Like wait_for but returns False on timeout; timeout 0 checks once after yielding to the loop."""
        deadline = self.now() + timeout
        await asyncio.sleep(0)
        while not predicate():
            remaining = deadline - self.now()
            if remaining <= 0:
                return False
            changed = self._changed
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as the event fires
            try:
                async with asyncio.timeout(None if math.isinf(remaining) else remaining):
                    await changed.wait()
            except TimeoutError:
                return predicate()
        return True

    def notify(self) -> None:
        """Wake every waiter (wait_for, next_connection, scripts): something recorded has changed."""
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter and start a fresh event; safe to call from sync code.
        self._changed.set()
        self._changed = asyncio.Event()

    def _clock(self) -> float:
        return self.now() - self._started_at

    def issue_handle(self, conv: Conversation) -> str:
        conv.handles_issued += 1
        handle = f"emu-{conv.index}-{conv.handles_issued}"
        self._handles[handle] = (conv, self.now() + self._ttl, conv.snapshot())
        return handle

    # ---- one connection ---------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not request.path.endswith(_PATH_SUFFIXES):
            raise web.HTTPNotFound(text=f"no such method: {request.path}")
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=64 * 1024 * 1024, compress=False, timeout=2.0,
                                   autoclose=not self._close_after_turn)
        await ws.prepare(request)
        conn = Connection(len(self.connections), request, ws, self._clock, self._notify, binary=self._binary, speed=self.speed)
        self.connections.append(conn)
        self._notify()
        code, reason = None, None
        try:
            if await self._open_session(request, ws, conn):
                code, reason = await self._read_loop(ws, conn)
        except ConnectionGone:
            pass
        finally:
            await self._end_runner(conn)
            conn.finished(code if code is not None else ws.close_code, reason)
        return ws

    async def _open_session(self, request: web.Request, ws: web.WebSocketResponse, conn: Connection) -> bool:
        """Read and check the setup, attach a conversation, answer setupComplete. False if refused."""
        if self._key_required and not request.headers.get("x-goog-api-key"):
            await conn.close(1008, _NO_KEY)
            return False
        try:
            msg = await ws.receive(timeout=_SETUP_TIMEOUT_S)
        except TimeoutError:
            await conn.close(1007, "Invalid argument: no setup message received.")
            return False
        raw = decode(msg)
        if raw is None or "setup" not in raw:
            await conn.close(1007, "Invalid argument: the first message must be setup.")
            return False
        conn.raw_setup = raw["setup"]
        conn.setup = wire.normalise(raw["setup"])
        conn.record_in("setup", {"setup": conn.setup})
        problem = wire.setup_problem(conn.setup) if self._strict else None
        if problem:
            await conn.close(1007, problem)
            return False
        conv = await self._attach(conn)
        if conv is None:
            await conn.close(*self._unknown_handle_close)
            return False
        await conn.send({"setupComplete": {}}, "setup_complete")
        if conv.next_step == 0 or conn.resumed_from:
            await send_resumable(self, conv, conn)
        conn.runner = asyncio.create_task(run_conversation(self, conv, conn))
        return True

    async def _attach(self, conn: Connection) -> Conversation | None:
        """A new conversation, or the one a valid resumption handle names (its old connection stops talking)."""
        resumption = conn.setup.get("sessionResumption")
        handle = resumption.get("handle") if isinstance(resumption, dict) else None
        if handle:
            entry = self._handles.get(handle)
            if entry is None or entry[1] < self.now():
                return None
            conv = entry[0]
            conn.resumed_from = handle
            if conv.active is not None and conv.active is not conn:
                await self._end_runner(conv.active)
            conv.restore(entry[2])  # the state the handle stands for: later input and turns are not in it
            conv.open_calls.clear()  # calls open on the old connection are void; the script re-issues them
        else:
            source = self._script
            script = source(conn.setup) if callable(source) else source or default_script(conn.setup)
            conv = Conversation(len(self.conversations), script, resumable=resumption is not None)
            self.conversations.append(conv)
        conv.active = conn
        conv.connections.append(conn)
        conn.conversation = conv
        return conv

    async def _end_runner(self, conn: Connection) -> None:
        task = conn.runner
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _read_loop(self, ws: web.WebSocketResponse, conn: Connection) -> tuple[int | None, str | None]:
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.CLOSE:
                if self._close_after_turn:
                    await self._finish_then_close(ws, conn, int(msg.data))
                return int(msg.data), str(msg.extra or "")
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None, None
            data = decode(msg)
            refusal = (1007, "Invalid JSON payload received.") if data is None else self._dispatch(conn, data)
            if refusal:
                await conn.close(*refusal)
                return None, None

    async def _finish_then_close(self, ws: web.WebSocketResponse, conn: Connection, code: int) -> None:
        """The client sent its close frame: go on with the script's turn (bounded), then answer it."""
        if conn.runner is not None:
            await asyncio.wait([conn.runner], timeout=_CLOSE_AFTER_TURN_S)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=code)

    def _dispatch(self, conn: Connection, raw: dict[str, Any]) -> tuple[int, str] | None:
        return dispatch(conn, raw, strict=self._strict, quirks=self.quirks,
                        unknown_tool_response_close=self._unknown_response_close, now=self.now)
