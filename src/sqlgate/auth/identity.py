"""The caller's identity for the current request.

Derived from the access token that the auth layer verified for *this* request (each request
carries its own token), so a session opened by one user can never run as another.
"""

from __future__ import annotations

from types import MappingProxyType

from sqlgate.context import ANONYMOUS, UserContext

_PRIVATE_CLAIMS = ("sqlgate_upstream_token", "upstream_claims")  # raw user info stays available as claims


def user_from_token(token) -> UserContext:
    claims = dict(token.claims or {})
    username = str(claims.get("sqlgate_username") or claims.get("preferred_username") or claims.get("login")
                   or claims.get("sub") or "")
    external = str(claims.get("sqlgate_upstream_token") or "")
    public = {k: v for k, v in claims.items() if k not in _PRIVATE_CLAIMS}
    upstream = claims.get("upstream_claims")
    token_info = upstream.get("token_info") if isinstance(upstream, dict) else None
    return UserContext(
        username=username,
        user_id=str(claims.get("sub") or ""),
        email=str(claims.get("email") or ""),
        provider=str(claims.get("sqlgate_provider") or ""),
        display_name=str(claims.get("name") or ""),
        external_token=external,
        scopes=frozenset(token.scopes or ()),
        claims=MappingProxyType(public),
        token_info=MappingProxyType(dict(token_info or {})),
    )


def current_user() -> UserContext:
    from fastmcp.server.dependencies import get_access_token

    token = get_access_token()
    return ANONYMOUS if token is None else user_from_token(token)
