"""Metrics: feed the bridge's observer events, parse render()'s Prometheus text, assert series and values."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from phonebridge.call.services import CallStats
from phonebridge.server.metrics import UNKNOWN_TOOL, Metrics


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def stats(call_sid: str, **fields: Any) -> CallStats:
    s = CallStats(started=fields.pop("started", 1000.0), call_sid=call_sid)
    for key, val in fields.items():
        setattr(s, key, val)
    return s


def test_a_whole_call_of_events_gives_every_series() -> None:
    clock = Clock(1000.0)
    m = Metrics(clock=clock)
    m.observer("call_start", {"call_sid": "CA1", "stream_sid": "MZ1", "parameters": {}})
    assert value(m, "phonebridge_active_calls") == 1.0
    m.observer("transcript", {"at": 1.0, "who": "caller", "text": "hi"})  # not a metric: ignored
    m.observer("barge_in", {"heard_s": 0.4, "turn": 1})
    m.observer("barge_in", {"heard_s": 0.2, "turn": 2})
    m.observer("tool_call", {"id": "t1", "name": "lookup_order", "args": {}})
    m.observer("tool_result", {"id": "t1", "name": "lookup_order", "status": "ok", "response": {}, "latency_s": 0.3})
    m.observer("tool_result", {"id": "t2", "name": "lookup_order", "status": "timeout", "response": {}, "latency_s": 6.0})
    m.observer("reconnect", {"cause": "go_away"})
    m.reconnect("dropped")
    clock.now = 1042.0
    m.observer("call_end", {"stats": stats(
        "CA1", outcome="caller_hung_up", first_audio_s=0.8, malformed=3, hold_plays=1,
        prompt_tokens=120, response_tokens=45,
    )})

    v = samples(m)
    assert v[("phonebridge_active_calls", ())] == 0.0
    assert v[("phonebridge_calls_total", (("outcome", "caller_hung_up"),))] == 1.0
    assert v[("phonebridge_call_duration_seconds_sum", ())] == 42.0
    assert v[("phonebridge_call_duration_seconds_bucket", (("le", "30.0"),))] == 0.0
    assert v[("phonebridge_call_duration_seconds_bucket", (("le", "60.0"),))] == 1.0
    assert v[("phonebridge_first_audio_seconds_sum", ())] == 0.8
    assert v[("phonebridge_first_audio_seconds_bucket", (("le", "0.75"),))] == 0.0
    assert v[("phonebridge_first_audio_seconds_bucket", (("le", "1.0"),))] == 1.0
    assert v[("phonebridge_barge_ins_total", ())] == 2.0
    assert v[("phonebridge_tool_calls_total", (("status", "ok"), ("tool", "lookup_order")))] == 1.0
    assert v[("phonebridge_tool_calls_total", (("status", "timeout"), ("tool", "lookup_order")))] == 1.0
    assert v[("phonebridge_tool_latency_seconds_count", (("tool", "lookup_order"),))] == 2.0
    assert v[("phonebridge_tool_latency_seconds_sum", (("tool", "lookup_order"),))] == 6.3
    assert v[("phonebridge_live_reconnects_total", (("cause", "go_away"),))] == 1.0
    assert v[("phonebridge_live_reconnects_total", (("cause", "dropped"),))] == 1.0
    assert v[("phonebridge_malformed_frames_total", ())] == 3.0
    assert v[("phonebridge_hold_plays_total", ())] == 1.0
    assert v[("phonebridge_model_tokens_total", (("kind", "prompt"),))] == 120.0
    assert v[("phonebridge_model_tokens_total", (("kind", "response"),))] == 45.0


def test_active_calls_tracks_overlapping_calls_and_ignores_streams_that_never_started() -> None:
    m = Metrics(clock=Clock())
    m.observer("call_start", {"call_sid": "CA1"})
    m.observer("call_start", {"call_sid": "CA2"})
    m.observer("call_start", {"call_sid": "CA2"})  # a repeated start is one call
    assert value(m, "phonebridge_active_calls") == 2.0
    m.observer("call_end", {"stats": stats("CA1", outcome="agent_hung_up")})
    assert value(m, "phonebridge_active_calls") == 1.0
    # A socket closed before `start`: counted as an ended call, but it was never active.
    m.observer("call_end", {"stats": stats("", outcome="server_closed")})
    assert value(m, "phonebridge_active_calls") == 1.0
    assert value(m, "phonebridge_calls_total", outcome="server_closed") == 1.0
    assert value(m, "phonebridge_calls_total", outcome="agent_hung_up") == 1.0
    # No first audio: the histogram stays empty rather than recording a zero.
    assert value(m, "phonebridge_first_audio_seconds_count") == 0.0


def test_an_invented_tool_name_is_one_label_value() -> None:
    m = Metrics()
    for name in ("no_such_tool", "another_invention"):
        m.observer("tool_result", {"id": "x", "name": name, "status": "unknown", "response": {}, "latency_s": 0.0})
    v = samples(m)
    assert v[("phonebridge_tool_calls_total", (("status", "unknown"), ("tool", UNKNOWN_TOOL)))] == 2.0
    assert not any(dict(labels).get("tool") in ("no_such_tool", "another_invention") for _, labels in v)


def test_per_frame_latency_and_transcode_have_sub_millisecond_buckets() -> None:
    m = Metrics()
    for _ in range(3):
        m.observe_inbound(0.00004)
    m.observe_outbound(0.0007)
    m.observe_transcode("inbound", 0.00003)
    m.observe_transcode("outbound", 0.002)
    v = samples(m)
    assert v[("phonebridge_bridge_latency_seconds_bucket", (("direction", "inbound"), ("le", "2.5e-05")))] == 0.0
    assert v[("phonebridge_bridge_latency_seconds_bucket", (("direction", "inbound"), ("le", "5e-05")))] == 3.0
    assert v[("phonebridge_bridge_latency_seconds_bucket", (("direction", "outbound"), ("le", "0.0005")))] == 0.0
    assert v[("phonebridge_bridge_latency_seconds_bucket", (("direction", "outbound"), ("le", "0.001")))] == 1.0
    assert v[("phonebridge_transcode_seconds_count", (("direction", "inbound"),))] == 1.0
    assert v[("phonebridge_transcode_seconds_bucket", (("direction", "outbound"), ("le", "0.001")))] == 0.0
    assert v[("phonebridge_transcode_seconds_bucket", (("direction", "outbound"), ("le", "0.0025")))] == 1.0


def test_two_instances_do_not_share_series() -> None:
    a, b = Metrics(), Metrics()
    a.observer("barge_in", {"heard_s": 0.1, "turn": 1})
    assert value(a, "phonebridge_barge_ins_total") == 1.0
    assert value(b, "phonebridge_barge_ins_total") == 0.0


async def test_handle_serves_prometheus_text() -> None:
    m = Metrics()
    m.observer("call_start", {"call_sid": "CA9"})
    app = web.Application()
    app.router.add_get("/metrics", m.handle)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    assert "# TYPE phonebridge_active_calls gauge\n" in text
    assert "\nphonebridge_active_calls 1.0\n" in text


async def test_metrics_after_an_emulated_call() -> None:
    """The whole bridge (aiohttp app, real genai client, LiveEmulator, TwilioCaller) feeding one Metrics."""
    import aiohttp

    from phonebridge.agent.definition import Agent
    from phonebridge.testing.harness import BridgeHarness
    from phonebridge.testing.live_script import Say, Script, WaitForText

    from phonebridge.server.app import METRICS

    agent = Agent(instructions="You are a test agent.", greeting="Greet the caller.")
    script = Script([WaitForText(), Say("Hello, how can I help?")])
    async with BridgeHarness(agent, script) as h:
        m = h.app[METRICS]  # make_app serves /metrics from its own per-app registry
        async with h.caller() as caller:
            await caller.wait_heard(0.5)
            assert value(m, "phonebridge_active_calls") == 1.0
        await h.wait_idle()
        async with aiohttp.ClientSession() as http, http.get(h.server_url + "/metrics") as response:
            text = await response.text()
    served = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    # The loop-lag timer keeps ticking after the scrape (every 100 ms, until the app's cleanup): its series may
    # have grown by the time we render, so they are held to "no fewer ticks", every other series to equality.
    lag = "phonebridge_event_loop_lag_seconds"
    now = samples(m)
    assert {k: v for k, v in served.items() if not k[0].startswith(lag)} == {
        k: v for k, v in now.items() if not k[0].startswith(lag)}
    assert served[(lag + "_count", ())] <= now[(lag + "_count", ())]
    assert served[("phonebridge_active_calls", ())] == 0.0
    assert served[("phonebridge_calls_total", (("outcome", "caller_hung_up"),))] == 1.0
    assert served[("phonebridge_call_duration_seconds_count", ())] == 1.0
    assert served[("phonebridge_first_audio_seconds_count", ())] == 1.0
    assert 0.0 < served[("phonebridge_first_audio_seconds_sum", ())] < 5.0
    assert served[("phonebridge_barge_ins_total", ())] == 0.0
    assert served[("phonebridge_malformed_frames_total", ())] == 0.0


async def test_event_loop_lag_is_how_late_a_timer_ran() -> None:
    """A callback that holds the loop (a blocking handler, say) shows up as the next tick's lateness."""
    import asyncio
    import time

    from phonebridge.server.app import LAG_PERIOD_S, _LoopLagWatch

    m = Metrics()
    watch = _LoopLagWatch(m)
    app = web.Application()
    await watch.start(app)
    ticked = asyncio.Event()
    m.loop_lag.observe = lambda seconds, _real=m.loop_lag.observe: (_real(seconds), ticked.set())  # type: ignore[method-assign]
    time.sleep(LAG_PERIOD_S + 0.03)  # the stall under test: the loop is held past the tick's due time
    await ticked.wait()
    await watch.stop(app)
    assert value(m, "phonebridge_event_loop_lag_seconds_count") == 1.0
    assert value(m, "phonebridge_event_loop_lag_seconds_bucket", le="0.025") == 0.0  # at least 30 ms late
    assert value(m, "phonebridge_event_loop_lag_seconds_bucket", le="1.0") == 1.0
