"""Upstream identity providers: their endpoints and how to learn who a token belongs to.

Each provider maps its user-info answer onto one shape (user_id, username, email, name), which
becomes the caller's identity in SQL (`get_username()` …) and in audit logs. Answers are cached
for `cache_ttl` seconds per token (by the token's hash, bounded: verified.py), so a busy client
does not turn every call into a call to the provider, and bad tokens are never cached. A provider
that cannot answer (down, slower than `timeout_seconds`, 5xx) is noted as an outage: the request
is answered 503, not 401, because the token may well be valid (outages.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from fastmcp.server.auth import TokenVerifier
from fastmcp.server.auth.auth import AccessToken

from sqlgate.auth.config import PROVIDER_TITLES, AuthConfig, ProviderConfig
from sqlgate.auth.outages import describe, note, provider_failure
from sqlgate.auth.presets import PRESETS, TokenClaims
from sqlgate.auth.verified import DEFAULT_MAX_ENTRIES, VerifiedTokens, token_key
from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.auth.upstream")


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    userinfo: str | None  # None: the identity comes from the access token alone (token_claims)
    revoke: str | None = None
    emails: str | None = None  # GitHub: /user/emails when /user hides the address
    scope: str = ""
    callback_path: str = "/auth/callback"
    token_auth_method: str = "client_secret_basic"
    extra_authorize: dict[str, str] = field(default_factory=dict)
    token_claims: TokenClaims | None = None  # read identity claims from the access token (a JWT)
    refresh_scope: bool = False  # name the upstream scopes again when refreshing (Entra)


_DEFAULTS: dict[str, dict[str, Any]] = {
    "github": dict(authorize="https://github.com/login/oauth/authorize",
                   token="https://github.com/login/oauth/access_token", api="https://api.github.com",
                   scope="user:email", token_auth_method="client_secret_post"),
    "atlassian": dict(authorize="https://auth.atlassian.com/authorize", token="https://auth.atlassian.com/oauth/token",
                      userinfo="https://api.atlassian.com/me", scope="read:me offline_access",
                      token_auth_method="client_secret_post",
                      extra_authorize={"audience": "api.atlassian.com", "prompt": "consent"}),
    "salesforce": dict(authorize="https://login.salesforce.com/services/oauth2/authorize",
                       token="https://login.salesforce.com/services/oauth2/token",
                       userinfo="https://login.salesforce.com/services/oauth2/userinfo",
                       revoke="https://login.salesforce.com/services/oauth2/revoke",
                       scope="api refresh_token openid profile email"),
    "google": dict(authorize="https://accounts.google.com/o/oauth2/v2/auth", token="https://oauth2.googleapis.com/token",
                   userinfo="https://openidconnect.googleapis.com/v1/userinfo",
                   revoke="https://oauth2.googleapis.com/revoke", scope="openid profile email",
                   extra_authorize={"access_type": "offline", "prompt": "consent"}),
    "keycloak": dict(scope="openid profile email"),
    "oidc": dict(scope="openid profile email"),
}


# fields of the token reply kept for endpoints (never a token): see proxy._extract_upstream_claims
_TOKEN_INFO = {"salesforce": ("instance_url", "id")}


def token_info_fields(provider: str) -> tuple[str, ...]:
    return PRESETS[provider].token_info if provider in PRESETS else _TOKEN_INFO.get(provider, ())


def resolve_endpoints(provider: str, cfg: ProviderConfig) -> Endpoints:
    d = _DEFAULTS[provider] if provider in _DEFAULTS else PRESETS[provider].defaults(cfg)
    title = PROVIDER_TITLES[provider]
    if provider == "keycloak":
        base = f"{cfg.server_url.rstrip('/')}/realms/{cfg.realm}/protocol/openid-connect"  # type: ignore[union-attr]
        d = {**d, "authorize": f"{base}/auth", "token": f"{base}/token", "userinfo": f"{base}/userinfo",
             "revoke": f"{base}/revoke"}
    elif provider == "oidc" and not (cfg.auth_url and cfg.token_url and cfg.userinfo_url):
        d = {**d, **_discover(cfg, title)}
    elif provider == "github":
        api = (cfg.api_base_url or d["api"]).rstrip("/")
        d = {**d, "userinfo": f"{api}/user", "emails": f"{api}/user/emails"}
    return Endpoints(
        authorize=cfg.auth_url or d["authorize"],
        token=cfg.token_url or d["token"],
        userinfo=cfg.userinfo_url or d.get("userinfo"),
        revoke=cfg.revoke_url or d.get("revoke"),
        emails=d.get("emails"),
        scope=cfg.scope if cfg.scope is not None else d["scope"],
        callback_path=cfg.callback_path or f"/{provider}/callback",
        token_auth_method=cfg.token_endpoint_auth_method or d.get("token_auth_method", "client_secret_basic"),
        extra_authorize={**d.get("extra_authorize", {}), **cfg.extra_authorize_params},
        token_claims=d.get("token_claims"),
        refresh_scope=d.get("refresh_scope", False),
    )


def _discover(cfg: ProviderConfig, title: str) -> dict[str, str]:
    url = cfg.discovery_url or f"{(cfg.issuer or '').rstrip('/')}/.well-known/openid-configuration"
    try:
        doc = httpx2.get(url, timeout=cfg.timeout_seconds).raise_for_status().json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise ConfigError(f"{title} discovery failed: cannot read {url}: {exc}", where="auth.oidc") from None
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint") if k not in doc]
    if missing:
        raise ConfigError(f"{title} discovery document {url} lacks {', '.join(missing)}", where="auth.oidc")
    if cfg.issuer and doc.get("issuer", "").rstrip("/") != cfg.issuer.rstrip("/"):
        raise ConfigError(f"{title} discovery document issuer {doc.get('issuer')!r} does not match the "
                          f"configured issuer {cfg.issuer!r}", where="auth.oidc")
    return {"authorize": doc["authorization_endpoint"], "token": doc["token_endpoint"],
            "userinfo": doc["userinfo_endpoint"], "revoke": doc.get("revocation_endpoint")}


def normalize(provider: str, info: dict[str, Any]) -> dict[str, str]:
    """Provider user info -> user_id / username / email / name."""
    if provider in PRESETS:
        return PRESETS[provider].identity(info)
    if provider == "github":
        return {"user_id": str(info.get("id", "")), "username": info.get("login") or "",
                "email": info.get("email") or "", "name": info.get("name") or info.get("login") or ""}
    if provider == "atlassian":
        return {"user_id": info.get("account_id", ""), "username": info.get("nickname") or info.get("email") or "",
                "email": info.get("email") or "", "name": info.get("name") or ""}
    if provider == "salesforce":
        return {"user_id": info.get("user_id") or info.get("sub") or "",
                "username": info.get("preferred_username") or info.get("email") or "",
                "email": info.get("email") or "", "name": info.get("name") or ""}
    if provider == "google":
        return {"user_id": info.get("sub", ""), "username": info.get("email") or info.get("sub") or "",
                "email": info.get("email") or "", "name": info.get("name") or ""}
    return {"user_id": info.get("sub", ""), "username": info.get("preferred_username") or info.get("sub") or "",
            "email": info.get("email") or "", "name": info.get("name") or ""}


class UserInfoVerifier(TokenVerifier):
    """Checks an upstream access token by asking the provider who it belongs to."""

    def __init__(self, provider: str, endpoints: Endpoints, cache_ttl: int, timeout: float):
        super().__init__()
        self.provider = provider
        self.endpoints = endpoints
        self._cache_ttl = cache_ttl
        self._cache = VerifiedTokens(DEFAULT_MAX_ENTRIES if cache_ttl > 0 else 0)
        self._timeout = timeout
        self._http: httpx2.AsyncClient | None = None
        self._jwt = _token_claims_verifier(endpoints.token_claims, timeout)

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=self._timeout, headers={"Accept": "application/json"})
        return self._http

    def answer_expires(self, token: str) -> float:
        """Until when the provider's answer about `token` is reused (0: it is asked every time)."""
        entry = self._cache.lookup(token_key(token), time.time())
        return entry.until if entry is not None else 0.0

    async def verify_token(self, token: str) -> AccessToken | None:
        key = token_key(token)
        cached = self._cache.get(key, time.time())
        if cached is not None:
            return cached  # shared: callers copy before changing (OAuthProxy does, proxy.py builds anew)
        try:
            with anyio.fail_after(self._timeout):
                info = await self._user_info(token)
        except Exception as exc:
            if not provider_failure(exc):
                raise
            why = describe(exc, self._timeout)
            log.warning("%s user info request failed: %s", self.provider, why)
            note("provider", f"user info {self.endpoints.userinfo or self.endpoints.token_claims.jwks_url}: {why}")
            return None
        if info is None:
            return None
        identity = normalize(self.provider, info)
        if not identity["user_id"]:
            log.warning("%s user info has no user id; refusing the token", self.provider)
            return None
        # the provider's own fields stay visible as claims (e.g. `groups` for claim_mappings)
        claims = {**info, "sub": identity["user_id"], "preferred_username": identity["username"],
                  "email": identity["email"], "name": identity["name"], "sqlgate_provider": self.provider}
        result = AccessToken(token=token, client_id=self.provider, scopes=[], expires_at=None, claims=claims)
        self._cache.put(key, result, time.time() + self._cache_ttl)
        return result

    async def _user_info(self, token: str) -> dict[str, Any] | None:
        claims: dict[str, Any] = {}
        if self._jwt is not None:
            found = await self._token_claims(token)
            if found is None:
                return None
            claims = found
        if self.endpoints.userinfo is None:
            return claims
        info = await self._userinfo_endpoint(token)
        # the access token's claims (groups, roles …) stay; the user-info answer describes the user
        return None if info is None else {**claims, **info}

    async def _token_claims(self, token: str) -> dict[str, Any] | None:
        rule = self.endpoints.token_claims
        assert rule is not None and self._jwt is not None
        checked = await self._jwt.verify_token(token)  # keys unreachable: noted as an outage (503)
        if checked is None:
            return None
        claims = dict(checked.claims)
        issuers = {i.replace("{tid}", str(claims.get("tid", ""))) for i in rule.issuers}
        problems = [what for what, bad in (
            ("issuer", str(claims.get("iss", "")).rstrip("/") not in {i.rstrip("/") for i in issuers}),
            ("client_id", rule.client_id is not None and claims.get("client_id") != rule.client_id),
            ("token_use", rule.token_use is not None and claims.get("token_use") != rule.token_use)) if bad]
        if problems:
            log.warning("%s access token refused: unexpected %s", self.provider, ", ".join(problems))
            return None
        return claims

    async def _userinfo_endpoint(self, token: str) -> dict[str, Any] | None:
        assert self.endpoints.userinfo is not None
        headers = {"Authorization": f"Bearer {token}"}
        resp = await self._client().get(self.endpoints.userinfo, headers=headers)
        if resp.status_code in (401, 403):
            return None
        resp.raise_for_status()
        info = resp.json()
        if self.provider == "github" and not info.get("email") and self.endpoints.emails:
            # a private address is only visible through /user/emails (needs the user:email scope)
            emails = await self._client().get(self.endpoints.emails, headers=headers)
            if emails.status_code == 200:
                primary = [e for e in emails.json() if e.get("primary") and e.get("verified")]
                if primary:
                    info = {**info, "email": primary[0]["email"]}
        return info


def _token_claims_verifier(rule: TokenClaims | None, timeout: float):
    """sqlgate's JWT verifier for a provider's access tokens; issuer and client checks are done
    in UserInfoVerifier._token_claims (Entra's issuer names the token's own tenant)."""
    if rule is None:
        return None
    from sqlgate.auth.jwt_verifier import SqlgateJWTVerifier

    return SqlgateJWTVerifier(algorithms=["RS256"], issuer=None,
                              audience=list(rule.audience) if rule.audience else None,
                              jwks_uri=rule.jwks_url, timeout_seconds=timeout)


def build_verifier(auth: AuthConfig) -> tuple[UserInfoVerifier, Endpoints]:
    cfg = auth.provider_config()
    endpoints = resolve_endpoints(auth.provider, cfg)
    return UserInfoVerifier(auth.provider, endpoints, auth.cache_ttl, cfg.timeout_seconds), endpoints
