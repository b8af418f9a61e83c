"""503 + Retry-After for requests that failed because the provider or the state store is down.

OutageMiddleware sits outside authentication and the OAuth routes. For each request it collects
outage notes (outages.note); a 400/401/500 answer to a request with a note — FastMCP's "invalid
token" after a user-info call timed out, the login callback's 500 after the code exchange could
not reach the IdP — is replaced by 503 with Retry-After: JSON (`temporarily_unavailable`), or a
readable page where the original was a page. A StateStoreUnavailable that reaches it is answered
the same way, with one log line (no traceback: the cause is in the line).
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

from starlette.middleware import Middleware

from sqlgate.auth.grants.base import StateStoreUnavailable
from sqlgate.auth.outages import _noted

log = logging.getLogger("sqlgate.auth.outages")

RETRY_AFTER = {"provider": 5, "store": 30}
_REPLACED = (400, 401, 500)


def with_outage_middleware(middleware: list) -> list:
    return [Middleware(OutageMiddleware), *middleware]


def _answer(kind: str, page: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if kind == "store":
        what = "sqlgate cannot reach its OAuth state store right now"
    else:
        what = "the identity provider could not be reached"
    headers = [(b"retry-after", str(RETRY_AFTER[kind]).encode()), (b"cache-control", b"no-store")]
    if page:
        body = (f"<!doctype html><html><head><meta charset=utf-8><title>Temporarily unavailable</title></head>"
                f"<body><h1>Sign-in is temporarily unavailable</h1><p>{html.escape(what)}. Nothing is wrong with "
                f"your account: please try again in a minute.</p></body></html>").encode()
        return body, [(b"content-type", b"text/html; charset=utf-8"), *headers]
    body = json.dumps({"error": "temporarily_unavailable", "error_description": f"{what}; retry later"}).encode()
    return body, [(b"content-type", b"application/json"), *headers]


class OutageMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: dict[str, str] = {}
        token = _noted.set(box)
        state = {"started": False, "replaced": False}

        async def send_or_replace(message) -> None:
            if message["type"] == "http.response.start":
                if box and message["status"] in _REPLACED:
                    headers = dict(message.get("headers") or [])
                    page = headers.get(b"content-type", b"").startswith(b"text/html")
                    await self._unavailable(send, scope, box, page)
                    state["replaced"] = True
                    return
                state["started"] = True
            elif state["replaced"]:
                return  # the body of the answer we replaced
            await send(message)

        try:
            await self.app(scope, receive, send_or_replace)
        except StateStoreUnavailable:
            if state["started"] or state["replaced"]:
                raise
            await self._unavailable(send, scope, box, page=False)
        finally:
            _noted.reset(token)

    async def _unavailable(self, send, scope, box: dict[str, str], page: bool) -> None:
        kind = "store" if "store" in box else "provider"
        if kind == "store":
            log.error("%s %s answered 503: %s", scope.get("method"), scope.get("path"), box["store"])
        else:
            log.warning("%s %s answered 503: identity provider unavailable (%s)", scope.get("method"),
                        scope.get("path"), box["provider"])
        body, headers = _answer(kind, page)
        await send({"type": "http.response.start", "status": 503,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
