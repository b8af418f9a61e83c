"""From settings to a running audit trail: the sinks, the writer, the metrics labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlgate.audit.sinks import JsonLinesSink, PostgresSink, Sink, SqliteSink
from sqlgate.audit.writer import AuditWriter


def build_sinks(project: Any) -> list[Sink]:
    cfg = project.settings.audit
    sinks: list[Sink] = []
    if cfg.path:
        sinks.append(JsonLinesSink(project.path(cfg.path), cfg.rotate_bytes, cfg.rotate_seconds, cfg.keep))
    if cfg.store == "sqlite":
        sinks.append(SqliteSink(project.path(cfg.database)))
    elif cfg.store == "postgres":
        sinks.append(PostgresSink(cfg.dsn.get_secret_value()))
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
