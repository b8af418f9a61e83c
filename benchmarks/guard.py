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
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import HOST, bench_calls, isolated_env, running

HERE = Path(__file__).resolve().parent
PY = sys.executable
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")
SQL = "SELECT 42 AS answer"


def project(root: Path) -> Path:
    from projects import ping_project

    return ping_project(root)


def server_cmd(proj: Path):
    return lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(proj), "--transport", "http", "--host", HOST,
                         "--port", str(port), "--log-level", "warning"]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


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
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-src", type=Path, help="src/ directory of another checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL)
    opts = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = isolated_env(work)
        servers = {"query (guard)": (project(work / "new"), env, "query", {"sql": SQL}),
                   "ping (trusted YAML)": (project(work / "new-ping"), env, "ping", {})}
        if opts.baseline_src:
            base_env = {**env, "PYTHONPATH": str(opts.baseline_src.resolve())}
            servers["query (baseline)"] = (project(work / "old"), base_env, "query", {"sql": SQL})
        results: dict[str, dict[int, list[dict]]] = {name: {1: [], 8: []} for name in servers}
        from contextlib import ExitStack

        with ExitStack() as stack:
            running_servers = {name: stack.enter_context(running(server_cmd(p), e, work / f"{i}.log"))
                               for i, (name, (p, e, _, _)) in enumerate(servers.items())}
            for _round in range(opts.rounds):
                for c in (1, 8):
                    for name, (_, _, tool, args) in servers.items():
                        results[name][c].append(bench_calls(opts.bench_tool, running_servers[name], tool, args,
                                                            opts.calls, c))
    print("| server, tool | c | calls/s median (min-max) | server CPU ms/call median (min-max) |")
    print("|---|---|---|---|")
    for name, by_c in results.items():
        for c, runs in by_c.items():
            print(f"| {name} | {c} | {spread([r['calls_per_s'] for r in runs])} | "
                  f"{spread([r['cpu_ms'] for r in runs])} |")
    cost = asyncio.run(asyncio.to_thread(uncached_guard_cost))
    print()
    for label, us in cost.items():
        print(f"uncached DuckDB guard decision, {label} query: {us:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
