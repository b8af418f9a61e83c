"""sqlgate's authorization server: FastMCP's OAuthProxy with the corrections sqlgate needs.

What it changes and why:
- Scopes: MCP clients get *this server's* scopes (e.g. `sqlgate:access`); the upstream provider
  is asked for *its* scopes (e.g. GitHub `user:email`). FastMCP mixes the two, so tokens carried
  upstream scopes and `required_scopes` could never be met.
- Identity: every request's access token is mapped to the upstream user info (cached for
  `cache_ttl`), with the upstream token available as the caller's external token. A token once
  checked is kept, by its hash, in a bounded cache until it expires (verified.py); a revocation
  anywhere drops it within `token_cache.revocation_check_seconds` (revocations.py).
- Revocation (RFC 7009) is always on and ends the whole grant locally — access and refresh
  token alike — even for providers without a revocation endpoint (GitHub); where the provider has
  one, the grant's *upstream* tokens are revoked there (upstream_revocation.py).
- Pre-registered clients come from configuration (public or confidential), never from storage.
- Registration is bounded (registration.py); CIMD clients are accepted through FastMCP's CIMD
  support with sqlgate's fetcher (cimd.py); a failed code exchange at the IdP callback is an
  honest 400/502/503 page (callback.py).
- Single use and rotation: codes and refresh tokens live in the grant store with atomic
  operations (grant_flow.py explains what replaces OAuthProxy's read-then-delete and why).
- `invalid_grant` at /token is HTTP 400 (RFC 6749 §5.2). FastMCP turns it into 401, reading the
  MCP rule for *resource* requests ("invalid or expired tokens → 401") into the token endpoint.
  A provider outage during a refresh is 503 `temporarily_unavailable` with Retry-After, not 500.
- Outages: every provider call ends within the provider's `timeout_seconds`, and a request that
  failed because the provider or the state store is down is answered 503 (outages.py).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import time
from typing import Any

from fastmcp.server.auth.auth import AccessToken, PrivateKeyJWTClientAuthenticator, TokenHandler
from fastmcp.server.auth.identity_assertion import normalize_resource_url, server_url_has_query
from fastmcp.server.auth.oauth_proxy import OAuthProxy
from fastmcp.server.auth.oauth_proxy.models import ProxyDCRClient
from mcp.server.auth.handlers import revoke as _sdk_revoke
from mcp.server.auth.middleware.client_auth import ClientAuthenticator
from mcp.server.auth.provider import RefreshToken
from mcp.server.auth.routes import cors_middleware
from mcp.server.auth.settings import RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import AnyUrl
from starlette.responses import JSONResponse
from starlette.routing import Route

from sqlgate.audit.record import auth_event
from sqlgate.auth.callback import HonestCallback
from sqlgate.auth.cimd import CIMDFetchLimit, build_manager
from sqlgate.auth.config import AuthConfig, ClientConfig
from sqlgate.auth.grant_flow import FamilyRefreshToken, GrantFlow, UpstreamUnavailable, family_of
from sqlgate.auth.provider_calls import ProviderCalls
from sqlgate.auth.registration import BoundedRegistration
from sqlgate.auth.revocations import RevocationWatch
from sqlgate.auth.store import OAuthState
from sqlgate.auth.upstream import Endpoints, UserInfoVerifier, token_info_fields
from sqlgate.auth.upstream_revocation import UpstreamClient, revoke_upstream
from sqlgate.auth.verified import VerifiedTokens, token_key

log = logging.getLogger("sqlgate.auth")

# RFC 7009 §2.1: a public client revokes with its client_id alone. The mcp SDK's request model
# declares client_secret as required-but-nullable, which refuses exactly those clients (every
# DCR client of the proxy is public); give the field its intended default.
_sdk_revoke.RevocationRequest.model_fields["client_secret"].default = None
_sdk_revoke.RevocationRequest.model_rebuild(force=True)

# MCP scopes of the grant being exchanged, so the issued token carries them (see class doc)
_granted_scopes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("sqlgate_scopes", default=None)

CLIENT_COLLECTION = "mcp-oauth-proxy-clients"  # OAuthProxy's client store
LOOPBACK_REDIRECTS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def _signing_key(secret: str) -> bytes:
    # separate from the storage key: a leaked signing key does not decrypt stored tokens
    return hashlib.sha256(b"sqlgate-token-signing\x00" + secret.encode()).digest()


class SqlgateTokenHandler(TokenHandler):
    """FastMCP's token handler (invalid_client fix kept) with invalid_grant back at HTTP 400, and a
    provider outage during refresh as 503 temporarily_unavailable + Retry-After instead of a 500.
    A `resource` naming another server is invalid_target (RFC 8707 §2.2): the SDK passes it along
    and FastMCP ignores it, which would hand out a token for this server to a client that asked
    for one elsewhere."""

    async def handle(self, request):
        response = await self._answer(request)
        if response.status_code >= 400:  # issued and refreshed tokens are audited by GrantFlow
            form = await request.form() if request.method == "POST" else {}
            _audit_token_failure(response, form)
        return response

    async def _answer(self, request):
        resource = (await request.form()).get("resource") if request.method == "POST" else None
        if isinstance(resource, str) and resource and not self.provider.is_own_resource(resource):
            return JSONResponse({"error": "invalid_target",
                                 "error_description": "the resource is not this server"},
                                status_code=400, headers={"Cache-Control": "no-store"})
        try:
            response = await super().handle(request)
        except UpstreamUnavailable as exc:
            return JSONResponse({"error": "temporarily_unavailable", "error_description": exc.description},
                                status_code=503, headers={"Retry-After": str(exc.retry_after),
                                                          "Cache-Control": "no-store"})
        if response.status_code == 401 and b'"invalid_grant"' in bytes(response.body):
            response.status_code = 400
        return response


def _audit_token_failure(response, form) -> None:
    try:
        error = str(json.loads(bytes(response.body)).get("error") or "")
    except (ValueError, AttributeError):
        error = ""
    action = {"authorization_code": "token.issue", "refresh_token": "token.refresh"}.get(
        str(form.get("grant_type") or ""), "token")
    auth_event(action, "error" if response.status_code >= 500 else "refused", status=response.status_code,
               client_id=str(form.get("client_id") or "") or None, error=error or None)


class SqlgateOAuthProxy(HonestCallback, GrantFlow, ProviderCalls, OAuthProxy):
    def __init__(self, *, auth: AuthConfig, endpoints: Endpoints, verifier: UserInfoVerifier,
                 state: OAuthState, base_url: str):
        cfg = auth.provider_config()
        redirect_patterns = [*LOOPBACK_REDIRECTS, *auth.allowed_redirect_uris,
                             *(u for c in auth.clients for u in c.redirect_uris)]
        super().__init__(
            upstream_authorization_endpoint=endpoints.authorize,
            upstream_token_endpoint=endpoints.token,
            upstream_client_id=cfg.client_id or "",
            upstream_client_secret=cfg.client_secret,
            upstream_revocation_endpoint=None,  # revoke_token revokes upstream (upstream_revocation.py)
            token_verifier=verifier,
            base_url=base_url,
            redirect_path=endpoints.callback_path,
            issuer_url=auth.issuer_url or base_url,
            service_documentation_url=auth.service_documentation_url,
            allowed_client_redirect_uris=redirect_patterns,
            valid_scopes=list(auth.scopes),
            forward_pkce=cfg.forward_pkce,
            forward_resource=False,  # the resource is this server, not the upstream provider's API
            token_endpoint_auth_method=endpoints.token_auth_method,
            extra_authorize_params=endpoints.extra_authorize,
            extra_token_params=dict(cfg.extra_token_params),
            client_storage=state.kv,
            jwt_signing_key=_signing_key(state.secret),
            require_authorization_consent=auth.consent,
            fastmcp_access_token_expiry_seconds=auth.access_token_ttl,
            fallback_access_token_expiry_seconds=auth.access_token_ttl,
            fallback_refresh_token_expiry_seconds=auth.refresh_token_ttl,
            enable_cimd=auth.cimd.enabled,
        )
        # FastMCP's CIMD with sqlgate's fetcher: limits, the DCR redirect policy, dev loopback (cimd.py)
        self._cimd_manager = build_manager(auth.cimd, auth.registration, redirect_patterns, " ".join(auth.scopes))
        self.required_scopes = list(auth.authorization.required_scopes)
        self.revocation_options = RevocationOptions(enabled=True)
        self._upstream_scopes = endpoints.scope.split()
        self._refresh_scope = endpoints.refresh_scope
        self._provider_name = auth.provider
        self._config_clients = {c.client_id: c for c in auth.clients}
        self._mcp_scopes = list(auth.scopes)
        self.state = state
        self.grants = state.grants
        self.verified = VerifiedTokens(auth.token_cache.max_entries)
        self._revocations = RevocationWatch(self.grants, self.verified, auth.token_cache.revocation_check_seconds)
        self.refresh_grace = auth.refresh_grace_seconds
        self.upstream_refresh_margin = auth.upstream_refresh_margin_seconds
        self.upstream_timeout = cfg.timeout_seconds
        self._registration = auth.registration
        self._upstream_revoke = UpstreamClient(endpoints.revoke, cfg.client_id or "", cfg.client_secret,
                                               endpoints.token_auth_method, cfg.timeout_seconds) \
            if endpoints.revoke else None
        self.use_grant_store()
        self._expire_unbounded_clients()

    def get_routes(self, mcp_path: str | None = None):
        authenticator = ClientAuthenticator(self) if self._cimd_manager is None else PrivateKeyJWTClientAuthenticator(
            provider=self, cimd_manager=self._cimd_manager, token_endpoint_url=self.token_endpoint_url)
        token = Route("/token", endpoint=cors_middleware(SqlgateTokenHandler(self, authenticator).handle,
                                                         ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"])
        routes = []
        for r in super().get_routes(mcp_path):
            if isinstance(r, Route) and r.path == "/token":
                r = token
            elif isinstance(r, Route) and r.path == "/register":  # bounded: see registration.py
                r = Route("/register", endpoint=BoundedRegistration(r.app, self._registration, self.grants),
                          methods=["POST", "OPTIONS"])
            elif isinstance(r, Route) and r.path == "/authorize" and self._cimd_manager is not None:
                r = Route("/authorize", endpoint=CIMDFetchLimit(r.app, self._cimd_manager.fetcher, self.grants),
                          methods=sorted(r.methods or ["GET", "POST"]))
            routes.append(r)
        return routes

    # ---------------------------------------------------------------- scopes
    def _build_upstream_authorize_url(self, txn_id: str, transaction: dict[str, Any]) -> str:
        return super()._build_upstream_authorize_url(txn_id, {**transaction, "scopes": self._upstream_scopes})

    def _prepare_scopes_for_upstream_refresh(self, scopes: list[str]) -> list[str]:
        # omitted: the upstream grant keeps its original scope (RFC 6749 §6) — except where the
        # provider wants them named again (Entra: the scopes choose the token's resource)
        return list(self._upstream_scopes) if self._refresh_scope else []

    async def _extract_upstream_claims(self, idp_tokens: dict[str, Any]) -> dict[str, Any] | None:
        """Non-secret fields of the provider's token reply that endpoints need (Salesforce's
        instance_url: where the org's API lives). They ride in sqlgate's signed access token, so
        every replica sees them without a store lookup; refreshes keep them (grant_flow merges)."""
        info = {k: idp_tokens[k] for k in token_info_fields(self._provider_name)
                if isinstance(idp_tokens.get(k), str)}
        return {"token_info": info} if info else None

    def _translate_scopes_from_idp(self, scopes: list[str]) -> list[str]:
        granted = _granted_scopes.get()
        return list(granted) if granted is not None else []

    async def exchange_authorization_code(self, client, authorization_code):
        token = _granted_scopes.set(self._allowed(authorization_code.scopes))
        try:
            issued = await super().exchange_authorization_code(client, authorization_code)
        finally:
            _granted_scopes.reset(token)
        await self._keep_client(client)
        return issued

    async def exchange_refresh_token(self, client, refresh_token: RefreshToken, scopes: list[str]):
        # a refresh may narrow the grant, never widen it
        wanted = [s for s in (scopes or refresh_token.scopes) if s in refresh_token.scopes]
        token = _granted_scopes.set(self._allowed(wanted))
        try:
            issued = await super().exchange_refresh_token(client, refresh_token, scopes)
        finally:
            _granted_scopes.reset(token)
        await self._keep_client(client)
        return issued

    def is_own_resource(self, resource: str) -> bool:
        """Whether an RFC 8707 resource names this server (matched as OAuthProxy.authorize does)."""
        if self._resource_url is None:
            return True
        ours = str(self._resource_url)
        if server_url_has_query(ours):
            return resource.rstrip("/") == ours.rstrip("/")
        return normalize_resource_url(resource) == normalize_resource_url(ours)

    def _allowed(self, requested: list[str]) -> list[str]:
        return [s for s in requested if s in self._mcp_scopes]

    # ---------------------------------------------------------------- identity per request
    async def load_access_token(self, token: str) -> AccessToken | None:  # type: ignore[override]
        """The caller's identity; from this process's cache of verified tokens when it holds the
        token and revocations were read within the staleness bound (revocations.py), else checked
        in full — signature, family not revoked, JTI mapping, upstream token and the provider's
        answer about it — and cached until the first of: the token's expiry, the reuse of the
        provider's answer (`cache_ttl`) running out."""
        key = token_key(token)
        usable = self.verified.max_entries > 0 and await self._revocations.current()
        if usable:
            cached = self.verified.get(key, time.time())
            if cached is not None:
                return cached
        epoch = self.verified.epoch
        loaded = await self._load_access_token(token)
        if loaded is None or not usable:
            return loaded
        access, payload = loaded
        family = family_of(str(payload.get("jti") or ""))
        upstream = str((access.claims or {}).get("sqlgate_upstream_token") or "")
        until = min(float(payload["exp"]), self._token_validator.answer_expires(upstream))
        if family is not None and until > time.time():  # tokens from before families: never cached
            self.verified.put(key, access, until, family=family, epoch=epoch)
        return access

    async def _load_access_token(self, token: str) -> tuple[AccessToken, dict[str, Any]] | None:
        validated = await super().load_access_token(token)
        if validated is None:
            return None
        try:
            payload = self.jwt_issuer.verify_token(token)
        except Exception:
            return None
        if not payload.get("exp"):
            return None  # sqlgate issues none without; one that never expires is not ours
        scopes = str(payload.get("scope") or "").split()
        claims = dict(validated.claims or {})
        claims.setdefault("sqlgate_provider", self._provider_name)
        # the upstream token is the caller's external token (SQL: get_user_external_token());
        # it stays inside the server: identity.py reads it, audit logs never see claims
        claims["sqlgate_upstream_token"] = validated.token
        return AccessToken(
            token=token,
            client_id=str(payload.get("client_id") or ""),
            scopes=scopes,
            expires_at=int(payload["exp"]),
            subject=claims.get("sub"),
            claims=claims,
        ), payload

    # ---------------------------------------------------------------- clients
    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        configured = self._config_clients.get(client_id)
        if configured is not None:
            return self._client_from_config(configured)
        client = await super().get_client(client_id)
        if isinstance(client, ProxyDCRClient) and not client.allow_unregistered_redirect_uris:
            # The redirect policy was enforced when the client registered; at /authorize the
            # redirect must be one it registered (a loopback port may vary, RFC 8252 §7.3).
            # FastMCP would accept any URI matching the policy patterns instead.
            client.allowed_redirect_uri_patterns = None
        return client

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        # Anyone may register a public client with any of this server's scopes, so a narrower
        # registration protects nothing — it would only make step-up (403 insufficient_scope →
        # re-authorise with more scopes) fail with invalid_scope. What a token carries is
        # decided per authorisation and consented to by the user.
        client_info.scope = " ".join(self._mcp_scopes)
        await super().register_client(client_info)
        # stored again with a lifetime: a client that never completes a login goes away
        await self._keep_client(client_info, self._registration.unauthorized_client_ttl_seconds)

    def _expire_unbounded_clients(self) -> None:
        """Clients registered before registrations had a lifetime get the idle one from now."""
        ttl = self._registration.idle_client_ttl_seconds
        changed = self.grants.kv_expire_unset(CLIENT_COLLECTION, time.time() + ttl)
        if changed:
            log.info("%d registered client(s) without an expiry now expire unless used within %d s", changed, ttl)

    async def _keep_client(self, client: OAuthClientInformationFull, ttl: int | None = None) -> None:
        """(Re)store a registered client to live `ttl` seconds more (default: the idle lifetime)."""
        if client.client_id is None or client.client_id in self._config_clients:
            return
        stored = await self._client_store.get(key=client.client_id)
        if stored is None or stored.cimd_document is not None:  # CIMD clients are never stored
            return
        await self._client_store.put(key=client.client_id, value=stored,
                                     ttl=ttl or self._registration.idle_client_ttl_seconds)

    def _client_from_config(self, c: ClientConfig) -> OAuthClientInformationFull:
        return OAuthClientInformationFull(
            client_id=c.client_id,
            client_secret=c.client_secret,
            client_name=c.name,
            redirect_uris=[AnyUrl(u) for u in c.redirect_uris],
            grant_types=list(c.grant_types),
            response_types=["code"],
            scope=" ".join(c.scopes if c.scopes is not None else self._mcp_scopes),
            token_endpoint_auth_method="client_secret_post" if c.client_secret else "none",
        )

    # ---------------------------------------------------------------- revocation
    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        """End the whole grant: its upstream tokens at the provider (upstream_revocation.py explains
        why not OAuthProxy's), its family, and every token mapped to it."""
        use = "refresh" if isinstance(token, RefreshToken) else "access"
        try:
            payload = self.jwt_issuer.verify_token(token.token, expected_token_use=use)
        except Exception:
            return  # not one of ours: nothing to end (RFC 7009 §2.2: still 200)
        family = token.family_id if isinstance(token, FamilyRefreshToken) else self.family_of_token(token.token, use)
        mapping = None
        if family is None:  # a token from before grant families: its mapping names the upstream set
            mapping = await self._jti_mapping_store.get(key=payload["jti"])
        upstream_id = family or (mapping.upstream_token_id if mapping is not None else None)
        upstream = await self._upstream_token_store.get(key=upstream_id) if upstream_id else None
        grant = f"{upstream_id[:6]}…" if upstream_id else "?"
        if upstream is not None and self._upstream_revoke is not None:
            # RFC 7009 §2.1: revoking the refresh token also invalidates the grant's access tokens
            which = (upstream.refresh_token, "refresh_token") if upstream.refresh_token \
                else (upstream.access_token, "access_token")
            await revoke_upstream(self._upstream_revoke, [which], grant)
        elif upstream is not None:
            log.info("the %s provider has no revocation endpoint: grant %s ends here only", self._provider_name,
                     grant)
        if family is not None:
            await self.revoke_family(family, f"a {use} token was revoked by client {payload.get('client_id')}")
            return
        await self._jti_mapping_store.delete(key=payload["jti"])
        if mapping is not None:
            await self._upstream_token_store.delete(key=mapping.upstream_token_id)
        log.info("revoked a %s token of client %s", use, payload.get("client_id"))
        auth_event("token.revoke", client_id=payload.get("client_id"), message=f"a {use} token was revoked")
