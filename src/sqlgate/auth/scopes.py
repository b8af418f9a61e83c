"""Per-tool scopes: HTTP 403 `insufficient_scope` before the call, tools hidden from listings.

The check happens at the HTTP layer (an ASGI guard in front of the MCP endpoint), because only a
real 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope=…` makes MCP clients
re-authorise with the larger scope (step-up); a tool error would just be shown to the model.
Capabilities granted through `claim_mappings` (e.g. a Keycloak role) count like scopes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from fastmcp.server.middleware import Middleware
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE as MAX_REQUEST_BODY
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlgate.auth.config import ClaimMapping
from sqlgate.auth.verifiers import claim_at
from sqlgate.http_extras import json_rpc_error

# MCP method -> (param holding the component's key, registry kind)
_METHODS = {"tools/call": ("name", "tool"), "resources/read": ("uri", "resource"), "prompts/get": ("name", "prompt")}
MAX_GUARDED_BODY = MAX_REQUEST_BODY  # the mcp SDK refuses larger bodies anyway


def granted(scopes: Iterable[str], claims: dict[str, Any], mappings: list[ClaimMapping]) -> set[str]:
    out = set(scopes)
    for m in mappings:
        value = claim_at(claims, m.claim)
        values = value if isinstance(value, list) else [value]
        if m.value in values:
            out.update(m.scopes)
    return out


class ScopeRegistry:
    """What each endpoint requires; updated on reload."""

    def __init__(self, mappings: list[ClaimMapping]):
        self.mappings = mappings
        self.required: dict[tuple[str, str], list[str]] = {}

    def set(self, kind: str, key: str, scopes: list[str]) -> None:
        if scopes:
            self.required[(kind, key)] = list(scopes)
        else:
            self.required.pop((kind, key), None)

    def missing(self, kind: str, key: str, have: set[str]) -> list[str]:
        needed = self.required.get((kind, key))
        if needed is None and kind == "resource":
            # a concrete URI read through a template: shop://customers/7 ~ shop://customers/{id}
            needed = next((s for (k, template), s in self.required.items()
                           if k == "resource" and "{" in template and _template_re(template).fullmatch(key)), None)
        return [s for s in needed or [] if s not in have]

    def caller_scopes(self, token: Any) -> set[str]:
        if token is None:
            return set()
        return granted(token.scopes or [], dict(token.claims or {}) if hasattr(token, "claims") else {},
                       self.mappings)


def _template_re(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


class ScopeGuard:
    """ASGI middleware: answers 403 insufficient_scope for calls the token's scopes do not cover."""

    def __init__(self, app: ASGIApp, registry: ScopeRegistry, mcp_path: str, resource_metadata_url: str):
        self.app = app
        self.registry = registry
        self.mcp_path = mcp_path.rstrip("/") or "/"
        self.resource_metadata_url = resource_metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user") if scope["type"] == "http" else None
        token = getattr(user, "access_token", None)
        if (token is None or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != self.mcp_path
                or not self.registry.required):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        messages = []
        size, more = 0, True
        while more:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_GUARDED_BODY:
                # never pass on a body this guard has not read whole: its call would go unchecked
                await json_rpc_error(send, f"the request body is larger than {MAX_GUARDED_BODY} bytes", status=413)
                return
        body = b"".join(chunks)
        try:
            missing, needed = self._check(body, token)
        except RecursionError:  # was an HTTP 500
            await json_rpc_error(send, "Invalid Request: the JSON is nested too deeply")
            return
        if missing:
            await self._forbid(send, needed, missing)
            return
        replay = iter(messages)

        async def replay_receive():
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replay_receive, send)

    def _check(self, body: bytes, token: Any) -> tuple[list[str], list[str]]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return [], []  # not ours to judge: the MCP layer answers the parse error
        have = self.registry.caller_scopes(token)
        missing: list[str] = []
        for msg in payload if isinstance(payload, list) else [payload]:
            if not isinstance(msg, dict) or msg.get("method") not in _METHODS:
                continue
            param, kind = _METHODS[msg["method"]]
            key = (msg.get("params") or {}).get(param)
            if isinstance(key, str):
                missing += [s for s in self.registry.missing(kind, key, have) if s not in missing]
        # ask for everything the token has plus what is missing, so re-authorisation keeps both
        needed = sorted(set(token.scopes or []) | set(missing))
        return missing, needed

    async def _forbid(self, send: Send, needed: list[str], missing: list[str]) -> None:
        body = json.dumps({"error": "insufficient_scope",
                           "error_description": f"this call needs scope(s): {' '.join(missing)}"}).encode()
        challenge = (f'Bearer error="insufficient_scope", scope="{" ".join(needed)}", '
                     f'resource_metadata="{self.resource_metadata_url}", '
                     f'error_description="this call needs scope(s): {" ".join(missing)}"')
        await send({"type": "http.response.start", "status": 403, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode())]})
        await send({"type": "http.response.body", "body": body})


LOCKED_META_KEY = "sqlgate/requiredScopes"


def locked_copy(tool: Any, missing: list[str]) -> Any:
    """The listing's view of a tool the caller cannot use yet: a note in the description and the
    scopes in `_meta`, on a copy (the registered tool stays as it is for everyone else)."""
    note = (f"[Locked: needs scope(s) {' '.join(missing)}, which your token lacks; re-authorise with them "
            "to use this tool.]")
    meta = {**(tool.meta or {}), LOCKED_META_KEY: missing}
    return tool.model_copy(update={"description": f"{tool.description or ''}\n\n{note}".strip(), "meta": meta})


class ScopeFilter(Middleware):
    """Hide what the caller cannot use, and refuse it inside MCP too (defence in depth).

    With `list_locked_tools` (setting `locked_tools: list`), tools the caller lacks a scope for stay
    in tools/list with a note naming the scope(s), so a client can re-authorise for them (step up);
    calling one still gets 403 insufficient_scope.
    """

    def __init__(self, registry: ScopeRegistry, list_locked_tools: bool = False):
        self.registry = registry
        self.list_locked_tools = list_locked_tools

    async def __call__(self, context, call_next):
        # nothing requires a scope (the common case; a reload may change it): not even FastMCP's
        # per-message hook dispatch, which costs more than the checks themselves
        if not self.registry.required:
            return await call_next(context)
        return await super().__call__(context, call_next)

    def _have(self) -> set[str] | None:
        from fastmcp.server.dependencies import get_access_token

        token = get_access_token()
        return None if token is None else self.registry.caller_scopes(token)

    def _visible(self, kind: str, key: str, have: set[str] | None) -> bool:
        return have is None or not self.registry.missing(kind, key, have)

    async def on_list_tools(self, context, call_next):
        have = self._have()
        tools = await call_next(context)
        if have is None:
            return tools
        if not self.list_locked_tools:
            return [t for t in tools if self._visible("tool", t.name, have)]
        return [locked_copy(t, missing) if (missing := self.registry.missing("tool", t.name, have)) else t
                for t in tools]

    async def on_list_resources(self, context, call_next):
        have = self._have()
        return [r for r in await call_next(context) if self._visible("resource", str(r.uri), have)]

    async def on_list_resource_templates(self, context, call_next):
        have = self._have()
        return [r for r in await call_next(context) if self._visible("resource", r.uri_template, have)]

    async def on_list_prompts(self, context, call_next):
        have = self._have()
        return [p for p in await call_next(context) if self._visible("prompt", p.name, have)]

    async def on_call_tool(self, context, call_next):
        from fastmcp.exceptions import ToolError

        have = self._have()
        missing = [] if have is None else self.registry.missing("tool", context.message.name, have)
        if missing:
            from sqlgate.audit.notes import note_refused

            note_refused("insufficient_scope")
            raise ToolError(f"this tool needs scope(s): {' '.join(missing)}")
        return await call_next(context)

    async def on_read_resource(self, context, call_next):
        from fastmcp.exceptions import ResourceError

        have = self._have()
        missing = [] if have is None else self.registry.missing("resource", str(context.message.uri), have)
        if missing:
            raise ResourceError(f"this resource needs scope(s): {' '.join(missing)}")
        return await call_next(context)

    async def on_get_prompt(self, context, call_next):
        from fastmcp.exceptions import PromptError

        have = self._have()
        missing = [] if have is None else self.registry.missing("prompt", context.message.name, have)
        if missing:
            raise PromptError(f"this prompt needs scope(s): {' '.join(missing)}")
        return await call_next(context)
