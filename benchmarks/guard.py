#!/usr/bin/env python3
"""What the engine guard costs per call: the `query` tool against the same SQL in a trusted YAML tool.

    .venv/bin/python benchmarks/guard.py                       # this checkout only
    .venv/bin/python benchmarks/guard.py --baseline-src DIR    # also a server run from another
                                                               # checkout's src/ (e.g. before a change)

In one run, rounds alternate between (a) the `query` tool with `SELECT 42 AS answer` — guard decision
cached after the first call, as for an AI client repeating itself — (b) the trusted `ping` tool with
the same SQL, and (c) with --baseline-src, the `query` tool of the baseline server. Reports medians and
the spread (min-max) of calls/s and server CPU per call, c=1 and c=8. Separately, in-process, the cost
of an uncached guard decision (every call a new SQL text) for a short and a 60-line query.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from harness import Case, Spec, alternate_rounds, load_args, running_all, spread, sqlgate_cmd, warm_up, workdir
from projects import ping_project

SQL = "SELECT 42 AS answer"


def uncached_guard_cost(repeats: int = 2000) -> dict[str, float]:
    """µs per guard decision on new SQL texts (no cache hit), in-process on a DuckDB connection."""
    import duckdb

    from sqlgate.engine.duckdb_guard import DuckDBGuard

    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE t (a INT, b VARCHAR)")
    guard = DuckDBGuard.for_connection(con)
    long_sql = "SELECT a, b, count(*) AS n FROM t WHERE a IN ({}) GROUP BY ALL ORDER BY n DESC".format(
        ", ".join(str(i) for i in range(60)))
    out = {}
    cases = (("short", "SELECT a + {i} FROM t WHERE b = 'x'"), ("60-value IN list", long_sql + " -- {i}"))
    for label, template in cases:
        started = time.perf_counter()
        for i in range(repeats):
            guard.check(template.format(i=i), con)
        out[label] = (time.perf_counter() - started) / repeats * 1e6
    return out


def main() -> int:
    ap = load_args(argparse.ArgumentParser(description=__doc__), rounds=5, calls=400)
    ap.add_argument("--baseline-src", type=Path, help="src/ directory of another checkout to compare with")
    opts = ap.parse_args()
    with workdir() as (work, env):
        specs = {name: Spec(sqlgate_cmd(ping_project(work / name)), env, work / f"{name}.log")
                 for name in ("query", "ping")}
        cases = [Case(f"query (guard) c={c}", "query", "query", {"sql": SQL}, concurrency=c) for c in (1, 8)]
        cases += [Case(f"ping (trusted YAML) c={c}", "ping", concurrency=c) for c in (1, 8)]
        if opts.baseline_src:
            base_env = {**env, "PYTHONPATH": str(opts.baseline_src.resolve())}
            specs["old"] = Spec(sqlgate_cmd(ping_project(work / "old")), base_env, work / "old.log")
            cases += [Case(f"query (baseline) c={c}", "old", "query", {"sql": SQL}, concurrency=c) for c in (1, 8)]
        with running_all(specs) as servers:
            warm_up(cases, servers)
            results = alternate_rounds(cases, servers, opts.rounds, opts.calls, opts.load_tool)
    print("| server, tool | c | calls/s median (min-max) | server CPU ms/call median (min-max) |")
    print("|---|---|---|---|")
    for case in cases:
        runs = results[case.label]
        print(f"| {case.label.rsplit(' c=', 1)[0]} | {case.concurrency} | "
              f"{spread([r['calls_per_s'] for r in runs])} | {spread([r['cpu_ms'] for r in runs])} |")
    cost = asyncio.run(asyncio.to_thread(uncached_guard_cost))
    print()
    for label, us in cost.items():
        print(f"uncached DuckDB guard decision, {label} query: {us:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
