"""Where audit events are stored: a JSON-lines file (rotated) and a SQL table.

Sinks are called from the audit writer's thread only (writer.py), with batches of events; a sink
raising loses that batch for that sink, which the writer counts. Both sinks are safe with several
processes (`serve --workers N`) writing at once: the file under an advisory lock, the table
through the database's own locking.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlgate.audit.events import FIELDS


class Sink(Protocol):
    name: str

    def write(self, events: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class JsonLinesSink:
    """One JSON object per line, appended; rotated to `<path>.1` … `<path>.<keep>` when the file
    passes `rotate_bytes` or its first event is older than `rotate_seconds`.

    Every batch takes an exclusive lock on `<path>.lock`, checks for rotation and appends, so
    workers sharing the file never interleave lines or rotate twice.
    """

    name = "jsonl"

    def __init__(self, path: Path, rotate_bytes: int, rotate_seconds: float | None, keep: int):
        self.path, self.rotate_bytes, self.rotate_seconds, self.keep = path, rotate_bytes, rotate_seconds, keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = path.with_name(path.name + ".lock")

    def write(self, events: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in events).encode("utf-8")
        lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._rotate_if_due(len(data))
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)  # releases the lock

    def _rotate_if_due(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        due = size + incoming > self.rotate_bytes
        if not due and self.rotate_seconds is not None:
            due = time.time() - self._first_event_time() >= self.rotate_seconds
        if due:
            self.rotate()

    def _first_event_time(self) -> float:
        try:
            with self.path.open("rb") as fh:
                return _epoch(json.loads(fh.readline())["time"])
        except (OSError, ValueError, KeyError, TypeError):
            return time.time()

    def rotate(self) -> None:
        """audit.jsonl -> audit.jsonl.1 -> … -> audit.jsonl.<keep>; the oldest goes."""
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                with suppress(FileNotFoundError):
                    older.unlink()
                continue
            with suppress(FileNotFoundError):
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.keep > 0:
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()

    def close(self) -> None:
        pass


# the SQL table: one column per event field; times as ISO text and as epoch seconds (for ranges)
_COLUMNS = {
    "time": "TEXT NOT NULL", "ts": "REAL NOT NULL", "kind": "TEXT NOT NULL", "endpoint": "TEXT NOT NULL",
    "outcome": "TEXT NOT NULL", "status": "INTEGER", "request_id": "TEXT", "session_id": "TEXT",
    "client_id": "TEXT", "username": "TEXT", "user_id": "TEXT", "provider": "TEXT", "display_name": "TEXT",
    "email": "TEXT", "arguments": "TEXT", "sql_fingerprint": "TEXT", "rows": "INTEGER", "bytes": "INTEGER",
    "truncated": "BOOLEAN", "duration_ms": "REAL", "error_class": "TEXT", "error_message": "TEXT",
}
COLUMNS = tuple(_COLUMNS)
SQLITE_TABLE = "audit_events"
POSTGRES_TABLE = "sqlgate_audit_events"


def row_of(event: dict[str, Any]) -> tuple:
    values = dict(event)
    values["ts"] = _epoch(event["time"])
    if values.get("arguments") is not None:
        values["arguments"] = json.dumps(values["arguments"], ensure_ascii=False, default=str)
    values["truncated"] = bool(values.get("truncated"))
    return tuple(values.get(c) for c in COLUMNS)


def event_of(row: dict[str, Any]) -> dict[str, Any]:
    event = {k: row.get(k) for k in FIELDS}
    if isinstance(event.get("arguments"), str):
        with suppress(ValueError):
            event["arguments"] = json.loads(event["arguments"])
    event["truncated"] = bool(event.get("truncated"))
    return event


def _ddl(table: str, id_column: str, text_types: dict[str, str]) -> list[str]:
    cols = ", ".join(f"{name} {text_types.get(kind, kind)}" for name, kind in _COLUMNS.items())
    return [f"CREATE TABLE IF NOT EXISTS {table} ({id_column}, {cols})",
            f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)",
            f"CREATE INDEX IF NOT EXISTS {table}_user ON {table} (username, ts)",
            f"CREATE INDEX IF NOT EXISTS {table}_endpoint ON {table} (endpoint, ts)"]


class SqliteSink:
    """The default table: one SQLite file (WAL; several processes on one machine share it)."""

    name = "sqlite"
    table = SQLITE_TABLE

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db: sqlite3.Connection | None = None

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in _ddl(self.table, "id INTEGER PRIMARY KEY AUTOINCREMENT", {}):
            db.execute(statement)
        return db

    def write(self, events: list[dict[str, Any]]) -> None:
        if self._db is None:
            self._db = self.connect()
        marks = ", ".join("?" for _ in COLUMNS)
        with self._db:  # one transaction per batch
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES ({marks})",
                                 [row_of(e) for e in events])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class PostgresSink:
    """The shared table, when replicas write one trail: `sqlgate_audit_events` in a PostgreSQL
    database (a libpq DSN, as the grant store's persistence.dsn)."""

    name = "postgres"
    table = POSTGRES_TABLE

    def __init__(self, dsn: str, connect_timeout: int = 10):
        self.dsn = dsn
        self.connect_timeout = connect_timeout  # audit.connect_timeout_seconds
        self._conn: Any = None

    def connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout)
        with conn.transaction():
            # replicas may start together: create the table under an advisory lock
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            for statement in _ddl(self.table, "id BIGSERIAL PRIMARY KEY",
                                  {"REAL": "double precision", "REAL NOT NULL": "double precision NOT NULL"}):
                conn.execute(statement)
        return conn

    def write(self, events: list[dict[str, Any]]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        marks = ", ".join("%s" for _ in COLUMNS)
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES ({marks})",
                                [row_of(e) for e in events])
        except Exception:
            with suppress(Exception):
                self._conn.close()
            self._conn = None  # reconnect for the next batch
            raise

    def close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None
