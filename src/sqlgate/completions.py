"""`completion/complete` for prompt arguments and resource-template parameters.

Candidates come from the parameter's `enum` (filtered by what the user typed, case-insensitive
prefix), and for a parameter that declares `complete: {sql: ...}` in its endpoint YAML, from that
SQL: the project's own SQL, run like endpoint SQL (engine guard, the caller's identity), with a
short timeout, at most MAX_VALUES rows and a small byte budget. A caller without the endpoint's
scopes gets no candidates, as it would get no listing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mcp_types import Completion, PromptReference, ResourceTemplateReference

from sqlgate.context import current_call
from sqlgate.endpoints.loader import Endpoint
from sqlgate.endpoints.models import Parameter
from sqlgate.endpoints.sqlparams import sql_parameters
from sqlgate.engine import Engine, Limits
from sqlgate.errors import SqlgateError

log = logging.getLogger("sqlgate.completions")
MAX_VALUES = 100  # the MCP cap per answer
COMPLETION_LIMITS = dict(max_rows=MAX_VALUES, max_bytes=64 * 1024, timeout_seconds=5.0)


class Completer:
    def __init__(self, endpoints: Callable[[], list[Endpoint]], engine: Engine, limits: Callable[[], Limits],
                 may_use: Callable[[str, str], bool]):
        self.endpoints = endpoints
        self.engine = engine
        self.limits = limits
        self.may_use = may_use  # (kind, key) -> does the caller hold the scopes

    async def __call__(self, ref: Any, argument: Any, context: Any) -> Completion | None:
        found = self._find(ref)
        if found is None:
            return None
        ep, key = found
        if not self.may_use(ep.kind, key):
            return None
        param = next((p for p in ep.definition.parameters if p.name == argument.name), None)
        if param is None:
            return None
        typed = argument.value or ""
        values = _from_enum(param, typed)
        if param.complete is not None:
            given = dict((context.arguments or {}) if context is not None else {})
            values += [v for v in await self._from_sql(ep, param, typed, given) if v not in values]
        return Completion(values=values[:MAX_VALUES], total=len(values), has_more=len(values) > MAX_VALUES)

    def _find(self, ref: Any) -> tuple[Endpoint, str] | None:
        for ep in self.endpoints():
            if isinstance(ref, PromptReference) and ep.kind == "prompt" and ep.name == ref.name:
                return ep, ep.name
            if (isinstance(ref, ResourceTemplateReference) and ep.kind == "resource"
                    and ep.definition.uri == ref.uri):
                return ep, ep.definition.uri
        return None

    async def _from_sql(self, ep: Endpoint, param: Parameter, typed: str, given: dict[str, Any]) -> list[str]:
        assert param.complete is not None
        params: dict[str, Any] = {p.name: given.get(p.name) for p in ep.definition.parameters}
        params["value"] = typed
        limits = self.limits().tightened(**COMPLETION_LIMITS)
        used = sql_parameters(param.complete.sql)  # a small scanner; checked at load already
        try:
            result = await self.engine.execute(param.complete.sql, {k: params[k] for k in used}, current_call(),
                                               limits)
        except SqlgateError as exc:
            # a completion is a convenience: the client gets no candidates, the operator the reason
            log.warning("completion SQL for %s %s.%s failed: %s", ep.kind, ep.name, param.name, exc)
            return []
        return [str(row[0]) for row in result.rows if row and row[0] is not None]


def _from_enum(param: Parameter, typed: str) -> list[str]:
    enum = (param.__pydantic_extra__ or {}).get("enum")
    if not isinstance(enum, list):
        return []
    lowered = typed.lower()
    return [str(v) for v in enum if str(v).lower().startswith(lowered)]
