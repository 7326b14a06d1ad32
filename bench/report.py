"""The benchmark's table (each figure with its target and PASS/FAIL/INFO) and its plot (pure but for the PNG)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]
Compared = tuple[str, str, str, str, str]  # figure, before, after, target, result (of after)
MIB = 1024 * 1024


def best_step(steps: list[dict[str, Any]], target_s: float) -> dict[str, Any] | None:
    """The largest step whose p99 holds in both directions and whose numbers are the bridge's own."""
    good = [s for s in steps if not s.get("generator_bound")
            and all(s[d]["p99"] <= target_s for d in ("inbound", "outbound"))]
    return max(good, key=lambda s: s["calls"], default=None)


def marginal_rss(steps: list[dict[str, Any]], upto: dict[str, Any]) -> float:
    """RSS added per extra call between the smallest step and `upto` (each step runs a fresh server, so the
    fixed cost of a first call, the SDK's caches and TLS contexts, cancels out); per call at `upto` otherwise."""
    first = steps[0]
    if upto["calls"] > first["calls"]:
        return (upto["serve_rss_during"] - first["serve_rss_during"]) / (upto["calls"] - first["calls"])
    return float(upto["rss_per_call"])


def _verdict(ok: bool, value: float = 0.0) -> str:
    return "n/a" if math.isnan(value) else ("PASS" if ok else "FAIL")


def _ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v * 1e3:.3f} ms"


def _scale_rows(
    steps: list[dict[str, Any]], target_s: float, ref_calls: int | None = None
) -> tuple[list[Row], dict[str, Any] | None]:
    best = best_step(steps, target_s)
    n = best["calls"] if best else 0
    last = steps[-1] if steps else None
    why = ""
    if last is not None and last.get("generator_bound"):
        why = f" (stopped: load generator saturated at {last['calls']} calls, cpu {last['loadgen_cpu']:.0%})"
    elif last is not None and last is not best:
        why = f" (p99 broke at {last['calls']} calls)"
    out: list[Row] = [
        (f"calls per core at p99 <= 5 ms{why}", str(n), ">= 250 (stretch 500)", _verdict(n >= 250)),
        ("calls per core at p99 <= 5 ms (bridge issue)", str(n), ">= 100", _verdict(n >= 100)),
    ]
    ref = best or (steps[0] if steps else None)
    if ref_calls is not None:  # a baseline's figures at the step the current tree's are read at
        ref = next((s for s in steps if _asked(s) == ref_calls), ref)
    if ref is not None:
        tag = _tag(ref)
        out += [
            (f"inbound added latency p50/p99 {tag}", f"{_ms(ref['inbound']['p50'])} / {_ms(ref['inbound']['p99'])}", "p99 <= 5 ms", _verdict(ref["inbound"]["p99"] <= target_s)),
            (f"outbound added latency p50/p99 {tag}", f"{_ms(ref['outbound']['p50'])} / {_ms(ref['outbound']['p99'])}", "p99 <= 5 ms", _verdict(ref["outbound"]["p99"] <= target_s)),
            *repeat_rows(ref, tag, target_s),
            (f"server CPU per call {tag}", f"{ref['cpu_per_call'] * 100:.2f} % of a core", "INFO", "INFO"),
            (f"server RSS per call (marginal) {tag}", f"{marginal_rss(steps, ref) / MIB:.3f} MiB", "<= 1 MiB", _verdict(marginal_rss(steps, ref) <= MIB)),
            *_reaction_rows(ref, tag),
            (f"model first audio -> first Twilio frame p99 {tag}", _ms(ref["first_audio"]["p99"]), "INFO", "INFO"),
            (f"load generator CPU / loop lag p99 {tag}", f"{ref['loadgen_cpu']:.0%} / {_ms(ref['loadgen_lag']['p99'])}", "INFO", "INFO"),
            (f"bridge's own histogram p99 bucket in/out {tag}", f"<= {ref['bridge_p99_bucket']['inbound'] * 1e3:g} / <= {ref['bridge_p99_bucket']['outbound'] * 1e3:g} ms", "INFO", "INFO"),
            (f"server event loop lag p99 bucket {tag}", f"<= {ref['bridge_p99_bucket'].get('loop_lag', float('nan')) * 1e3:g} ms", "INFO", "INFO"),
        ]
    return out, best


REACTIONS = (
    ("clear", "interrupted -> clear", "<= 1 ms"),
    ("tool_start", "toolCall -> handler start", "<= 1 ms"),  # issue 17's targets, as it words them
    ("tool_reply", "handler return -> tool_response", "<= 1 ms"),
)


def _reaction_rows(ref: dict[str, Any], tag: str) -> list[Row]:
    """Each reaction twice: end to end (an upper bound: loopback, TLS and the load generator's loop are in
    it) and on the bridge's own clock (message off the socket -> reaction sent), which the target is about."""
    out: list[Row] = []
    for kind, label, target in REACTIONS:
        end_to_end = ref[kind]["p99"]
        own = ref["bridge_p99_bucket"].get(f"reaction_{kind}", float("nan"))
        out.append((f"{label} p99, end to end {tag}", _ms(end_to_end), "INFO (upper bound)", "INFO"))
        out.append((f"{label} p99 bucket, bridge's clock {tag}", f"<= {own * 1e3:g} ms", target, _verdict(own <= 0.001, own)))
    return out


def _asked(step: dict[str, Any]) -> int:
    """The step's call count as asked for (bench/main records it); `calls` counts the dials that succeeded."""
    return int(step.get("asked", step["calls"]))


def _tag(step: dict[str, Any]) -> str:
    dialled = "" if step["calls"] == _asked(step) else f" ({step['calls']} dialled)"
    return f"@{_asked(step)}{dialled}"


def reference_calls(steps: list[dict[str, Any]], target_s: float) -> int | None:
    """The step whose figures the table shows: the best one, else the first."""
    ref = best_step(steps, target_s) or (steps[0] if steps else None)
    return None if ref is None else _asked(ref)


def rows(
    steps: list[dict[str, Any]], audio: dict[str, Any], target_s: float, ref_calls: int | None = None
) -> list[Row]:
    if "error" in audio:  # a baseline whose quality run failed: its audio rows read nan
        audio = defaultdict(lambda: float("nan"))
    out, best = _scale_rows(steps, target_s, ref_calls)
    if steps:  # bench/run --perf: where the CPU went, at the table's step and at the last
        shown = best or steps[0]
        out += perf_rows(shown, _tag(shown)) + (perf_rows(steps[-1], _tag(steps[-1])) if steps[-1] is not shown else [])
    for way in ("outbound", "inbound"):
        gap = audio[f"{way}_ceiling"] - audio[f"{way}_pesq"]
        out.append((f"{way} PESQ-NB (G.711 ceiling {audio[f'{way}_ceiling']:.3f})", f"{audio[f'{way}_pesq']:.3f}", "within 0.02 of ceiling", _verdict(gap <= 0.02)))
    for way in ("outbound", "inbound"):
        delay = audio[f"{way}_delay_ms"]
        out.append((f"{way} algorithmic delay", f"{delay:.3f} ms", "<= 3 ms", _verdict(delay <= 3.0)))
    out += [
        ("inbound transcode per 20 ms frame", f"{audio['inbound_transcode_us']:.1f} us", "< 10 us", _verdict(audio["inbound_transcode_us"] < 10)),
        ("outbound transcode per 20 ms frame", f"{audio['outbound_transcode_us']:.1f} us", "< 10 us", _verdict(audio["outbound_transcode_us"] < 10)),
        ("SDK send_realtime_input per frame (json+b64 floor)", f"{audio['sdk_send_us']:.1f} us ({audio['send_floor_us']:.1f})", "INFO", "INFO"),
        ("SDK receive per 20 ms of model audio (floor)", f"{audio['sdk_outbound_per_frame_us']:.1f} us ({audio['recv_floor_us'] / 2:.1f})", "INFO", "INFO"),
        ("bridge's direct send per frame / receive per 20 ms", f"{audio.get('direct_send_us', float('nan')):.1f} / {audio.get('direct_recv_us', float('nan')) / 2:.1f} us", "INFO", "INFO"),
    ]
    return out


def step_rows(steps: list[dict[str, Any]], target_s: float) -> list[Row]:
    """Every step's latency, CPU and reactions on the bridge's clock (the issue reads those at 100 calls),
    for a before/after table (the main rows show one step only)."""
    out: list[Row] = []
    for s in steps:
        tag = _tag(s)
        for way in ("inbound", "outbound"):
            out.append((f"{way} added latency p50/p99 {tag}", f"{_ms(s[way]['p50'])} / {_ms(s[way]['p99'])}",
                        "p99 <= 5 ms", _verdict(s[way]["p99"] <= target_s)))
        out += repeat_rows(s, tag, target_s)
        out.append((f"server CPU per call {tag}", f"{s['cpu_per_call'] * 100:.2f} % of a core", "INFO", "INFO"))
        buckets = s.get("bridge_p99_bucket", {})
        for kind, label, target in REACTIONS:
            if f"reaction_{kind}" in buckets:
                own = buckets[f"reaction_{kind}"]
                out.append((f"{label} p99 bucket, bridge's clock {tag}", f"<= {own * 1e3:g} ms", target,
                            _verdict(own <= 0.001, own)))
    return out


def repeat_rows(step: dict[str, Any], tag: str, target_s: float) -> list[Row]:
    """bench/run --repeat: every run's p99 in and out (ms), the step's figures being its median run's."""
    runs = step.get("repeats", [])
    if len(runs) < 2:
        return []
    shown = ", ".join(f"{r['inbound_p99'] * 1e3:.1f}/{r['outbound_p99'] * 1e3:.1f}" for r in runs) + " ms"
    held = sum(max(r["inbound_p99"], r["outbound_p99"]) <= target_s for r in runs)
    return [(f"p99 in/out of each of {len(runs)} runs {tag}", shown, f"{held} of {len(runs)} within target", "INFO")]


def perf_rows(step: dict[str, Any], tag: str) -> list[Row]:
    """The server's CPU by shared object (bench/run --perf), one row per group: what is Python and what not."""
    return [(f"server CPU in {group} {tag}", f"{share:.1%} of samples", "INFO", "INFO")
            for group, share in step.get("perf_split", {}).items()]


def _key(figure: str) -> str:
    """A figure's name without its run-specific parentheticals ("(p99 broke at 100 calls)", a ceiling)."""
    return re.sub(r" \([^)]*\d[^)]*\)", "", figure)


def compare(before: list[Row], after: list[Row]) -> list[Compared]:
    """The two runs' rows side by side, matched by figure; the current tree's figure names and verdicts."""
    earlier: dict[str, list[str]] = defaultdict(list)
    for row in before:
        earlier[_key(row[0])].append(row[1])
    out = [(figure, (earlier[_key(figure)] or ["n/a"]).pop(0), value, target, result)
           for figure, value, target, result in after]
    return out + [(figure, value, "n/a", "", "") for figure, values in earlier.items() for value in values]


def compare_table(lines: list[Compared], before: str, after: str) -> str:
    widths = [max(len(head), *(len(r[i]) for r in lines)) for i, head in enumerate(("figure", before, after, "target"))]
    head = f"{'figure':{widths[0]}}  {before:>{widths[1]}}  {after:>{widths[2]}}  {'target':{widths[3]}}  result"
    body = [f"{a:{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d:{widths[3]}}  {e}" for a, b, c, d, e in lines]
    return "\n".join([head, "-" * len(head), *body])


def table(lines: list[Row]) -> str:
    width = max(len(r[0]) for r in lines)
    vwidth = max(len(r[1]) for r in lines)
    twidth = max(len(r[2]) for r in lines)
    head = f"{'figure':{width}}  {'value':>{vwidth}}  {'target':{twidth}}  result"
    return "\n".join([head, "-" * len(head)] + [f"{a:{width}}  {b:>{vwidth}}  {c:{twidth}}  {d}" for a, b, c, d in lines])


def plot(steps: list[dict[str, Any]], path: Path, target_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [s["calls"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5))
    for direction, colour in (("inbound", "tab:blue"), ("outbound", "tab:orange")):
        ax.plot(calls, [s[direction]["p99"] * 1e3 for s in steps], "o-", color=colour, label=f"{direction} p99")
        ax.plot(calls, [s[direction]["p50"] * 1e3 for s in steps], "o--", color=colour, alpha=0.6, label=f"{direction} p50")
    ax.axhline(target_s * 1e3, color="red", linestyle=":", label="p99 target (5 ms)")
    for s in steps:
        if s.get("generator_bound"):
            ax.annotate("generator-bound", (s["calls"], s["inbound"]["p99"] * 1e3), fontsize=8)
    cpu = ax.twinx()
    cpu.plot(calls, [s["serve_cpu"] * 100 for s in steps], "s:", color="grey", label="server CPU %")
    cpu.set_ylabel("server CPU (% of one core)")
    cpu.set_ylim(0, 100)
    ax.set_xlabel("concurrent calls (one worker process)")
    ax.set_ylabel("added latency (ms, end to end on loopback)")
    ax.set_yscale("log")
    ax.set_title("phonebridge: added latency against concurrent calls")
    handles = ax.get_legend_handles_labels()[0] + cpu.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
