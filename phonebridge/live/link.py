"""The Live session: the only module that drives google.genai's live API.

`LiveLink` keeps one logical conversation alive across connections (`config.build_config` says what
each one asks for): it resumes with the latest handle on `goAway` or on a dropped connection, and falls back
to a fresh session given the transcript when the service refuses the handle (as clientContent, or folded
into the system instruction when that is refused too: config.py says how each refusal is read).

A handle stands for the session's state when the service issued it; what the client sent after that is not
in it. So the link keeps the caller audio and texts sent since the last handle (bounded) and sends them again
on the next connection: the documented way to reconnect without losing input. Only Vertex's `transparent`
mode says exactly which message a handle includes (the Developer API refuses it), so a handle is taken to
include what was sent up to CONFIRM_MARGIN_S before it arrived: messages still in flight are sent again,
at the cost of the model hearing a fraction of a second of audio twice at a switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from phonebridge.agent.definition import Agent
from phonebridge.errors import ModelUnavailable
import phonebridge.live.outbound as outbound
from phonebridge.live.frames import AUDIO_MIME as AUDIO_MIME
from phonebridge.live.frames import audio_message as audio_message
from phonebridge.live.config import (
    REFUSED, HistoryMode, Opening, add_to_history, after_refusal, build_config, cause_of, opening,
)
from phonebridge.live.resend import REPLAY_FRAMES, ResendBuffer
from phonebridge.live.events import (
    AudioOut, GoAway, Interrupted, ModelEvent, OutputText, ResumptionUpdate, ToolCalls, TurnComplete, Usage,
    translate,
)
from phonebridge.live.wire import reader_for
from phonebridge.call.tool_types import ToolResult

__all__ = ["REPLAY_FRAMES", "LiveLink", "audio_message"]  # REPLAY_FRAMES: the bound, in 20 ms frames

# What was sent this long before a handle arrived may still have been in flight when it was issued.
CONFIRM_MARGIN_S = 0.2
# A connection that lived this long had recovered; its loss starts a fresh count of attempts.
STABLE_CONNECTION_S = 5.0
# How long closing an abandoned connection may take before we move on without it.
CLOSE_GRACE_S = 0.5
# websockets' wait for the far end's close frame, then it aborts the TCP connection. Its 10 s default held
# hang-ups with over `max_queue` (16) messages unread: with its queue full it stops reading, so never sees it.
CLOSE_TIMEOUT_S = 0.25
# Events that say nothing about the conversation: a refusal after only these still refuses the opening.
_HOUSEKEEPING = (ResumptionUpdate, Usage, GoAway)

EventSink = Callable[[ModelEvent], Awaitable[None]]


class LiveLink:
    """One conversation with the model, kept alive across connections.

    Run `run()` in a task; it returns when the conversation ends (closed by us, or the model unreachable,
    raising ModelUnavailable). Events go to `sink` in order, from that one task.
    """

    def __init__(
        self,
        client: genai.Client,
        agent: Agent,
        declarations: Sequence[types.FunctionDeclaration],
        sink: EventSink,
        *,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        connect_timeout_s: float = 10.0,
        reconnect_attempts: int = 5,
        backoff_s: float = 0.25,
        tap: Callable[[str, Any], None] | None = None,
        on_reconnect: Callable[[str], None] | None = None,
        fast_audio: bool = True,
    ) -> None:
        self._fast_audio = fast_audio
        self._on_reconnect = on_reconnect
        self._tap = tap  # sees every message both ways (the call's recorder)
        self._client, self._agent, self._declarations = client, agent, list(declarations)
        self._sink, self._log = sink, logger
        self._connect_timeout_s, self._attempts, self._backoff_s = connect_timeout_s, reconnect_attempts, backoff_s
        self._session: Any = None
        self._handle: str | None = None
        self._resumable = False
        self._closing = False
        self._resend = ResendBuffer()  # what was sent since the last handle: sent again on the next connection
        self._history: list[types.Content] = []
        self._history_mode = HistoryMode.CLIENT_CONTENT  # moves down when the service refuses a way of seeding
        self._opened = Opening.PLAIN  # how the current (or last attempted) connection was opened
        self._heard = False  # whether it has delivered anything of the conversation
        self._switch_due: float | None = None
        self._mid_turn = False
        self.ready = asyncio.Event()
        self.connections = 0
        self.epoch = 0  # rises whenever a connection ends: what was asked on an older one is void
        self.reconnects: dict[str, int] = {}
        self.held_dropped = 0  # caller audio pushed out of the replay buffer while no connection was up
        self.received_at = 0.0  # time.monotonic() when the message being handled came off the socket

    # -- sending (from the Twilio side's task) ---------------------------------------------------------

    async def send_audio(self, pcm16k: bytes) -> None:
        """Send a frame of caller audio, or hold it for the next connection while there is none."""
        if self.audio_ready():
            self.send_audio_now(pcm16k)
            return
        self._resend.add_audio(pcm16k, time.monotonic())
        try:
            await outbound.send_audio(self._session, pcm16k, self._tap, self._fast_audio)
        except Exception as exc:  # noqa: BLE001 - a dying connection: the replay buffer has the audio
            self._log.debug("audio send failed; the next connection gets it again: %r", exc)

    def audio_ready(self) -> bool:
        """Whether `send_audio_now` may be called: no connection (the audio is held), or a direct write now."""
        return self._session is None or outbound.audio_writable(self._session, self._fast_audio)

    def send_audio_now(self, pcm16k: bytes) -> None:
        """`send_audio` with no await: only in the loop turn `audio_ready()` said True."""
        dropped = self._resend.add_audio(pcm16k, time.monotonic())
        if self._session is None:
            self.held_dropped += dropped
            return
        try:
            outbound.write_audio(self._session, pcm16k, self._tap)
        except Exception as exc:  # noqa: BLE001 - as in send_audio
            self._log.debug("audio send failed; the next connection gets it again: %r", exc)

    async def send_text(self, text: str) -> bool:
        """Send a text turn. True once sent, or held for the connection being opened; False after close."""
        if self._closing:
            return False
        self._resend.add_text(text, time.monotonic())
        session = self._session
        if session is None:
            return True
        try:
            await outbound.send_text(session, text, self._tap)
        except Exception as exc:  # noqa: BLE001 - the replay buffer has it for the next connection
            self._log.info("text to the model goes again on the next connection: %r", exc)
        return True

    async def send_tool_response(self, results: Sequence[ToolResult], epoch: int | None = None) -> bool:
        """Answer function calls through the SDK; False when not sent (see `_answerable`, or the send failed)."""
        session = self._answerable(results, epoch)
        if session is None:
            return False
        try:
            await outbound.send_tool_response(session, results, self._tap)
        except Exception as exc:  # noqa: BLE001
            self._log.warning("tool response lost with its connection: %r", exc)
            return False
        return True

    def try_send_tool_response(self, results: Sequence[ToolResult], epoch: int | None = None) -> bool | None:
        """`send_tool_response` at once, without an await or the SDK's conversion (outbound.send_tool_response_now).
        None when it must be awaited instead: no direct socket, backpressure, results the direct message does not
        build exactly. True or False otherwise, as `send_tool_response` would have returned."""
        session = self._answerable(results, epoch)
        if session is None:
            return False
        try:
            return outbound.send_tool_response_now(session, results, self._tap, self._fast_audio)
        except Exception as exc:  # noqa: BLE001 - the write failed: the connection is done
            self._log.warning("tool response lost with its connection: %r", exc)
            return False

    def _answerable(self, results: Sequence[ToolResult], epoch: int | None) -> Any:
        """The session to answer on; None with no connection, or not the one of `epoch` that asked (the model
        resumes from before those calls and issues them again)."""
        if self._session is None or not results or (epoch is not None and epoch != self.epoch):
            return None
        return self._session

    def remember(self, role: str, text: str) -> None:
        """Keep the transcript, to seed a fresh session if the service ever refuses our handle."""
        add_to_history(self._history, role, text)

    def detach(self) -> None:
        """After the conversation: forget the call's callbacks and transcript. A closed connection's error can
        sit in a reference cycle inside websockets for a while, with this link on its frames; detached, the
        link no longer holds the call's whole object graph with it."""
        self._closing = True
        self._sink = _discard
        self._tap = None
        self._on_reconnect = None
        self._history = []
        self._resend.clear()

    async def close(self) -> None:
        """End the conversation. Prompt even with messages unread (see CLOSE_TIMEOUT_S); the outer bound is for
        an SDK whose session has no websockets connection to tell."""
        self._closing = True
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(TimeoutError, OSError):  # websockets' close() absorbs ConnectionClosed
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await session.close()

    # -- the connection loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        cause = "start"
        while not self._closing:
            connected_at: float | None = None
            stack = contextlib.AsyncExitStack()
            try:
                session = await self._connect(stack, cause)
                connected_at = time.monotonic()
                cause = await self._receive(session)
                failures = 0
                await self._close_connection(stack)
            except (ModelUnavailable, asyncio.CancelledError):
                # Cancelled (the call is over) or given up: the SDK's connection context is still closed.
                await self._close_connection(stack)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the connection is decided below
                await self._close_connection(stack)
                if self._closing:
                    return
                # A connection that dies at once does not count as recovered: the attempts stay bounded.
                if connected_at is not None and time.monotonic() - connected_at > STABLE_CONNECTION_S:
                    failures = 0
                cause = cause_of(exc)
                # A refusal that changes how the next connection opens is a step down a finite ladder, not
                # a failed attempt: seeding refused, say, still leaves the folded and the plain session.
                if not self._refusal_moves_on(exc):
                    failures += 1
                self._log.warning("model connection lost (%s, attempt %d): %r", cause, failures, exc)
                if failures > self._attempts:
                    raise ModelUnavailable(f"model unreachable after {failures} attempts: {exc!r}") from exc
                await asyncio.sleep(min(self._backoff_s * 2 ** (max(failures, 1) - 1), 4.0))
            finally:
                self._session = None
                self.ready.clear()
            await self._abandon_turn()
            if not self._closing and cause != "start":
                self.reconnects[cause] = self.reconnects.get(cause, 0) + 1
                if self._on_reconnect is not None:
                    self._on_reconnect(cause)

    def _refusal_moves_on(self, exc: Exception) -> bool:
        """Whether `exc` refused the way the last connection opened (config.after_refusal), and so changed
        how the next one opens. A 1007/1008 after the conversation went on is about a message: the handle stays."""
        code = exc.code if isinstance(exc, genai_errors.APIError) else None
        step = after_refusal(self._opened, self._history_mode, code, self._heard)
        if step is None:
            return False
        drop_handle, self._history_mode = step
        if drop_handle:
            self._handle = None  # a refused seeded session's own handle stands for a session without the history
        self._log.warning("the service refused the %s session (%s); next, a fresh session with history mode %s",
                          self._opened.value, code, self._history_mode.value)
        return True

    async def _close_connection(self, stack: contextlib.AsyncExitStack) -> None:
        """Close the SDK session without waiting long: a dead socket's close handshake would otherwise hold
        the reconnection for websockets' close timeout (10 s of silence for the caller)."""
        self._session = None
        self.epoch += 1
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await stack.aclose()
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - the connection is being abandoned anyway
            self._log.debug("model connection closed uncleanly: %r", exc)

    async def _abandon_turn(self) -> None:
        """A connection ended mid-turn: the rest of that turn will never come (the new connection resumes from
        the last turn boundary), so the call treats it as cut, like a barge-in, and nothing of it is heard twice."""
        if self._mid_turn and not self._closing:
            self._mid_turn = False
            self._log.info("the model's turn was cut by the connection switch")
            self.received_at = time.monotonic()  # the cut is decided now: the clear's reaction counts from here
            await self._sink(Interrupted(self.received_at, self.epoch))
            await self._sink(TurnComplete())

    async def _connect(self, stack: contextlib.AsyncExitStack, cause: str) -> Any:
        self._opened = opened = opening(self._handle, bool(self._history), self._history_mode)
        self._heard = False
        seed = opened is Opening.SEEDED
        config = build_config(self._agent, self._declarations, resume_handle=self._handle, seed_history=seed,
                              folded_history=self._history if opened is Opening.FOLDED else ())
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                session = await stack.enter_async_context(
                    self._client.aio.live.connect(model=self._agent.model, config=config)
                )
        except genai_errors.APIError as exc:
            if exc.code in REFUSED and not self._handle and not self.connections:
                raise ModelUnavailable(f"the model refused the session: {exc.code} {exc.message or exc}") from exc
            raise
        socket = getattr(session, "_ws", None)  # websockets' own setting (see CLOSE_TIMEOUT_S): no SDK patching
        if socket is not None and hasattr(socket, "close_timeout"):
            socket.close_timeout = CLOSE_TIMEOUT_S
        if self._tap is not None:
            self._tap("model_connect", {"cause": cause, "resumed": self._handle is not None, "seeded": seed,
                                        "opening": opened.value,
                                        "config": config.model_dump(mode="json", exclude_none=True)})
        if seed:
            turns: list[types.Content | types.ContentDict] = list(self._history)
            await session.send_client_content(turns=turns, turn_complete=True)
        self.connections += 1
        self._switch_due = None
        self._log.info("model connected in %.0f ms (%s, %s)", (time.monotonic() - started) * 1000, cause, opened.value)
        await self._replay(session)
        self._session = session  # only now: what the caller says meanwhile is held, then sent in order
        self.ready.set()
        return session

    async def _replay(self, session: Any) -> None:
        """What was sent since the last confirmed handle is not in the state this connection starts from."""
        done = audio = texts = 0
        while True:  # the caller goes on talking while we send: loop until nothing newer is left
            pending = self._resend.pending(done)
            if not pending:
                break
            for seq, message in pending:
                if isinstance(message, bytes):
                    await outbound.send_audio(session, message, self._tap, self._fast_audio)
                    audio += 1
                else:
                    await outbound.send_text(session, message, self._tap)
                    texts += 1
                done = seq
        self._resend.restamp(time.monotonic())  # sent again now: only a handle issued after this includes them
        if (audio or texts) and self.connections > 1:
            self._log.info("sent %d audio frames and %d texts again on the new connection", audio, texts)

    async def _receive(self, session: Any) -> str:
        """Deliver events until this connection should be replaced; return why.

        After a goAway the switch happens at the next resumable point (nothing is lost or said twice), or at
        the deadline even if the model is quiet, whichever comes first.
        """
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout(None)
        try:
            async with deadline, contextlib.aclosing(self._messages(session)) as messages:
                async for events, message in messages:
                    if self._tap is not None:
                        self._tap("model_in", message)
                    for event in events:
                        self._observe(event)
                        await self._sink(event)
                    if self._switch_due is not None:
                        if self._resumable:
                            return "go_away"
                        deadline.reschedule(loop.time() + max(0.0, self._switch_due - time.monotonic()))
        except TimeoutError:
            if deadline.expired():  # the goAway deadline: a planned switch, not a failure
                return "go_away"
            raise
        return "closed"

    async def _messages(self, session: Any) -> AsyncGenerator[tuple[list[ModelEvent], Any], None]:
        """Each server message's events (and the SDK's message, for the recorder) until we close."""
        reader = reader_for(session, self.epoch) if self._fast_audio else None
        want_message = self._tap is not None
        while not self._closing:
            if reader is not None:
                events, message = await reader.next(want_message)
                self.received_at = reader.received_at
                yield events, message
            else:
                async for message in session.receive():
                    self.received_at = time.monotonic()  # after the SDK's parse: a little late
                    yield translate(message, self.received_at, self.epoch), message

    def _observe(self, event: ModelEvent) -> None:
        if not self._heard and not isinstance(event, _HOUSEKEEPING):
            self._heard = True
        if isinstance(event, (AudioOut, OutputText, ToolCalls)):
            self._mid_turn = True
        elif isinstance(event, TurnComplete):
            self._mid_turn = False
        if isinstance(event, ResumptionUpdate):
            self._resumable = event.resumable
            if event.resumable and event.handle:
                self._handle = event.handle
                self._resend.confirm(self.received_at - CONFIRM_MARGIN_S)  # no need to send that again
        elif isinstance(event, GoAway):
            # Switch at the next resumable point, or with a margin before the server's deadline.
            self._switch_due = time.monotonic() + max(0.0, event.time_left_s - 2.0)
            self._log.info("model goAway: %.1f s left; switching connections", event.time_left_s)


async def _discard(event: ModelEvent) -> None:
    return None
