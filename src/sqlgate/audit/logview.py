"""`sqlgate log`: which trail to read, and the table / JSON lines / CSV it prints."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sqlgate.audit.events import FIELDS
from sqlgate.audit.query import EventFilter, FileTrail, SqlTrail
from sqlgate.errors import SqlgateError


def open_trail(project: Any, file: Path | None) -> SqlTrail | FileTrail:
    cfg = project.settings.audit
    if file is not None:
        return FileTrail(file)
    if cfg.store == "sqlite":
        return SqlTrail(sqlite_path=project.path(cfg.database))
    if cfg.store == "postgres":
        return SqlTrail(dsn=cfg.dsn.get_secret_value(), connect_timeout=cfg.connect_timeout_seconds)
    if cfg.path:
        return FileTrail(project.path(cfg.path))
    raise SqlgateError("this project keeps no audit trail to read (audit.store is none and audit.path is unset)")


def show(trail: SqlTrail | FileTrail, flt: EventFilter, limit: int | None, fmt: str, follow: bool,
         out: Console) -> None:
    if isinstance(trail, SqlTrail):
        events, last_id = trail.events(flt, limit)
    else:
        events, last_id = trail.events(flt, limit), 0
    printer = _Printer(fmt, out)
    printer.batch(events)
    if not follow:
        printer.end()
        return
    printer.end()
    stream = trail.follow(flt, last_id) if isinstance(trail, SqlTrail) else trail.follow(flt)
    for event in stream:
        printer.batch([event])
        printer.end()


_TABLE = ("time", "user", "kind", "endpoint", "outcome", "rows", "ms", "error")


def _cells(event: dict[str, Any]) -> list[str]:
    outcome = event.get("outcome") or ""
    if event.get("truncated"):
        outcome += " (truncated)"
    if event.get("status"):
        outcome += f" {event['status']}"
    error = " ".join(p for p in (event.get("error_class"), event.get("error_message")) if p)
    return [str(event.get("time") or ""), event.get("username") or "-", str(event.get("kind") or ""),
            str(event.get("endpoint") or ""), outcome,
            "" if event.get("rows") is None else str(event["rows"]),
            "" if event.get("duration_ms") is None else f"{event['duration_ms']:.1f}", error[:120]]


class _Printer:
    def __init__(self, fmt: str, out: Console):
        self.fmt, self.out = fmt, out
        self._header_done = False
        self._table: Table | None = None
        self._rows = 0

    def batch(self, events: list[dict[str, Any]]) -> None:
        if self.fmt == "json":
            for e in events:
                self.out.file.write(json.dumps(e, ensure_ascii=False, default=str) + "\n")
        elif self.fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf)
            if not self._header_done:
                writer.writerow(FIELDS)
                self._header_done = True
            for e in events:
                writer.writerow([json.dumps(e[k], ensure_ascii=False) if isinstance(e.get(k), dict | list)
                                 else "" if e.get(k) is None else e[k] for k in FIELDS])
            self.out.file.write(buf.getvalue())
        else:
            if self._table is None:
                self._table = Table(show_header=not self._header_done)
                for col in _TABLE:
                    self._table.add_column(col, overflow="fold")
                self._header_done = True
            for e in events:
                self._table.add_row(*_cells(e), style="red" if e.get("outcome") != "ok" else None)
                self._rows += 1

    def end(self) -> None:
        if self._table is not None and self._rows:
            self.out.print(self._table, soft_wrap=True)
        self._table, self._rows = None, 0
        self.out.file.flush()
