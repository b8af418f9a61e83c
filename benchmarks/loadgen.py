#!/usr/bin/env python3
"""loadgen.py - tiny load generator for MCP servers speaking Streamable HTTP (raw JSON-RPC over httpx).

A verbatim copy of the team's shared tools/bench.py (only its name and this paragraph changed), kept here so that
`make bench` and tests/test_benchmarks.py run from a clean clone, where ../shared may be absent.
Changes belong in both copies.

Usage:
    python loadgen.py URL TOOL [--args JSON] [--token BEARER] [-n 500] [-c 1,8]
                    [--warmup 20] [--shared-session] [--timeout 30] [--json]

    URL      MCP endpoint, e.g. http://127.0.0.1:18000/mcp
    TOOL     tool name to call, e.g. ping
    --args   JSON object of tool arguments (default: {})
    --token  optional bearer token; sent as "Authorization: Bearer <token>" on every request
    -n       total tools/call requests per scenario (default 500); with concurrency C each
             client performs n/C calls
    -c       comma-separated list of concurrency levels (default "1,8"). Level 1 = one client doing
             n sequential calls. Level C>1 = C independent clients (each does its own initialize and
             gets its own Mcp-Session-Id, unless --shared-session) running concurrently.
    --warmup calls per client before timing starts (default 20)
    --shared-session  all concurrent clients reuse one MCP session
    --json   print one JSON object per scenario instead of a table

Protocol details: each client POSTs `initialize`, reads the `Mcp-Session-Id` response header (absent in
stateless servers, then none is sent), POSTs `notifications/initialized`, then issues `tools/call`
requests with headers Accept: application/json, text/event-stream; Mcp-Session-Id; MCP-Protocol-Version.
Responses may be plain JSON or an SSE stream; both are parsed. A call counts as an error if HTTP status
!= 200, the JSON-RPC response has "error", or result.isError is true. Latency = wall time of one POST
(client-side, includes SSE parsing). Only stdlib + httpx needed (pip install httpx).

Example:
    python loadgen.py http://127.0.0.1:18000/mcp ping --args '{"x": 1}' -n 500 -c 1,8
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

PROTOCOL_VERSION = "2025-06-18"


def parse_body(resp: httpx.Response, want_id) -> dict | None:
    ctype = resp.headers.get("content-type", "")
    text = resp.text
    if "text/event-stream" in ctype:
        for block in text.split("\n\n"):
            data_lines = [ln[5:].lstrip() for ln in block.splitlines() if ln.startswith("data:")]
            if not data_lines:
                continue
            try:
                msg = json.loads("\n".join(data_lines))
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("id") == want_id:
                return msg
        return None
    if not text:
        return None
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(msg, list):
        for m in msg:
            if isinstance(m, dict) and m.get("id") == want_id:
                return m
        return None
    return msg


class Client:
    def __init__(self, url: str, token: str | None, timeout: float):
        self.url = url
        self.headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(timeout=timeout, http2=False)
        self.session_id: str | None = None
        self.proto = PROTOCOL_VERSION
        self._id = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def _hdrs(self) -> dict:
        h = dict(self.headers)
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        h["MCP-Protocol-Version"] = self.proto
        return h

    async def initialize(self) -> dict:
        rid = self._next_id()
        body = {
            "jsonrpc": "2.0", "id": rid, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "bench.py", "version": "0.1"}},
        }
        r = await self.http.post(self.url, json=body, headers=self.headers)
        if r.status_code != 200:
            raise RuntimeError(f"initialize failed: HTTP {r.status_code} {r.headers.get('www-authenticate','')} {r.text[:300]}")
        self.session_id = r.headers.get("mcp-session-id")
        msg = parse_body(r, rid) or {}
        self.proto = (msg.get("result") or {}).get("protocolVersion", PROTOCOL_VERSION)
        r2 = await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                  headers=self._hdrs())
        if r2.status_code not in (200, 202, 204):
            raise RuntimeError(f"initialized notification failed: HTTP {r2.status_code} {r2.text[:200]}")
        return msg

    async def call_tool(self, tool: str, args: dict) -> tuple[float, bool, str]:
        rid = self._next_id()
        body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": tool, "arguments": args}}
        t0 = time.perf_counter()
        r = await self.http.post(self.url, json=body, headers=self._hdrs())
        msg = parse_body(r, rid) if r.status_code == 200 else None
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            return dt, False, f"HTTP {r.status_code}: {r.text[:200]}"
        if msg is None:
            return dt, False, "no JSON-RPC response"
        if "error" in msg:
            return dt, False, f"rpc error: {json.dumps(msg['error'])[:200]}"
        res = msg.get("result") or {}
        if res.get("isError"):
            return dt, False, f"tool isError: {json.dumps(res.get('content'))[:200]}"
        return dt, True, ""

    async def close(self):
        if self.session_id:
            try:
                await self.http.delete(self.url, headers=self._hdrs())
            except Exception:
                pass
        await self.http.aclose()


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


async def run_scenario(url, tool, args, token, n, conc, warmup, shared, timeout):
    clients: list[Client] = []
    if shared:
        base = Client(url, token, timeout)
        await base.initialize()
        clients = [base] * conc
    else:
        for _ in range(conc):
            c = Client(url, token, timeout)
            await c.initialize()
            clients.append(c)
    # warmup
    for c in set(clients):
        for _ in range(warmup):
            await c.call_tool(tool, args)
    per = max(1, n // conc)
    lat: list[float] = []
    errors: list[str] = []

    async def worker(c: Client):
        for _ in range(per):
            dt, ok, err = await c.call_tool(tool, args)
            lat.append(dt)
            if not ok:
                errors.append(err)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - t0
    for c in set(clients):
        await c.close()
    s = sorted(lat)
    return {
        "tool": tool, "concurrency": conc, "calls": len(lat), "errors": len(errors),
        "first_error": errors[0] if errors else None, "wall_s": round(wall, 3),
        "calls_per_s": round(len(lat) / wall, 1) if wall > 0 else None,
        "p50_ms": round(pct(s, 50) * 1000, 2), "p90_ms": round(pct(s, 90) * 1000, 2),
        "p99_ms": round(pct(s, 99) * 1000, 2), "max_ms": round(s[-1] * 1000, 2) if s else None,
        "mean_ms": round(statistics.mean(s) * 1000, 2) if s else None,
        "shared_session": shared,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("tool")
    ap.add_argument("--args", default="{}")
    ap.add_argument("--token", default=None)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("-c", default="1,8")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--shared-session", action="store_true")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    args = json.loads(a.args)
    levels = [int(x) for x in a.c.split(",") if x.strip()]
    results = []
    for conc in levels:
        res = asyncio.run(run_scenario(a.url, a.tool, args, a.token, a.n, conc, a.warmup, a.shared_session, a.timeout))
        results.append(res)
        if a.json:
            print(json.dumps(res))
        else:
            print(f"[{a.tool} c={conc}] calls={res['calls']} errors={res['errors']} wall={res['wall_s']}s "
                  f"rate={res['calls_per_s']}/s p50={res['p50_ms']}ms p90={res['p90_ms']}ms "
                  f"p99={res['p99_ms']}ms max={res['max_ms']}ms"
                  + (f" first_error={res['first_error']}" if res["first_error"] else ""))
        sys.stdout.flush()
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
