#!/usr/bin/env python3
"""`make bench`: sqlgate against the raw limit, bare FastMCP and MXCP, the whole picture in one run.

    .venv/bin/python benchmarks/run.py                 # full run, ~10 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick         # ~2 minutes: one round, fewer calls, 1000 endpoints
    .venv/bin/python benchmarks/run.py --write-readme  # also regenerate README.md's table (what `make bench` does)

Servers, all running side by side (subprocesses on free 127.0.0.1 ports, stopped whatever happens):
  raw      the limit: a minimal ASGI JSON-RPC endpoint on the same uvicorn, same DuckDB queries (raw_mcp.py)
  sdk      the `ping` tool on the mcp SDK's low-level Server, no FastMCP (bare_sdk.py): the SDK's floor
  bare     the same tools written directly on FastMCP (bare_fastmcp.py)
  sqlgate  no auth; HS256 JWT; OAuth proxy to a fake GitHub with a token from a real login; each
           also with --workers 2; and no auth with `transport.json_response` (plain JSON, no SSE)
  MXCP     0.12.3, the same `ping` tool, in its own venv (benchmarks/.mxcp-venv, created on first use;
           if it cannot be installed the report says so and the run goes on)

Measures:
  1. the trivial tool (SELECT 42) at c=1 and c=8, and a 1,000-row x 10-column answer at c=1: calls/s,
     p50/p99 latency (load generator: loadgen.py) and the server's CPU per call (its whole process
     tree), rounds alternating between the servers; medians and spread (min-max) over rounds, and
     each server's CPU per call as a multiple of the raw limit's in the same round
  2. start-up (spawn -> /healthz 200) with 10, 100, 1000 generated endpoints; `sqlgate validate` of 1000
  3. RSS of every server idle after start-up and after the load; sqlgate's examples/shop idle

Prints the tables and the targets with pass/fail; raw numbers go to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mxcp_server
import report
from harness import (
    LOADGEN,
    PY,
    REPO,
    Case,
    Spec,
    alternate_rounds,
    bare_cmd,
    github_fake,
    jwt_env,
    jwt_token,
    loadgen_cpu_ms,
    oauth_proxy_env,
    oauth_token,
    progress,
    raw_cmd,
    running,
    running_all,
    sdk_cmd,
    sqlgate_cmd,
    summarize,
    warm_up,
    workdir,
)
from projects import copy_example, many_tools_project, ping_project

HERE = Path(__file__).resolve().parent
SHOP = REPO / "examples" / "shop"
RESULTS = HERE / "results" / "latest.json"
README = REPO / "README.md"
SETTLE_S = 1.0  # let start-up/load garbage settle before reading RSS


@dataclass(frozen=True)
class Plan:
    rounds: int
    calls: int  # trivial tool: calls per case and round
    rows_calls: int  # the 1,000-row answer
    endpoint_counts: tuple[int, ...]
    startup_repeats: int  # timed starts per project (after one untimed warm-up start)


FULL = Plan(rounds=5, calls=400, rows_calls=60, endpoint_counts=(10, 100, 1000), startup_repeats=3)
QUICK = Plan(rounds=1, calls=150, rows_calls=15, endpoint_counts=(1000,), startup_repeats=1)


# ---------------------------------------------------------------- what is compared

LABELS = {
    "raw": "raw ASGI + DuckDB",
    "sdk": "mcp SDK low-level Server",
    "bare": "bare FastMCP",
    "sg": "sqlgate, no auth",
    "sg_json": "sqlgate, no auth, JSON responses",
    "sg_jwt": "sqlgate, JWT",
    "sg_oauth": "sqlgate, OAuth proxy",
    "sg2": "sqlgate, no auth, 2 workers",
    "sg2_jwt": "sqlgate, JWT, 2 workers",
    "sg2_oauth": "sqlgate, OAuth proxy, 2 workers",
    "mxcp": f"MXCP {mxcp_server.MXCP_VERSION}",
}
TRIVIAL_C1 = "trivial tool (`SELECT 42`), c=1"
TRIVIAL_C8 = "trivial tool (`SELECT 42`), c=8"
ROWS = "1,000 rows \u00d7 10 columns, c=1"


@dataclass(frozen=True)
class Row:
    """One line of the load table: a case, the group it belongs to, whether it is the group's limit."""
    group: str
    name: str
    case: Case
    limit: bool = False


def load_rows(plan: Plan, with_mxcp: bool) -> list[Row]:
    rows = []
    for group, c in ((TRIVIAL_C1, 1), (TRIVIAL_C8, 8)):
        # c=1 also shows the layers: the SDK under FastMCP, and sqlgate answering plain JSON instead of SSE
        keys = (["raw", "sdk", "bare", "sg", "sg_json", "sg_jwt", "sg_oauth"] if c == 1
                else ["raw", "bare", "sg", "sg_jwt", "sg_oauth", "sg2", "sg2_jwt", "sg2_oauth"])
        keys += ["mxcp"] if with_mxcp else []
        for key in keys:
            name = LABELS[key] + (" (limit)" if key == "raw" else "")
            rows.append(Row(group, name, Case(f"{group} | {name}", key, "ping", concurrency=c), limit=key == "raw"))
    for key, tool, name in (("raw", "rows", "raw ASGI + DuckDB, text only"),
                            ("raw", "rows_structured", "raw ASGI + DuckDB + structuredContent (limit)"),
                            ("bare", "rows", "bare FastMCP"), ("sg", "rows", "sqlgate")):
        rows.append(Row(ROWS, name, Case(f"{ROWS} | {name}", key, tool, calls=plan.rows_calls, warmup=5),
                        limit=tool == "rows_structured"))
    return rows


# ---------------------------------------------------------------- 1. load and memory

def server_specs(work: Path, env: dict[str, str], fake: Any, with_mxcp: bool) -> dict[str, Spec]:
    seed = ping_project(work / "seed-only") / "sql" / "seed.sql"
    specs = {
        "raw": Spec(raw_cmd(work / "raw" / "raw.duckdb", seed), env, work / "raw.log"),
        "sdk": Spec(sdk_cmd(work / "sdk" / "sdk.duckdb", seed), env, work / "sdk.log"),
        "bare": Spec(bare_cmd(work / "bare" / "bare.duckdb", seed), env, work / "bare.log"),
    }
    json_project = ping_project(work / "sg_json")
    with (json_project / "sqlgate.yml").open("a", encoding="utf-8") as f:
        f.write("transport: {json_response: true}\n")
    specs["sg_json"] = Spec(sqlgate_cmd(json_project), env, work / "sg_json.log")
    for workers, prefix in ((1, "sg"), (2, "sg2")):
        # a project each: every server builds and opens its own database file
        specs[prefix] = Spec(sqlgate_cmd(ping_project(work / prefix), workers), env, work / f"{prefix}.log")
        specs[f"{prefix}_jwt"] = Spec(sqlgate_cmd(ping_project(work / f"{prefix}_jwt"), workers), jwt_env(env),
                                      work / f"{prefix}_jwt.log")
        specs[f"{prefix}_oauth"] = Spec(sqlgate_cmd(ping_project(work / f"{prefix}_oauth"), workers),
                                        oauth_proxy_env(work, env, fake, f"{prefix}_oauth"),
                                        work / f"{prefix}_oauth.log")
    if with_mxcp:
        specs["mxcp"] = mxcp_server.spec(mxcp_server.project(work / "mxcp"), env, work / "mxcp.log")
    return specs


def measure_load(work: Path, env: dict[str, str], plan: Plan, load_tool: Path, with_mxcp: bool) -> dict[str, Any]:
    rows = load_rows(plan, with_mxcp)
    cases = [r.case for r in rows]
    with github_fake() as fake:
        specs = server_specs(work, env, fake, with_mxcp)
        progress(f"starting {len(specs)} servers")
        with running_all(specs) as servers:
            for key, server in servers.items():
                if key.endswith("_jwt"):
                    server.token = jwt_token(server)
                elif key.endswith("_oauth"):
                    server.token = oauth_token(server, fake)  # a real login, through sqlgate's consent page
            time.sleep(SETTLE_S)
            rss_idle = {key: round(s.rss_mib(), 1) for key, s in servers.items()}
            upstream_before = len(fake.requests)
            progress("warm-up calls (untimed)")
            warm_up(cases, servers)
            runs = alternate_rounds(cases, servers, plan.rounds, plan.calls, load_tool)
            progress("the load generator's own CPU per call")
            loadgen_ms = loadgen_cpu_ms(load_tool, servers["raw"])
            time.sleep(SETTLE_S)
            rss_loaded = {key: round(s.rss_mib(), 1) for key, s in servers.items()}
        upstream = len(fake.requests) - upstream_before
    return {
        "rows": [{"group": r.group, "name": r.name, "server": r.case.server, "tool": r.case.tool,
                  "concurrency": r.case.concurrency, "limit": r.limit, "runs": runs[r.case.label],
                  "summary": summarize(runs[r.case.label])} for r in rows],
        "loadgen_cpu_ms": loadgen_ms,
        "rss_idle_mib": rss_idle,
        "rss_after_load_mib": rss_loaded,
        # requests the OAuth-proxy servers made to the provider while the load ran (per-call user-info
        # look-ups would show here)
        "upstream_requests_during_load": upstream,
    }


def measure_shop_rss(work: Path, env: dict[str, str]) -> dict[str, float]:
    project = copy_example(SHOP, work / "shop")
    rss = {}
    # first start builds data/shop.duckdb from the seed; the second is how a user's server usually starts
    for label in ("first_start", "restart"):
        progress(f"rss: sqlgate examples/shop ({label})")
        with running(sqlgate_cmd(project), env, work / "shop.log") as server:
            time.sleep(SETTLE_S)
            rss[label] = round(server.rss_mib(), 1)
    return rss


# ---------------------------------------------------------------- 2. start-up and validate

def time_starts(make_cmd: Callable[[int], list[str]], env: dict[str, str], log: Path, repeats: int) -> list[float]:
    samples = []
    # start 0 seeds the database and warms the page cache / bytecode: only later starts are timed
    for i in range(repeats + 1):
        with running(make_cmd, env, log) as server:
            if i:
                samples.append(round(server.startup_s, 3))
    return samples


def time_validate(project: Path, env: dict[str, str], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([PY, "-m", "sqlgate", "validate", "-p", str(project)], env=env,
                              capture_output=True, text=True, timeout=300)
        samples.append(round(time.perf_counter() - t0, 3))
        if proc.returncode != 0:
            raise RuntimeError(f"sqlgate validate failed: {proc.stdout}{proc.stderr}")
    return samples


def measure_startup(work: Path, env: dict[str, str], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"sqlgate": {}, "validate": {}}
    progress("start-up: bare FastMCP (its 2 tools)")
    seed = ping_project(work / "startup-seed") / "sql" / "seed.sql"
    out["bare"] = time_starts(bare_cmd(work / "startup-bare" / "bare.duckdb", seed), env, work / "bare-start.log",
                              plan.startup_repeats)
    for count in plan.endpoint_counts:
        progress(f"start-up: sqlgate with {count} endpoints")
        project = many_tools_project(work / f"tools-{count}", count)
        out["sqlgate"][str(count)] = time_starts(sqlgate_cmd(project), env, work / f"start-{count}.log",
                                                 plan.startup_repeats)
    biggest = max(plan.endpoint_counts)
    progress(f"validate: {biggest} endpoints")
    out["validate"][str(biggest)] = time_validate(work / f"tools-{biggest}", env, plan.startup_repeats)
    return out


# ---------------------------------------------------------------- main

def versions() -> dict[str, str]:
    out = {}
    for pkg in ("sqlgate", "fastmcp", "mcp", "duckdb", "uvicorn", "httpx"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "?"
    # which code was measured: the commit, "+changes" when the working tree differs from it
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty=+changes", "--exclude=*"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    out["commit"] = commit or "?"
    return out


def run(plan: Plan, quick: bool, load_tool: Path, with_mxcp: bool, mxcp_note: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_before = os.getloadavg()  # a busy machine skews everything: recorded, shown in the footnotes
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        progress(f"warning: load average {load_before[0]:.2f} - other work on this machine will skew the numbers")
    with workdir() as (work, env):
        res: dict[str, Any] = {"load": measure_load(work, env, plan, load_tool, with_mxcp)}
        res["startup"] = measure_startup(work, env, plan)
        res["shop_rss_mib"] = measure_shop_rss(work, env)
    res["meta"] = {
        "timestamp": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": quick, "plan": asdict(plan),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "versions": versions(), "elapsed_s": round(time.perf_counter() - t0, 1),
        "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "mxcp": {"version": mxcp_server.MXCP_VERSION, "measured": with_mxcp, "note": mxcp_note},
        "servers": LABELS,
    }
    return res


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round, fewer calls, 1000 endpoints only (~2 min)")
    ap.add_argument("--rounds", type=int, help="override the plan's rounds")
    ap.add_argument("--calls", type=int, help="override the plan's calls per trivial-tool case")
    ap.add_argument("--rows-calls", type=int, help="override the plan's calls per 1,000-row case")
    ap.add_argument("--endpoints", help="comma-separated endpoint counts for the start-up times")
    ap.add_argument("--no-mxcp", action="store_true", help="leave MXCP out (the report says so)")
    ap.add_argument("--load-tool", "--bench-tool", dest="load_tool", type=Path, default=LOADGEN,
                    help="the load generator (default: benchmarks/loadgen.py)")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where the raw JSON goes")
    ap.add_argument("--write-readme", action="store_true", help="rewrite the README's benchmark section")
    ap.add_argument("--readme", type=Path, default=README, help="the README --write-readme rewrites")
    return ap.parse_args()


def plan_of(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    overrides = {"rounds": args.rounds, "calls": args.calls, "rows_calls": args.rows_calls}
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.endpoints:
        plan = replace(plan, endpoint_counts=tuple(int(x) for x in args.endpoints.split(",")))
    return plan


def main() -> int:
    # SIGTERM -> SystemExit, so the try/finally blocks still stop every server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    if not args.load_tool.is_file():
        print(f"load generator not found: {args.load_tool} (use --load-tool)", file=sys.stderr)
        return 2
    plan = plan_of(args)
    if args.no_mxcp:
        mxcp_note = "left out (--no-mxcp)"
    else:
        mxcp_note = mxcp_server.ensure_installed(progress)
        if mxcp_note:
            progress(f"MXCP not measured: {mxcp_note}")
    res = run(plan, args.quick, args.load_tool, with_mxcp=mxcp_note is None, mxcp_note=mxcp_note)
    res["report"] = report.build(res)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n")
    text = report.markdown(res)
    print(text)
    if args.write_readme:
        report.write_readme(args.readme, text)
        progress(f"rewrote the benchmark section of {args.readme}")
    print(f"\nraw numbers: {args.output}", file=sys.stderr)
    failed = [t["target"] for t in res["report"]["targets"] if t["ok"] is False]
    print(f"{len(failed)} target(s) missed" + (": " + "; ".join(failed) if failed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
