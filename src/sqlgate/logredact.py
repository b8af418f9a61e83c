"""No authorization code or token in any log line, at any level.

Values leak into logs from places sqlgate does not write: uvicorn's debug access log prints the
full request target (`GET /oidc/callback?code=…&state=…`, `?access_token=…`), libraries log URLs
and exceptions that carry query strings. A handler or logger filter would only see the records
that pass through it (FastMCP and uvicorn install their own handlers), so redaction happens where
every emitted record is made: a LogRecord factory. It runs only for records that pass the level
check, and rewrites the message and its string arguments in place, keeping the arguments a tuple
(uvicorn's access formatter unpacks them).
"""

from __future__ import annotations

import logging
import re
from typing import Any

_SECRET_PARAMS = ("code", "access_token", "refresh_token", "id_token", "token", "client_secret", "code_verifier",
                  "assertion", "client_assertion", "subject_token", "password")
_NAMES = "|".join(_SECRET_PARAMS)
_PATTERNS = [
    # query strings and form bodies: ?code=…&…
    (re.compile(r"(?i)(?<![A-Za-z0-9_])((?:" + _NAMES + r")=)[^&\s\"'#;,)]+"), r"\1[redacted]"),
    # JSON or repr of token responses: "access_token": "…"
    (re.compile(r"""(?i)(["'](?:""" + _NAMES + r""")["']\s*:\s*["'])[^"']+"""), r"\1[redacted]"),
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
]
REDACTED = "[redacted]"
_TRACEBACKS = logging.Formatter()


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    cleaned = redact(text)
    return arg if cleaned == text else cleaned


def install() -> None:
    """Wrap the current LogRecord factory (once)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_sqlgate_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            # a single mapping argument ("%s" % {...} or "%(name)s"): secret keys lose their values
            record.args = {k: REDACTED if str(k).lower() in _SECRET_PARAMS else _redact_arg(v)
                           for k, v in record.args.items()}
        if record.exc_info and record.exc_info[0] is not None:
            # formatters reuse a precomputed exc_text: a traceback's messages and URLs are redacted too
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
        return record

    factory._sqlgate_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
