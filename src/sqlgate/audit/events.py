"""The audit event: one flat record per call or authorization step.

Every sink stores the same fields (FIELDS). An event never holds the caller's external token or
raw claims: the user part is `UserContext.log_fields()`, arguments have secret-looking keys
masked and long values cut, and the query tool's SQL is also kept as a fingerprint (a hash of
its normalised text) so the same query with other literals groups together.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

# kinds: a tool call, a resource read, a prompt render, an authorization step
KINDS = ("tool", "resource", "prompt", "auth")
# outcomes: done, failed (the caller's or the database's problem), refused (401/403/429, policy)
OUTCOMES = ("ok", "error", "refused")
USER_FIELDS = ("username", "user_id", "provider", "display_name", "email")
FIELDS = ("time", "kind", "endpoint", "outcome", "status", "request_id", "session_id", "client_id",
          *USER_FIELDS, "arguments", "sql_fingerprint", "rows", "bytes", "truncated", "duration_ms",
          "error_class", "error_message")

MASK = "***"
_SECRET_KEY = re.compile(r"(?i)pass(word|wd)?|secret|token|api_?key|auth|credential|private_?key|cookie")
MAX_VALUE_CHARS = 2000  # a 100 kB SQL text is kept as its first 2000 characters (and its fingerprint)
MAX_MESSAGE_CHARS = 1000


def iso_time(ts: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-05-01T12:00:00.123Z (sorts as text)."""
    ms = round((time.time() if ts is None else ts) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit]}…[+{len(value) - limit} chars]"


def mask_arguments(arguments: Any, depth: int = 0) -> Any:
    """Secret-looking keys masked at any depth, long strings cut, deep nesting summarised."""
    if isinstance(arguments, dict):
        if depth > 4:
            return "{…}"
        return {str(k): MASK if _SECRET_KEY.search(str(k)) else mask_arguments(v, depth + 1)
                for k, v in list(arguments.items())[:100]}
    if isinstance(arguments, list | tuple):
        if depth > 4:
            return "[…]"
        return [mask_arguments(v, depth + 1) for v in list(arguments)[:100]]
    if isinstance(arguments, str):
        return _cut(arguments, MAX_VALUE_CHARS)
    if arguments is None or isinstance(arguments, bool | int | float):
        return arguments
    return _cut(str(arguments), MAX_VALUE_CHARS)


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\$([A-Za-z_]*)\$.*?\$\1\$", re.S)
_NUMBERS = re.compile(r"(?<![A-Za-z_0-9.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_SPACE = re.compile(r"\s+")
_IN_LISTS = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")


def normalise_sql(sql: str) -> str:
    """Comments gone, literals as ?, IN-lists of literals as (?), whitespace and case folded.

    Only for grouping in the audit trail; the engine guard decides what runs, with its own parser.
    """
    text = _COMMENTS.sub(" ", sql)
    text = _STRINGS.sub("?", text)
    text = _NUMBERS.sub("?", text)
    text = _SPACE.sub(" ", text).strip().rstrip(";").strip().lower()
    return _IN_LISTS.sub("(?)", text)


def sql_fingerprint(sql: str) -> str:
    return hashlib.sha256(normalise_sql(sql).encode()).hexdigest()[:16]


def new_event(kind: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    """An event with every field present (None where unknown)."""
    event: dict[str, Any] = dict.fromkeys(FIELDS)
    event.update(time=iso_time(), kind=kind, endpoint=endpoint, outcome="ok", truncated=False)
    for key, value in fields.items():
        if key not in event:
            raise KeyError(f"unknown audit field {key!r}")
        event[key] = value
    if event["error_message"] is not None:
        event["error_message"] = _cut(str(event["error_message"]), MAX_MESSAGE_CHARS)
    return event


def user_fields(user: Any) -> dict[str, str]:
    """The user part of an event: UserContext.log_fields(), nothing else."""
    fields = user.log_fields()
    return {k: fields.get(k) or "" for k in USER_FIELDS}


def console_line(event: dict[str, Any]) -> str:
    """The one-line server log entry (kept from before the audit store: user info in logs)."""
    who = event.get("username") or "anonymous"
    line = (f"{event['kind']} {event['endpoint']} by {who} (id={event.get('user_id') or '-'} "
            f"provider={event.get('provider') or '-'} name={event.get('display_name') or '-'} "
            f"email={event.get('email') or '-'}) -> {event['outcome']}")
    if event.get("truncated"):
        line += f" ({event.get('rows')} rows, truncated)"
    if event.get("status"):
        line += f" HTTP {event['status']}"
    if event.get("duration_ms") is not None:
        line += f" in {event['duration_ms']:.1f} ms"
    return line
