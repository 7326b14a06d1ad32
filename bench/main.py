"""`bench/run`: step the number of concurrent calls against `phonebridge serve --workers 1`, then measure audio
quality and cost per frame; print every figure with its target, write bench/results/bench.json and
bench/results/latency.png. See bench/README.md for what exactly is measured."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from report import compare, compare_table, plot, reference_calls, rows, step_rows, table
from steps import run_step

import baseline
import quality

RESULTS = Path(__file__).resolve().parent / "results"
SYNC_TOOL_ENV = "PHONEBRIDGE_BENCH_SYNC_TOOL"  # bench/agent.py's own switch
STEPS = (25, 50, 100, 150, 250, 350, 500)
QUICK_STEPS = (5, 10)
P99_TARGET_S = 0.005
GEN_CPU_LIMIT = 0.9  # the load generator at 90 % of its core: its own delays dominate from here


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two tiny steps of a few seconds (CI smoke)")
    parser.add_argument("--max-calls", type=int, default=500, help="stop stepping above this many calls")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per step (default 20, quick 4)")
    parser.add_argument("--steps", default=None, help="comma-separated call counts, overriding the default ladder")
    parser.add_argument("--profile", action="store_true", help="py-spy the server in every step's window")
    parser.add_argument("--perf", action="store_true",
                        help="perf the server in every step's window: its CPU by shared object (linux-perf)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also run a git revision's server (a temporary worktree), step by step, for before/after")
    parser.add_argument("--lockstep", action="store_true",
                        help="start every call's conversation at once (figures before 2026-12-03 were measured so)")
    parser.add_argument("--sync-tool", action="store_true",
                        help="serve bench/agent.py's tool as a plain def (run in the handler pool's threads)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="run each step K times, each with a fresh server, and keep the median run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def generator_bound(step: dict[str, Any]) -> bool:
    """The load generator's core is (nearly) full: from here its own delays are what we would measure.
    Its loop lag is reported too, but not used here: on a shared machine it is high at any load."""
    return bool(step["loadgen_cpu"] >= GEN_CPU_LIMIT)


def p99_ok(step: dict[str, Any]) -> bool:
    return all(step[d]["p99"] <= P99_TARGET_S for d in ("inbound", "outbound"))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of a step's repeats, the run whose worse direction's p99 is the median (the worse of the middle two for
    an even count), with every run's p99 and CPU beside it: one run's p99 swings with the machine (at 100
    calls, 1.9 to 8.3 ms out between runs of one build on 2026-12-03) and so does whether a step passes."""
    ranked = sorted(runs, key=lambda run: max(run["inbound"]["p99"], run["outbound"]["p99"]))
    chosen = dict(ranked[len(ranked) // 2])
    chosen["repeats"] = [{"inbound_p99": run["inbound"]["p99"], "outbound_p99": run["outbound"]["p99"],
                          "serve_cpu": run["serve_cpu"]} for run in runs]
    return chosen


def ladder(args: argparse.Namespace) -> list[int]:
    if args.steps:
        return [int(n) for n in args.steps.split(",")]
    return [n for n in (QUICK_STEPS if args.quick else STEPS) if n <= args.max_calls]


def _step(
    calls: int, seconds: float, samples: tuple[Path | None, Path | None], tree: Path | None, name: str,
    lockstep: bool = False,
) -> dict[str, Any]:
    print(f"step: {calls} calls for {seconds:g} s ({name}) ...", file=sys.stderr, flush=True)
    step = run_step(calls, seconds, samples[0], tree, lockstep, samples[1])
    step["generator_bound"] = generator_bound(step)
    step["asked"] = calls  # step["calls"] is how many dials succeeded: the two trees pair by what was asked
    step["load_average"] = os.getloadavg()  # the machine may be shared: how busy it was around this step
    print(
        f"  {step['calls']} calls: in p99 {step['inbound']['p99'] * 1e3:.2f} ms, out p99 "
        f"{step['outbound']['p99'] * 1e3:.2f} ms, serve cpu {step['serve_cpu']:.0%}, "
        f"loadgen cpu {step['loadgen_cpu']:.0%}, loadgen lag p99 {step['loadgen_lag']['p99'] * 1e3:.2f} ms, "
        f"serve loop lag p99 <= {step['bridge_p99_bucket'].get('loop_lag', float('nan')) * 1e3:g} ms, "
        f"load average {step['load_average'][0]:.2f}",
        file=sys.stderr, flush=True,
    )
    return step


def run_ladder(
    args: argparse.Namespace, seconds: float, base_tree: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The current tree's steps and, with a baseline tree, the baseline's: the two alternate step by step
    (baseline first), under the same load generator. The ladder stops when neither holds its p99."""
    results: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    plan = ladder(args)
    for calls in plan:
        runs: list[dict[str, Any]] = []
        base_runs: list[dict[str, Any]] = []
        for repeat in range(max(1, args.repeat)):
            if base_tree is not None:
                base_runs.append(_step(calls, seconds, (None, None), base_tree, "baseline", args.lockstep))
            runs.append(_step(calls, seconds, _samples(args, calls, repeat), None,
                              "current" if base_tree is not None else "", args.lockstep))
        step = median_run(runs)
        results.append(step)
        if base_runs:
            before.append(median_run(base_runs))
        # An open ladder stops where neither tree holds its p99; steps asked for by --steps all run.
        if not args.steps and all(not p99_ok(s) or s["generator_bound"] for s in (step, *before[-1:])):
            break
    return results, before


def _samples(args: argparse.Namespace, calls: int, repeat: int) -> tuple[Path | None, Path | None]:
    """Where this run's py-spy profile and perf data go, if asked for. Every step: an open ladder's last is known
    only once it has run (py-spy's own CPU is on the generator's core, perf's a few percent on the server's:
    figures of a sampled run are not the ones to quote)."""
    name = f"{calls}-{repeat + 1}" if args.repeat > 1 else f"{calls}"
    return (args.out / f"profile-{name}.txt" if args.profile else None,
            args.out / f"perf-{name}.data" if args.perf else None)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.sync_tool:  # read by bench/agent.py in every server this run starts, baseline's too
        os.environ[SYNC_TOOL_ENV] = "1"
    seconds = args.seconds if args.seconds is not None else (6.0 if args.quick else 20.0)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    messages = 500 if args.quick else 5000
    if args.baseline is None:
        steps, _ = run_ladder(args, seconds)
        print("quality and cost ...", file=sys.stderr, flush=True)
        audio = quality.measure(messages)
        lines = rows(steps, audio, P99_TARGET_S)
        print(table(lines))
        data = {"started": started, "seconds_per_step": seconds, "load_average_end": os.getloadavg(),
                "steps": steps, "audio": audio,
                "table": [dict(zip(("figure", "value", "target", "result"), line)) for line in lines]}
    else:
        steps, data = run_with_baseline(args, seconds, messages)
        data["started"] = started
    (args.out / "bench.json").write_text(json.dumps(data, indent=2))
    plot(steps, args.out / "latency.png", P99_TARGET_S)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'latency.png'}")
    return 0


def run_with_baseline(args: argparse.Namespace, seconds: float, messages: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both trees through the same ladder, their quality and cost each in its own process, one table."""
    with baseline.worktree(args.baseline) as (tree, sha):
        steps, before = run_ladder(args, seconds, tree)
        # Each tree in a fresh process of its own, started the same way one after the other: neither gets a
        # warmer or a more crowded process than the other.
        print("quality and cost (baseline, then current) ...", file=sys.stderr, flush=True)
        before_audio = baseline.quality_of(tree, messages)
        audio = baseline.quality_of(baseline.REPO, messages)
    ref = reference_calls(steps, P99_TARGET_S)
    after_rows = rows(steps, audio, P99_TARGET_S) + step_rows(steps, P99_TARGET_S)
    before_rows = rows(before, before_audio, P99_TARGET_S, ref) + step_rows(before, P99_TARGET_S)
    lines = compare(before_rows, after_rows)
    current = _git_describe()
    load = os.getloadavg()
    print(compare_table(lines, f"before ({args.baseline} {sha[:8]})", f"after ({current})"))
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared)")
    data = {"seconds_per_step": seconds, "load_average_end": load, "steps": steps, "audio": audio,
            "baseline": {"rev": args.baseline, "sha": sha, "steps": before, "audio": before_audio},
            "table": [dict(zip(("figure", "before", "after", "target", "result"), line)) for line in lines]}
    return steps, data


def _git_describe() -> str:
    """The current tree: its commit, "+dirty" when the working tree has changes the commit does not."""
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    sha = subprocess.run([*git, "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return f"{sha}{'+dirty' if dirty.strip() else ''}" or "this tree"


if __name__ == "__main__":
    sys.exit(main())
