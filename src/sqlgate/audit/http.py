"""The HTTP side of the audit trail: a request id for every request, and refusals as events.

`RequestAudit` is ASGI middleware in front of everything sqlgate serves over HTTP. It gives each
request an id (the client's `X-Request-Id` when it is a short token, else a new one), answers it
in `X-Request-Id`, and makes it reachable:
- in the request's own task (the OAuth routes) through a context variable (`current_request`);
- for MCP calls, which FastMCP runs in the session's task, through the request's
  `scope["state"]`, which FastMCP hands to the call (`request_id_of`).
A response with 401, 403 or 429 that no more specific event described (e.g. a refused
registration) becomes one `auth`/`refusal` event, with the user when the token was valid (403).
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sqlgate import metrics

REFUSALS = (401, 403, 429)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class RequestInfo:
    request_id: str
    path: str
    address: str
    audited: bool = False  # a specific event already describes this request


_request: ContextVar[RequestInfo | None] = ContextVar("sqlgate_http_request", default=None)


def current_request() -> RequestInfo | None:
    return _request.get()


def request_id_of(request: Any) -> str | None:
    state = getattr(request, "scope", {}).get("state") or {}
    return state.get("sqlgate_request_id")


def route_of(path: str, mcp_path: str) -> str:
    """A bounded label for metrics: which kind of route refused."""
    if path.rstrip("/") == mcp_path.rstrip("/"):
        return "mcp"
    for name in ("token", "register", "authorize", "revoke"):
        if path.rstrip("/").endswith("/" + name):
            return name
    return "callback" if path.endswith("/callback") else "other"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


class RequestAudit:
    def __init__(self, app: ASGIApp, mcp_path: str = "/mcp") -> None:
        self.app, self.mcp_path = app, mcp_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if _CLIENT_ID.match(given) else secrets.token_hex(8)
        scope.setdefault("state", {})["sqlgate_request_id"] = request_id
        info = RequestInfo(request_id, scope.get("path", ""), (scope.get("client") or ("", 0))[0])
        token = _request.set(info)
        status: list[int] = []
        challenge: list[str] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = list(message.get("headers", []))
                challenge.extend(v.decode("latin-1") for k, v in headers if k.lower() == b"www-authenticate")
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request.reset(token)
            if status and status[0] in REFUSALS:
                self._refused(scope, info, status[0], challenge[0] if challenge else "")

    def _refused(self, scope: Scope, info: RequestInfo, status: int, challenge: str) -> None:
        from sqlgate.audit.record import emit
        from sqlgate.audit.writer import console_enabled, current

        metrics.auth_refused(status, route_of(info.path, self.mcp_path))
        if info.audited or (current() is None and not console_enabled()):
            return
        from sqlgate.audit.events import new_event, user_fields

        error = re.search(r'error="([^"]+)"', challenge)
        reason = error.group(1) if error else {401: "unauthorized", 403: "forbidden", 429: "too_many_requests"}[status]
        fields: dict[str, Any] = dict(outcome="refused", status=status, request_id=info.request_id,
                                      error_class=reason, arguments={"path": info.path, "address": info.address},
                                      session_id=_header(scope, b"mcp-session-id") or None)
        user = scope.get("user")
        token = getattr(user, "access_token", None)
        if token is not None:  # a valid token without the right scope (403), or over a rate limit
            from sqlgate.auth.identity import user_from_token

            fields.update(user_fields(user_from_token(token)), client_id=getattr(token, "client_id", None))
        description = re.search(r'error_description="([^"]+)"', challenge)
        if description:
            fields["error_message"] = description.group(1)
        emit(new_event("auth", "refusal", **fields))
