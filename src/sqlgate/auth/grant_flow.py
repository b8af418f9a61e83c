"""Code redemption and refresh rotation on the grant store, in place of OAuthProxy's own.

FastMCP's OAuthProxy reads a code (or refresh token record) and deletes it in a later, separate
step, so N parallel redemptions can all pass the read; it never detects reuse. These overrides
keep its flow (consent, upstream exchange, JWT issuing, token swap) and replace exactly the
single-use and rotation steps with the grant store's atomic operations:

- The IdP callback's `_code_store.put` lands in the grant store (`CodeShelf`), each code with a
  fresh grant *family* id. Redemption takes it with `consume_code`: exactly one request wins.
- A presented code that is already spent — a concurrent duplicate or a later replay — revokes
  the family it issued (RFC 6749 §4.1.2, §10.5), even if the winner is still issuing.
- Every sqlgate token id (`jti`) starts with its family id, so checking a token against
  revocation needs no extra lookup; revoked families' access tokens are refused.
- A refresh claims the next generation with a compare-and-set *before* going upstream, so one
  of N concurrent refreshes proceeds and the IdP sees one refresh, not N (a rotating IdP would
  otherwise treat the duplicates as reuse and kill the grant). The provider is asked only when
  its access token expires within `upstream_refresh_margin` seconds; otherwise only sqlgate's
  tokens rotate. If the upstream call fails for a reason other than a rejected grant, the claim
  is undone and the client may retry; an unreachable or failing provider is
  `UpstreamUnavailable` (HTTP 503 at /token, see proxy.py).
- The rotation keeps the new pair (sealed) on the replaced token's row. The replaced token,
  presented again within `refresh_grace` seconds, gets that same pair: a client whose response
  was lost, a server killed mid-refresh, concurrent refreshes — nobody loses the grant, and no
  second pair exists. While the provider is still being asked, such a retry waits for the
  answer; if the request asking it died (a crash), the retry takes over once the claim is older
  than the provider timeout and finishes it.
- Presenting an older generation, or the previous one after the grace window, revokes the
  family (RFC 9700 §4.14.2).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import anyio
from fastmcp.server.auth.oauth_proxy.models import (
    DEFAULT_ACCESS_TOKEN_EXPIRY_SECONDS,
    ClientCode,
    JTIMapping,
    UpstreamTokenSet,
)
from fastmcp.server.auth.oauth_proxy.upstream import OAuthError
from fastmcp.utilities.auth import parse_scopes
from mcp.server.auth.provider import AuthorizationCode, RefreshToken, TokenError
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from sqlgate.audit.record import auth_event
from sqlgate.auth.grants.base import GrantStore, RefreshRecord, token_hash
from sqlgate.auth.outages import describe, provider_failure
from sqlgate.auth.verified import VerifiedTokens

log = logging.getLogger("sqlgate.auth.grants")


def _user_of(idp_tokens: dict[str, Any], scopes: list[str]):
    """The person a grant is for, as audit events show them (log fields only, never the claims):
    from the ID token the provider's token endpoint just answered with (OIDC Core §3.1.3.7: a
    direct TLS answer needs no signature check), else nobody."""
    import base64
    import json
    from types import SimpleNamespace

    from sqlgate.auth.identity import user_from_token

    claims: dict[str, Any] = {}
    id_token = idp_tokens.get("id_token")
    if isinstance(id_token, str) and id_token.count(".") == 2:
        payload = id_token.split(".")[1]
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            claims = {}
    return user_from_token(SimpleNamespace(claims=claims if isinstance(claims, dict) else {}, scopes=scopes))


def new_family_id() -> str:
    return secrets.token_urlsafe(16)


def family_of(jti: str) -> str | None:
    """The family a sqlgate token id belongs to (None for tokens issued before families)."""
    family, dot, _ = jti.partition(".")
    return family if dot else None


def _jti(family_id: str) -> str:
    return f"{family_id}.{secrets.token_urlsafe(24)}"


# a pending rotation older than the provider timeout plus this lost its request (crash): take over
STALE_PENDING_SLACK = 5.0


def refresh_verdict(found: RefreshRecord, now: float, grace: float) -> str:
    """"current" (may be rotated), "revoked", "replay" (the previous token within the grace window:
    answer with the pair it was rotated to), "race" (the same, rotated before pairs were kept:
    refuse, keep the family) or "reuse" (revoke it)."""
    if found.revoked:
        return "revoked"
    if found.is_current:
        return "current"
    if found.generation == found.current_generation - 1 and now - found.rotated_at < grace:
        return "replay" if found.successor is not None else "race"
    return "reuse"


class UpstreamUnavailable(Exception):
    """The refresh cannot be done right now (the provider is unreachable, slow, 5xx, or said so;
    or another request is still refreshing the grant); nothing was spent."""

    def __init__(self, description: str = "the identity provider could not be reached; retry later",
                 retry_after: int = 5) -> None:
        super().__init__(description)
        self.description, self.retry_after = description, retry_after


def _unavailable(exc: BaseException) -> bool:
    return provider_failure(exc)


def _as_token(pair: dict[str, Any]) -> OAuthToken:
    return OAuthToken(access_token=pair["access_token"], token_type="Bearer", refresh_token=pair["refresh_token"],
                      expires_in=max(1, int(pair["expires_at"] - time.time())), scope=pair["scope"])


class FamilyRefreshToken(RefreshToken):
    """A loaded refresh token with the family generation it was issued at."""

    family_id: str
    generation: int
    replay: bool = False  # the just-rotated token again, within the grace window


class CodeShelf:
    """Stands in for OAuthProxy._code_store (put by the IdP callback, read by load_authorization_code)."""

    def __init__(self, grants: GrantStore) -> None:
        self.grants = grants

    async def put(self, key: str, value: ClientCode, ttl: float | None = None) -> None:
        sealed = self.grants.seal(value.model_dump(mode="json"))
        await anyio.to_thread.run_sync(self.grants.put_code, token_hash(key), new_family_id(), sealed,
                                       float(value.expires_at))

    async def get(self, key: str) -> ClientCode | None:
        found = await anyio.to_thread.run_sync(self.grants.peek_code, token_hash(key), time.time())
        record = self.grants.unseal(found[1]) if found else None
        return ClientCode.model_validate(record) if record else None

    async def delete(self, key: str) -> bool:  # an expired code, found by load_authorization_code
        now = time.time()
        return await anyio.to_thread.run_sync(self.grants.take_code, token_hash(key), now, now) is not None


class GrantFlow:
    """Mixin for OAuthProxy subclasses: set `self.grants`, `self.verified` (this process's cache of
    verified access tokens), `self.refresh_grace`, `self.upstream_refresh_margin` and
    `self.upstream_timeout` in __init__ and call `self.use_grant_store()` after OAuthProxy.__init__."""

    grants: GrantStore
    verified: VerifiedTokens
    refresh_grace: float
    upstream_refresh_margin: float
    upstream_timeout: float

    def use_grant_store(self) -> None:
        self._code_store = CodeShelf(self.grants)

    async def _grants(self, fn, *args):
        return await anyio.to_thread.run_sync(fn, *args)

    def _family_lifetime(self) -> float:
        # no token of a family outlives this (marker rows of revocations are kept as long)
        return float(max(self._fallback_refresh_token_expiry_seconds or 0,
                         self._fastmcp_access_token_expiry_seconds or 0, DEFAULT_ACCESS_TOKEN_EXPIRY_SECONDS))

    async def revoke_family(self, family_id: str, why: str) -> None:
        now = time.time()
        await self._grants(self.grants.revoke_family, family_id, now + self._family_lifetime(), now)
        # after the write: a check that read the store before it cannot be cached any more either
        self.verified.drop_family(family_id)
        await self._upstream_token_store.delete(key=family_id)
        log.warning("revoked grant family %s…: %s", family_id[:6], why)
        auth_event("token.revoke", message=why)

    # ---------------------------------------------------------------- authorization codes
    async def load_authorization_code(self, client: OAuthClientInformationFull, authorization_code: str):
        code = await super().load_authorization_code(client, authorization_code)
        if code is None:
            await self._revoke_if_spent(authorization_code)
        return code

    async def _revoke_if_spent(self, code: str) -> None:
        family = await self._grants(self.grants.spent_code_family, token_hash(code), time.time())
        if family is not None:
            await self.revoke_family(family, "its authorization code was presented again")

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        now = time.time()
        taken = await self._grants(self.grants.consume_code, authorization_code.code, now,
                                   now + self._family_lifetime())
        if taken is None:  # another redemption of this code won
            await self._revoke_if_spent(authorization_code.code)
            raise TokenError("invalid_grant", "authorization code was already used")
        code = ClientCode.model_validate(taken.record)
        return await self._issue_family(client, taken.family_id, code.idp_tokens, list(authorization_code.scopes))

    async def _issue_family(self, client: OAuthClientInformationFull, family_id: str, idp_tokens: dict[str, Any],
                            requested_scopes: list[str]) -> OAuthToken:
        """OAuthProxy.exchange_authorization_code's issuing, with the family as the grant's identity."""
        if "expires_in" in idp_tokens and int(idp_tokens["expires_in"]) <= 0:
            raise TokenError("invalid_grant", "Upstream access token has a non-positive expires_in")
        if client.client_id is None:
            raise TokenError("invalid_client", "Client ID is required")
        scopes = parse_scopes(idp_tokens["scope"]) or [] if "scope" in idp_tokens else requested_scopes
        scopes = self._translate_scopes_from_idp(scopes)
        upstream_refresh = idp_tokens.get("refresh_token") or None
        if "expires_in" in idp_tokens:
            expires_in = int(idp_tokens["expires_in"])
        else:
            expires_in = self._fallback_access_token_expiry_seconds or DEFAULT_ACCESS_TOKEN_EXPIRY_SECONDS
        # ours never outlives the upstream token it stands for: a client refreshes at /token in time
        # (FastMCP's refresh while checking a token would bypass the family's compare-and-set)
        access_ttl = min(self._fastmcp_access_token_expiry_seconds or expires_in, expires_in)
        refresh_ttl = None
        if upstream_refresh:
            refresh_ttl = int(idp_tokens.get("refresh_expires_in") or 0) or self._fallback_refresh_token_expiry_seconds
        now = time.time()
        upstream = UpstreamTokenSet(
            upstream_token_id=family_id, access_token=idp_tokens["access_token"], refresh_token=upstream_refresh,
            refresh_token_expires_at=now + refresh_ttl if refresh_ttl else None, expires_at=now + expires_in,
            token_type=idp_tokens.get("token_type", "Bearer"), scope=" ".join(scopes), client_id=client.client_id,
            created_at=now, raw_token_data=idp_tokens)
        await self._upstream_token_store.put(key=family_id, value=upstream,
                                             ttl=max(refresh_ttl or 0, expires_in, access_ttl, 1))
        claims = await self._extract_upstream_claims(idp_tokens)
        access_jti = _jti(family_id)
        access = self.jwt_issuer.issue_access_token(client_id=client.client_id, scopes=scopes, jti=access_jti,
                                                    expires_in=access_ttl, upstream_claims=claims)
        await self._map_jti(access_jti, family_id, access_ttl)
        refresh = None
        if refresh_ttl:
            refresh_jti = _jti(family_id)
            refresh = self.jwt_issuer.issue_refresh_token(client_id=client.client_id, scopes=scopes, jti=refresh_jti,
                                                          expires_in=refresh_ttl, upstream_claims=claims)
            await self._map_jti(refresh_jti, family_id, refresh_ttl)  # OAuthProxy's upstream revocation uses it
        expires_at = now + max(refresh_ttl or 0, access_ttl)
        record = self.grants.seal({"client_id": client.client_id, "scopes": scopes, "expires_at": expires_at})
        await self._grants(self.grants.issue_family, family_id, expires_at,
                           token_hash(refresh) if refresh else None, record if refresh else None, now)
        log.info("issued grant family %s… to client %s", family_id[:6], client.client_id)
        auth_event("token.issue", client_id=client.client_id, user=_user_of(idp_tokens, scopes))
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=access_ttl, refresh_token=refresh,
                          scope=" ".join(scopes))

    async def _map_jti(self, jti: str, family_id: str, ttl: float) -> None:
        await self._jti_mapping_store.put(key=jti, value=JTIMapping(jti=jti, upstream_token_id=family_id,
                                                                    created_at=time.time()), ttl=ttl)

    # ---------------------------------------------------------------- refresh
    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str):
        now = time.time()
        found = await self._grants(self.grants.lookup_refresh, refresh_token, now)
        if found is None or found.record.get("client_id") != client.client_id:
            return None
        verdict = refresh_verdict(found, now, self.refresh_grace)
        if verdict == "race":
            log.info("refresh token of grant family %s… presented %.1f s after its rotation: refused as a "
                     "concurrent duplicate", found.family_id[:6], now - found.rotated_at)
        elif verdict == "reuse":
            await self.revoke_family(found.family_id, f"a refresh token of generation {found.generation} was "
                                                      f"reused (now at {found.current_generation})")
        if verdict not in ("current", "replay"):
            return None
        return FamilyRefreshToken(token=refresh_token, client_id=client.client_id, scopes=found.record["scopes"],
                                  expires_at=int(found.record["expires_at"]), family_id=found.family_id,
                                  generation=found.generation, replay=verdict == "replay")

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: RefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        if not isinstance(refresh_token, FamilyRefreshToken) or client.client_id is None:
            raise TokenError("invalid_grant", "refresh token does not exist")
        if refresh_token.replay:
            return _as_token(await self._replay(client, refresh_token))
        family = refresh_token.family_id
        upstream = await self._upstream_token_store.get(key=family)
        if upstream is None or not upstream.refresh_token:
            raise TokenError("invalid_grant", "the grant has no upstream refresh token")
        now = time.time()
        scopes = self._translate_scopes_from_idp(scopes)
        refresh_ttl = self._refresh_ttl(upstream, now)
        new_refresh_jti = _jti(family)
        new_refresh = self.jwt_issuer.issue_refresh_token(
            client_id=client.client_id, scopes=scopes, jti=new_refresh_jti, expires_in=refresh_ttl,
            upstream_claims=await self._extract_upstream_claims(upstream.raw_token_data))
        new_hash, old_hash = token_hash(new_refresh), token_hash(refresh_token.token)
        record = self.grants.seal({"client_id": client.client_id, "scopes": scopes, "expires_at": now + refresh_ttl})
        go_upstream = self._upstream_due(upstream, now)
        if go_upstream:  # the access token is made once the provider has answered
            pair = None
            successor = self.grants.seal({"refresh_token": new_refresh, "scope": " ".join(scopes)})
        else:
            pair = await self._mint_access(client.client_id, family, upstream, scopes, new_refresh, now)
            successor = self.grants.seal(pair)
        # one transaction: claim the next generation, record the new token, keep the pair for retries
        generation = await self._grants(self.grants.rotate_refresh, family, refresh_token.generation, old_hash,
                                        new_hash, record, now + refresh_ttl, successor, go_upstream, now)
        if generation is None:  # a concurrent request rotated it first: answer with its pair
            return _as_token(await self._replay(client, refresh_token))
        await self._map_jti(new_refresh_jti, family, refresh_ttl)
        if pair is None:
            pair = await self._complete(client.client_id, family, generation, old_hash, new_refresh, scopes)
        log.info("rotated grant family %s… to generation %d (%s)", family[:6], generation,
                 "upstream refreshed" if go_upstream else "upstream token still fresh: not asked")
        auth_event("token.refresh", client_id=client.client_id, user=_user_of(upstream.raw_token_data, scopes))
        return _as_token(pair)

    async def _replay(self, client: OAuthClientInformationFull, token: FamilyRefreshToken) -> dict[str, Any]:
        """The pair the just-rotated `token` was rotated to: at once if finished; if the provider is
        still being asked, once that ends; if the request asking it died (a crash), this one takes
        over and finishes it. A bounded wait: the provider call is cut at its timeout."""
        stale_after = self.upstream_timeout + STALE_PENDING_SLACK
        give_up = time.monotonic() + stale_after + 1
        while True:
            now = time.time()
            found = await self._grants(self.grants.lookup_refresh, token.token, now)
            if found is None or found.revoked:
                raise TokenError("invalid_grant", "refresh token does not exist")
            if found.is_current:  # the rotation it waited for was undone: the provider failed
                raise UpstreamUnavailable()
            if found.generation != found.current_generation - 1 or found.successor is None:
                raise TokenError("invalid_grant", "refresh token was already used")
            if found.pending_since is None:
                log.info("refresh token of grant family %s… presented again %.1f s after its rotation: answered "
                         "with the same new pair", found.family_id[:6], now - found.rotated_at)
                return found.successor
            if now - found.pending_since > stale_after and await self._grants(
                    self.grants.take_over_rotation, found.family_id, found.current_generation,
                    found.pending_since, now):
                log.warning("grant family %s…: finishing a refresh whose request ended without finishing it "
                            "(%.0f s ago)", found.family_id[:6], now - found.pending_since)
                return await self._complete(client.client_id or "", found.family_id, found.current_generation,
                                            token_hash(token.token), found.successor["refresh_token"],
                                            found.successor["scope"].split())
            if time.monotonic() > give_up:
                raise UpstreamUnavailable("a refresh of this grant is in progress; retry shortly", retry_after=1)
            await anyio.sleep(0.1)

    async def _complete(self, client_id: str, family: str, generation: int, old_hash: str, new_refresh: str,
                        scopes: list[str]) -> dict[str, Any]:
        """Finish a pending rotation: refresh upstream (unless that is already done), make the access
        token, store the pair as the old token's successor. Failing upstream undoes the rotation."""
        upstream = await self._upstream_token_store.get(key=family)
        if upstream is None or not upstream.refresh_token:
            raise TokenError("invalid_grant", "the grant has no upstream refresh token")
        now = time.time()
        if self._upstream_due(upstream, now):
            try:
                response = await self._refresh_upstream(upstream, scopes)
            except BaseException as exc:
                # not the client's fault: step back so the token it holds still works
                with anyio.CancelScope(shield=True):
                    await self._grants(self.grants.undo_rotation, family, generation, token_hash(new_refresh),
                                       old_hash)
                if _unavailable(exc):
                    log.warning("upstream refresh for grant family %s… failed (%s); the client may retry",
                                family[:6], describe(exc, self.upstream_timeout))
                    raise UpstreamUnavailable() from exc
                raise
            if response is None:
                await self.revoke_family(family, "the upstream provider rejected its refresh token")
                raise TokenError("invalid_grant", "Upstream refresh token was rejected")
            await self._store_refreshed(upstream, response, self._refresh_ttl(upstream, now))
        pair = await self._mint_access(client_id, family, upstream, scopes, new_refresh, time.time())
        if not await self._grants(self.grants.finish_rotation, family, generation, old_hash, self.grants.seal(pair)):
            raise TokenError("invalid_grant", "the grant was revoked")
        return pair

    def _upstream_due(self, upstream: UpstreamTokenSet, now: float) -> bool:
        return upstream.expires_at - now <= self.upstream_refresh_margin

    def _refresh_ttl(self, upstream: UpstreamTokenSet, now: float) -> int:
        return max(int(upstream.refresh_token_expires_at - now) if upstream.refresh_token_expires_at
                   else self._fallback_refresh_token_expiry_seconds, 1)

    async def _mint_access(self, client_id: str, family: str, upstream: UpstreamTokenSet, scopes: list[str],
                           refresh: str, now: float) -> dict[str, Any]:
        """A new access token beside `refresh`; it never outlives the upstream token it stands for."""
        access_ttl = max(1, min(self._configured_access_ttl(), int(upstream.expires_at - now)))
        access_jti = _jti(family)
        access = self.jwt_issuer.issue_access_token(
            client_id=client_id, scopes=scopes, jti=access_jti, expires_in=access_ttl,
            upstream_claims=await self._extract_upstream_claims(upstream.raw_token_data))
        await self._map_jti(access_jti, family, access_ttl)
        return {"access_token": access, "refresh_token": refresh, "scope": " ".join(scopes),
                "expires_at": now + access_ttl}

    def _configured_access_ttl(self) -> int:
        return int(self._fastmcp_access_token_expiry_seconds or self._fallback_access_token_expiry_seconds
                   or DEFAULT_ACCESS_TOKEN_EXPIRY_SECONDS)

    async def _refresh_upstream(self, upstream: UpstreamTokenSet, scopes: list[str]) -> dict[str, Any] | None:
        """The upstream refresh reply, or None when the upstream rejected the grant."""
        upstream_scopes = self._prepare_scopes_for_upstream_refresh(scopes)
        try:
            async with self._upstream_oauth_client() as oauth:
                response = await oauth.refresh_token(url=self._upstream_token_endpoint,
                                                     refresh_token=upstream.refresh_token,
                                                     scope=" ".join(upstream_scopes) if upstream_scopes else None,
                                                     **self._extra_token_params)
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                return None
            raise
        if "expires_in" in response and int(response["expires_in"]) <= 0:
            raise TokenError("invalid_grant", "Upstream access token has a non-positive expires_in")
        return response

    async def _store_refreshed(self, upstream: UpstreamTokenSet, response: dict[str, Any], refresh_ttl: int) -> int:
        """Update the stored upstream token set; returns the new sqlgate access token lifetime."""
        now = time.time()
        expires_in = int(response.get("expires_in") or 0) or (self._fallback_access_token_expiry_seconds
                                                              or DEFAULT_ACCESS_TOKEN_EXPIRY_SECONDS)
        upstream.access_token = response["access_token"]
        upstream.expires_at = now + expires_in
        if response.get("refresh_token"):  # a rotating upstream
            upstream.refresh_token = response["refresh_token"]
            if int(response.get("refresh_expires_in") or 0):
                upstream.refresh_token_expires_at = now + int(response["refresh_expires_in"])
        upstream.raw_token_data = {**upstream.raw_token_data, **response}
        access_ttl = self._fastmcp_access_token_expiry_seconds or expires_in
        await self._upstream_token_store.put(key=upstream.upstream_token_id, value=upstream,
                                             ttl=max(refresh_ttl, expires_in, access_ttl, 1))
        return access_ttl

    # ---------------------------------------------------------------- access tokens
    async def load_access_token(self, token: str):
        family = self.family_of_token(token)
        if family is not None and await self._grants(self.grants.is_family_revoked, family, time.time()):
            return None
        return await super().load_access_token(token)

    def family_of_token(self, token: str, use: str | None = None) -> str | None:
        try:
            payload = self.jwt_issuer.verify_token(token, **({"expected_token_use": use} if use else {}))
        except Exception:
            return None
        return family_of(str(payload.get("jti") or ""))
