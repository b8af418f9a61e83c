"""Run the `tests:` blocks of endpoint files against the real engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlgate.config.loader import LoadedProject
from sqlgate.context import CallContext, UserContext, pinned_call
from sqlgate.endpoints import executor
from sqlgate.endpoints.loader import load_endpoints
from sqlgate.engine import Limits, open_engine
from sqlgate.errors import SqlgateError


@dataclass
class Outcome:
    kind: str
    endpoint: str
    test: str
    passed: bool
    message: str
    duration_ms: float


def _contains(actual: Any, expected: Any) -> bool:
    """Subset match: dict ⊆ dict, every expected item found in a list, substring in a string."""
    if isinstance(expected, dict):
        if isinstance(actual, dict):
            return all(k in actual and _contains(actual[k], v) for k, v in expected.items())
        if isinstance(actual, list):
            return any(_contains(item, expected) for item in actual)
        return False
    if isinstance(expected, list):
        if isinstance(actual, list):
            return all(any(_contains(a, e) for a in actual) for e in expected)
        return False
    if isinstance(expected, str) and isinstance(actual, str):
        return expected in actual
    if isinstance(actual, list):
        return expected in actual
    return actual == expected


def check(case, envelope: dict[str, Any] | None, error: str | None) -> str | None:
    """None when the test passes, else what went wrong."""
    if case.expect_error is not None:
        if error is None:
            return f"expected an error containing {case.expect_error!r}, got a result"
        if case.expect_error.lower() not in error.lower():
            return f"expected an error containing {case.expect_error!r}, got: {error}"
        return None
    if error is not None:
        return f"unexpected error: {error}"
    assert envelope is not None
    result = envelope["result"]
    fields = case.model_fields_set
    if "result" in fields and result != case.result:
        return f"result {result!r} != expected {case.result!r}"
    if "result_contains" in fields and not _contains(result, case.result_contains):
        return f"result does not contain {case.result_contains!r}: {result!r}"
    if case.result_length is not None:
        length = len(result) if isinstance(result, list | dict | str) else None
        if length != case.result_length:
            return f"result length {length} != expected {case.result_length}"
    if case.truncated is not None and envelope.get("truncated") != case.truncated:
        return f"truncated is {envelope.get('truncated')}, expected {case.truncated}"
    return None


async def run_tests(project: LoadedProject, only: str | None = None,
                    default_user: UserContext | None = None) -> list[Outcome]:
    """Every test of every endpoint (or of `only`), each as its own `user:`, else as `default_user`."""
    endpoints = [ep for ep in load_endpoints(project.root)
                 if ep.kind != "prompt" and getattr(ep.definition, "tests", None)
                 and (only is None or ep.name == only)]
    if only is not None and not endpoints:
        raise SqlgateError(f"no tool or resource named {only!r} has tests")
    lim = project.settings.limits
    limits = Limits(lim.max_rows, lim.max_bytes, lim.timeout_seconds, lim.max_sql_length)
    engine = open_engine(project)
    outcomes: list[Outcome] = []
    try:
        for ep in endpoints:
            for case in ep.definition.tests:
                user = (UserContext.from_mapping(case.user_context) if case.user_context
                        else default_user or UserContext())
                call = CallContext(user=user)
                started = time.perf_counter()
                envelope, error = None, None
                try:
                    with pinned_call(call):
                        envelope = await executor.execute(ep, case.arguments, engine, limits, call)
                except SqlgateError as exc:
                    error = str(exc)
                problem = check(case, envelope, error)
                outcomes.append(Outcome(ep.kind, ep.name, case.name, problem is None, problem or "",
                                        (time.perf_counter() - started) * 1000))
    finally:
        await engine.close()
    return outcomes
