#!/usr/bin/env python3
"""Which layer holds a trivial call's time: the same `ping` tool on every layer, side by side.

    .venv/bin/python benchmarks/layers.py [--rounds 5] [--calls 300]

  raw       no MCP framework: a minimal ASGI JSON-RPC endpoint (raw_mcp.py) — the practical limit
  thin      the same endpoint with the mcp SDK's types (raw_mcp.py --typed: one validation of the
            request, one CallToolResult dumped once): the floor of a transport of sqlgate's own
  sdk       the mcp SDK's low-level Server (bare_sdk.py): streamable HTTP, sessions, dispatch, models
  fastmcp   the tool written directly on FastMCP (bare_fastmcp.py): FastMCP's machinery on the SDK
  sqlgate   sqlgate with `audit.enabled: false`: its own request path (guard, identity, limits, answer)
  +audit    sqlgate as shipped (audit trail to SQLite, console line)

c=1 over streamable HTTP, rounds alternating (ABBA), server CPU ms per call (its process tree),
median and spread; each layer's increment over the one before it. The difference between `raw`
and `fastmcp` is what a thinner path on the SDK (or below it) could gain; see README "Benchmarks".
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    Case,
    Spec,
    alternate_rounds,
    bare_cmd,
    load_args,
    raw_cmd,
    running_all,
    sdk_cmd,
    spread,
    sqlgate_cmd,
    warm_up,
    workdir,
)
from projects import SEED_SQL, ping_project  # noqa: E402

LAYERS = ("raw", "thin", "sdk", "fastmcp", "sqlgate", "+audit")


def main() -> int:
    args = load_args(argparse.ArgumentParser(description=__doc__), rounds=5, calls=300).parse_args()
    with workdir() as (work, env):
        seed = work / "seed.sql"
        seed.write_text(SEED_SQL)
        quiet = ping_project(work / "noaudit")
        with (quiet / "sqlgate.yml").open("a") as f:
            f.write("audit: {enabled: false}\n")
        shipped = ping_project(work / "shipped")
        specs = {
            "raw": Spec(raw_cmd(work / "raw.duckdb", seed), env, work / "raw.log"),
            "thin": Spec(raw_cmd(work / "thin.duckdb", seed, typed=True), env, work / "thin.log"),
            "sdk": Spec(sdk_cmd(work / "sdk.duckdb", seed), env, work / "sdk.log"),
            "fastmcp": Spec(bare_cmd(work / "bare.duckdb", seed), env, work / "bare.log"),
            "sqlgate": Spec(sqlgate_cmd(quiet), env, work / "noaudit.log"),
            "+audit": Spec(sqlgate_cmd(shipped), env, work / "shipped.log"),
        }
        with running_all(specs) as servers:
            cases = [Case(label=name, server=name) for name in LAYERS]
            warm_up(cases, servers)
            runs = alternate_rounds(cases, servers, args.rounds, args.calls, args.load_tool)
    print(f"\ntrivial tool, c=1, {args.rounds} rounds x {args.calls} calls: server CPU ms per call, median (min-max)\n")
    print("| layer | CPU ms/call | ratio to raw | + over the layer below (ms) |")
    print("|---|---|---|---|")
    base = statistics.median(r["cpu_ms"] for r in runs["raw"])
    below = None
    for name in LAYERS:
        values = [r["cpu_ms"] for r in runs[name]]
        med = statistics.median(values)
        step = "" if below is None else f"{med - below:+.2f}"
        print(f"| {name} | {spread(values)} | {med / base:.2f} | {step} |")
        below = med
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
