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

import httpx2

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
    # FastMCP's OAuth proxy stack costs ~0.8 s of every start: imported only where it is in use
    from fastmcp.server.auth.oauth_proxy.upstream import OAuthError

    if isinstance(exc, OAuthError):
        return exc.error in ("temporarily_unavailable", "server_error")
    return isinstance(exc, httpx2.HTTPError | TimeoutError | ValueError)  # ValueError: a non-JSON reply


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
