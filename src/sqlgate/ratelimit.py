"""Rate limits per principal: calls per minute and concurrent calls, shared by every worker and replica.

A principal is CallContext.principal: the user (provider + id) when auth is on, else the client's
address. Limits come from `rate_limits:` (every tool call, resource read and prompt render counts)
and per endpoint (`rate_limit:` in its YAML, `sql_tools.rate_limits.<tool>`); a call must pass all
that apply to it.

State lives in the OAuth state store (`auth.persistence`), so N processes or replicas enforce one
limit, not N:
- calls per minute: a fixed one-minute window per (principal, scope), one atomic upsert
  (GrantStore.count_hit, the same counter as the registration limit); the N+1st call in the
  window is refused with Retry-After = the seconds until the window ends.
- concurrent calls: a lease per running call (GrantStore.acquire_lease, one transaction), given
  back when the call ends. A lease also expires by itself after the call's timeout plus
  `lease_grace_seconds`, so a worker killed mid-call frees its slots without anyone's help.

Buckets name the principal by its SHA-256 hash: the state store holds no usernames or addresses.
Over HTTP the check runs before the MCP layer (RateLimitGuard: 429 + Retry-After); over stdio a
FastMCP middleware answers a tool error instead (RateLimitMiddleware).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastmcp.server.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlgate import metrics
from sqlgate.audit.notes import note_refused
from sqlgate.auth.grants.base import GrantStore, StateStoreUnavailable
from sqlgate.config.models import RateLimitRule
from sqlgate.context import CallContext
from sqlgate.errors import RateLimited

log = logging.getLogger("sqlgate.ratelimit")
WINDOW_SECONDS = 60.0
MAX_GUARDED_BODY = 4 * 1024 * 1024
_METHODS = {"tools/call": ("name", "tool"), "resources/read": ("uri", "resource"), "prompts/get": ("name", "prompt")}


def on_rate_limit_hit(principal: str, kind: str, scope: str, limit: str) -> None:
    """The one place a refusal is reported: the log line, the metric and the call's audit event.

    `principal` is already hashed; `kind` is "user", "address" or "anonymous" (the metric's label);
    `scope` is "*" (the global limit) or "tool:name" & co.; `limit` is "calls_per_minute" or
    "concurrent_calls"."""
    log.info("rate limit: %s over %s (%s)", principal[:12], limit, "all calls" if scope == "*" else scope)
    metrics.rate_limited(kind)
    note_refused("RateLimited")


def _hash(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()


@dataclass
class Admission:
    """The slots one request holds; released when it is answered."""

    store: GrantStore | None = None
    leases: list[str] = field(default_factory=list)

    async def release(self) -> None:
        for lease in self.leases:
            try:
                await anyio.to_thread.run_sync(self.store.release_lease, lease)
            except Exception as exc:  # the lease expires by itself; never fail an answered call
                log.warning("could not release a concurrent-call slot (it expires by itself): %s", exc)
        self.leases = []


class RateLimiter:
    def __init__(self, store: GrantStore, global_rule: RateLimitRule, lease_seconds: float):
        self.store = store
        self.global_rule = global_rule
        self.lease_seconds = lease_seconds
        self.endpoint_rules: dict[tuple[str, str], RateLimitRule] = {}

    def set(self, kind: str, key: str, rule: RateLimitRule | None) -> None:
        if rule is not None and rule.active:
            self.endpoint_rules[(kind, key)] = rule
        else:
            self.endpoint_rules.pop((kind, key), None)

    def _rule_for(self, kind: str, key: str) -> RateLimitRule | None:
        rule = self.endpoint_rules.get((kind, key))
        if rule is None and kind == "resource":
            from sqlgate.auth.scopes import _template_re  # a concrete URI read through a template

            rule = next((r for (k, template), r in self.endpoint_rules.items()
                         if k == "resource" and "{" in template and _template_re(template).fullmatch(key)), None)
        return rule

    def rules(self, calls: list[tuple[str, str]]) -> list[tuple[str, RateLimitRule]]:
        """(scope, rule) pairs the calls of one request count against; the global one once."""
        out: list[tuple[str, RateLimitRule]] = [("*", self.global_rule)] if self.global_rule.active else []
        for kind, key in calls:
            rule = self._rule_for(kind, key)
            if rule is not None:
                out.append((f"{kind}:{key}", rule))
        return out

    async def admit(self, principal: str, calls: list[tuple[str, str]]) -> Admission:
        """Count the calls and take their slots, or raise RateLimited (nothing held then)."""
        admission = Admission(self.store)
        rules = self.rules(calls)
        if not rules:
            return admission
        who = _hash(principal)
        kind = principal.split(":", 1)[0]
        try:
            for scope, rule in rules:
                await self._check(who, kind, scope, rule, admission)
        except BaseException:
            await admission.release()
            raise
        return admission

    async def _check(self, who: str, kind: str, scope: str, rule: RateLimitRule, admission: Admission) -> None:
        if rule.calls_per_minute is not None:
            now = time.time()
            hits, started = await anyio.to_thread.run_sync(
                self.store.count_hit, f"calls:{who}:{scope}", WINDOW_SECONDS, now)
            if hits > rule.calls_per_minute:
                on_rate_limit_hit(who, kind, scope, "calls_per_minute")
                retry = max(1, math.ceil(started + WINDOW_SECONDS - now))
                raise RateLimited(f"rate limit: at most {rule.calls_per_minute} calls per minute"
                                  f"{_of(scope)}; retry in {retry} s", retry)
        if rule.concurrent_calls is not None:
            lease = uuid.uuid4().hex
            now = time.time()
            granted = await anyio.to_thread.run_sync(
                self.store.acquire_lease, f"running:{who}:{scope}", lease, rule.concurrent_calls,
                now + self.lease_seconds, now)
            if not granted:
                on_rate_limit_hit(who, kind, scope, "concurrent_calls")
                raise RateLimited(f"rate limit: at most {rule.concurrent_calls} calls at the same time"
                                  f"{_of(scope)}; retry when one has finished", 1)
            admission.leases.append(lease)


def _of(scope: str) -> str:
    return "" if scope == "*" else f" of {scope.replace(':', ' ', 1)}"


def requested_calls(body: bytes) -> list[tuple[str, str]] | None:
    """(kind, key) of each tool call / resource read / prompt render in a JSON-RPC body (or batch);
    None when the body cannot be read as JSON (too large, or not JSON: the MCP layer answers it)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    calls = []
    for msg in payload if isinstance(payload, list) else [payload]:
        if isinstance(msg, dict) and msg.get("method") in _METHODS:
            param, kind = _METHODS[msg["method"]]
            key = (msg.get("params") or {}).get(param) if isinstance(msg.get("params"), dict) else None
            calls.append((kind, key if isinstance(key, str) else ""))
    return calls


def principal_of_scope(scope: Scope) -> str:
    """CallContext.principal for an ASGI request: the verified token's user, else the client address
    (the peer, or X-Forwarded-For's when uvicorn trusts the proxy)."""
    from sqlgate.auth.identity import user_from_token

    token = getattr(scope.get("user"), "access_token", None)
    client = scope.get("client")
    user = user_from_token(token) if token is not None else CallContext().user
    return CallContext(user=user, client=client[0] if client else "").principal


class RateLimitGuard:
    """ASGI middleware in front of the MCP endpoint: 429 + Retry-After before the call runs, and the
    concurrent-call slots held until the answer has been sent."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, mcp_path: str):
        self.app = app
        self.limiter = limiter
        self.mcp_path = mcp_path.rstrip("/") or "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").rstrip("/") != self.mcp_path):
            await self.app(scope, receive, send)
            return
        body, messages, more = b"", [], True
        while more and len(body) <= MAX_GUARDED_BODY:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        calls = requested_calls(body) if not more else None
        if calls is None:
            calls = [("", "")]  # unreadable here: counts against the global limit, to be safe
        elif not calls:
            await self.app(scope, _replay(messages, receive), send)  # initialize, list, ping …
            return
        try:
            admission = await self.limiter.admit(principal_of_scope(scope), calls)
        except RateLimited as exc:
            await _refuse(send, 429, str(exc), exc.retry_after)
            return
        except StateStoreUnavailable as exc:
            log.error("rate limits: %s", exc)
            await _refuse(send, 503, "rate limits cannot be checked: the state store is unavailable", 30)
            return
        try:
            await self.app(scope, _replay(messages, receive), send)
        finally:
            await admission.release()


def _replay(messages: list[dict[str, Any]], receive: Receive) -> Receive:
    pending = iter(messages)

    async def replay_receive():
        try:
            return next(pending)
        except StopIteration:
            return await receive()

    return replay_receive


async def _refuse(send: Send, status: int, message: str, retry_after: int) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})


class RateLimitMiddleware(Middleware):
    """stdio (and in-process) calls: the same limits, answered as a tool/resource/prompt error.
    Over HTTP RateLimitGuard has decided already, so nothing is counted twice."""

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter

    @staticmethod
    def _over_http() -> bool:
        try:
            from fastmcp.server.dependencies import get_http_request

            get_http_request()
        except RuntimeError:
            return False
        return True

    async def _limited(self, kind: str, key: str, context, call_next, error_type):
        if self._over_http():
            return await call_next(context)
        from sqlgate.context import current_call

        try:
            admission = await self.limiter.admit(current_call().principal, [(kind, key)])
        except RateLimited as exc:
            raise error_type(str(exc)) from None
        except StateStoreUnavailable as exc:
            log.error("rate limits: %s", exc)
            raise error_type("rate limits cannot be checked: the state store is unavailable; retry later") from None
        try:
            return await call_next(context)
        finally:
            await admission.release()

    async def on_call_tool(self, context, call_next):
        from fastmcp.exceptions import ToolError

        return await self._limited("tool", context.message.name, context, call_next, ToolError)

    async def on_read_resource(self, context, call_next):
        from fastmcp.exceptions import ResourceError

        return await self._limited("resource", str(context.message.uri), context, call_next, ResourceError)

    async def on_get_prompt(self, context, call_next):
        from fastmcp.exceptions import PromptError

        return await self._limited("prompt", context.message.name, context, call_next, PromptError)
