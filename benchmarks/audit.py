#!/usr/bin/env python3
"""What the audit trail and metrics cost per call: the same server with both on and with both off.

    .venv/bin/python benchmarks/audit.py [--rounds 5] [--calls 300]

Two servers of the same project (the trivial `ping` tool): "on" writes every call to the SQLite
audit table and a JSON-lines file and counts it for /metrics (scraped once per round); "off" has
`audit.enabled: false` and metrics off (no observing middleware at all). Rounds alternate between
them at c=1 and c=8; prints medians and spread (min-max) of calls/s and server CPU per call, and
the on/off ratios. The target is the "on" server within 5 % of "off".
"""

from __future__ import annotations

import argparse
import statistics
import sys

import httpx
from harness import Case, Spec, alternate_rounds, load_args, running_all, spread, sqlgate_cmd, warm_up, workdir
from projects import ping_project

ON = "audit:\n  path: logs/audit.jsonl\ntelemetry:\n  metrics: {enabled: true}\n"
OFF = "audit:\n  enabled: false\n"
CASES = [Case(f"{name} c={c}", name, concurrency=c) for c in (1, 8) for name in ("on", "off")]


def main() -> int:
    opts = load_args(argparse.ArgumentParser(description=__doc__), rounds=5, calls=300).parse_args()
    with workdir() as (work, env):
        specs = {}
        for name, extra in (("on", ON), ("off", OFF)):
            project = ping_project(work / name)
            yml = project / "sqlgate.yml"
            yml.write_text(yml.read_text() + extra)
            specs[name] = Spec(sqlgate_cmd(project), env, work / f"{name}.log")
        with running_all(specs) as servers:
            warm_up(CASES, servers)
            results = alternate_rounds(CASES, servers, opts.rounds, opts.calls, opts.load_tool,
                                       after_round=lambda: httpx.get(f"{servers['on'].base}/metrics")
                                       .raise_for_status())  # a scrape per round
    print("| server | c | calls/s | server CPU ms/call |")
    print("|---|---|---|---|")
    for case in CASES:
        runs = results[case.label]
        print(f"| audit + metrics {case.server} | {case.concurrency} | "
              f"{spread([r['calls_per_s'] for r in runs])} | {spread([r['cpu_ms'] for r in runs])} |")
    for c in (1, 8):
        on_r, off_r = results[f"on c={c}"], results[f"off c={c}"]
        tput = statistics.median(r["calls_per_s"] for r in on_r) / statistics.median(r["calls_per_s"] for r in off_r)
        cpu = statistics.median(r["cpu_ms"] for r in on_r) / statistics.median(r["cpu_ms"] for r in off_r)
        print(f"\nc={c}: on/off calls/s {tput:.3f}, on/off CPU per call {cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
