"""`bench/run`: step the number of concurrent calls against `phonebridge serve --workers 1`, then measure audio
quality and cost per frame; print every figure with its target, write bench/results/bench.json and
bench/results/latency.png. See bench/README.md for what exactly is measured."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from report import plot, rows, table
from steps import run_step

import quality

RESULTS = Path(__file__).resolve().parent / "results"
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
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the last step")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def generator_bound(step: dict[str, Any]) -> bool:
    """The load generator's core is (nearly) full: from here its own delays are what we would measure.
    Its loop lag is reported too, but not used here: on a shared machine it is high at any load."""
    return bool(step["loadgen_cpu"] >= GEN_CPU_LIMIT)


def p99_ok(step: dict[str, Any]) -> bool:
    return all(step[d]["p99"] <= P99_TARGET_S for d in ("inbound", "outbound"))


def ladder(args: argparse.Namespace) -> list[int]:
    if args.steps:
        return [int(n) for n in args.steps.split(",")]
    return [n for n in (QUICK_STEPS if args.quick else STEPS) if n <= args.max_calls]


def run_ladder(args: argparse.Namespace, seconds: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    plan = ladder(args)
    for index, calls in enumerate(plan):
        profile = args.out / f"profile-{calls}.txt" if args.profile and index == len(plan) - 1 else None
        print(f"step: {calls} calls for {seconds:g} s ...", file=sys.stderr, flush=True)
        step = run_step(calls, seconds, profile)
        step["generator_bound"] = generator_bound(step)
        results.append(step)
        print(
            f"  {step['calls']} calls: in p99 {step['inbound']['p99'] * 1e3:.2f} ms, out p99 "
            f"{step['outbound']['p99'] * 1e3:.2f} ms, serve cpu {step['serve_cpu']:.0%}, "
            f"loadgen cpu {step['loadgen_cpu']:.0%}, loadgen lag p99 {step['loadgen_lag']['p99'] * 1e3:.2f} ms, "
            f"serve loop lag p99 <= {step['bridge_p99_bucket'].get('loop_lag', float('nan')) * 1e3:g} ms",
            file=sys.stderr, flush=True,
        )
        if not p99_ok(step) or step["generator_bound"]:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seconds = args.seconds if args.seconds is not None else (6.0 if args.quick else 20.0)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    steps = run_ladder(args, seconds)
    print("quality and cost ...", file=sys.stderr, flush=True)
    audio = quality.measure(500 if args.quick else 5000)
    lines = rows(steps, audio, P99_TARGET_S)
    print(table(lines))
    data = {"started": started, "seconds_per_step": seconds, "steps": steps, "audio": audio,
            "table": [dict(zip(("figure", "value", "target", "result"), line)) for line in lines]}
    (args.out / "bench.json").write_text(json.dumps(data, indent=2))
    plot(steps, args.out / "latency.png", P99_TARGET_S)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
