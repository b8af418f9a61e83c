"""The report of a `run.py` run: its rows and targets (`build`), as markdown (`markdown`), and the
README section it replaces (`write_readme`, between the bench:start / bench:end markers)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
X, DASH = "\u00d7", "\u2013"  # the multiplication sign and the en dash of the tables

# the targets of issue 12 ("lean hot path")
CPU_VS_LIMIT = 1.5  # sqlgate's server CPU per call, as a multiple of the raw limit's
AUTH_ADDS_MS = 0.3  # server CPU per call a JWT or an OAuth-proxy token may add
WORKERS_GAIN = 1.7  # calls/s of --workers 2 over one process, c=8
VS_MXCP = 5.0  # sqlgate calls/s over MXCP's
STARTUP_1000_S = 1.5


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _find(res: dict[str, Any], group_prefix: str, server: str, tool: str, concurrency: int) -> dict[str, Any] | None:
    for row in res["load"]["rows"]:
        if (row["group"].startswith(group_prefix) and row["server"] == server and row["tool"] == tool
                and row["concurrency"] == concurrency):
            return row
    return None


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str,
            op: Callable[[float, float], float]) -> dict[str, float] | None:
    """op(a, b) of one metric round by round (both ran in the same round), median and spread."""
    if a is None or b is None:
        return None
    return _stats([op(x[metric], y[metric]) for x, y in zip(a["runs"], b["runs"], strict=True)])


def _workers_ceiling(two: dict[str, Any] | None, one: dict[str, Any] | None, cpus: int,
                     loadgen_ms: float | None) -> dict[str, float] | None:
    """The most `--workers 2` could serve here, as a multiple of one worker's calls/s, round by round:
    every core busy with the workers and the load generator, at their measured CPU per call."""
    if two is None or one is None or not loadgen_ms:
        return None
    return _stats([cpus * 1000 / (t["cpu_ms"] + loadgen_ms) / o["calls_per_s"]
                   for t, o in zip(two["runs"], one["runs"], strict=True)])


def _ratio(x: float, y: float) -> float:
    return x / y


def _diff(x: float, y: float) -> float:
    return x - y


def build(res: dict[str, Any]) -> dict[str, Any]:
    load = []
    for row in res["load"]["rows"]:
        limit = next(r for r in res["load"]["rows"] if r["group"] == row["group"] and r["limit"])
        load.append({"group": row["group"], "name": row["name"], "concurrency": row["concurrency"],
                     **row["summary"], "cpu_vs_limit": _paired(row, limit, "cpu_ms", _ratio)})
    mxcp = res["meta"]["mxcp"]
    if not mxcp["measured"]:
        for group, c in sorted({(r["group"], r["concurrency"]) for r in res["load"]["rows"] if r["tool"] == "ping"}):
            load.append({"group": group, "name": res["meta"]["servers"]["mxcp"], "concurrency": c,
                         "note": f"not measured: {mxcp['note']}"})
    load.sort(key=lambda r: [x["group"] for x in res["load"]["rows"]].index(r["group"]))
    return {"load": load, "targets": targets(res)}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    def row(ping_c: int, server: str, tool: str = "ping") -> dict[str, Any] | None:
        return _find(res, "1,000" if tool != "ping" else "trivial", server, tool, ping_c)

    cpus = res["meta"]["cpu_count"] or 1
    out = []

    def add(target: str, measured: dict[str, float] | None, unit: str, ok: Callable[[float], bool],
            note: str = "", context: str = "") -> None:
        value = None if measured is None else measured["median"]
        out.append({"target": target, "measured": measured, "unit": unit, "ok": None if value is None else ok(value),
                    "note": note if measured is None else "", "context": context if measured is not None else ""})

    def context(what: str, stats: dict[str, float] | None, unit: str = X) -> str:
        return "" if stats is None else f"{what} {_num(stats['median'], 2)}{unit}"

    # the same call on the mcp SDK's low-level Server, no FastMCP and no sqlgate: the floor under both
    sdk_floor = _paired(row(1, "sdk"), row(1, "raw"), "cpu_ms", _ratio)
    add(f"trivial tool: sqlgate CPU/call ≤ {CPU_VS_LIMIT}{X} the raw limit's (c=1)",
        _paired(row(1, "sg"), row(1, "raw"), "cpu_ms", _ratio), X, lambda v: v <= CPU_VS_LIMIT,
        context=context("the mcp SDK alone:", sdk_floor))
    add(f"1,000 rows: sqlgate CPU/call ≤ {CPU_VS_LIMIT}{X} raw + structuredContent's",
        _paired(row(1, "sg", "rows"), row(1, "raw", "rows_structured"), "cpu_ms", _ratio), X,
        lambda v: v <= CPU_VS_LIMIT)
    for key, what in (("sg_jwt", "a JWT"), ("sg_oauth", "an OAuth-proxy token")):
        add(f"{what} adds ≤ {AUTH_ADDS_MS} ms CPU/call (c=1)", _paired(row(1, key), row(1, "sg"), "cpu_ms", _diff),
            " ms", lambda v: v <= AUTH_ADDS_MS)
    for two, one, what in (("sg2", "sg", "no auth"), ("sg2_jwt", "sg_jwt", "JWT"),
                           ("sg2_oauth", "sg_oauth", "OAuth proxy")):
        add(f"{what}: 2 workers ≥ {WORKERS_GAIN}{X} one worker's calls/s (c=8)",
            _paired(row(8, two), row(8, one), "calls_per_s", _ratio), X, lambda v: v >= WORKERS_GAIN,
            context=context("this machine's ceiling:", _workers_ceiling(row(8, two), row(8, one), cpus,
                                                                       res["load"].get("loadgen_cpu_ms"))))
    mxcp = res["meta"]["mxcp"]
    for c in (1, 8):
        add(f"sqlgate ≥ {VS_MXCP:g}{X} MXCP's calls/s (c={c})", _paired(row(c, "sg"), row(c, "mxcp"), "calls_per_s",
                                                                      _ratio), X, lambda v: v >= VS_MXCP,
            note=f"not measured: {mxcp['note']}",
            # MXCP runs on the same mcp SDK: how far the bare SDK itself is ahead of it
            context=context("the mcp SDK alone:", _paired(row(c, "sdk"), row(c, "mxcp"), "calls_per_s", _ratio)))
    starts = res["startup"]["sqlgate"].get("1000")
    add(f"1000 endpoints start in < {STARTUP_1000_S} s", _stats(starts) if starts else None, " s",
        lambda v: v < STARTUP_1000_S, note="not measured: 1000 is not among --endpoints")
    idle = res["load"]["rss_idle_mib"]
    add("idle RSS ≤ bare FastMCP's (sqlgate ÷ bare)", _stats([idle["sg"] / idle["bare"]]), X, lambda v: v <= 1.0)
    return out


# ---------------------------------------------------------------- markdown

def _num(v: float, digits: int | None = None) -> str:
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:.{digits}f}"


def _cell(s: dict[str, float] | None, unit: str = "", digits: int | None = None) -> str:
    if s is None:
        return "-"
    text = _num(s["median"], digits) + unit
    if s["min"] != s["max"]:
        text += f" ({_num(s['min'], digits)}{DASH}{_num(s['max'], digits)})"
    return text


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def markdown(res: dict[str, Any]) -> str:
    rep, meta = res["report"], res["meta"]
    p = meta["plan"]
    kind = "quick run" if meta["quick"] else "full run"
    lines = [f"_Generated by `make bench` (`benchmarks/run.py --write-readme`), {kind} of {meta['timestamp']}: "
             f"{p['rounds']} alternating round(s), medians and (min{DASH}max) over rounds; "
             f"{meta['cpu_count']} CPUs shared with other work (load average {meta['loadavg_1m_before']} before, "
             f"{meta['loadavg_1m_after']} after)._", ""]
    body, group = [], None
    for r in rep["load"]:
        if r["group"] != group:
            group = r["group"]
            body.append([f"**{group}**", "", "", "", "", ""])
        if "note" in r:
            body.append([r["name"], r["note"], "", "", "", ""])
            continue
        body.append([r["name"], _cell(r["calls_per_s"]), _num(r["p50_ms"]["median"], 2),
                     _num(r["p99_ms"]["median"], 2), _cell(r["cpu_ms"], digits=2),
                     _cell(r["cpu_vs_limit"], X, 2)])
    lines += _table(["server", "calls/s", "p50 ms", "p99 ms", "server CPU ms/call", "CPU ÷ limit"], body)
    lines += ["", "Targets (issue 12):", ""]
    lines += _table(["target", "measured", "status"], [
        [t["target"], t["note"] or _cell(t["measured"], t["unit"], 2) + (f"; {t['context']}" if t["context"] else ""),
         "-" if t["ok"] is None else "pass" if t["ok"] else "**FAIL**"] for t in rep["targets"]])
    lines += ["", "Start-up (spawn until `GET /healthz` is 200) and memory:", ""]
    st = res["startup"]
    start_rows = [["bare FastMCP (2 tools)", _cell(_stats(st["bare"]), " s")]]
    start_rows += [[f"sqlgate, {n} endpoints", _cell(_stats(v), " s")] for n, v in st["sqlgate"].items()]
    start_rows += [[f"`sqlgate validate`, {n} endpoints", _cell(_stats(v), " s")] for n, v in st["validate"].items()]
    labels = meta["servers"]
    idle, loaded = res["load"]["rss_idle_mib"], res["load"]["rss_after_load_mib"]
    mem_rows = [[f"RSS {labels[k]}", f"{idle[k]:.0f} MiB idle, {loaded[k]:.0f} MiB after the load"]
                for k in ("raw", "bare", "sg", "sg_jwt", "sg_oauth", "mxcp") if k in idle]
    shop = res["shop_rss_mib"]
    mem_rows.append(["RSS sqlgate, examples/shop", f"{shop['restart']:.0f} MiB idle ({shop['first_start']:.0f} MiB "
                                                    "on the first start, which seeds its database)"])
    lines += _table(["metric", "measured"], start_rows + mem_rows)
    lines += ["", footnotes(res)]
    return "\n".join(lines)


def footnotes(res: dict[str, Any]) -> str:
    meta, p = res["meta"], res["meta"]["plan"]
    v = meta["versions"]
    return (
        f"_{p['calls']} calls per trivial-tool case and {p['rows_calls']} per "
        "1,000-row case per round, after untimed warm-up calls; all servers run side by side, each case once "
        "per round, odd rounds in reverse order. calls/s and latency are the load generator's "
        "(`benchmarks/loadgen.py`, one process), which itself costs "
        f"{_num(res['load'].get('loadgen_cpu_ms') or 0, 2)} ms CPU per call (measured in this run), so on few "
        "cores calls/s moves with everything else on the machine; server CPU per call (user + system "
        "time of the server's process tree over the run ÷ calls, warm-up and session set-up included) is the "
        "steadier signal. CPU ÷ limit and the targets pair the servers round by round. The limit is "
        "`benchmarks/raw_mcp.py`: a minimal ASGI JSON-RPC endpoint on the same uvicorn running the same DuckDB "
        "query in a worker thread (the 1,000-row limit also sends structuredContent, as an MCP tool with an "
        "output schema must). One worker is the ordinary single-process server (stateful sessions); 2 workers "
        "are `serve --workers 2` (stateless HTTP); their ceiling is what all cores could serve at the workers' "
        "and the load generator's CPU per call, as a multiple of one worker's calls/s. "
        "JSON responses: `transport.json_response: true` (plain JSON instead of an SSE stream per call). "
        "JWT: HS256, audience-bound; OAuth proxy: a token from a "
        "real login (registration, consent page, the provider's login form, PKCE code exchange) against a fake "
        f"GitHub (`tests/fakes`), which the OAuth-proxy servers asked {res['load']['upstream_requests_during_load']} "
        "time(s) while the load ran. MXCP: its defaults, which include an access-log line per request (no "
        "MXCP setting turns it off; every other server logs at warning). "
        f"Python {meta['python']}, sqlgate {v['sqlgate']} (commit {v.get('commit', '?')}), "
        f"FastMCP {v['fastmcp']}, mcp {v['mcp']}, "
        f"DuckDB {v['duckdb']}, uvicorn {v['uvicorn']}; {meta['elapsed_s']:.0f} s in all._")


def write_readme(path: Path, text: str) -> None:
    """Replace what stands between the bench markers of `path` with `text`."""
    doc = path.read_text(encoding="utf-8")
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(START) > doc.index(END):
        raise SystemExit(f"{path}: needs exactly one {START} ... {END} pair")
    head, rest = doc.split(START)
    _, tail = rest.split(END)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
