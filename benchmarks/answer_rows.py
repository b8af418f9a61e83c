#!/usr/bin/env python3
"""A 1,000-row x 10-column answer: sqlgate's `rows` YAML tool and its `query` tool against the same
SQL in a bare FastMCP tool and the raw limit (with and without structuredContent), side by side.

    .venv/bin/python benchmarks/answer_rows.py [--rounds 5] [--calls 100]

Rounds alternate between the servers (c=1, streamable HTTP); prints medians and spread (min-max)
of calls/s and server CPU per call, and the ratio to bare FastMCP. `make bench` reports the same
answer (without the query tool) among everything else.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from harness import (
    Case,
    Spec,
    alternate_rounds,
    bare_cmd,
    load_args,
    raw_cmd,
    running_all,
    spread,
    sqlgate_cmd,
    warm_up,
    workdir,
)
from projects import ROWS_SQL, ping_project

CASES = [Case("sqlgate rows (YAML tool)", "sg", "rows", warmup=5),
         Case("sqlgate query tool", "sg", "query", {"sql": ROWS_SQL}, warmup=5),
         Case("bare FastMCP tool", "bare", "rows", warmup=5),
         Case("raw limit, text only", "raw", "rows", warmup=5),
         Case("raw limit + structuredContent", "raw", "rows_structured", warmup=5)]


def main() -> int:
    opts = load_args(argparse.ArgumentParser(description=__doc__), rounds=5, calls=100).parse_args()
    with workdir() as (work, env):
        project = ping_project(work / "ping")
        seed = project / "sql" / "seed.sql"
        specs = {"sg": Spec(sqlgate_cmd(project), env, work / "sg.log"),
                 "bare": Spec(bare_cmd(work / "bare" / "bare.duckdb", seed), env, work / "bare.log"),
                 "raw": Spec(raw_cmd(work / "raw" / "raw.duckdb", seed), env, work / "raw.log")}
        with running_all(specs) as servers:
            warm_up(CASES, servers)
            results = alternate_rounds(CASES, servers, opts.rounds, opts.calls, opts.load_tool)
    base = statistics.median(x["calls_per_s"] for x in results["bare FastMCP tool"])
    print("| server, tool | calls/s | server CPU ms/call | calls/s vs bare |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cps = [x["calls_per_s"] for x in runs]
        print(f"| {name} | {spread(cps, 1)} | {spread([x['cpu_ms'] for x in runs])} | "
              f"{statistics.median(cps) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
