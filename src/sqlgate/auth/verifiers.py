"""Token verifiers for resource-server mode (JWT, RFC 7662 introspection), with identity mapping."""

from __future__ import annotations

import time
from typing import Any

import httpx2
from fastmcp.server.auth import TokenVerifier
from fastmcp.server.auth.auth import AccessToken
from fastmcp.server.auth.providers.introspection import IntrospectionTokenVerifier

from sqlgate.auth.config import AuthConfig
from sqlgate.auth.jwt_verifier import SqlgateJWTVerifier
from sqlgate.auth.outages import NotingTransport
from sqlgate.auth.verified import VerifiedTokens, token_key


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path, e.g. `realm_access.roles`; a claim named with dots (Auth0's
    namespaced `https://example.com/roles`) is found by its whole name first."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class IdentityMapping(TokenVerifier):
    """Wraps a verifier: names the caller by the configured username claim and labels the source."""

    def __init__(self, inner: TokenVerifier, username_claim: str, provider: str):
        super().__init__()
        self.inner = inner
        self.username_claim = username_claim
        self.provider = provider

    async def verify_token(self, token: str) -> AccessToken | None:
        result = await self.inner.verify_token(token)
        if result is None:
            return None
        claims = dict(result.claims or {})
        name = claim_at(claims, self.username_claim)
        fallback = claims.get("sub") or claims.get("client_id") or result.client_id  # machine tokens: the client
        claims["sqlgate_username"] = str(name if isinstance(name, str | int) and name != "" else fallback or "")
        claims.setdefault("sqlgate_provider", self.provider)
        return result.model_copy(update={"claims": claims})


class RememberingVerifier(TokenVerifier):
    """Wraps a verifier whose verdict on a token depends only on the token and the clock (a JWT:
    signature, issuer, audience, exp/nbf with a leeway; the keys of a JWKS are not fetched again
    for a `kid` already known either): a token it accepted is accepted again without parsing or
    checking it, until its `exp` plus the leeway (verified.py). The HTTP layer still refuses it on
    every request once `exp` has passed. Not for introspection: an IdP may revoke what it said."""

    def __init__(self, inner: TokenVerifier, cache: VerifiedTokens, leeway_seconds: float):
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.leeway = leeway_seconds

    async def verify_token(self, token: str) -> AccessToken | None:
        key = token_key(token)
        cached = self.cache.get(key, time.time())
        if cached is not None:
            return cached
        result = await self.inner.verify_token(token)
        if result is not None and result.expires_at is not None:
            self.cache.put(key, result, result.expires_at + self.leeway)
        return result


def build_verifiers(auth: AuthConfig, resource_url: str) -> list[TokenVerifier]:
    verifiers: list[TokenVerifier] = []
    if auth.jwt is not None:
        j = auth.jwt
        audience = j.audience or ([resource_url] if j.audience_required else None)
        jwt_verifier: TokenVerifier = IdentityMapping(SqlgateJWTVerifier(
            algorithms=list(j.algorithms), issuer=j.issuer, audience=audience, jwks_uri=j.jwks_uri,
            public_key=j.public_key, secret=j.secret, leeway_seconds=j.leeway_seconds,
        ), auth.username_claim, "jwt")
        if auth.token_cache.max_entries:
            jwt_verifier = RememberingVerifier(jwt_verifier, VerifiedTokens(auth.token_cache.max_entries),
                                               j.leeway_seconds)
        verifiers.append(jwt_verifier)
    if auth.introspection is not None:
        i = auth.introspection
        # a transport that notes an unreachable or failing endpoint, so the caller gets 503, not 401
        http = httpx2.AsyncClient(timeout=i.timeout_seconds, transport=NotingTransport("introspection"))
        verifiers.append(IdentityMapping(IntrospectionTokenVerifier(
            introspection_url=i.url, client_id=i.client_id, client_secret=i.client_secret,
            client_auth_method=i.auth_method, timeout_seconds=int(i.timeout_seconds),
            audience=list(i.audience or [resource_url]), cache_ttl_seconds=i.cache_ttl or None,
            http_client=http,
        ), auth.username_claim, "introspection"))
    return verifiers
