"""Prometheus metrics for one app: fed by the bridge's observer events and a few direct per-frame calls.

Each `Metrics` owns its registry (never prometheus_client's global one), so two apps in one test process,
or one per worker, never collide. `render()` gives the body and content type for `GET /metrics`.

With `serve --workers N` every worker has its own registry and a scrape reaches whichever worker the
kernel picks (SO_REUSEPORT): run one worker per pod/container where you scrape (deploy/ does), or add up
`rate()`s across scrapes knowing each sample is one worker's. Every series carries no worker label on
purpose: calls are independent and worker pids are unbounded cardinality.

Per-frame calls (`observe_inbound`, `observe_outbound`, `observe_transcode`) feed `FrameHistogram`s
(phonebridge.server.frame_metrics): a list append a frame, folded into the buckets at every scrape (and every
4096 values), so `/metrics` shows every frame observed before the scrape, with a ~1 us `observe` saved each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from phonebridge.server.frame_metrics import FrameHistogram

# The bridge's own work on a 20 ms frame should be well under a millisecond: buckets from 25 us.
FRAME_BUCKETS = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
FIRST_AUDIO_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
DIRECTIONS = ("inbound", "outbound")
# A name the model invented (status "unknown") is not a tool: one label value for all of them, so a
# hallucinating model cannot blow up the series count.
UNKNOWN_TOOL = "_unknown_"


class Metrics:
    """Every phonebridge series, prefixed `phonebridge_`, in one registry.

    Pass `observer` to the app (`make_app(..., observers=[metrics.observer])`); call the `observe_*`
    methods from the per-frame paths and `reconnect(cause)` when the Live link reconnects.
    `clock` is the monotonic clock call durations are measured with (a parameter for tests).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._active_sids: set[str] = set()
        self._make_series()
        self._latency = {d: self.bridge_latency.labels(d) for d in DIRECTIONS}
        self._transcode = {d: self.transcode_seconds.labels(d) for d in DIRECTIONS}
        self._inbound, self._outbound = self._latency["inbound"].observe, self._latency["outbound"].observe
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "call_start": self._on_call_start,
            "call_end": self._on_call_end,
            "barge_in": lambda data: self.barge_ins.inc(),
            "tool_result": self._on_tool_result,
            "reconnect": lambda data: self.reconnect(str(data.get("cause", "unknown"))),
        }

    def _make_series(self) -> None:
        r = self.registry
        self.active_calls = Gauge("phonebridge_active_calls", "Calls in progress.", registry=r)
        self.calls = Counter("phonebridge_calls", "Calls ended, by outcome.", ["outcome"], registry=r)
        self.call_duration = Histogram(
            "phonebridge_call_duration_seconds", "Call length, stream start to end.", buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "phonebridge_first_audio_seconds", "Stream start to the agent's first audio sent to Twilio.",
            buckets=FIRST_AUDIO_BUCKETS, registry=r,
        )
        self.bridge_latency = FrameHistogram(
            "phonebridge_bridge_latency_seconds", "Time the bridge adds to one audio frame, by direction.",
            "direction", DIRECTIONS, FRAME_BUCKETS, r,
        )
        self.transcode_seconds = FrameHistogram(
            "phonebridge_transcode_seconds", "Time spent transcoding one audio frame, by direction.",
            "direction", DIRECTIONS, FRAME_BUCKETS, r,
        )
        self.loop_lag = Histogram(
            "phonebridge_event_loop_lag_seconds",
            "How late the event loop runs a timer: the queueing every call's frames wait behind.",
            buckets=LAG_BUCKETS, registry=r,
        )
        self.reaction = Histogram(
            "phonebridge_reaction_seconds",
            "Time the bridge adds to a reaction, from the model's message off the socket: interrupted -> clear "
            "sent, toolCall -> handler started, last handler returned -> tool_response sent.",
            ["kind"], buckets=FRAME_BUCKETS, registry=r,
        )
        self.barge_ins = Counter("phonebridge_barge_ins", "Callers interrupting the agent.", registry=r)
        self.tool_latency = Histogram(
            "phonebridge_tool_latency_seconds", "Tool handler time, by tool.", ["tool"], buckets=TOOL_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "phonebridge_tool_calls", "Tool calls answered, by tool and status.", ["tool", "status"], registry=r
        )
        self.reconnects = Counter("phonebridge_live_reconnects", "Live session reconnects, by cause.", ["cause"], registry=r)
        self.malformed_frames = Counter(
            "phonebridge_malformed_frames", "Media Streams frames dropped as malformed.", registry=r
        )
        self.hold_plays = Counter("phonebridge_hold_plays", "Times the hold sound played for a slow tool.", registry=r)
        self.tokens = Counter("phonebridge_model_tokens", "Live tokens from usageMetadata, by kind.", ["kind"], registry=r)
        self.streams_closed = Counter(
            "phonebridge_streams_guarded", "Media streams the bridge closed itself, by reason: refused at start "
            "(missing_token, bad_token, wrong_account, duplicate_stream, replayed_stream), no start in time "
            "(no_start), silent (media_timeout).",
            ["reason"], registry=r,
        )
        self.webhooks_refused = Counter(
            "phonebridge_requests_refused", "Webhooks and upgrades refused: bad or missing signature, or a body "
            "that could not be read, by route.", ["route"], registry=r,
        )

    # -- events from the bridge ----------------------------------------------------------------------------

    def observer(self, kind: str, data: dict[str, Any]) -> None:
        """The bridge's observer callback: consumes call_start, call_end, barge_in, tool_result, reconnect."""
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(data)

    def _on_call_start(self, data: dict[str, Any]) -> None:
        sid = str(data.get("call_sid", ""))
        if sid not in self._active_sids:
            self._active_sids.add(sid)
            self.active_calls.inc()

    def _on_call_end(self, data: dict[str, Any]) -> None:
        stats = data["stats"]
        # A stream that closed before its `start` frame never counted as active: don't decrement for it.
        if stats.call_sid in self._active_sids:
            self._active_sids.discard(stats.call_sid)
            self.active_calls.dec()
        self.calls.labels(outcome=stats.outcome).inc()
        self.call_duration.observe(max(0.0, self._clock() - stats.started))
        if stats.first_audio_s is not None:
            self.first_audio.observe(stats.first_audio_s)
        # Counted from the call's totals (not per event) so each is counted exactly once per call.
        self.malformed_frames.inc(stats.malformed)
        self.hold_plays.inc(stats.hold_plays)
        self.tokens.labels(kind="prompt").inc(stats.prompt_tokens)
        self.tokens.labels(kind="response").inc(stats.response_tokens)

    def _on_tool_result(self, data: dict[str, Any]) -> None:
        status = str(data.get("status", "unknown"))
        tool = UNKNOWN_TOOL if status == "unknown" else str(data.get("name", UNKNOWN_TOOL))
        self.tool_calls.labels(tool=tool, status=status).inc()
        latency = data.get("latency_s")
        if latency is not None:
            self.tool_latency.labels(tool=tool).observe(float(latency))

    # -- direct calls ----------------------------------------------------------------------------------------

    def observe_inbound(self, seconds: float) -> None:
        """Bridge time for one caller frame: Twilio frame received -> audio handed to the Live session."""
        self._inbound(seconds)

    def observe_outbound(self, seconds: float) -> None:
        """Bridge time for one agent chunk: Live audio received -> media frame sent to Twilio."""
        self._outbound(seconds)

    def observe_transcode(self, direction: str, seconds: float) -> None:
        """Time to decode+resample ("inbound") or resample+encode ("outbound") one frame."""
        self._transcode[direction].observe(seconds)

    def observe_reaction(self, kind: str, seconds: float) -> None:
        self.reaction.labels(kind=kind).observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def stream_guarded(self, reason: str) -> None:
        self.streams_closed.labels(reason=reason).inc()

    def request_refused(self, route: str) -> None:
        self.webhooks_refused.labels(route=route).inc()

    def reconnect(self, cause: str) -> None:
        self.reconnects.labels(cause=cause).inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for `GET /metrics`, in Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def handle(self, request: Any) -> Any:
        """An aiohttp handler for `GET /metrics` (`app.router.add_get("/metrics", metrics.handle)`)."""
        from aiohttp import web

        body, content_type = self.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
