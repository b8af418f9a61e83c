#!/usr/bin/env python3
"""Throughput of one sqlgate process against `serve --workers 2`, side by side.

    .venv/bin/python benchmarks/workers.py [--rounds 5] [--calls 400]

The trivial `ping` tool over streamable HTTP at concurrency 8, rounds alternating between the two
servers; prints medians and spread (min-max) of calls/s and the ratio. On 2 cores the load
generator competes with the servers for the same CPUs, so the ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from harness import HOST, bench_calls, isolated_env, running
from projects import ping_project

PY = sys.executable
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")


def cmd(project: Path, workers: int):
    return lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http", "--host", HOST,
                         "--port", str(port), "--log-level", "warning", "--workers", str(workers)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = isolated_env(work)
        one, two = ping_project(work / "one"), ping_project(work / "two")
        results: dict[str, list[float]] = {"1 worker": [], "2 workers": []}
        with running(cmd(one, 1), env, work / "one.log") as s1, running(cmd(two, 2), env, work / "two.log") as s2:
            for _ in range(opts.rounds):
                for name, server in (("1 worker", s1), ("2 workers", s2)):
                    run = bench_calls(opts.bench_tool, server, "ping", {}, opts.calls, opts.concurrency)
                    results[name].append(run["calls_per_s"])
    print(f"| server | calls/s at c={opts.concurrency}, median (min-max) |")
    print("|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")
    ratio = statistics.median(results["2 workers"]) / statistics.median(results["1 worker"])
    print(f"\n2 workers / 1 worker: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
