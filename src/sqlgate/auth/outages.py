"""Calls to the identity provider that end on time, and a record of outages for the HTTP layer.

- Every upstream call (code exchange, refresh, user info, revocation) is cut at the provider's
  `timeout_seconds` as a whole: httpx's timeout bounds each read, not the request, and FastMCP
  builds its upstream clients with a fixed 30 s.
- An /authorize that cannot store its transaction redirects with `temporarily_unavailable`.
- Several layers between a failing call and the response swallow exceptions (FastMCP's token
  check and MultiAuth turn them into "not valid" → 401; the login callback into a 500 page).
  So a failure first *notes* itself for the current request (`note`), and
  outage_http.OutageMiddleware answers that request 503 + Retry-After instead. An IdP that is
  down must not make clients throw valid tokens away.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import anyio
import httpx2
from fastmcp.server.auth.oauth_proxy.upstream import AsyncOAuth2Client, OAuthError

log = logging.getLogger("sqlgate.auth.outages")

# kind ("provider" | "store") -> what failed, for the request being served (set by OutageMiddleware)
_noted: ContextVar[dict[str, str] | None] = ContextVar("sqlgate_outages", default=None)


def note(kind: str, detail: str) -> None:
    box = _noted.get()
    if box is not None:
        box.setdefault(kind, detail)


def provider_failure(exc: BaseException) -> bool:
    """Whether an upstream call failed for the provider's reasons (down, slow, 5xx, garbage), not
    because it refused what we sent."""
    if isinstance(exc, OAuthError):
        return exc.error in ("temporarily_unavailable", "server_error")
    return isinstance(exc, httpx2.HTTPError | TimeoutError | ValueError)  # ValueError: a non-JSON reply


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


class NotingTransport(httpx2.AsyncBaseTransport):
    """An httpx transport that notes the provider as down when it cannot be reached or answers 5xx.

    For clients sqlgate does not call itself (FastMCP's introspection verifier swallows failures
    and says "invalid token"): the note makes the request a 503, not a 401.
    """

    def __init__(self, what: str) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._what = what

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            note("provider", f"{self._what} {request.url}: {describe(exc, 0)}")
            raise
        if response.status_code >= 500:
            note("provider", f"{self._what} {request.url}: HTTP {response.status_code}")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__ + (f" ({exc})" if isinstance(exc, httpx2.TransportError) and str(exc) else "")


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
