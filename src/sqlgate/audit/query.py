"""Reading the audit trail back (`sqlgate log`): filters, the SQL table or the JSON-lines files.

Filters are pushed into SQL where the trail is a table; the JSON-lines files (current and
rotated) are read and filtered in Python. `follow` polls for events newer than the last seen.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlgate.audit.sinks import POSTGRES_TABLE, SQLITE_TABLE, event_of
from sqlgate.errors import SqlgateError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """`30m`, `1h`, `7d` (that long ago) or an ISO-8601 time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SqlgateError(f"not a time: {text!r} (use e.g. 30m, 1h, 7d or 2026-05-01T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class EventFilter:
    user: str | None = None  # username, user id or email
    endpoint: str | None = None
    kind: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None  # anywhere in endpoint, arguments, error or user fields

    def sql(self, mark: str) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.user:
            clauses.append(f"(username = {mark} OR user_id = {mark} OR email = {mark})")
            params += [self.user] * 3
        for column in ("endpoint", "kind", "outcome"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = {mark}")
                params.append(value)
        if self.since is not None:
            clauses.append(f"ts >= {mark}")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"ts <= {mark}")
            params.append(self.until)
        if self.text:
            cols = ("endpoint", "arguments", "error_message", "error_class", "username", "email", "client_id",
                    "request_id", "sql_fingerprint")
            clauses.append("(" + " OR ".join(f"lower(coalesce({c}, '')) LIKE {mark}" for c in cols) + ")")
            params += [f"%{self.text.lower()}%"] * len(cols)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def match(self, event: dict[str, Any]) -> bool:
        if self.user and self.user not in (event.get("username"), event.get("user_id"), event.get("email")):
            return False
        for key in ("endpoint", "kind", "outcome"):
            if getattr(self, key) and event.get(key) != getattr(self, key):
                return False
        ts = _ts(event)
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts > self.until:
            return False
        return not self.text or self.text.lower() in json.dumps(event, ensure_ascii=False, default=str).lower()


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


class SqlTrail:
    """The audit table, SQLite or PostgreSQL."""

    def __init__(self, sqlite_path: Path | None = None, dsn: str | None = None, connect_timeout: int = 10):
        if sqlite_path is not None and not sqlite_path.exists():
            raise SqlgateError(f"no audit database at {sqlite_path} (nothing audited yet, or audit.store is not "
                               "sqlite)")
        self.sqlite_path, self.dsn, self.connect_timeout = sqlite_path, dsn, connect_timeout

    def _rows(self, where: str, params: list[Any], order: str, limit: int | None) -> list[dict[str, Any]]:
        tail = f" ORDER BY id {order}" + (f" LIMIT {int(limit)}" if limit else "")
        if self.sqlite_path is not None:
            db = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10)
            db.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in db.execute(f"SELECT * FROM {SQLITE_TABLE}{where}{tail}", params)]
            except sqlite3.OperationalError as exc:
                raise SqlgateError(f"cannot read the audit database {self.sqlite_path}: {exc}") from None
            finally:
                db.close()
        import psycopg
        from psycopg.rows import dict_row

        try:
            with psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=self.connect_timeout) as conn:
                return list(conn.execute(f"SELECT * FROM {POSTGRES_TABLE}{where}{tail}", params))
        except psycopg.Error as exc:
            raise SqlgateError(f"cannot read the audit table: {exc}") from None

    def _mark(self) -> str:
        return "?" if self.sqlite_path is not None else "%s"

    def events(self, flt: EventFilter, limit: int | None) -> tuple[list[dict[str, Any]], int]:
        """The newest `limit` matching events, oldest first, and the last id seen."""
        where, params = flt.sql(self._mark())
        rows = list(reversed(self._rows(where, params, "DESC", limit)))
        return [event_of(r) for r in rows], (rows[-1]["id"] if rows else self._last_id())

    def _last_id(self) -> int:
        rows = self._rows("", [], "DESC", 1)
        return rows[0]["id"] if rows else 0

    def follow(self, flt: EventFilter, after: int, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        while True:
            where, params = flt.sql(self._mark())
            where = (where + " AND " if where else " WHERE ") + f"id > {self._mark()}"
            rows = self._rows(where, [*params, after], "ASC", 1000)
            for row in rows:
                after = row["id"]
                yield event_of(row)
            if not rows:
                time.sleep(poll)


def _read_events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
    except FileNotFoundError:
        return


class FileTrail:
    """The JSON-lines file and its rotated predecessors (<path>.N … <path>.1, then <path>)."""

    def __init__(self, path: Path):
        self.path = path

    def files(self) -> list[Path]:
        rotated = sorted(self.path.parent.glob(self.path.name + ".[0-9]*"),
                         key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0, reverse=True)
        return [p for p in rotated if p.suffix[1:].isdigit()] + ([self.path] if self.path.exists() else [])

    def events(self, flt: EventFilter, limit: int | None) -> list[dict[str, Any]]:
        found = [e for path in self.files() for e in _read_events(path) if flt.match(e)]
        return found[-limit:] if limit else found

    def _newer_rotated(self, inode: int | None) -> Iterator[dict[str, Any]]:
        """Events of the rotated files newer than the one with `inode` (oldest first)."""
        rotated = [p for p in self.files() if p != self.path]
        inodes = []
        for p in rotated:
            try:
                inodes.append(p.stat().st_ino)
            except FileNotFoundError:
                inodes.append(None)
        if inode not in inodes:
            return
        for path in rotated[inodes.index(inode) + 1:]:
            yield from _read_events(path)

    def follow(self, flt: EventFilter, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """New lines as they are appended; follows the file across rotations (a file that appears
        after a rotation is read from its start, the first one from its end)."""
        fh, inode, first = None, None, True
        while True:
            try:
                current = self.path.stat().st_ino
            except FileNotFoundError:
                current = None
            line = fh.readline() if fh is not None else ""
            if line.endswith("\n"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if flt.match(event):
                    yield event
                continue
            if current is not None and current != inode:  # rotated (or created): switch files
                if fh is not None:
                    fh.close()
                    # files rotated after ours (several rotations between two polls): read them first
                    for event in self._newer_rotated(inode):
                        if flt.match(event):
                            yield event
                fh, inode = self.path.open(encoding="utf-8", errors="replace"), current
                if first:
                    fh.seek(0, 2)
                first = False
                continue
            time.sleep(poll)
