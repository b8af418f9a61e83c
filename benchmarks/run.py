#!/usr/bin/env python3
"""Benchmark sqlgate against a bare FastMCP + DuckDB server doing the same work.

    .venv/bin/python benchmarks/run.py           # full run, ~1.5 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick   # smoke run: fewer calls, 10/100 endpoints only

Measures (every server is a subprocess on a free 127.0.0.1 port, stopped whatever happens):
  1. throughput and latency of a trivial SQL tool `ping` over streamable HTTP, concurrency 1 and 8,
     driven by the shared load generator (bench.py); rounds alternate between the two servers.
     Also the server's own CPU time per call, which a busy machine distorts far less than calls/s
  2. startup time (spawn -> /healthz 200) with 10, 100, 1000 generated endpoints, and the time of
     `sqlgate validate` for 1000 endpoints
  3. RSS of sqlgate (examples/shop and the ping project) and of bare FastMCP, idle after startup
     and after the throughput run

Prints a markdown table of sqlgate vs bare with the targets; raw numbers go to
benchmarks/results/latest.json. Needs only the stdlib, httpx and psutil (all in the venv).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import HOST, Server, isolated_env, running
from projects import copy_example, many_tools_project, ping_project

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHOP = REPO / "examples" / "shop"
RESULTS = HERE / "results" / "latest.json"
DEFAULT_BENCH_TOOL = Path("/work/shared/tools/bench.py")
PY = sys.executable  # the venv's python: sqlgate, fastmcp and duckdb are importable there
SETTLE_S = 1.0  # let start-up/load garbage settle before reading RSS
WARMUP_CALLS = 20  # bench.py calls per client before timing starts
LOAD_METRICS = ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_call")

TARGET_THROUGHPUT_RATIO = 0.80  # sqlgate calls/s >= 80% of bare FastMCP
TARGET_STARTUP_1000_S = 3.0
TARGET_RSS_RATIO = 1.10


@dataclass(frozen=True)
class Plan:
    calls: int  # bench.py -n, per concurrency level
    rounds: int  # bench runs per server, alternating servers
    endpoint_counts: tuple[int, ...]
    startup_repeats: int  # timed starts per project (after one untimed warm-up start)
    concurrency: tuple[int, ...] = (1, 8)


FULL = Plan(calls=500, rounds=5, endpoint_counts=(10, 100, 1000), startup_repeats=3)
QUICK = Plan(calls=200, rounds=1, endpoint_counts=(10, 100), startup_repeats=1)


JWT_SECRET = "benchmark-shared-secret-0123456789abcdef"


def bench_token(port: int) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {"iss": "https://bench.invalid", "aud": f"http://{HOST}:{port}/mcp", "sub": "bench",
              "preferred_username": "bench", "exp": int(time.time()) + 3600}
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(JWT_SECRET.encode()))


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- server commands

def sqlgate_cmd(project: Path) -> Callable[[int], list[str]]:
    return lambda port: [PY, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http",
                         "--host", HOST, "--port", str(port), "--log-level", "warning"]


def bare_cmd(work: Path) -> Callable[[int], list[str]]:
    # same seed as the sqlgate ping project, its own file so neither server waits on the other's lock
    seed = work / "ping" / "sql" / "seed.sql"
    return lambda port: [PY, str(HERE / "bare_fastmcp.py"), "--db", str(work / "bare" / "bare.duckdb"),
                         "--seed", str(seed), "--host", HOST, "--port", str(port)]


# ---------------------------------------------------------------- 1. throughput and latency

def run_load(bench_tool: Path, server: Server, calls: int, concurrency: int) -> dict[str, Any]:
    """One bench.py run at one concurrency level, plus the server CPU it cost."""
    cmd = [PY, str(bench_tool), server.mcp_url, "ping", "--args", "{}", "-n", str(calls),
           "-c", str(concurrency), "--warmup", str(WARMUP_CALLS), "--json"]
    if server.token:
        cmd += ["--token", server.token]
    cpu_before = server.cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    cpu = server.cpu_s() - cpu_before
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # bench.py exits 1 when any call failed: a benchmark of failing calls is meaningless
    if proc.returncode != 0 or len(rows) != 1:
        first = rows[0].get("first_error") if rows else None
        raise RuntimeError(f"bench.py against {server.mcp_url} failed (exit {proc.returncode}): "
                           f"{first or proc.stderr.strip()[-800:]}")
    result = rows[0]
    # CPU per call barely moves when other work shares the machine, unlike calls/s; it includes the
    # warm-up calls and session set-up, which both servers pay alike
    result["server_cpu_ms_per_call"] = round(cpu * 1000 / (result["calls"] + WARMUP_CALLS * concurrency), 3)
    return result


def summarize_load(runs: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Median over rounds of each metric, per concurrency level."""
    by_level: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_level.setdefault(r["concurrency"], []).append(r)
    return {c: {k: statistics.median(r[k] for r in rs) for k in LOAD_METRICS} for c, rs in by_level.items()}


def measure_load(work: Path, env: dict[str, str], plan: Plan, bench_tool: Path) -> dict[str, Any]:
    project = ping_project(work / "ping")
    auth_env = {**env, "SQLGATE_AUTH_MODE": "jwt", "SQLGATE_AUTH_SECRET": JWT_SECRET,
                "SQLGATE_AUTH_ALGORITHM": "HS256", "SQLGATE_AUTH_ISSUER": "https://bench.invalid"}
    with running(sqlgate_cmd(project), env, work / "sqlgate-ping.log") as sg, \
            running(sqlgate_cmd(project), auth_env, work / "sqlgate-auth.log") as sg_auth, \
            running(bare_cmd(work), env, work / "bare.log") as bare:
        # every call carries a bearer token that is verified (HS256 JWT, audience-bound)
        sg_auth.token = bench_token(sg_auth.port)
        servers = {"sqlgate": sg, "sqlgate_auth": sg_auth, "bare": bare}
        time.sleep(SETTLE_S)
        rss_idle = {name: s.rss_mib() for name, s in servers.items()}
        for server in servers.values():
            # untimed: first calls pay one-off lazy imports and caches that would skew a single round
            run_load(bench_tool, server, 100, 1)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for i in range(plan.rounds):
            # ABBA order: slow drift (thermal, page cache, other tenants) hits both servers alike
            for name in (servers if i % 2 == 0 else reversed(servers)):
                progress(f"load round {i + 1}/{plan.rounds}: {name}")
                runs[name] += [run_load(bench_tool, servers[name], plan.calls, c) for c in plan.concurrency]
        time.sleep(SETTLE_S)
        rss_loaded = {name: s.rss_mib() for name, s in servers.items()}
    return {
        "runs": runs,
        "summary": {name: summarize_load(rs) for name, rs in runs.items()},
        "rss_idle_mib": rss_idle,
        "rss_after_load_mib": rss_loaded,
    }


# ---------------------------------------------------------------- 2. startup and validate

def time_starts(make_cmd: Callable[[int], list[str]], env: dict[str, str], log: Path,
                repeats: int) -> list[float]:
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
    progress("startup: bare FastMCP (1 tool)")
    out["bare"] = time_starts(bare_cmd(work), env, work / "bare-start.log", plan.startup_repeats)
    for count in plan.endpoint_counts:
        progress(f"startup: sqlgate with {count} endpoints")
        project = many_tools_project(work / f"tools-{count}", count)
        out["sqlgate"][count] = time_starts(sqlgate_cmd(project), env, work / f"start-{count}.log",
                                            plan.startup_repeats)
    biggest = max(plan.endpoint_counts)
    progress(f"validate: {biggest} endpoints")
    out["validate"][biggest] = time_validate(work / f"tools-{biggest}", env, plan.startup_repeats)
    return out


# ---------------------------------------------------------------- 3. idle RSS of the example project

def measure_shop_rss(work: Path, env: dict[str, str]) -> dict[str, float]:
    project = copy_example(SHOP, work / "shop")
    rss = {}
    # first start builds data/shop.duckdb from the seed; the second is how a user's server usually starts
    for label in ("first_start", "restart"):
        progress(f"rss: sqlgate examples/shop ({label})")
        with running(sqlgate_cmd(project), env, work / "shop.log") as server:
            time.sleep(SETTLE_S)
            rss[label] = server.rss_mib()
    return rss


# ---------------------------------------------------------------- report

def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def row(metric: str, sg: float | None, bare: float | None, digits: int = 1, target: str = "",
        ok: bool | None = None, show_ratio: bool = True) -> dict[str, Any]:
    r = ratio(sg, bare) if show_ratio else None
    return {"metric": metric, "sqlgate": sg, "bare": bare, "ratio": r, "target": target, "ok": ok,
            "cells": [metric, fmt(sg, digits), fmt(bare, digits), fmt(r),
                      target or "", "" if ok is None else ("pass" if ok else "**FAIL**")]}


def table_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    load = res["load"]["summary"]
    for c in sorted(load["sqlgate"]):
        sg, bare = load["sqlgate"][c], load["bare"][c]
        tput = ratio(sg["calls_per_s"], bare["calls_per_s"])
        rows.append(row(f"throughput c={c} (calls/s)", sg["calls_per_s"], bare["calls_per_s"],
                        target=f"ratio ≥ {TARGET_THROUGHPUT_RATIO:.2f}", ok=tput >= TARGET_THROUGHPUT_RATIO))
        if "sqlgate_auth" in load:
            auth = load["sqlgate_auth"][c]["calls_per_s"]
            rows.append(row(f"throughput c={c}, sqlgate with JWT auth vs bare without (calls/s)", auth,
                            bare["calls_per_s"], target="aim ≥ 1.00", ok=ratio(auth, bare["calls_per_s"]) >= 1.0))
        rows.append(row(f"latency p50 c={c} (ms)", sg["p50_ms"], bare["p50_ms"], digits=2))
        rows.append(row(f"latency p99 c={c} (ms)", sg["p99_ms"], bare["p99_ms"], digits=2))
        rows.append(row(f"server CPU per call c={c} (ms)", sg["server_cpu_ms_per_call"],
                        bare["server_cpu_ms_per_call"], digits=2))
    st = res["startup"]
    bare_start = statistics.median(st["bare"])
    for count, samples in sorted(st["sqlgate"].items()):
        med = statistics.median(samples)
        big = count == 1000
        rows.append(row(f"startup, {count} endpoints (s)", med, bare_start, digits=2, show_ratio=False,
                        target=f"< {TARGET_STARTUP_1000_S:g} s" if big else "",
                        ok=med < TARGET_STARTUP_1000_S if big else None))
    for count, samples in st["validate"].items():
        rows.append(row(f"`sqlgate validate`, {count} endpoints (s)", statistics.median(samples), None,
                        digits=2, show_ratio=False))
    idle, loaded, shop = res["load"]["rss_idle_mib"], res["load"]["rss_after_load_mib"], res["shop_rss"]
    checks = [
        ("idle RSS, examples/shop, first start: seeds DB (MiB)", shop["first_start"], idle["bare"]),
        ("idle RSS, examples/shop, restart (MiB)", shop["restart"], idle["bare"]),
        ("idle RSS, ping project (MiB)", idle["sqlgate"], idle["bare"]),
        ("RSS after throughput run, ping project (MiB)", loaded["sqlgate"], loaded["bare"]),
    ]
    for metric, sg, bare in checks:
        rows.append(row(metric, sg, bare, target=f"ratio ≤ {TARGET_RSS_RATIO:.2f}",
                        ok=ratio(sg, bare) <= TARGET_RSS_RATIO))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["metric", "sqlgate", "bare FastMCP", "sqlgate/bare", "target", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r["cells"]) + " |" for r in rows]
    return "\n".join(lines)


def footnotes(res: dict[str, Any]) -> str:
    p = res["meta"]["plan"]
    return (f"\n_{p['calls']} calls per level, median of {p['rounds']} alternating round(s); startup = spawn "
            f"until GET /healthz is 200, median of {p['startup_repeats']} start(s) after a warm-up start; "
            "the bare FastMCP startup column is its single-tool server; RSS is read 1 s after startup / load, "
            "and the examples/shop rows compare against the idle bare server. "
            f"{res['meta']['cpu_count']} CPUs, load average {res['meta']['loadavg_1m_before']} before the run, "
            f"total {res['meta']['elapsed_s']:.0f} s._")


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("sqlgate", "fastmcp", "mcp", "duckdb", "uvicorn", "httpx"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


# ---------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: -n 200, one round, 10/100 endpoints")
    ap.add_argument("--bench-tool", type=Path, default=DEFAULT_BENCH_TOOL, help="path of the load generator")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where the raw JSON goes")
    return ap.parse_args()


def run(plan: Plan, bench_tool: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_before = os.getloadavg()  # a busy machine skews everything: recorded, shown in the footnote
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        progress(f"warning: load average {load_before[0]:.2f} - other work on this machine will skew the numbers")
    with tempfile.TemporaryDirectory(prefix="sqlgate-bench-") as tmp:
        work = Path(tmp)
        env = isolated_env(work)
        res: dict[str, Any] = {"load": measure_load(work, env, plan, bench_tool)}
        res["startup"] = measure_startup(work, env, plan)
        res["shop_rss"] = measure_shop_rss(work, env)
    res["meta"] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": plan is QUICK, "plan": asdict(plan),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "versions": versions(), "elapsed_s": round(time.perf_counter() - t0, 1),
        "loadavg_1m_before": round(load_before[0], 2),
    }
    return res


def main() -> int:
    # SIGTERM -> SystemExit, so the try/finally blocks still stop every server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    if not args.bench_tool.is_file():
        print(f"load generator not found: {args.bench_tool} (use --bench-tool)", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    res = run(plan, args.bench_tool)
    rows = table_rows(res)
    res["table"] = [{k: v for k, v in r.items() if k != "cells"} for r in rows]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(rows))
    print(footnotes(res))
    print(f"\nraw numbers: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
