"""The caller's identity for the current request.

Derived from the access token that FastMCP's auth layer verified for *this* request (each
request carries its own token), so a session opened by one user can never run as another.
"""

from __future__ import annotations

from sqlgate.context import ANONYMOUS, UserContext


def current_user() -> UserContext:
    from fastmcp.server.dependencies import get_access_token

    token = get_access_token()
    if token is None:
        return ANONYMOUS
    claims = dict(token.claims or {})
    username = str(claims.get("preferred_username") or claims.get("login") or claims.get("sub") or "")
    return UserContext(
        username=username,
        user_id=str(claims.get("sub") or token.client_id or ""),
        email=str(claims.get("email") or ""),
        provider=str(claims.get("sqlgate_provider") or ""),
        display_name=str(claims.get("name") or ""),
        scopes=frozenset(token.scopes or ()),
        claims=claims,
    )
