"""Audit events: who ran what, with which outcome, how long it took.

Events go to the `sqlgate.audit` logger and, when configured, to a JSON-lines file. The caller's
external token and raw claims are never part of an event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastmcp.server.middleware import Middleware, MiddlewareContext

from sqlgate.context import current_call

log = logging.getLogger("sqlgate.audit")

_SECRET_KEYS = ("password", "secret", "token", "apikey", "api_key")


def _redact(arguments: dict[str, Any] | None) -> dict[str, Any] | None:
    if not arguments:
        return arguments
    return {k: "***" if any(s in k.lower() for s in _SECRET_KEYS) else v for k, v in arguments.items()}


class AuditSink:
    def __init__(self, path: Path | None, log_arguments: bool):
        self._path = path
        self._log_arguments = log_arguments
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: dict[str, Any]) -> None:
        if not self._log_arguments:
            event.pop("arguments", None)
        u = event.get("user") or {}
        who = u.get("username") or "anonymous"
        outcome = event["status"] + (f" ({event.get('rows')} rows, truncated)" if event.get("truncated") else "")
        log.info("%s %s by %s (id=%s provider=%s name=%s email=%s) -> %s in %.1f ms",
                 event["kind"], event["name"], who, u.get("user_id") or "-", u.get("provider") or "-",
                 u.get("display_name") or "-", u.get("email") or "-", outcome, event["duration_ms"])
        if self._path is not None:
            line = json.dumps(event, ensure_ascii=False, default=str)
            with self._lock, self._path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")


class AuditMiddleware(Middleware):
    def __init__(self, sink: AuditSink):
        self.sink = sink

    async def _audit(self, kind: str, name: str, arguments: dict[str, Any] | None,
                     context: MiddlewareContext, call_next) -> Any:
        started = time.perf_counter()
        status, error, answer = "ok", None, None
        try:
            result = await call_next(context)
            if getattr(result, "is_error", False):
                status = "error"
            answer = getattr(result, "structured_content", None)
            return result
        except Exception as exc:
            status, error = "error", str(exc)
            raise
        finally:
            call = current_call()
            event = {
                "ts": time.time(), "kind": kind, "name": name, "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "user": call.user.log_fields(), "arguments": _redact(arguments),
            }
            if error:
                event["error"] = error
            if isinstance(answer, dict) and "truncated" in answer:
                # every tool answer carries these (sqlgate.answers): a partial answer is logged as one
                event["truncated"] = bool(answer["truncated"])
                event["rows"] = answer.get("row_count")
            self.sink.emit(event)

    async def on_call_tool(self, context, call_next):
        msg = context.message
        return await self._audit("tool", msg.name, msg.arguments, context, call_next)

    async def on_read_resource(self, context, call_next):
        return await self._audit("resource", str(context.message.uri), None, context, call_next)

    async def on_get_prompt(self, context, call_next):
        msg = context.message
        return await self._audit("prompt", msg.name, msg.arguments, context, call_next)
