#!/usr/bin/env python3
"""A 1,000-row x 10-column answer: sqlgate's `rows` YAML tool and its `query` tool against the same
SQL in a bare FastMCP tool, side by side.

    .venv/bin/python benchmarks/answer_rows.py [--rounds 5] [--calls 100]

Rounds alternate between the servers (c=1, streamable HTTP); prints medians and spread (min-max)
of calls/s and server CPU per call, and the ratio to bare FastMCP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from harness import HOST, bench_calls, isolated_env, running
from projects import ROWS_SQL, ping_project

PY = sys.executable
HERE = Path(__file__).resolve().parent
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = isolated_env(work)
        project = ping_project(work / "ping")
        sg_cmd = lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http",  # noqa: E731
                               "--host", HOST, "--port", str(port), "--log-level", "warning"]
        bare_cmd = lambda port: [PY, str(HERE / "bare_fastmcp.py"), "--db", str(work / "bare.duckdb"),  # noqa: E731
                                 "--seed", str(project / "sql" / "seed.sql"), "--host", HOST, "--port", str(port)]
        cases = {"sqlgate rows (YAML tool)": ("sg", "rows", {}),
                 "sqlgate query tool": ("sg", "query", {"sql": ROWS_SQL}),
                 "bare FastMCP tool": ("bare", "rows", {})}
        results: dict[str, list[dict]] = {name: [] for name in cases}
        with running(sg_cmd, env, work / "sg.log") as sg, running(bare_cmd, env, work / "bare.log") as bare:
            servers = {"sg": sg, "bare": bare}
            for r in range(opts.rounds):
                order = list(cases) if r % 2 == 0 else list(reversed(cases))
                for name in order:
                    which, tool, args = cases[name]
                    results[name].append(bench_calls(opts.bench_tool, servers[which], tool, args, opts.calls, 1,
                                                     warmup=5))
    base = statistics.median(x["calls_per_s"] for x in results["bare FastMCP tool"])
    print("| server, tool | calls/s | server CPU ms/call | calls/s vs bare |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cps = [x["calls_per_s"] for x in runs]
        cpu = [x["cpu_ms"] for x in runs]
        print(f"| {name} | {statistics.median(cps):.1f} ({min(cps):.1f}-{max(cps):.1f}) | "
              f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {statistics.median(cps) / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
