"""The grant store on one SQLite file (the default): several processes on one machine share it.

- WAL journal, so readers never block the writer; a 10 s busy timeout, so a process waits for
  another's write instead of failing with "database is locked".
- Every decision is one `BEGIN IMMEDIATE` transaction: it takes SQLite's single write lock before
  reading, so no other process can slip in between the read and the write. Codes are taken with
  `DELETE … RETURNING` (SQLite ≥ 3.35).
- The file is created 0600 (its directory 0700) before SQLite opens it; SQLite gives the -wal and
  -shm files the database file's mode.
- `:memory:` gives the same semantics in one process (persistence.type: memory).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cryptography.fernet import Fernet

from sqlgate.auth.grants.base import GrantStore, StateStoreUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    document   TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS codes (
    code_hash  TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spent_codes (
    code_hash  TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS families (
    family_id  TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0,
    rotated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    pending_since REAL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    generation INTEGER NOT NULL,
    sealed     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    successor  TEXT
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);
CREATE TABLE IF NOT EXISTS rate_windows (
    bucket       TEXT PRIMARY KEY,
    window_start REAL NOT NULL,
    hits         INTEGER NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS call_leases (
    lease_id   TEXT PRIMARY KEY,
    bucket     TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS call_leases_bucket ON call_leases (bucket, expires_at);
-- AUTOINCREMENT: a number is never reused, even after the newest rows are cleaned up
CREATE TABLE IF NOT EXISTS revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    family_id  TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

# columns added after the first release of the schema: (table, column, type)
_ADDED_COLUMNS = (("families", "pending_since", "REAL"), ("refresh_tokens", "successor", "TEXT"))

MEMORY = ":memory:"


def create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)  # an existing file created under someone else's umask is tightened too


class SqliteGrantStore(GrantStore):
    def __init__(self, path: Path | str, fernet: Fernet) -> None:
        super().__init__(fernet)
        self.path = path
        if str(path) != MEMORY:
            create_private_file(Path(path))
        # one connection per store; the lock serialises this process's threads on it, and SQLite's
        # own locking serialises processes
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        if str(path) != MEMORY:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            for suffix in ("-wal", "-shm"):
                side = Path(f"{path}{suffix}")
                if side.exists():
                    os.chmod(side, 0o600)
        with self._lock:
            self._con.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                if column not in {row[1] for row in self._con.execute(f"PRAGMA table_info({table})")}:
                    self._con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @property
    def location(self) -> str:
        return str(self.path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement."""
        with self._lock, self._failures():
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                if self._con.in_transaction:  # also after a failed COMMIT (disk full): never leave it open
                    with suppress(sqlite3.Error):
                        self._con.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple) -> tuple | None:
        with self._lock, self._failures():
            return self._con.execute(sql, params).fetchone()

    @contextmanager
    def _failures(self) -> Iterator[None]:
        # disk full, read-only file or directory, I/O errors: an outage of the store (503), not a
        # bug; constraint violations stay what they are
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise StateStoreUnavailable(self.location, f"{exc} (is the disk full, or the file or its directory "
                                                       "read-only?)") from exc

    # ------------------------------------------------------------------ key-value
    def kv_get(self, collection, key, now):
        row = self._read("SELECT document FROM kv WHERE collection = ? AND key = ? "
                         "AND (expires_at IS NULL OR expires_at > ?)", (collection, key, now))
        return row[0] if row else None

    def kv_put(self, collection, key, document, expires_at):
        with self._write() as con:
            con.execute("INSERT INTO kv (collection, key, document, expires_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (collection, key) DO UPDATE SET document = excluded.document, "
                        "expires_at = excluded.expires_at", (collection, key, document, expires_at))

    def kv_delete(self, collection, key):
        with self._write() as con:
            return con.execute("DELETE FROM kv WHERE collection = ? AND key = ?", (collection, key)).rowcount > 0

    def kv_expire_unset(self, collection, expires_at):
        with self._write() as con:
            return con.execute("UPDATE kv SET expires_at = ? WHERE collection = ? AND expires_at IS NULL",
                               (expires_at, collection)).rowcount

    # ------------------------------------------------------------------ codes
    def put_code(self, code_hash, family_id, sealed, expires_at):
        with self._write() as con:
            con.execute("INSERT INTO codes (code_hash, family_id, sealed, expires_at) VALUES (?, ?, ?, ?)",
                        (code_hash, family_id, sealed, expires_at))

    def peek_code(self, code_hash, now):
        row = self._read("SELECT family_id, sealed FROM codes WHERE code_hash = ? AND expires_at > ?",
                         (code_hash, now))
        return (row[0], row[1]) if row else None

    def take_code(self, code_hash, now, spent_until):
        with self._write() as con:
            row = con.execute("DELETE FROM codes WHERE code_hash = ? RETURNING family_id, sealed, expires_at",
                              (code_hash,)).fetchone()
            if row is None or row[2] <= now:
                return None
            con.execute("INSERT OR REPLACE INTO spent_codes (code_hash, family_id, expires_at) VALUES (?, ?, ?)",
                        (code_hash, row[0], spent_until))
            return row[0], row[1]

    def spent_code_family(self, code_hash, now):
        row = self._read("SELECT family_id FROM spent_codes WHERE code_hash = ? AND expires_at > ?",
                         (code_hash, now))
        return row[0] if row else None

    # ------------------------------------------------------------------ families
    def issue_family(self, family_id, expires_at, refresh_hash, sealed, now):
        with self._write() as con:
            con.execute("INSERT INTO families (family_id, generation, revoked, rotated_at, expires_at) "
                        "VALUES (?, 1, 0, ?, ?) ON CONFLICT (family_id) DO UPDATE SET "
                        "generation = 1, "
                        "expires_at = max(families.expires_at, excluded.expires_at)",
                        (family_id, now, expires_at))
            if refresh_hash is not None:
                con.execute("INSERT INTO refresh_tokens (token_hash, family_id, generation, sealed, expires_at) "
                            "VALUES (?, ?, 1, ?, ?)", (refresh_hash, family_id, sealed, expires_at))

    def find_refresh(self, refresh_hash, now):
        row = self._read("SELECT r.family_id, r.generation, f.generation, f.revoked, f.rotated_at, r.expires_at, "
                         "r.sealed, r.successor, f.pending_since FROM refresh_tokens r "
                         "JOIN families f ON f.family_id = r.family_id "
                         "WHERE r.token_hash = ? AND r.expires_at > ?", (refresh_hash, now))
        if row is None:
            return None
        return row[0], row[1], row[2], bool(row[3]), *row[4:]

    def rotate_refresh(self, family_id, expected_generation, old_hash, refresh_hash, sealed, expires_at,
                       successor, pending, now):
        with self._write() as con:
            row = con.execute("UPDATE families SET generation = generation + 1, rotated_at = ?, "
                              "pending_since = ?, expires_at = max(expires_at, ?) "
                              "WHERE family_id = ? AND generation = ? AND revoked = 0 RETURNING generation",
                              (now, now if pending else None, expires_at, family_id,
                               expected_generation)).fetchone()
            if row is None:
                return None
            con.execute("INSERT INTO refresh_tokens (token_hash, family_id, generation, sealed, expires_at) "
                        "VALUES (?, ?, ?, ?, ?)", (refresh_hash, family_id, row[0], sealed, expires_at))
            con.execute("UPDATE refresh_tokens SET successor = ? WHERE token_hash = ?", (successor, old_hash))
            return row[0]

    def finish_rotation(self, family_id, generation, old_hash, successor):
        with self._write() as con:
            row = con.execute("UPDATE families SET pending_since = NULL WHERE family_id = ? AND generation = ? "
                              "AND revoked = 0 RETURNING 1", (family_id, generation)).fetchone()
            if row is None:
                return False
            con.execute("UPDATE refresh_tokens SET successor = ? WHERE token_hash = ?", (successor, old_hash))
            return True

    def take_over_rotation(self, family_id, generation, pending_since, now):
        with self._write() as con:
            return con.execute("UPDATE families SET pending_since = ? WHERE family_id = ? AND generation = ? "
                               "AND pending_since = ? AND revoked = 0",
                               (now, family_id, generation, pending_since)).rowcount == 1

    def undo_rotation(self, family_id, generation, refresh_hash, old_hash):
        with self._write() as con:
            row = con.execute("UPDATE families SET generation = generation - 1, pending_since = NULL "
                              "WHERE family_id = ? AND generation = ? AND revoked = 0 RETURNING 1",
                              (family_id, generation)).fetchone()
            if row is None:
                return False
            con.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (refresh_hash,))
            con.execute("UPDATE refresh_tokens SET successor = NULL WHERE token_hash = ?", (old_hash,))
            return True

    def revoke_family(self, family_id, until, now):
        with self._write() as con:  # one writer at a time: log numbers are in commit order
            con.execute("INSERT INTO families (family_id, generation, revoked, rotated_at, expires_at) "
                        "VALUES (?, 0, 1, ?, ?) ON CONFLICT (family_id) DO UPDATE SET revoked = 1, "
                        "expires_at = max(families.expires_at, excluded.expires_at)", (family_id, now, until))
            con.execute("INSERT INTO revocations (family_id, expires_at) VALUES (?, ?)", (family_id, until))

    def revocations_since(self, after, limit):
        with self._lock, self._failures():
            if after is None:
                row = self._con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'").fetchone()
                return (int(row[0]) if row else 0), []
            rows = self._con.execute("SELECT seq, family_id FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (after, limit + 1)).fetchall()
        if len(rows) > limit:
            return self.revocations_since(None, limit)[0], None
        return (rows[-1][0] if rows else after), [r[1] for r in rows]

    def is_family_revoked(self, family_id, now):
        row = self._read("SELECT revoked FROM families WHERE family_id = ?", (family_id,))
        return bool(row and row[0])

    # ------------------------------------------------------------------ rate limits
    def count_hit(self, bucket, window_seconds, now):
        with self._write() as con:
            row = con.execute(
                "INSERT INTO rate_windows (bucket, window_start, hits, expires_at) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET "
                "hits = CASE WHEN rate_windows.window_start + ? <= ? THEN 1 ELSE rate_windows.hits + 1 END, "
                "window_start = CASE WHEN rate_windows.window_start + ? <= ? THEN ? "
                "ELSE rate_windows.window_start END, "
                "expires_at = excluded.expires_at RETURNING hits, window_start",
                (bucket, now, now + window_seconds, window_seconds, now, window_seconds, now, now)).fetchone()
        return int(row[0]), float(row[1])

    def acquire_lease(self, bucket, lease_id, limit, expires_at, now):
        with self._write() as con:  # BEGIN IMMEDIATE: the count and the insert see no other writer
            con.execute("DELETE FROM call_leases WHERE bucket = ? AND expires_at <= ?", (bucket, now))
            (held,) = con.execute("SELECT count(*) FROM call_leases WHERE bucket = ?", (bucket,)).fetchone()
            if held >= limit:
                return False
            con.execute("INSERT INTO call_leases (lease_id, bucket, expires_at) VALUES (?, ?, ?)",
                        (lease_id, bucket, expires_at))
            return True

    def release_lease(self, lease_id):
        with self._write() as con:
            con.execute("DELETE FROM call_leases WHERE lease_id = ?", (lease_id,))

    # ------------------------------------------------------------------ upkeep
    def delete_expired(self, now):
        removed = 0
        with self._write() as con:
            removed += con.execute("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                   (now,)).rowcount
            for table in ("codes", "spent_codes", "refresh_tokens", "families", "rate_windows", "call_leases",
                          "revocations"):
                removed += con.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,)).rowcount
        return removed

    def close(self):
        with self._lock:
            self._con.close()
