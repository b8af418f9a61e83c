"""The one answer shape of every tool, and its size as the client receives it.

Every built-in tool answers a table:

    {"columns": [name…], "types": [type…], "rows": [[value…]…], "row_count": n,
     "truncated": bool, "hint": "…"?, "next_cursor": "…"?}

(describe_table adds one `table` object about the relation itself). SQL endpoints answer their
author's declared `result` with the same `row_count` / `truncated` / `hint` / `next_cursor` keys, so
clients, the audit log and paging read every answer the same way.

A tool answer travels twice in one JSON-RPC message: as JSON text (a string, so every `"` and `\\`
is escaped once more) and as structuredContent. `limits.max_bytes` bounds that whole message, which
is what an MCP client's transport limit applies to (the official Python client refuses an SSE event
over 1 MiB; see README "Answers that always arrive").
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# The JSON-RPC envelope around the two encodings, the SSE framing (`event: message`, `data: `, an
# event id) and the request id: measured at about 200 bytes (tests/test_answers.py); reserved with
# room to spare (a larger request id or event id adds a few bytes).
ENVELOPE_BYTES = 512


# The fallback, and the reference the fast encoder must agree with (tests/test_answers_encoding.py):
# compact, UTF-8 kept as is, anything unknown as its str().
_stdlib = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
# orjson would write datetimes and dataclasses its own way: like json, hand them to `default`
# (values from the engines are JSON-ready already, see engine/values.py; this is for the rest).
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def encode_bytes(data: Any) -> bytes:
    """Compact JSON as UTF-8 bytes: orjson (an answer's rows are encoded ~15x faster than with the
    json module), and the json module for what orjson refuses, so no value that encoded before
    fails now: integers beyond 64 bits (HUGEINT, NUMERIC(38)), strings holding lone surrogates."""
    try:
        return orjson.dumps(data, default=str, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return _stdlib(data).encode("utf-8", "surrogatepass")


def dumps(data: Any) -> str:
    """The JSON text of an answer, as the text content block carries it."""
    return encode_bytes(data).decode("utf-8", "surrogatepass")


def encoded_cost(text: str | bytes) -> int:
    """Bytes `text` (compact JSON) adds to a message that carries it twice: once as JSON, once as a
    JSON string (where `"` and `\\` gain a backslash; control characters are already escaped)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return 2 * len(raw) + raw.count(b'"') + raw.count(b"\\")


def message_bytes(answer: dict[str, Any]) -> int:
    """An upper bound of the JSON-RPC message (plus SSE framing) that carries this tool answer."""
    return encoded_cost(encode_bytes(answer)) + ENVELOPE_BYTES


def table(columns: list[str], types: list[str], rows: list[list[Any]], truncated: bool,
          hint: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"columns": columns, "types": types, "rows": rows, "row_count": len(rows),
                           "truncated": truncated}
    if hint:
        out["hint"] = hint
    return out


def fit(answer: dict[str, Any], max_bytes: int, rows_key: str = "rows", reserve: int = 0) -> int:
    """Drop trailing rows until the whole message fits `max_bytes - reserve`; returns how many were
    dropped (the caller marks the answer truncated). The engine already stopped near the cap, so
    this trims a row or two at most, computed per row rather than re-encoding the answer."""
    rows = answer[rows_key]
    budget = max_bytes - reserve
    total = message_bytes(answer)
    dropped = 0
    while rows and total > budget:
        last = rows.pop()
        total -= encoded_cost(encode_bytes(last)) + 2  # the row and its separating comma, in both encodings
        dropped += 1
    if dropped:
        answer["row_count"] = len(rows)
    return dropped


# JSON Schema (2020-12) of the answers, declared as each tool's outputSchema
_PAGING = {
    "row_count": {"type": "integer", "minimum": 0, "description": "rows in this answer"},
    "truncated": {"type": "boolean", "description": "true when limits cut the answer short"},
    "hint": {"type": "string", "description": "why the answer is partial and what to do"},
    "next_cursor": {"type": "string",
                    "description": "pass as `cursor` with the same arguments to get the next rows"},
}


def table_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "columns": {"type": "array", "items": {"type": "string"}},
        "types": {"type": "array", "items": {"type": "string"}},
        # each row an array of values in column order; not spelled out per item: clients validate
        # structuredContent against this schema, and per-row checks cost 1 s on a 64k-row page
        "rows": {"type": "array"},
        **_PAGING,
    }
    required = ["columns", "types", "rows", "row_count", "truncated"]
    if extra:
        props.update(extra)
        required += list(extra)
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def result_schema(declared: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "object",
            "properties": {"result": declared if declared else {}, **_PAGING},
            "required": ["result", "row_count", "truncated"], "additionalProperties": False}
