"""The raw limit for the benchmarks: a minimal ASGI JSON-RPC endpoint, no MCP framework.

    python benchmarks/raw_mcp.py --db DIR/raw.duckdb --seed DIR/seed.sql --port 18002

It speaks just enough streamable-HTTP MCP for the load generator (initialize,
notifications/initialized, tools/call; stateless, plain JSON answers) and runs the same DuckDB
queries as the other servers the way they must run them: a cursor per call, in a worker thread so
the event loop stays free, rows turned into records and encoded once (pydantic-core, already in the
venv). Served by the same uvicorn with the same log level, so what sqlgate or FastMCP costs above
this is their request machinery. Tools:

  ping             SELECT 42, text block only
  rows             1,000 rows x 10 columns, text block only
  rows_structured  the same rows as structuredContent {"result": rows} plus the text form of them,
                   the shape an MCP server with an output schema sends

With --typed it is the "thin path" of the benchmarks README: the same endpoint, but each tools/call
goes through the mcp SDK's own types once (the request validated as a CallToolRequest, the answer
built as a CallToolResult with structuredContent and dumped once): what a sqlgate-owned transport
under the SDK's types would cost at least.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import duckdb
import mcp_types as types
import uvicorn
from projects import ROWS_SQL, baseline_args, build_once, records
from pydantic_core import from_json, to_json

PROTOCOL_VERSION = "2025-06-18"
QUERIES = {"ping": "SELECT 42 AS answer", "rows": ROWS_SQL, "rows_structured": ROWS_SQL}


def make_app(db_path: Path, typed: bool = False):
    db = duckdb.connect(str(db_path), read_only=True)

    async def call_tool_typed(msg: dict[str, Any]) -> bytes:
        request = types.CallToolRequest.model_validate(msg)  # one validation, the SDK's model
        name = request.params.name
        if name not in QUERIES:
            result = types.CallToolResult(content=[types.TextContent(type="text", text=f"unknown tool {name!r}")],
                                          is_error=True)
        else:
            rows = await anyio.to_thread.run_sync(records, db, QUERIES[name])
            result = types.CallToolResult(content=[types.TextContent(type="text", text=to_json(rows).decode())],
                                          structured_content={"result": rows})
        answer = types.JSONRPCResponse(jsonrpc="2.0", id=msg["id"], result=result.model_dump(
            by_alias=True, mode="json", exclude_none=True))
        return answer.model_dump_json(by_alias=True, exclude_none=True).encode()  # one dump

    async def call_tool(params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if name not in QUERIES:
            return {"content": [{"type": "text", "text": f"unknown tool {name!r}"}], "isError": True}
        rows = await anyio.to_thread.run_sync(records, db, QUERIES[name])
        text = to_json(rows).decode()
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
        if name == "rows_structured":
            result["structuredContent"] = {"result": rows}
        return result

    def tools_list() -> dict[str, Any]:
        return {"tools": [{"name": n, "inputSchema": {"type": "object", "properties": {}}} for n in QUERIES]}

    async def read_body(receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def respond(send, status: int, body: bytes = b"") -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":  # served with lifespan="off": nothing to set up or tear down
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method == "GET":
            return await respond(send, 200, b'{"status":"ok"}')
        if path != "/mcp":
            return await respond(send, 404, b'{"error":"not found"}')
        if method != "POST":
            return await respond(send, 405, b'{"error":"POST only (stateless)"}')
        try:
            msg = parse_request(await read_body(receive))
        except ValueError:
            error = {"code": -32700, "message": "parse error"}
            return await respond(send, 400, to_json({"jsonrpc": "2.0", "id": None, "error": error}))
        if "id" not in msg:  # a notification (notifications/initialized): accepted, no answer
            return await respond(send, 202)
        rpc = msg.get("method")
        if rpc == "tools/call" and typed:
            return await respond(send, 200, await call_tool_typed(msg))
        if rpc == "tools/call":
            result = await call_tool(msg.get("params") or {})
        elif rpc == "initialize":
            requested = (msg.get("params") or {}).get("protocolVersion") or PROTOCOL_VERSION
            result = {"protocolVersion": requested, "capabilities": {"tools": {}},
                      "serverInfo": {"name": "raw-limit", "version": "1"}}
        elif rpc == "tools/list":
            result = tools_list()
        elif rpc == "ping":
            result = {}
        else:
            error = {"code": -32601, "message": f"method not found: {rpc}"}
            return await respond(send, 200, to_json({"jsonrpc": "2.0", "id": msg["id"], "error": error}))
        await respond(send, 200, to_json({"jsonrpc": "2.0", "id": msg["id"], "result": result}))

    return app


def parse_request(body: bytes) -> dict[str, Any]:
    """The request as a JSON-RPC object (pydantic-core's parser, like the encoder); ValueError if not one."""
    msg = from_json(body)
    if not isinstance(msg, dict):
        raise ValueError("not a JSON-RPC object")
    return msg


def main() -> None:
    a = baseline_args(__doc__, typed=True)
    build_once(a.db, a.seed)
    # same server and log level as `sqlgate serve --log-level warning` (no per-request access log)
    uvicorn.run(make_app(a.db, typed=a.typed), host=a.host, port=a.port, log_level="warning", access_log=False,
                lifespan="off")


if __name__ == "__main__":
    main()
