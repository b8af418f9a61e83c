"""Prometheus metrics: calls, latency, errors, pool saturation, auth refusals, rate-limit hits.

Per-call numbers are counted when `telemetry.metrics.enabled` (the MCP middleware); the other
counters (auth, pool, audit losses, rate limits) cost a lock and an add and always count. Where the
numbers are exposed is metrics_http.py. Labels are bounded:
endpoint labels are names the project defines (unknown names count as "unknown"), auth refusals
are labelled by route family, error classes by exception class name.

Several workers (`serve --workers N`): prometheus_client's multiprocess mode. The supervisor
points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start (serve.py); each
worker writes its numbers there and a scrape of any worker (or of the supervisor's metrics port)
adds up all of them. Without that variable each process counts on its own.

Other modules report through the small functions below, e.g. `metrics.rate_limited("user")`.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CALLS = Counter("sqlgate_calls", "MCP calls (tool calls, resource reads, prompt renders) by outcome",
                ["kind", "endpoint", "outcome"])
LATENCY = Histogram("sqlgate_call_duration_seconds", "Duration of MCP calls", ["kind", "endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ERRORS = Counter("sqlgate_call_errors", "Failed MCP calls by error class", ["kind", "error_class"])
AUTH_EVENTS = Counter("sqlgate_auth_events", "Authorization events (login, token issue/refresh/revoke, "
                      "registration) by outcome", ["event", "outcome"])
AUTH_REFUSALS = Counter("sqlgate_auth_refusals", "HTTP requests refused with 401, 403 or 429", ["status", "route"])
RATE_LIMITED = Counter("sqlgate_rate_limited", "Calls refused by a rate limit or quota", ["principal_kind"])
POOL_IN_USE = Gauge("sqlgate_db_connections_in_use", "Database connections held by calls",
                    multiprocess_mode="livesum")
POOL_WAITING = Gauge("sqlgate_db_calls_waiting", "Calls waiting for a database connection",
                     multiprocess_mode="livesum")
POOL_SIZE = Gauge("sqlgate_db_pool_size", "Database connections available (all workers)",
                  multiprocess_mode="livesum")
AUDIT_LOST = Counter("sqlgate_audit_events_lost", "Audit events not stored: queue full, or a sink failed",
                     ["reason"])


# labelled children, looked up once: `.labels()` costs more than the increment itself (label
# values are bounded, so these stay small)
_calls: dict[tuple[str, str, str], Any] = {}
_latency: dict[tuple[str, str], Any] = {}


def observe_call(kind: str, endpoint: str, outcome: str, seconds: float, error_class: str | None) -> None:
    key = (kind, endpoint, outcome)
    calls = _calls.get(key)
    if calls is None:
        calls = _calls[key] = CALLS.labels(kind, endpoint, outcome)
    calls.inc()
    latency = _latency.get(key[:2])
    if latency is None:
        latency = _latency[key[:2]] = LATENCY.labels(kind, endpoint)
    latency.observe(seconds)
    if error_class:
        ERRORS.labels(kind, error_class).inc()


def auth_event(event: str, outcome: str) -> None:
    AUTH_EVENTS.labels(event, outcome).inc()


def auth_refused(status: int, route: str) -> None:
    AUTH_REFUSALS.labels(str(status), route).inc()


def rate_limited(principal_kind: str) -> None:
    """A call was refused by a rate limit or concurrency quota; `principal_kind` is e.g. "user",
    "client" or "address" (never the principal itself: labels must stay few)."""
    RATE_LIMITED.labels(principal_kind).inc()


def audit_lost(reason: str, count: int = 1) -> None:
    AUDIT_LOST.labels(reason).inc(count)


def exposition() -> tuple[bytes, str]:
    """The text format of every metric, summed over workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
