"""The OAuth proxy's calls to the provider: one deadline per request, outage notes, no refresh
outside the grant family's compare-and-set. Its own module because it needs FastMCP's OAuth proxy
stack, which a server without the proxy never imports (see outages.py for the notes themselves)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastmcp.server.auth.oauth_proxy.upstream import AsyncOAuth2Client

from sqlgate.auth.outages import describe, note, provider_failure

log = logging.getLogger("sqlgate.auth.outages")


class TimedOAuth2Client(AsyncOAuth2Client):
    """FastMCP's upstream token client with one deadline per request and outage notes."""

    def __init__(self, *args: Any, timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, timeout=timeout, **kwargs)
        self._deadline = timeout

    async def _request_token(self, url: str, data: dict[str, Any]) -> dict[str, Any]:
        try:
            with anyio.fail_after(self._deadline):
                return await super()._request_token(url, data)
        except Exception as exc:
            if provider_failure(exc):
                note("provider", f"token endpoint {url}: {describe(exc, self._deadline)}")
            raise


class ProviderCalls:
    """Mixin for the OAuthProxy subclass: set `self.upstream_timeout` in __init__."""

    upstream_timeout: float

    def _create_upstream_oauth_client(self) -> AsyncOAuth2Client:
        secret = self._upstream_client_secret  # type: ignore[attr-defined]
        return TimedOAuth2Client(client_id=self._upstream_client_id,  # type: ignore[attr-defined]
                                 client_secret=secret.get_secret_value() if secret is not None else None,
                                 token_endpoint_auth_method=self._token_endpoint_auth_method,  # type: ignore[attr-defined]
                                 timeout=self.upstream_timeout)

    async def authorize(self, client, params) -> str:
        # the SDK's /authorize turns any other exception into server_error with a traceback
        from mcp.server.auth.provider import AuthorizeError

        from sqlgate.auth.grants.base import StateStoreUnavailable

        try:
            return await super().authorize(client, params)  # type: ignore[misc]
        except StateStoreUnavailable as exc:
            log.error("GET /authorize answered temporarily_unavailable: %s", exc)
            raise AuthorizeError("temporarily_unavailable", "sign-in is unavailable right now; retry later") from None

    async def revoke_token(self, token) -> None:
        # FastMCP's upstream revocation uses its own 30 s client and only logs failures: bound it
        with anyio.move_on_after(self.upstream_timeout) as scope:
            await super().revoke_token(token)  # type: ignore[misc]
        if scope.cancelled_caught:
            log.warning("upstream revocation got no answer within %g s; revoked locally", self.upstream_timeout)

    async def _try_transparent_refresh(self, upstream_token_set):
        # FastMCP would refresh an expired upstream token while checking an access token, outside
        # the grant family's compare-and-set (grant_flow.py): a rotating IdP would see two refreshes
        # with one refresh token and revoke the grant. sqlgate's access tokens never outlive the
        # upstream token, so the client refreshes at /token instead.
        raise RuntimeError("upstream refresh happens at /token only")

    def get_middleware(self) -> list:
        from sqlgate.auth.outage_http import with_outage_middleware

        return with_outage_middleware(super().get_middleware())  # type: ignore[misc]
