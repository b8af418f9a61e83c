"""From settings to a running audit trail: the sinks, the writer, the metrics labels."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlgate.audit.sinks import JsonLinesSink, PostgresSink, Sink, SqliteSink
from sqlgate.audit.writer import AuditWriter
from sqlgate.errors import ConfigError


def build_sinks(project: Any) -> list[Sink]:
    """The configured sinks; a file sink that cannot be created stops the start (a trail that would
    silently lose every event is worse than no start). PostgreSQL is reached on first write."""
    cfg = project.settings.audit
    sinks: list[Sink] = []
    try:
        if cfg.path:
            sinks.append(JsonLinesSink(project.writable_path(cfg.path, "audit.path", "SQLGATE_AUDIT_PATH"),
                                       cfg.rotate_bytes, cfg.rotate_seconds, cfg.keep))
        if cfg.store == "sqlite":
            sink = SqliteSink(project.writable_path(cfg.database, "audit.database", "SQLGATE_AUDIT_DATABASE"))
            sink.connect().close()  # the table exists (and the file is writable) before the first call
            sinks.append(sink)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"the audit trail cannot be written: {exc} (set audit.database / audit.path to a "
                          "writable place, or audit.store: none)") from None
    if cfg.store == "postgres":
        sinks.append(PostgresSink(cfg.dsn.get_secret_value(), cfg.connect_timeout_seconds))
    return sinks


def build_writer(project: Any) -> AuditWriter:
    return AuditWriter(build_sinks(project), project.settings.audit.queue_size).start()


def _template(uri_template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", uri_template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


def labeller(app: Any) -> Callable[[str, str], str]:
    """Metrics labels: names the project defines, resource URIs by their template, else "unknown"."""

    def label(kind: str, key: str) -> str:
        if kind == "tool" and key in app.builtin_names:
            return key
        for ep in app.endpoints:
            if ep.kind != kind:
                continue
            if kind != "resource":
                if ep.name == key:
                    return key
                continue
            uri = ep.definition.uri
            if uri == key or ("{" in uri and _template(uri).fullmatch(key)):
                return uri
        return "unknown"

    return label
