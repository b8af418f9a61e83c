#!/usr/bin/env python3
"""Throughput of one sqlgate process against `serve --workers 2`, side by side.

    .venv/bin/python benchmarks/workers.py [--rounds 5] [--calls 400] [--concurrency 8]

The trivial `ping` tool over streamable HTTP, rounds alternating between the two servers; prints
medians and spread (min-max) of calls/s and server CPU per call, and the ratio. On 2 cores the load
generator competes with the servers for the same CPUs, so the ratio is a lower bound. `make bench`
reports the same for no auth, JWT and the OAuth proxy among everything else.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from harness import Case, Spec, alternate_rounds, load_args, running_all, spread, sqlgate_cmd, warm_up, workdir
from projects import ping_project


def main() -> int:
    ap = load_args(argparse.ArgumentParser(description=__doc__), rounds=5, calls=400)
    ap.add_argument("--concurrency", type=int, default=8)
    opts = ap.parse_args()
    cases = [Case(f"{n} worker{'s' if n > 1 else ''}", str(n), concurrency=opts.concurrency) for n in (1, 2)]
    with workdir() as (work, env):
        specs = {str(n): Spec(sqlgate_cmd(ping_project(work / f"w{n}"), n), env, work / f"w{n}.log") for n in (1, 2)}
        with running_all(specs) as servers:
            warm_up(cases, servers)
            results = alternate_rounds(cases, servers, opts.rounds, opts.calls, opts.load_tool)
    print(f"| server | calls/s at c={opts.concurrency} | server CPU ms/call |")
    print("|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {spread([r['calls_per_s'] for r in runs], 1)} | {spread([r['cpu_ms'] for r in runs])} |")
    one, two = (statistics.median(r["calls_per_s"] for r in results[c.label]) for c in cases)
    print(f"\n2 workers / 1 worker: {two / one:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
