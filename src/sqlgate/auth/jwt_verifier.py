"""JWT access-token verification (resource-server mode), on joserfc.

Beyond FastMCP's JWTVerifier it: requires an audience by default (a token minted for another API
is refused), accepts several algorithms but only of the key's family (no HS/RS confusion, never
`none`), checks exp/nbf/iat with a leeway, refreshes the JWKS when a token names an unknown `kid`
(rate-limited), and leaves scope checks to the transport so a missing scope is a 403, not a 401.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import httpx2
from fastmcp.server.auth import TokenVerifier
from fastmcp.server.auth.auth import AccessToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from sqlgate.auth.outages import describe, note

log = logging.getLogger("sqlgate.auth.jwt")

HMAC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
JWKS_MIN_REFRESH_SECONDS = 10.0


class SqlgateJWTVerifier(TokenVerifier):
    def __init__(self, *, algorithms: list[str], issuer: str | None, audience: list[str] | None,
                 jwks_uri: str | None = None, public_key: str | None = None, secret: str | None = None,
                 leeway_seconds: int = 30, timeout_seconds: float = 10.0,
                 jwks_min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS):
        super().__init__()
        self.algorithms = algorithms
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self._jwks_uri = jwks_uri
        self._timeout = timeout_seconds
        self._min_refresh = jwks_min_refresh_seconds
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._lock = anyio.Lock()
        # a configured key is the only key: a token's `kid` does not select among others
        self._static_key = (OctKey.import_key(secret.encode()) if secret is not None
                            else _import_public(public_key) if public_key is not None else None)
        self._registry = JWSRegistry(algorithms=list(algorithms), strict_check_header=False)

    async def _key_set(self, kid: str | None):
        if self._static_key is not None:
            return self._static_key
        if self._keys is not None and (kid is None or _has_kid(self._keys, kid)):
            return self._keys
        async with self._lock:  # one fetch for many concurrent requests with a new kid
            fresh_enough = time.monotonic() - self._fetched_at < self._min_refresh
            if self._keys is None or (not fresh_enough and not _has_kid(self._keys, kid)):
                assert self._jwks_uri is not None
                try:
                    async with httpx2.AsyncClient(timeout=self._timeout) as http:
                        doc = (await http.get(self._jwks_uri)).raise_for_status().json()
                except (httpx2.HTTPError, ValueError) as exc:
                    # the IdP's key endpoint is down: an outage (503), not a bad token (401)
                    note("provider", f"JWKS {self._jwks_uri}: {describe(exc, self._timeout)}")
                    raise
                self._keys = KeySet.import_key_set(doc)
                self._fetched_at = time.monotonic()
        return self._keys

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = _header(token)
            if header.get("alg") not in self.algorithms:
                log.info("JWT refused: algorithm %r not accepted", header.get("alg"))
                return None
            keys = await self._key_set(header.get("kid"))
            decoded = jwt.decode(token, keys, algorithms=self.algorithms, registry=self._registry)
            claims = decoded.claims
            options: dict[str, Any] = {"exp": {"essential": True}}
            if self.issuer:
                options["iss"] = {"essential": True, "value": self.issuer}
            JWTClaimsRegistry(leeway=self.leeway, **options).validate(claims)
            if self.audience and not _audience_ok(claims.get("aud"), self.audience):
                log.info("JWT refused: audience %r is not %r", claims.get("aud"), self.audience)
                return None
        except (JoseError, ValueError, KeyError, httpx2.HTTPError) as exc:
            log.info("JWT refused: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or claims.get("sub") or ""),
            scopes=_scopes(claims),
            expires_at=int(claims["exp"]),
            subject=claims.get("sub"),
            claims=claims,
        )


def _header(token: str) -> dict[str, Any]:
    import base64
    import json

    head = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def _has_kid(keys: KeySet, kid: str | None) -> bool:
    return kid is not None and any(k.kid == kid for k in keys.keys)


def _import_public(pem: str):
    for cls in (RSAKey, ECKey, OKPKey):
        try:
            return cls.import_key(pem.encode())
        except (JoseError, ValueError, TypeError):
            continue
    raise ValueError("public_key is not a PEM-encoded RSA, EC or Ed25519 public key")


def _audience_ok(aud: Any, expected: list[str]) -> bool:
    got = aud if isinstance(aud, list) else [aud]
    return any(a in expected for a in got if isinstance(a, str))


def _scopes(claims: dict[str, Any]) -> list[str]:
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [str(v) for v in value]
    return []
