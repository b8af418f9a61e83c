"""MCP session limits: a share per client, idle expiry, and one global ceiling.

The mcp SDK caps sessions globally only (10,000 by default) and keeps idle ones for 30 minutes,
so one client that opens 10,000 sessions locks every other client out for half an hour. Here each
principal — the token's (client id, issuer, subject) when auth is on, else the client's address —
holds at most `max_sessions_per_client` sessions; one more gets HTTP 429 with `Retry-After`,
everyone else is unaffected. Idle sessions end after `session_idle_timeout` seconds.

FastMCP builds its session manager inside the HTTP app's lifespan and offers no factory for it, so
`install()` puts this subclass in its place: a seam of one name, checked by the tests.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from dataclasses import dataclass
from typing import Any

import fastmcp.server.http as fastmcp_http
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from starlette.responses import JSONResponse

_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar("sqlgate_session_principal",
                                                                         default=None)


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 10_000
    max_sessions_per_client: int = 100
    idle_timeout_seconds: float = 600.0


_limits = SessionLimits()


def principal_of(scope: dict[str, Any]) -> str:
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):
        ctx = authorization_context(user)
        return f"token:{ctx['client_id']}|{ctx['issuer']}|{ctx['subject']}"
    client = scope.get("client")
    return f"address:{client[0]}" if client else "address:unknown"


def _opens_session(scope: dict[str, Any]) -> bool:
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    return not any(name == b"mcp-session-id" for name, _ in scope.get("headers", []))


class LimitedSessionManager(fastmcp_http.FastMCPStreamableHTTPSessionManager):
    def __init__(self, *args: Any, session_idle_timeout: Any = "auto", **kwargs: Any) -> None:
        super().__init__(*args, session_idle_timeout=_limits.idle_timeout_seconds, **kwargs)
        self.max_sessions = _limits.max_sessions
        self._owners_by_session: dict[str, str] = {}
        self._open_by_principal: Counter[str] = Counter()

    async def handle_request(self, scope, receive, send) -> None:
        if self.stateless or not _opens_session(scope):
            await super().handle_request(scope, receive, send)
            return
        principal = principal_of(scope)
        if self._open_by_principal[principal] >= _limits.max_sessions_per_client:
            await _too_many(principal)(scope, receive, send)
            return
        token = _principal.set(principal)
        try:
            await super().handle_request(scope, receive, send)
        finally:
            _principal.reset(token)

    def _admit_session(self, requestor):
        principal = _principal.get()
        if principal is not None and self._open_by_principal[principal] >= _limits.max_sessions_per_client:
            return None  # lost a race with the same client's other opening request
        transport = super()._admit_session(requestor)
        if transport is not None and principal is not None:
            self._owners_by_session[transport.mcp_session_id] = principal
            self._open_by_principal[principal] += 1
        return transport

    async def _discard_session(self, session_id: str, transport) -> None:
        principal = self._owners_by_session.pop(session_id, None)
        if principal is not None:
            self._open_by_principal[principal] -= 1
            if self._open_by_principal[principal] <= 0:
                del self._open_by_principal[principal]
        await super()._discard_session(session_id, transport)


def _too_many(principal: str) -> JSONResponse:
    retry = max(1, int(_limits.idle_timeout_seconds))
    message = (f"too many open MCP sessions for this client (limit {_limits.max_sessions_per_client}); "
               "close unused sessions (HTTP DELETE) or wait for idle ones to expire")
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}},
                        status_code=429, headers={"Retry-After": str(retry)})


def install(limits: SessionLimits) -> None:
    """Use the limited session manager for HTTP apps built from now on, with these limits."""
    global _limits
    _limits = limits
    fastmcp_http.FastMCPStreamableHTTPSessionManager = LimitedSessionManager  # type: ignore[misc]
