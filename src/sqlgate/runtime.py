"""What Python endpoints can use: the database and the caller, for the current call.

    from sqlgate import runtime

    def top_products(limit: int):
        return runtime.query("SELECT * FROM products ORDER BY price DESC LIMIT $n", {"n": limit})

`query` works in plain functions (run in a worker thread); async functions use `await aquery(...)`.
Limits and the caller's identity apply exactly as for SQL endpoints.

`http` calls the identity provider's API as the caller (their token, the call's deadline, size
caps, allowed hosts, a log line without the token): see provider_api.py and the README.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlgate.context import CallContext, UserContext
from sqlgate.engine.base import Engine, Limits
from sqlgate.provider_api import ProviderAPIError, ProviderHTTP, Response

__all__ = ["ProviderAPIError", "Response", "aquery", "http", "query", "request_header", "user"]


@dataclass(frozen=True)
class _Scope:
    engine: Engine
    call: CallContext
    limits: Limits
    # monotonic time the call must be answered by (its timeout, counted from the start)
    deadline: float = field(default=0.0)


_scope: ContextVar[_Scope | None] = ContextVar("sqlgate_runtime", default=None)


def _current() -> _Scope:
    scope = _scope.get()
    if scope is None:
        raise RuntimeError("sqlgate.runtime is only available while an endpoint is running")
    return scope


def bind(engine: Engine, call: CallContext, limits: Limits):
    return _scope.set(_Scope(engine, call, limits, time.monotonic() + limits.timeout_seconds))


def unbind(token) -> None:
    _scope.reset(token)


def query(sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    s = _current()
    return s.engine.execute_blocking(sql, params, s.call, s.limits).records()


async def aquery(sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    s = _current()
    return (await s.engine.execute(sql, params, s.call, s.limits)).records()


def user() -> UserContext:
    return _current().call.user


def request_header(name: str) -> str:
    return _current().call.header(name)


http = ProviderHTTP()
