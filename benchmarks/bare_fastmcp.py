"""Baseline for the benchmarks: the same `ping` tool written directly on FastMCP, no sqlgate.

    python benchmarks/bare_fastmcp.py --db DIR/bare.duckdb --seed DIR/seed.sql --port 18001

Deliberately the plain way a FastMCP user would write it (sync tool, one cursor per call), so the
comparison measures what sqlgate adds on top of FastMCP + DuckDB.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import duckdb
from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse


def build_once(db_path: Path, seed: Path | None) -> None:
    """Create the database from the seed on first start, like sqlgate does (not timed separately)."""
    if db_path.exists() or seed is None:
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute(seed.read_text(encoding="utf-8"))
    finally:
        con.close()


def make_server(db_path: Path) -> FastMCP:
    db = duckdb.connect(str(db_path), read_only=True)
    mcp = FastMCP("bare")

    @mcp.tool
    def ping() -> list[dict[str, Any]]:
        """trivial query"""
        cur = db.cursor()  # a cursor per call: DuckDB connections are not safe to share across threads
        try:
            cur.execute("SELECT 42 AS answer")
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()

    @mcp.tool
    def rows() -> list[dict[str, Any]]:
        """1000 rows x 10 columns (the same SQL as sqlgate's `rows` tool)"""
        from projects import ROWS_SQL

        cur = db.cursor()
        try:
            cur.execute(ROWS_SQL)
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()

    # same readiness probe as sqlgate, so startup is measured identically
    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return mcp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True, help="DuckDB file (opened read-only)")
    ap.add_argument("--seed", type=Path, help="SQL that builds --db when it does not exist yet")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    build_once(a.db, a.seed)
    # log level matches `sqlgate serve --log-level warning` (no per-request access log on either side)
    make_server(a.db).run(transport="http", host=a.host, port=a.port, show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
