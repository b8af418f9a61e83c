"""Who is calling, derived per request — never stored on the MCP session.

The engine receives a CallContext explicitly; tools obtain it from `current_call()`, which reads
the current HTTP request (headers, and the verified access token once auth is on) or a value
pinned for the duration of a CLI `run`/`test`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class UserContext:
    username: str = ""
    user_id: str = ""
    email: str = ""
    provider: str = ""
    display_name: str = ""
    # the upstream IdP token: reachable from SQL via get_user_external_token(), never logged
    external_token: str = field(default="", repr=False)
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # non-secret fields of the provider's token reply (Salesforce: instance_url, id)
    token_info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def is_anonymous(self) -> bool:
        return not self.username and not self.user_id

    def log_fields(self) -> dict[str, str]:
        """What audit logs may show about the caller (no token, no raw claims)."""
        return {
            "username": self.username,
            "user_id": self.user_id,
            "provider": self.provider,
            "display_name": self.display_name,
            "email": self.email,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> UserContext:
        known = {"username", "user_id", "email", "provider", "display_name", "external_token"}
        unknown = set(data) - known - {"scopes", "claims", "token_info"}
        if unknown:
            raise ValueError(
                f"unknown user context key(s): {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(known | {'scopes', 'claims', 'token_info'}))})"
            )
        scopes = data.get("scopes") or []
        if isinstance(scopes, str):
            scopes = scopes.split()
        return cls(
            **{k: str(data[k]) for k in known if data.get(k) is not None},
            scopes=frozenset(scopes),
            claims=MappingProxyType(dict(data.get("claims") or {})),
            token_info=MappingProxyType(dict(data.get("token_info") or {})),
        )


ANONYMOUS = UserContext()


@dataclass(frozen=True)
class CallContext:
    user: UserContext = ANONYMOUS
    # request headers, lower-cased names; the Authorization header is never kept here
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # the client's network address over HTTP (after a trusted proxy's X-Forwarded-For), else ""
    client: str = ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def principal(self) -> str:
        """Whose share of the database this call uses: the user, else the client's address (a
        client can open many MCP sessions, but not many addresses)."""
        u = self.user
        if u.username or u.user_id:
            return f"user:{u.provider}:{u.user_id or u.username}"
        return f"address:{self.client}" if self.client else "anonymous"


_pinned: ContextVar[CallContext | None] = ContextVar("sqlgate_call", default=None)
_DROP_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_SCOPE_KEY = "sqlgate.call"


@contextmanager
def pinned_call(ctx: CallContext) -> Iterator[None]:
    """Run a block (CLI run/test, tests) as a given caller."""
    token = _pinned.set(ctx)
    try:
        yield
    finally:
        _pinned.reset(token)


def current_call() -> CallContext:
    pinned = _pinned.get()
    if pinned is not None:
        return pinned
    from sqlgate.auth.identity import current_user  # local: auth is optional at import time

    try:
        from fastmcp.server.dependencies import get_http_request

        request = get_http_request()
    except RuntimeError:  # stdio: there is no HTTP request
        return CallContext(user=current_user())
    # built once per HTTP request (the audit middleware and the tool both ask), kept in its ASGI scope
    cached = request.scope.get(_SCOPE_KEY)
    if cached is None:
        headers = MappingProxyType({k.lower(): v for k, v in request.headers.items()
                                    if k.lower() not in _DROP_HEADERS})
        client = request.client.host if request.client else ""
        cached = request.scope[_SCOPE_KEY] = CallContext(user=current_user(), headers=headers, client=client)
    return cached
