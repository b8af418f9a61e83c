"""Baseline for the benchmarks: the same `ping` tool written directly on FastMCP, no sqlgate.

    python benchmarks/bare_fastmcp.py --db DIR/bare.duckdb --seed DIR/seed.sql --port 18001

Deliberately the plain way a FastMCP user would write it (sync tool, one cursor per call), so the
comparison measures what sqlgate adds on top of FastMCP + DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from fastmcp import FastMCP
from projects import ROWS_SQL, baseline_args, build_once, records
from starlette.requests import Request
from starlette.responses import JSONResponse


def make_server(db_path: Path) -> FastMCP:
    db = duckdb.connect(str(db_path), read_only=True)
    mcp = FastMCP("bare")

    @mcp.tool
    def ping() -> list[dict[str, Any]]:
        """trivial query"""
        return records(db, "SELECT 42 AS answer")  # a cursor per call, the usual way with DuckDB

    @mcp.tool
    def rows() -> list[dict[str, Any]]:
        """1000 rows x 10 columns (the same SQL as sqlgate's `rows` tool)"""
        return records(db, ROWS_SQL)

    # same readiness probe as sqlgate, so startup is measured identically
    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return mcp


def main() -> None:
    a = baseline_args(__doc__)
    build_once(a.db, a.seed)
    # log level matches `sqlgate serve --log-level warning` (no per-request access log on either side)
    make_server(a.db).run(transport="http", host=a.host, port=a.port, show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
