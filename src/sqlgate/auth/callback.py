"""Honest answers at the IdP callback when the upstream code exchange fails.

OAuthProxy._handle_idp_callback answers any failed exchange with HTTP 500 and a page quoting the
exception — i.e. the provider's raw error text. A wrong or replayed code is the user's (or an
attacker's) request going wrong, not a server fault, and the provider's text is not ours to show.
This mixin keeps FastMCP's callback and replaces only that answer, by what actually failed:

- the provider refused the code (an OAuth error such as invalid_grant) → 400;
- the provider could not be reached (connection, timeout) or said temporarily_unavailable → 503
  with Retry-After;
- the provider answered, but not with a usable token response (5xx, not JSON) → 502.

The failure is observed where it happens — in the upstream client's context, recorded per request
through a context variable — rather than by parsing FastMCP's page.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from fastmcp.server.auth.oauth_proxy.ui import create_error_html
from fastmcp.server.auth.oauth_proxy.upstream import OAuthError
from starlette.responses import HTMLResponse

from sqlgate.audit.record import auth_event

log = logging.getLogger("sqlgate.auth.callback")

_failures: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar("sqlgate_callback_failures",
                                                                                       default=None)


def _page(status: int, title: str, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(create_error_html(error_title=title, error_message=message), status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def answer_for(exc: BaseException | None) -> HTMLResponse | None:
    """The page for a failed upstream code exchange, or None (not an upstream failure)."""
    if isinstance(exc, OAuthError):
        if exc.error in ("temporarily_unavailable", "server_error"):
            return _page(503, "Sign-in temporarily unavailable", "The identity provider is temporarily unable to "
                         "complete the sign-in. Please try again in a moment.", {"Retry-After": "10"})
        return _page(400, "Sign-in failed", "The identity provider did not accept this sign-in (the authorization "
                     "code is invalid, expired or was already used). Please start the sign-in again from your "
                     "application.")
    if isinstance(exc, httpx2.TransportError):
        return _page(503, "Sign-in temporarily unavailable", "The identity provider could not be reached. Please "
                     "try again in a moment.", {"Retry-After": "10"})
    if isinstance(exc, httpx2.HTTPError | ValueError):
        return _page(502, "Sign-in failed", "The identity provider gave an unusable answer while completing the "
                     "sign-in. Please try again later.")
    return None


class HonestCallback:
    """Mixin for OAuthProxy subclasses (before OAuthProxy in the bases)."""

    async def _handle_idp_callback(self, request):
        seen: list[BaseException] = []
        token = _failures.set(seen)
        try:
            response = await super()._handle_idp_callback(request)
        finally:
            _failures.reset(token)
        if response.status_code < 500 or not seen:
            ok = response.status_code < 400
            auth_event("login", "ok" if ok else "refused", status=response.status_code,
                       error=None if ok else "callback_refused")
            return response
        page = answer_for(seen[-1])
        if page is None:
            auth_event("login", "error", status=response.status_code, error="callback_failed")
            return response
        exc = seen[-1]
        reason = exc.error if isinstance(exc, OAuthError) else type(exc).__name__
        log.warning("login callback: exchanging the provider's code failed (%s): answered HTTP %d", reason,
                    page.status_code)
        auth_event("login", "refused" if page.status_code < 500 else "error", status=page.status_code, error=reason)
        return page

    @asynccontextmanager
    async def _upstream_oauth_client(self) -> AsyncIterator:
        async with super()._upstream_oauth_client() as client:
            try:
                yield client
            except BaseException as exc:
                seen = _failures.get()
                if seen is not None:
                    seen.append(exc)
                raise
