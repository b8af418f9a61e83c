"""The caller's identity in DuckDB: Python functions that read a per-call slot SQL cannot write.

`get_username()`, `get_user_id()`, `get_user_email()`, `get_user_provider()`,
`get_user_display_name()`, `get_request_header(name)` and `get_user_external_token()` are
registered once on the database as Python functions. Each reads the slot that sqlgate sets on the
calling thread for the duration of one call and clears afterwards; no SQL statement can write it
(earlier versions kept it in a SQL variable behind temp macros, and a smuggled `SET VARIABLE` or
`CREATE MACRO` made every later caller on that connection someone else).

They are declared free of side effects, so DuckDB evaluates them once while planning — on the
calling thread, where the slot lives. Where DuckDB would evaluate them per row on one of its own
threads (inside a lambda over column values), the slot is absent and the function fails with a
clear error instead of answering for nobody — or for somebody else.

`get_user_external_token()` answers only for SQL written by the project author (YAML endpoints,
Python endpoints); SQL from the query tool gets an error, however it reaches the function (directly,
through a view, a macro …).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
from duckdb import sqltypes

from sqlgate.context import CallContext

_local = threading.local()

NOT_HERE = ("the caller's identity is not available in this part of the query (DuckDB evaluates it per "
            "row here, e.g. inside a lambda); compute it once, e.g. in a CTE: "
            "WITH me AS (SELECT get_username() AS u) …")
NOT_FOR_QUERIES = ("get_user_external_token() is only available to SQL written by the project author "
                   "(YAML or Python endpoints), never to the query tool")


@dataclass(frozen=True)
class _Slot:
    call: CallContext
    trusted: bool  # True for the project author's SQL, False for SQL from the AI client
    query_headers: frozenset[str]  # lower-case names the AI client's SQL may read


def _slot() -> _Slot:
    slot = getattr(_local, "slot", None)
    if slot is None:
        raise RuntimeError(NOT_HERE)
    return slot


@contextmanager
def bound(call: CallContext, trusted: bool, query_headers: frozenset[str] = frozenset()) -> Iterator[None]:
    """Make `call` the identity seen by SQL on this thread, for the duration of the block."""
    previous = getattr(_local, "slot", None)  # a Python endpoint's nested query restores the outer one
    _local.slot = _Slot(call, trusted, query_headers)
    try:
        yield
    finally:
        _local.slot = previous


def _user_field(name: str):
    def read() -> str:
        return getattr(_slot().call.user, name) or ""
    return read


def _external_token() -> str:
    # When the check below refuses while DuckDB folds constants, DuckDB defers the error and
    # retries per row on its own threads, where there is no slot: say the same thing there.
    slot = getattr(_local, "slot", None)
    if slot is None:
        raise PermissionError(NOT_FOR_QUERIES + "; in the author's SQL, compute it once per query, "
                              "outside lambdas")
    if not slot.trusted:
        raise PermissionError(NOT_FOR_QUERIES)
    return slot.call.user.external_token or ""


def _header_refusal(name: str) -> str:
    return (f"request header {name!r} is not available to the query tool; the project can allow it "
            "(sql_tools.request_headers), the project's own endpoints can read it")


def _request_header(name: str | None) -> str:
    # Which headers the AI client's SQL may read: only those the project allow-lists
    # (sql_tools.request_headers). A deny list of credential-looking names missed too many
    # (X-Amzn-Oidc-Data, DPoP, X-Ms-Client-Principal …); the project author's SQL reads them all.
    name = name or ""
    slot = getattr(_local, "slot", None)
    if slot is None:  # a deferred refusal, re-evaluated off the calling thread (see above)
        raise PermissionError(_header_refusal(name))
    if not slot.trusted and name.lower() not in slot.query_headers:
        raise PermissionError(_header_refusal(name))
    return slot.call.header(name)


FUNCTIONS = {
    "get_username": (_user_field("username"), []),
    "get_user_id": (_user_field("user_id"), []),
    "get_user_email": (_user_field("email"), []),
    "get_user_provider": (_user_field("provider"), []),
    "get_user_display_name": (_user_field("display_name"), []),
    "get_user_external_token": (_external_token, []),
    "get_request_header": (_request_header, [sqltypes.VARCHAR]),
}


def register(db: duckdb.DuckDBPyConnection) -> None:
    """Register the caller functions on a database; they live in its system catalog.

    Done before the seed runs as well, so the project's views and macros can use them.
    """
    have = {r[0] for r in db.execute("SELECT function_name FROM duckdb_functions() "
                                     "WHERE function_name LIKE 'get_%'").fetchall()}
    for name, (fn, params) in FUNCTIONS.items():
        if name not in have:
            db.create_function(name, fn, params, sqltypes.VARCHAR, side_effects=False,
                               null_handling="special")
