"""The benchmark still runs (tiny numbers, no timing targets asserted), and its pairing logic is right."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import correlate  # noqa: E402
import report  # noqa: E402


def test_percentile_is_exact_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert correlate.percentile(values, 50) == 50.0
    assert correlate.percentile(values, 99) == 99.0
    assert correlate.percentile(values, 100) == 100.0
    assert math.isnan(correlate.percentile([], 99))


def test_inbound_pairs_kth_frame_with_kth_message_inside_window() -> None:
    sent = [1.0, 1.02, 1.04, 1.06]
    received = [1.001, 1.0215, 1.043]
    assert correlate.inbound_latencies(sent, received, (1.01, 2.0)) == pytest.approx([0.0015, 0.003])


def test_outbound_maps_chunks_to_frame_pairs_and_skips_turn_tails() -> None:
    turns = [[10.0, 10.04], [20.0]]
    # turn 1: two chunks -> four full frames, then the resampler's short tail; turn 2: one chunk (interrupted)
    frames = [(10.001, 160), (10.002, 160), (10.041, 160), (10.043, 160), (10.05, 14), (20.004, 160), (20.005, 160)]
    per_chunk, first, missing = correlate.outbound_latencies(turns, frames, (0.0, 100.0))
    assert per_chunk == pytest.approx([0.002, 0.003, 0.005])
    assert first == pytest.approx([0.001, 0.004])
    assert missing == 0
    _, _, missing = correlate.outbound_latencies([[1.0, 1.04]], [(1.001, 160), (1.002, 160)], (0.0, 9.0))
    assert missing == 1


def test_pair_next_takes_the_first_end_after_each_start() -> None:
    assert correlate.pair_next([1.0, 2.0, 5.0], [1.0004, 2.0009], (0.0, 9.0)) == pytest.approx([0.0004, 0.0009])


def test_pair_next_skips_a_start_that_had_no_reaction() -> None:
    # The interrupted at 2.0 found nothing playing (no clear): the clear at 3.0001 is the one at 3.0's.
    assert correlate.pair_next([1.0, 2.0, 3.0], [1.0004, 3.0001], (0.0, 9.0)) == pytest.approx([0.0004, 0.0001])


def test_best_step_ignores_generator_bound_and_slow_steps() -> None:
    def step(calls: int, p99: float, bound: bool = False) -> dict[str, object]:
        return {"calls": calls, "generator_bound": bound, "inbound": {"p99": p99}, "outbound": {"p99": p99}}

    steps = [step(25, 0.001), step(50, 0.004), step(100, 0.002, bound=True), step(150, 0.009)]
    assert report.best_step(steps, 0.005)["calls"] == 50  # type: ignore[index]


@pytest.mark.parametrize("calls", [2, 10, 50, 100, 250, 500])
def test_calls_start_spread_evenly_over_the_turn_cycle(calls: int) -> None:
    import loadgen

    phases = sorted(loadgen.phase(i) for i in range(calls))
    assert phases[0] == 0.0 and phases[-1] < loadgen.CYCLE_S
    gaps = [b - a for a, b in zip(phases, phases[1:] + [phases[0] + loadgen.CYCLE_S])]
    even = loadgen.CYCLE_S / calls
    # Golden-ratio spacing: at most three gap lengths, none far from the even split (lockstep: all gaps 0).
    assert max(gaps) < 2 * even and min(gaps) > 0.4 * even


@pytest.mark.timeout(60)
def test_one_tiny_step_runs_end_to_end_in_separate_processes(tmp_path: Path) -> None:
    import steps

    result = steps.run_step(2, 2.0)
    assert result["calls"] == 2 and result["lockstep"] is False
    assert result["failed_dials"] == 0
    assert result["stalls"] == 0
    assert result["negative"] == 0  # pairing never puts an arrival before its send
    assert result["inbound"]["count"] >= 2 * 2.0 * 50 * 0.9  # two calls, 50 frames a second each
    assert result["outbound"]["count"] > 0
    assert result["serve_rss_during"] > 0 and result["serve_cpu"] > 0
    rows = report.rows([result], _fake_audio(), 0.005)
    assert rows[0][0].startswith("calls per core")
    report.plot([result], tmp_path / "latency.png", 0.005)
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fake_audio() -> dict[str, float]:
    keys = ("outbound_pesq", "outbound_ceiling", "inbound_pesq", "inbound_ceiling", "outbound_delay_ms",
            "inbound_delay_ms", "inbound_transcode_us", "outbound_transcode_us", "sdk_send_us", "send_floor_us",
            "sdk_outbound_per_frame_us", "recv_floor_us")
    return {key: 1.0 for key in keys}


def test_a_tiny_soak_runs_its_calls_and_faults_without_a_drop() -> None:
    """bench/soak as a user runs it (it once broke silently when the lean Live server's connection changed)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--calls", "2", "--minutes", "0.1", "--call-seconds", "3",
         "--fault-every", "2"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line.split() for line in (done.stdout + done.stderr).splitlines()]
    assert ["calls", "dropped", "0"] in [words[:3] for words in lines], done.stdout[-3000:]
    assert any(words[:2] == ["calls", "completed"] and int(words[2]) >= 2 for words in lines)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_soak_judges_rss_over_the_second_half_of_a_long_enough_run() -> None:
    import soak

    mib = 1024 * 1024
    samples = [(0.0, 150 * mib), (150.0, 190 * mib), (300.0, 200 * mib), (450.0, 202 * mib), (600.0, 204 * mib)]
    half, growth = soak.steady_growth(samples)
    assert (half, growth) == (200 * mib, 4 * mib)  # the warm-up before half time does not count
    assert soak.rss_verdict(10, half, growth) == "PASS"
    assert soak.rss_verdict(10, half, 11 * mib) == "FAIL"  # more than 5 % over the second half
    assert soak.rss_verdict(2, half, 11 * mib).startswith("n/a")  # too short: still warming up


def test_bridge_histograms_are_read_over_the_measured_window_only() -> None:
    import steps

    def text(counts: list[int]) -> str:
        les = ["0.00025", "0.0005", "0.001", "+Inf"]
        return "".join(f'phonebridge_reaction_seconds_bucket{{kind="clear",le="{le}"}} {n}\n' for le, n in zip(les, counts))

    before = text([0, 0, 0, 10])  # ten slow reactions while dialling
    after = text([100, 100, 100, 110])  # then a hundred fast ones in the window
    assert steps.p99_buckets(after, before)["reaction_clear"] == 0.00025
    assert steps.p99_buckets(after)["reaction_clear"] == math.inf  # over the whole life, the dialling's show


def test_before_after_rows_pair_by_figure_whatever_their_run_specific_notes() -> None:
    before = [("calls per core at p99 <= 5 ms (p99 broke at 100 calls)", "50", "t", "FAIL"),
              ("calls per core at p99 <= 5 ms (bridge issue)", "50", "t", "FAIL"),
              ("outbound PESQ-NB (G.711 ceiling 4.517)", "4.500", "t", "PASS"),
              ("server CPU per call @50", "0.9 %", "INFO", "INFO"), ("server CPU per call @50", "0.8 %", "INFO", "INFO"),
              ("only before @25", "1", "INFO", "INFO")]
    after = [("calls per core at p99 <= 5 ms", "100", "t", "FAIL"),
             ("calls per core at p99 <= 5 ms (bridge issue)", "100", "t", "PASS"),
             ("outbound PESQ-NB (G.711 ceiling 4.520)", "4.510", "t", "PASS"),
             ("server CPU per call @50", "0.7 %", "INFO", "INFO"), ("server CPU per call @50", "0.6 %", "INFO", "INFO"),
             ("only after", "2", "INFO", "INFO")]
    assert report.compare(before, after) == [
        ("calls per core at p99 <= 5 ms", "50", "100", "t", "FAIL"),
        ("calls per core at p99 <= 5 ms (bridge issue)", "50", "100", "t", "PASS"),
        ("outbound PESQ-NB (G.711 ceiling 4.520)", "4.500", "4.510", "t", "PASS"),
        ("server CPU per call @50", "0.9 %", "0.7 %", "INFO", "INFO"),  # repeated figures pair in order
        ("server CPU per call @50", "0.8 %", "0.6 %", "INFO", "INFO"),
        ("only after", "n/a", "2", "INFO", "INFO"),
        ("only before @25", "1", "n/a", "", ""),
    ]
    text = report.compare_table(report.compare(before, after), "before (main)", "after (abc)").splitlines()
    assert text[0].split() == ["figure", "before", "(main)", "after", "(abc)", "target", "result"]
    assert len(text) == 2 + 7


def test_a_baseline_tree_is_what_its_processes_import(tmp_path: Path) -> None:
    import steps

    fake = tmp_path / "tree"
    (fake / "phonebridge").mkdir(parents=True)
    (fake / "phonebridge" / "__init__.py").write_text("")
    assert steps.imported_from(steps.tree_env(fake), fake) == str(fake)
    here = Path(__file__).resolve().parents[1]
    assert steps.imported_from(steps.tree_env(here), here) == str(here)


def test_a_step_whose_dials_partly_failed_pairs_with_the_other_trees_by_the_count_asked_for() -> None:
    def step(asked: int, dialled: int) -> dict[str, object]:
        latency = {"p50": 0.001, "p99": 0.002}
        return {"calls": dialled, "asked": asked, "inbound": latency, "outbound": latency, "cpu_per_call": 0.01}

    before, after = report.step_rows([step(50, 48)], 0.005), report.step_rows([step(50, 50)], 0.005)  # type: ignore[list-item]
    assert before[0][0] == "inbound added latency p50/p99 @50 (48 dialled)"
    assert [row[1] != "n/a" for row in report.compare(before, after)] == [True, True, True]


def test_every_step_shows_its_reactions_on_the_bridges_clock_against_their_targets() -> None:
    latency = {"p50": 0.001, "p99": 0.002}
    step = {"calls": 100, "inbound": latency, "outbound": latency, "cpu_per_call": 0.008,
            "bridge_p99_bucket": {"reaction_clear": 0.0005, "reaction_tool_start": 0.0025, "reaction_tool_reply": 0.001}}
    rows = {row[0]: row[1:] for row in report.step_rows([step], 0.005)}
    assert rows["toolCall -> handler start p99 bucket, bridge's clock @100"] == ("<= 2.5 ms", "<= 1 ms", "FAIL")
    assert rows["handler return -> tool_response p99 bucket, bridge's clock @100"][-1] == "PASS"
    assert rows["interrupted -> clear p99 bucket, bridge's clock @100"] == ("<= 0.5 ms", "<= 1 ms", "PASS")


@pytest.mark.parametrize(("env", "is_async"), [("", True), ("1", False)])
def test_the_bench_agents_tool_is_a_plain_def_with_sync_tool(monkeypatch: pytest.MonkeyPatch, env: str,
                                                              is_async: bool) -> None:
    """bench/run --sync-tool sets the variable for the servers it starts; the agent reads it at import."""
    from phonebridge.agent.definition import load_agent

    monkeypatch.setenv("PHONEBRIDGE_BENCH_SYNC_TOOL", env)
    spec = load_agent(str(BENCH / "agent.py")).tools.get("lookup_order")
    assert spec is not None and spec.is_async is is_async


def _run(inbound_p99: float, outbound_p99: float, cpu: float) -> dict[str, object]:
    return {"calls": 100, "asked": 100, "inbound": {"p99": inbound_p99}, "outbound": {"p99": outbound_p99},
            "serve_cpu": cpu}


def test_a_repeated_step_keeps_its_median_run_and_shows_every_runs_p99() -> None:
    import main

    runs = [_run(0.003, 0.0083, 0.51), _run(0.0012, 0.0019, 0.46), _run(0.0035, 0.0041, 0.54)]
    kept = main.median_run(runs)
    assert kept["serve_cpu"] == 0.54  # worse directions 8.3, 1.9, 4.1 ms: the median is the 4.1 ms run
    assert [r["outbound_p99"] for r in kept["repeats"]] == [0.0083, 0.0019, 0.0041]  # in the order they ran
    assert main.median_run(runs[:2])["serve_cpu"] == 0.51  # of two, the worse: a pass needs more than luck
    (row,) = report.repeat_rows(kept, "@100", 0.005)
    assert row == ("p99 in/out of each of 3 runs @100", "3.0/8.3, 1.2/1.9, 3.5/4.1 ms", "2 of 3 within target", "INFO")
    assert report.repeat_rows(runs[0], "@100", 0.005) == []  # a single run has no such row
