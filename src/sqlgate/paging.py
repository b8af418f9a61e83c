"""Signed cursors: where the next page of a cut answer starts.

A cursor is opaque to the client: base64url(JSON payload) "." base64url(HMAC-SHA256). The payload
binds it to the caller (a digest of `CallContext.principal`: the cursor neither shows who the caller
is nor grows with a long subject), the tool, a hash of the call's other arguments
(the SQL text, or the endpoint's arguments), an expiry, and the position (rows already delivered,
and whether the pager imposed a total order). A cursor that was changed, that belongs to someone
else, to another tool or other arguments, or that expired is refused with a tool error.

The key is derived from a secret every worker and replica of the deployment shares
(`limits.cursor_secret`, else the OAuth state key, else PostgreSQL's identity key); without any of
them the process makes one (and hands it to its `--workers`), so cursors then stay valid only
within this server's lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlgate.context import CallContext
from sqlgate.errors import InvalidArguments

log = logging.getLogger("sqlgate.paging")

CURSOR_ENV = "SQLGATE_CURSOR_SECRET"
# generous room for a cursor (~200 characters) in the message budget: it appears in both encodings
CURSOR_RESERVE = 600
_VERSION = 2  # 2: the caller as a digest (1 carried the principal itself)


@dataclass(frozen=True)
class Page:
    """Where a page starts: rows to skip, and — for a query without ORDER BY — how many columns the
    pager sorts every page by (its own total order; 0 = the query's order)."""

    offset: int = 0
    order_all: int = 0


FIRST = Page()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(text: str) -> str:
    return _b64(hashlib.sha256(text.encode("utf-8")).digest()[:18])


def arguments_digest(arguments: dict[str, Any]) -> str:
    return _digest(json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


class Pager:
    def __init__(self, secret: str | bytes, ttl_seconds: float):
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        # a key of its own: the root secret also encrypts OAuth state / signs identities
        self._key = hmac.new(raw, b"sqlgate-cursor-v1", hashlib.sha256).digest()
        self.ttl = ttl_seconds

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def issue(self, call: CallContext, target: str, arguments: dict[str, Any], page: Page,
              now: float | None = None) -> str:
        payload = {"v": _VERSION, "p": _digest(call.principal), "t": target, "a": arguments_digest(arguments),
                   "o": page.offset, "s": int(page.order_all),
                   "x": int((now if now is not None else time.time()) + self.ttl)}
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def open(self, cursor: Any, call: CallContext, target: str, arguments: dict[str, Any],
             now: float | None = None) -> Page:
        if not isinstance(cursor, str) or cursor.count(".") != 1 or len(cursor) > 2048:
            raise InvalidArguments("`cursor` is not a cursor this server issued; pass the `next_cursor` of the "
                                   "previous answer unchanged")
        body_text, sig_text = cursor.split(".")
        try:
            body, sig = _unb64(body_text), _unb64(sig_text)
        except (ValueError, TypeError):
            body, sig = b"", b""
        if not body or not hmac.compare_digest(sig, self._sign(body)):
            raise InvalidArguments("`cursor` is not valid: it was changed or was issued by another server; "
                                   "pass the `next_cursor` of the previous answer unchanged, or start again "
                                   "without a cursor")
        payload = json.loads(body)
        if payload.get("v") != _VERSION:
            raise InvalidArguments("`cursor` is from another sqlgate version; start again without a cursor")
        if payload.get("p") != _digest(call.principal):
            raise InvalidArguments("`cursor` belongs to another caller; start again without a cursor")
        if payload.get("t") != target or payload.get("a") != arguments_digest(arguments):
            raise InvalidArguments("`cursor` belongs to another call: send exactly the same arguments as the "
                                   "call that returned it (only `cursor` changes)")
        if (now if now is not None else time.time()) > payload.get("x", 0):
            raise InvalidArguments(f"`cursor` expired (cursors live {self.ttl:g} s); run the call again "
                                   "without a cursor")
        return Page(offset=int(payload["o"]), order_all=int(payload.get("s", 0)))


def resolve_secret(settings: Any, auth: Any = None) -> str:
    """The deployment's shared secret for cursors (see the module doc); the process's own otherwise."""
    configured = settings.limits.cursor_secret
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    state = getattr(auth, "state", None)
    if state is not None and getattr(state, "secret", None):
        return state.secret
    key = getattr(settings.engine, "identity_key", None)
    if key is not None and key.get_secret_value():
        return key.get_secret_value()
    made = os.environ.get(CURSOR_ENV)  # set by a `--workers` supervisor for its workers
    if made:
        return made
    made = secrets.token_urlsafe(32)
    os.environ[CURSOR_ENV] = made  # workers started by this process inherit it
    log.info("no limits.cursor_secret configured: cursors are valid for this server process (and its "
             "workers) only; set limits.cursor_secret for replicas")
    return made
