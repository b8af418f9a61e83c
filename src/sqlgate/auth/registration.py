"""Bounded dynamic client registration (RFC 7591 `/register`), in front of FastMCP's handler.

Registration is anonymous by design (MCP clients register themselves), so without bounds anyone
can fill the state store: the SDK's handler reads any body, accepts any `client_name` and any
number of redirect URIs, and clients never expire. This ASGI wrapper goes in front of the
registration route FastMCP builds (which keeps its own checks: redirect policy, application type,
scopes) and refuses, before anything is parsed by the SDK or stored:

- more than `max_body_bytes` → 413 (read incrementally: an 8 MB body is never held in memory);
- more than `rate_limit` registration attempts per client address in `rate_window_seconds` →
  429 with Retry-After. The counter is a row in the grant store (`count_hit`, one atomic upsert),
  so the limit holds across worker processes and replicas, not per process;
- oversize fields (client_name, number and length of redirect URIs, any URI field, the whole
  metadata) → 400 `invalid_client_metadata` naming the field;
- a redirect URI with a fragment → 400 `invalid_redirect_uri` (RFC 6749 §3.1.2).

Expiry (`client_lifetime`): a client is stored with `unauthorized_client_ttl_seconds`; every token
issued to it (login or refresh) extends it to `idle_client_ttl_seconds`. Expired rows read as
missing at once and are deleted by the periodic state cleanup.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sqlgate.audit.record import auth_event
from sqlgate.auth.config import RegistrationConfig
from sqlgate.auth.grants.base import GrantStore

log = logging.getLogger("sqlgate.auth.registration")

URI_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri", "jwks_uri", "initiate_login_uri")


class RegistrationRefused(Exception):
    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error, self.description = error, description


def check_metadata(metadata: Any, limits: RegistrationConfig) -> None:
    """Raise RegistrationRefused when client metadata breaks a size limit or the fragment rule."""
    if not isinstance(metadata, dict):
        return  # not an object: the SDK's validation answers it
    size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > limits.max_metadata_bytes:
        raise RegistrationRefused("invalid_client_metadata", f"client metadata is {size} bytes; at most "
                                  f"{limits.max_metadata_bytes} are accepted")
    name = metadata.get("client_name")
    if isinstance(name, str) and len(name) > limits.max_client_name_length:
        raise RegistrationRefused("invalid_client_metadata", f"client_name is longer than "
                                  f"{limits.max_client_name_length} characters")
    check_redirect_uris(metadata.get("redirect_uris"), limits)
    for field in URI_FIELDS:
        value = metadata.get(field)
        if isinstance(value, str) and len(value) > limits.max_uri_length:
            raise RegistrationRefused("invalid_client_metadata", f"{field} is longer than "
                                      f"{limits.max_uri_length} characters")


def check_redirect_uris(uris: Any, limits: RegistrationConfig) -> None:
    """The redirect URI rules DCR and client metadata documents (cimd.py) share."""
    if not isinstance(uris, list):
        return
    if len(uris) > limits.max_redirect_uris:
        raise RegistrationRefused("invalid_client_metadata", f"redirect_uris has {len(uris)} entries; at most "
                                  f"{limits.max_redirect_uris} are accepted")
    for i, uri in enumerate(uris):
        if not isinstance(uri, str):
            continue
        if len(uri) > limits.max_uri_length:
            raise RegistrationRefused("invalid_client_metadata", f"redirect_uris[{i}] is longer than "
                                      f"{limits.max_uri_length} characters")
        if "#" in uri:
            raise RegistrationRefused("invalid_redirect_uri", f"redirect_uris[{i}] has a fragment, which a "
                                      "redirect URI must not have (RFC 6749 §3.1.2)")


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


async def rate_limited(grants: GrantStore, limits: RegistrationConfig, scope: Scope, what: str) -> JSONResponse | None:
    """Count one registration attempt of the client's address; the 429 answer when over the limit."""
    if not limits.rate_limit:
        return None
    address = (scope.get("client") or ("unknown", 0))[0]
    window = limits.rate_window_seconds
    now = time.time()
    try:
        hits, started = await anyio.to_thread.run_sync(grants.count_hit, f"register:{address}", window, now)
    except Exception as exc:  # the store is down: registering would fail as well
        log.error("registration rate limit: the OAuth state store failed: %s", type(exc).__name__)
        return _error(503, "temporarily_unavailable", "registration is unavailable; retry later", {"Retry-After": "5"})
    if hits <= limits.rate_limit:
        return None
    retry = max(1, math.ceil(started + window - now))
    if hits == limits.rate_limit + 1:  # once per window and address, not per refused request
        log.warning("%s from %s exceed %d per %d s: refusing for %d s", what, address, limits.rate_limit, window,
                    retry)
    return _error(429, "too_many_requests", f"too many {what} from this address; retry in {retry} s",
                  {"Retry-After": str(retry)})


class BoundedRegistration:
    """ASGI wrapper for the `/register` route (see module doc)."""

    def __init__(self, app: ASGIApp, limits: RegistrationConfig, grants: GrantStore):
        self.app, self.limits, self.grants = app, limits, grants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refusal = await rate_limited(self.grants, self.limits, scope, "client registrations")
        if refusal is None:
            body = await self._read_body(scope, receive)
            if body is None:
                refusal = _error(413, "invalid_client_metadata",
                                 f"the registration request is larger than {self.limits.max_body_bytes} bytes")
            else:
                refusal = self._check(body)
        if refusal is not None:
            await refusal(scope, receive, send)
            _audit_registration(refusal.status_code, refusal.body)
            return
        status: list[int] = []
        body_seen: list[bytes] = []

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and sum(map(len, body_seen)) < 64 * 1024:
                body_seen.append(message.get("body", b""))
            await send(message)

        await self.app(scope, _replay(body), observed)
        _audit_registration(status[0] if status else 500, b"".join(body_seen))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body, or None when it exceeds the cap (by Content-Length or as it arrives)."""
        cap = self.limits.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > cap:
                        return None
                except ValueError:
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _check(self, body: bytes) -> JSONResponse | None:
        try:
            metadata = json.loads(body)
        except ValueError:
            return None  # the SDK's handler answers malformed JSON with invalid_client_metadata
        try:
            check_metadata(metadata, self.limits)
        except RegistrationRefused as refused:
            return _error(400, refused.error, refused.description)
        return None


def _audit_registration(status: int, body: bytes) -> None:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    if status < 300:
        auth_event("register", client_id=answer.get("client_id"), status=status)
    else:
        auth_event("register", "error" if status >= 500 else "refused", status=status,
                   error=answer.get("error") or None, message=answer.get("error_description"))


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # the request is complete; only a disconnect could follow
        raise AssertionError("unreachable")

    return receive
