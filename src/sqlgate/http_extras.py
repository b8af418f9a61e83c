"""HTTP-level pieces in front of the MCP endpoint: JSON-RPC id check and CORS.

The mcp SDK answers a request whose `id` is not a string or an integer (a float, an object, null,
`true`) with HTTP 202 and then drops it, so the client waits forever. `JsonRpcIdGuard` answers it
with HTTP 400 and a JSON-RPC -32600 error instead. It is on the hot path, so it decides from the raw
bytes first and parses only a body that could hold a bad id.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# `"id":` followed by what can only start an invalid id: a number with a fraction or exponent,
# an object, an array, null, true or false. A match is only a candidate (it may sit inside tool
# arguments); the full parse below decides.
_SUSPECT_ID = re.compile(rb'"id"\s*:\s*(?:-?\d+[.eE]|[{\[ntf])')
MAX_CHECKED_BODY = 4 * 1024 * 1024


def bad_id(message: Any) -> bool:
    if not isinstance(message, dict) or "id" not in message:
        return False  # notifications have no id; non-objects are the SDK's parse error to give
    value = message["id"]
    return isinstance(value, bool) or not isinstance(value, (str, int))


class JsonRpcIdGuard:
    """ASGI middleware: HTTP 400 + JSON-RPC -32600 for a POST whose message id is invalid."""

    def __init__(self, app: ASGIApp, mcp_path: str):
        self.app = app
        self.mcp_path = mcp_path.rstrip("/") or "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")  # set by the authentication middleware when the server has one
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").rstrip("/") != self.mcp_path
                or (user is not None and not getattr(user, "is_authenticated", False))):
            # a caller without a valid token gets its 401 from the endpoint: its body is neither
            # held nor parsed here (this middleware runs before the endpoint's token check)
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body, more = b"", True
        while more and len(body) <= MAX_CHECKED_BODY:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        problem = self._problem(body) if _SUSPECT_ID.search(body) else None
        if problem:
            await json_rpc_error(send, problem)
            return
        replay = iter(messages)

        async def replay_receive() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replay_receive, send)

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


async def json_rpc_error(send: Send, message: str) -> None:
    """HTTP 400 with a JSON-RPC -32600 (Invalid Request) error that answers no id."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
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
