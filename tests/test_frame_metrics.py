"""FrameHistogram: what a scrape shows equals a prometheus_client Histogram fed the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import phonebridge.server.frame_metrics as frame_metrics
from phonebridge.server.frame_metrics import FrameHistogram
from phonebridge.server.metrics import FRAME_BUCKETS, Metrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_scrape_shows_what_the_client_histogram_would() -> None:
    ours, theirs = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    frames = FrameHistogram("x_seconds", "Doc.", "direction", ("inbound", "outbound"), FRAME_BUCKETS, ours)
    client = Histogram("x_seconds", "Doc.", ["direction"], buckets=FRAME_BUCKETS, registry=theirs)
    rng = random.Random(17)
    values = [rng.choice(FRAME_BUCKETS) for _ in range(300)] + [rng.uniform(0, 0.2) for _ in range(5000)]
    for v in values:  # bucket edges too: `le` is inclusive on both
        frames.labels("inbound").observe(v)
        client.labels(direction="inbound").observe(v)
    client.labels(direction="outbound")  # the bridge binds both children at startup: both show from the start
    a, b = _samples(ours), _samples(theirs)
    assert a.keys() == b.keys()
    for key, value in b.items():
        if key[0].endswith("_created"):
            assert abs(a[key] - value) < 60
        elif key[0].endswith("_sum"):
            assert abs(a[key] - value) < 1e-9
        else:
            assert a[key] == value, key
    assert a[("x_seconds_count", (("direction", "inbound"),))] == len(values)


def test_the_text_is_the_clients_line_for_line_apart_from_created() -> None:
    ours, theirs = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    frames = FrameHistogram("x_seconds", "Doc.", "direction", ("inbound",), (0.5, 1.0), ours)
    client = Histogram("x_seconds", "Doc.", ["direction"], buckets=(0.5, 1.0), registry=theirs)
    for v in (0.25, 0.5, 2.0):
        frames.labels("inbound").observe(v)
        client.labels(direction="inbound").observe(v)
    def lines(r: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(r).decode().splitlines() if not line.startswith("x_seconds_created")]
    assert lines(ours) == lines(theirs)


def test_counts_equal_the_frames_handled_across_folds() -> None:
    m = Metrics()
    frames = 3 * frame_metrics.FOLD_AT + 5  # folds on the way, then the rest at the scrape
    for _ in range(frames):
        m.observe_inbound(0.00004)
        m.observe_transcode("inbound", 0.00001)
    for _ in range(7):
        m.observe_outbound(0.0003)
    body = m.render()[0].decode()
    assert f'phonebridge_bridge_latency_seconds_count{{direction="inbound"}} {float(frames)}' in body
    assert f'phonebridge_transcode_seconds_count{{direction="inbound"}} {float(frames)}' in body
    assert 'phonebridge_bridge_latency_seconds_count{direction="outbound"} 7.0' in body
    assert 'phonebridge_bridge_latency_seconds_bucket{direction="outbound",le="0.00025"} 0.0' in body
    assert 'phonebridge_bridge_latency_seconds_bucket{direction="outbound",le="0.0005"} 7.0' in body
    assert 'phonebridge_transcode_seconds_count{direction="outbound"} 0.0' in body
    m.observe_inbound(0.00004)  # after a scrape: counted by the next one
    assert f'phonebridge_bridge_latency_seconds_count{{direction="inbound"}} {float(frames + 1)}' in m.render()[0].decode()
