"""One observation per tool call, resource read and prompt render: audit event, metrics, span.

The outermost FastMCP middleware, so calls refused further in (scopes, policies) are observed
too. Its cost on the call path is building a dict and a few counter increments; the event's I/O
happens on the audit writer's thread (writer.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastmcp.server.middleware import Middleware, MiddlewareContext

from sqlgate import metrics, tracing
from sqlgate.audit.events import mask_arguments, new_event, sql_fingerprint, user_fields
from sqlgate.audit.notes import close_note, open_note, rows_of
from sqlgate.audit.record import emit
from sqlgate.context import current_call


def _request_ids(context: MiddlewareContext) -> tuple[str | None, str | None, str | None]:
    """(request id, MCP session id, OAuth client id) of the call."""
    from fastmcp.server.dependencies import get_access_token, get_http_request

    from sqlgate.audit.http import request_id_of

    request_id = session_id = client_id = None
    try:
        request = get_http_request()
        request_id = request_id_of(request)
        session_id = request.headers.get("mcp-session-id")
    except RuntimeError:
        pass  # stdio
    ctx = context.fastmcp_context
    if ctx is not None and ctx.request_context is not None:
        request_id = request_id or str(ctx.request_context.request_id)
    token = get_access_token()
    if token is not None:
        client_id = token.client_id or None
    return request_id, session_id, client_id


def _size(result: Any) -> int | None:
    """Bytes of the answer's text as sent (tool content, resource contents, prompt messages)."""
    total, found = 0, False
    for part in getattr(result, "content", None) or getattr(result, "contents", None) or []:
        text = getattr(part, "text", None) or getattr(part, "content", None)
        if isinstance(text, str):
            total += len(text.encode("utf-8"))
            found = True
    for message in getattr(result, "messages", None) or []:
        text = getattr(getattr(message, "content", None), "text", None)
        if isinstance(text, str):
            total += len(text.encode("utf-8"))
            found = True
    return total if found else None


class CallObserver(Middleware):
    """`label(kind, key)` maps what the client named to a bounded metrics label (unknown names
    would otherwise let any client create label values)."""

    def __init__(self, label: Callable[[str, str], str], audit: bool, log_arguments: bool, count: bool = True):
        self.label, self.audit, self.log_arguments, self.count = label, audit, log_arguments, count

    async def _observe(self, kind: str, name: str, arguments: dict[str, Any] | None,
                       context: MiddlewareContext, call_next) -> Any:
        started = time.perf_counter()
        note, token = open_note()
        outcome, error_class, error_message, result = "ok", None, None, None
        try:
            result = await call_next(context)
            if getattr(result, "is_error", False):
                outcome = "refused" if note.refused else "error"
                error_class = note.error_class or "ToolError"
                error_message = " ".join(getattr(p, "text", "") for p in result.content)[:1000]
            return result
        except Exception as exc:
            error_class, error_message = note.error_class or type(exc).__name__, str(exc)
            outcome = "refused" if note.refused else "error"
            raise
        finally:
            close_note(token)
            seconds = time.perf_counter() - started
            call = current_call()
            if self.count:
                metrics.observe_call(kind, self.label(kind, name), outcome, seconds, error_class)
            tracing.annotate_call(call.user, kind, name, outcome, error_class)
            if self.audit:
                self._record(kind, name, arguments, context, call, note, result, outcome, error_class,
                             error_message, seconds)

    def _record(self, kind, name, arguments, context, call, note, result, outcome, error_class, error_message,
                seconds) -> None:
        request_id, session_id, client_id = _request_ids(context)
        structured = getattr(result, "structured_content", None)
        rows, truncated = note.rows, note.truncated
        if isinstance(structured, dict):
            rows, truncated = rows_of(structured), bool(structured.get("truncated", False))
        fingerprint = None
        if kind == "tool" and name == "query" and isinstance((arguments or {}).get("sql"), str):
            fingerprint = sql_fingerprint(arguments["sql"])
        event = new_event(
            kind, name, outcome=outcome, request_id=request_id, session_id=session_id, client_id=client_id,
            **user_fields(call.user), arguments=mask_arguments(arguments) if self.log_arguments else None,
            sql_fingerprint=fingerprint, rows=rows, bytes=_size(result), truncated=bool(truncated),
            duration_ms=round(seconds * 1000, 2), error_class=error_class, error_message=error_message)
        emit(event)

    async def on_call_tool(self, context, call_next):
        msg = context.message
        return await self._observe("tool", msg.name, msg.arguments, context, call_next)

    async def on_read_resource(self, context, call_next):
        return await self._observe("resource", str(context.message.uri), None, context, call_next)

    async def on_get_prompt(self, context, call_next):
        msg = context.message
        return await self._observe("prompt", msg.name, msg.arguments, context, call_next)
