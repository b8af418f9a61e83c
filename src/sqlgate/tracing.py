"""OpenTelemetry traces: FastMCP's span per request, carrying the end user; a database span below.

FastMCP opens one SERVER span per MCP request (`tools/call query` …) on the global tracer
provider, with `enduser.id` set to the OAuth *client* id. sqlgate sets the attributes that name
the person: `enduser.id` (the user id, else the username), `enduser.name`, and the outcome
(`sqlgate.outcome`, `sqlgate.endpoint`, `error.type`); each database statement gets a CLIENT
child span (`db.system.name`, `db.operation.name`, never the SQL's literals).

Off by default (`telemetry.traces.enabled`). The SDK and the OTLP exporter are the `otel`
extra; with an SDK tracer provider already installed (an embedding application, tests), sqlgate
uses it and adds no exporter of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.tracing")
_enabled = False
_tracer = trace.get_tracer("sqlgate")


def setup(cfg: Any, service_name: str) -> None:
    """Install a tracer provider with the configured exporter (once per process)."""
    global _enabled
    if not cfg.enabled:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError("telemetry.traces needs the OpenTelemetry SDK: pip install 'sqlgate[otel]'") from None
    _enabled = True
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        log.info("traces go to the tracer provider already installed")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name or service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if cfg.exporter == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("telemetry.traces.exporter otlp needs the OTLP exporter: "
                              "pip install 'sqlgate[otel]'") from None
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=headers or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("traces: exporting with %s%s", cfg.exporter, f" to {cfg.endpoint}" if cfg.endpoint else "")


def enabled() -> bool:
    return _enabled


def annotate_call(user: Any, kind: str, endpoint: str, outcome: str, error_class: str | None) -> None:
    if not _enabled:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = {"sqlgate.kind": kind, "sqlgate.endpoint": endpoint, "sqlgate.outcome": outcome}
    who = user.user_id or user.username
    if who:  # FastMCP put the OAuth client id here; the end user is the person
        attributes["enduser.id"] = who
        if user.username:
            attributes["enduser.name"] = user.username
    if error_class:
        attributes["error.type"] = error_class
    span.set_attributes(attributes)


@contextmanager
def db_span(dialect: str, operation: str) -> Iterator[None]:
    if not _enabled:
        yield
        return
    system = "postgresql" if dialect == "postgres" else dialect
    with _tracer.start_as_current_span(f"{operation} {system}", kind=trace.SpanKind.CLIENT,
                                       attributes={"db.system.name": system, "db.operation.name": operation}):
        yield


class TracedEngine:
    """An engine whose statements each run inside a database span (only when traces are on).
    Arguments pass through untouched, so the engine's signatures stay the engine's business."""

    _OPERATIONS = {"execute": "execute", "run_untrusted": "query", "list_schemas": "list_schemas",
                   "list_tables": "list_tables", "describe_table": "describe_table", "catalog_entries": "catalog"}

    def __init__(self, engine: Any):
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._engine, name)
        operation = self._OPERATIONS.get(name)
        if operation is None:
            return target
        dialect = self._engine.dialect

        async def traced(*args: Any, **kwargs: Any) -> Any:
            with db_span(dialect, operation):
                return await target(*args, **kwargs)

        return traced

    def execute_blocking(self, *args: Any, **kwargs: Any) -> Any:
        with db_span(self._engine.dialect, "execute"):
            return self._engine.execute_blocking(*args, **kwargs)
