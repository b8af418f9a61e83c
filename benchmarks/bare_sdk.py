"""Baseline for the benchmarks: the same `ping` tool on the mcp SDK's low-level Server, no FastMCP.

    python benchmarks/bare_sdk.py --db DIR/sdk.duckdb --seed DIR/seed.sql --port 18003

Between the raw limit (raw_mcp.py, no MCP framework) and bare FastMCP (bare_fastmcp.py): what the
SDK's own request machinery costs (streamable HTTP transport, sessions, JSON-RPC dispatch, pydantic
models), so benchmarks/layers.py can say which layer holds the time.
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import duckdb
import mcp_types as types
import uvicorn
from mcp.server.lowlevel.server import Server
from projects import baseline_args, build_once, records
from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route


def make_app(db_path: Path):
    db = duckdb.connect(str(db_path), read_only=True)

    async def list_tools(_ctx, _params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="ping", description="trivial query",
                                                       input_schema={"type": "object", "properties": {}})])

    async def call_tool(_ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name != "ping":
            return types.CallToolResult(content=[types.TextContent(type="text", text="unknown tool")], is_error=True)
        rows = await anyio.to_thread.run_sync(records, db, "SELECT 42 AS answer")
        return types.CallToolResult(content=[types.TextContent(type="text", text=to_json(rows).decode())],
                                    structured_content={"result": rows})

    server = Server("bare-sdk", on_list_tools=list_tools, on_call_tool=call_tool)
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp")

    async def healthz(_request) -> JSONResponse:  # same readiness probe as sqlgate
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/healthz", healthz), Mount("/", app=mcp_app)],
                     lifespan=mcp_app.router.lifespan_context)


def main() -> None:
    args = baseline_args(__doc__)
    build_once(args.db, args.seed)
    uvicorn.run(make_app(args.db), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
