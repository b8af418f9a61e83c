"""HTTP-level pieces in front of the MCP endpoint: request size and JSON-RPC id checks, and CORS.

`JsonRpcIdGuard` refuses a body over the mcp SDK's own request limit (4 MiB) with HTTP 413 while
reading it (or at once from its Content-Length), as the SDK would, but before this or any other
check in front of the SDK holds or parses it. The SDK answers a request whose `id` is not a string
or an integer (a float, an object, null, `true`) with HTTP 202 and then drops it, so the client
waits forever: the guard answers it with HTTP 400 and a JSON-RPC -32600 error instead. It is on the
hot path, so it decides from the raw bytes first and parses only a body that could hold a bad id.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE as MAX_REQUEST_BODY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# `"id":` followed by what can only start an invalid id: a number with a fraction or exponent,
# an object, an array, null, true or false. A match is only a candidate (it may sit inside tool
# arguments); the full parse below decides.
_SUSPECT_ID = re.compile(rb'"id"\s*:\s*(?:-?\d+[.eE]|[{\[ntf])')


def bad_id(message: Any) -> bool:
    if not isinstance(message, dict) or "id" not in message:
        return False  # notifications have no id; non-objects are the SDK's parse error to give
    value = message["id"]
    return isinstance(value, bool) or not isinstance(value, (str, int))


class JsonRpcIdGuard:
    """ASGI middleware: HTTP 400 + JSON-RPC -32600 for a POST whose message id is invalid."""

    def __init__(self, app: ASGIApp, mcp_path: str, max_body: int = MAX_REQUEST_BODY):
        self.app = app
        self.mcp_path = mcp_path.rstrip("/") or "/"
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")  # set by the authentication middleware when the server has one
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").rstrip("/") != self.mcp_path
                or (user is not None and not getattr(user, "is_authenticated", False))):
            # a caller without a valid token gets its 401 from the endpoint: its body is neither
            # held nor parsed here (this middleware runs before the endpoint's token check)
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), b"0")
        if declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            messages.append(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await self._too_large(send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = self._problem(body) if _SUSPECT_ID.search(body) else None
        if problem:
            await json_rpc_error(send, problem)
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _too_large(self, send: Send) -> None:
        await json_rpc_error(send, f"the request body is larger than {self.max_body} bytes", status=413)

    @staticmethod
    def _problem(body: bytes) -> str | None:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None  # the SDK answers the parse error
        except RecursionError:
            # nested deeper than Python's decoder goes (an HTTP 500 before): no message sqlgate answers
            return "Invalid Request: the JSON is nested too deeply"
        if any(bad_id(m) for m in (payload if isinstance(payload, list) else [payload])):
            return "Invalid Request: a JSON-RPC id must be a string or an integer"
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the app behind: the messages already read, then the client's own."""
    pending = iter(messages)

    async def replay_receive() -> Message:
        try:
            return next(pending)
        except StopIteration:
            return await receive()

    return replay_receive


async def json_rpc_error(send: Send, message: str, status: int = 400) -> None:
    """HTTP 400 (or `status`) with a JSON-RPC -32600 (Invalid Request) error that answers no id."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def cors_middleware(origins: list[str]) -> Any:
    """CORS for browser clients: preflight answered, the MCP and auth headers allowed and exposed.

    No credentials mode: MCP clients send a bearer token in Authorization, never cookies, so the
    sqlgate consent cookies stay out of reach of other origins.
    """
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    return Middleware(
        CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version",
                       "Last-Event-ID"],
        expose_headers=["Mcp-Session-Id", "Mcp-Protocol-Version", "WWW-Authenticate"],
        allow_credentials=False, max_age=600,
    )


class NoReplayGuard:
    """ASGI middleware for servers without an event store (stateless, or resumption turned off):
    a GET with `Last-Event-ID` gets HTTP 400 naming why, where the SDK would answer nothing (500)."""

    def __init__(self, app: ASGIApp, mcp_path: str):
        self.app = app
        self.mcp_path = mcp_path.rstrip("/") or "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") == "GET"
                and scope.get("path", "").rstrip("/") == self.mcp_path
                and any(name == b"last-event-id" for name, _ in scope.get("headers", []))):
            await json_rpc_error(send, "this server does not resume streams (stateless, or "
                                       "transport.resume_buffer_bytes is 0): send the request again")
            return
        await self.app(scope, receive, send)
