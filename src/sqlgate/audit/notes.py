"""What a running call tells its audit event from inside: rows, truncation, the real error class.

The MCP middleware opens a note per call (a context variable: the handler runs in the same task);
components fill it where the facts are known — a resource's envelope never reaches the
middleware as data, and FastMCP's ToolError hides which sqlgate error it replaced.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass
class CallNote:
    rows: int | None = None
    truncated: bool | None = None
    error_class: str | None = None
    refused: bool = False  # a scope, policy or rate limit said no (not a failure)


_note: ContextVar[CallNote | None] = ContextVar("sqlgate_audit_note", default=None)


def open_note() -> tuple[CallNote, Any]:
    note = CallNote()
    return note, _note.set(note)


def close_note(token: Any) -> None:
    _note.reset(token)


def rows_of(answer: Any) -> int | None:
    """Rows in a tool/resource answer: `row_count` when the answer has it, else what it holds."""
    if not isinstance(answer, dict):
        return None
    count = answer.get("row_count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    for key in ("items", "result", "rows"):
        if key in answer:
            value = answer[key]
            return len(value) if isinstance(value, list) else (0 if value is None else 1)
    return None


def note_answer(answer: Any) -> None:
    note = _note.get()
    if note is not None and isinstance(answer, dict):
        note.rows = rows_of(answer)
        note.truncated = bool(answer.get("truncated", False))


def note_error(exc: BaseException) -> None:
    note = _note.get()
    if note is not None:
        note.error_class = type(exc).__name__


def note_refused(reason: str = "Refused") -> None:
    """For code that refuses a call inside MCP (scopes, policies, rate limits): the event's
    outcome becomes "refused" with `reason` as its error class."""
    note = _note.get()
    if note is not None:
        note.refused, note.error_class = True, reason
