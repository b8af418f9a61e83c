"""Emit an event: count it, print the console line, hand it to the writer (never blocking).

`auth_event` is what the authorization code calls (login, token issue/refresh/revoke,
registration): one line at the place where the step is decided. Request id and client address
come from the HTTP request being served (http.py), so those call sites pass only what they know.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlgate import metrics
from sqlgate.audit import writer as audit_writer
from sqlgate.audit.events import console_line, new_event, user_fields

log = logging.getLogger("sqlgate.audit")


def emit(event: dict[str, Any]) -> None:
    if audit_writer.console_enabled() and log.isEnabledFor(logging.INFO):
        log.info("%s", console_line(event))
    current = audit_writer.current()
    if current is not None:
        current.submit(event)


def auth_event(action: str, outcome: str = "ok", *, status: int | None = None, client_id: str | None = None,
               user: Any = None, error: str | None = None, message: str | None = None) -> None:
    """One authorization step; `action` e.g. "login", "token.issue", "token.refresh",
    "token.revoke", "register", "refusal"; `error` an error class or OAuth error code."""
    from sqlgate.audit.http import current_request

    metrics.auth_event(action, outcome)
    if audit_writer.current() is None and not audit_writer.console_enabled():
        return
    request = current_request()
    fields: dict[str, Any] = dict(outcome=outcome, status=status, client_id=client_id, error_class=error,
                                  error_message=message)
    if request is not None:
        request.audited = True
        fields["request_id"] = request.request_id
        fields["arguments"] = {"path": request.path, "address": request.address}
    if user is not None:
        fields.update(user_fields(user))
    emit(new_event("auth", action, **fields))
