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
import tempfile
from pathlib import Path

import httpx
from harness import HOST, bench_calls, isolated_env, running
from projects import ping_project

PY = sys.executable
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")
ON = "audit:\n  path: logs/audit.jsonl\ntelemetry:\n  metrics: {enabled: true}\n"
OFF = "audit:\n  enabled: false\n"


def cmd(project: Path):
    return lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http", "--host", HOST,
                         "--port", str(port), "--log-level", "warning"]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = isolated_env(work)
        projects = {}
        for name, extra in (("on", ON), ("off", OFF)):
            projects[name] = ping_project(work / name)
            yml = projects[name] / "sqlgate.yml"
            yml.write_text(yml.read_text() + extra)
        results = {(n, c): {"calls_per_s": [], "cpu_ms": []} for n in projects for c in (1, 8)}
        with running(cmd(projects["on"]), env, work / "on.log") as on, \
                running(cmd(projects["off"]), env, work / "off.log") as off:
            servers = {"on": on, "off": off}
            for _ in range(opts.rounds):
                for concurrency in (1, 8):
                    for name, server in servers.items():
                        run = bench_calls(opts.bench_tool, server, "ping", {}, opts.calls, concurrency)
                        for key in ("calls_per_s", "cpu_ms"):
                            results[(name, concurrency)][key].append(run[key])
                httpx.get(f"http://{HOST}:{on.port}/metrics").raise_for_status()  # a scrape per round
    print("| server | c | calls/s | server CPU ms/call |")
    print("|---|---|---|---|")
    for (name, c), values in results.items():
        print(f"| audit + metrics {name} | {c} | {spread(values['calls_per_s'])} | {spread(values['cpu_ms'])} |")
    for c in (1, 8):
        on_r, off_r = results[("on", c)], results[("off", c)]
        tput = statistics.median(on_r["calls_per_s"]) / statistics.median(off_r["calls_per_s"])
        cpu = statistics.median(on_r["cpu_ms"]) / statistics.median(off_r["cpu_ms"])
        print(f"\nc={c}: on/off calls/s {tput:.3f}, on/off CPU per call {cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
