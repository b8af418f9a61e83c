"""The grant store on PostgreSQL (psycopg 3): several replicas share one database.

Each decision is one transaction at READ COMMITTED, which is enough because the deciding
statement re-checks its own condition on the row it locks:
- a code is taken with `DELETE … RETURNING`: a concurrent second DELETE of the same row waits
  for the first to commit, then finds nothing;
- rotation is `UPDATE … WHERE generation = %s RETURNING`: a concurrent second UPDATE waits,
  re-evaluates the WHERE against the committed row, and matches nothing.
The revocation log is numbered from a one-row counter that each revocation increments in its own
transaction: the row lock orders revocations, so the numbers are handed out in commit order (a
sequence would not be: a number taken first may commit last, and a reader could skip it).
Tables are prefixed `sqlgate_oauth_` so the database may be shared with other applications;
they are created at start-up under an advisory lock (replicas may start together).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from cryptography.fernet import Fernet
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from sqlgate.auth.grants.base import GrantStore, StateStoreUnavailable

P = "sqlgate_oauth_"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {P}kv (
    collection text NOT NULL,
    key        text NOT NULL,
    document   text NOT NULL,
    expires_at double precision,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS {P}kv_expires ON {P}kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {P}codes (
    code_hash  text PRIMARY KEY,
    family_id  text NOT NULL,
    sealed     text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {P}spent_codes (
    code_hash  text PRIMARY KEY,
    family_id  text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {P}families (
    family_id  text PRIMARY KEY,
    generation integer NOT NULL,
    revoked    boolean NOT NULL DEFAULT false,
    rotated_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {P}refresh_tokens (
    token_hash text PRIMARY KEY,
    family_id  text NOT NULL,
    generation integer NOT NULL,
    sealed     text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {P}refresh_tokens_family ON {P}refresh_tokens (family_id);
CREATE TABLE IF NOT EXISTS {P}rate_windows (
    bucket       text PRIMARY KEY,
    window_start double precision NOT NULL,
    hits         integer NOT NULL,
    expires_at   double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {P}call_leases (
    lease_id   text PRIMARY KEY,
    bucket     text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {P}call_leases_bucket ON {P}call_leases (bucket, expires_at);
ALTER TABLE {P}families ADD COLUMN IF NOT EXISTS pending_since double precision;
ALTER TABLE {P}refresh_tokens ADD COLUMN IF NOT EXISTS successor text;
CREATE TABLE IF NOT EXISTS {P}revocations (
    seq        bigint PRIMARY KEY,
    family_id  text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {P}revocation_counter (
    id  smallint PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO {P}revocation_counter (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""


def redacted(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    params.pop("password", None)
    return make_conninfo(**params)


class PostgresGrantStore(GrantStore):
    def __init__(self, dsn: str, fernet: Fernet, *, max_connections: int = 10, connect_timeout: float = 10) -> None:
        super().__init__(fernet)
        self._where = redacted(dsn)
        # one direct connection first: its error names the real cause (host, auth, database)
        with psycopg.connect(dsn, connect_timeout=int(connect_timeout)) as con:
            con.execute("SELECT pg_advisory_xact_lock(hashtext('sqlgate_oauth_schema'))")
            con.execute(_SCHEMA)
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max_connections, timeout=connect_timeout,
                                    kwargs={"connect_timeout": int(connect_timeout)}, open=False)
        self._pool.open(wait=True, timeout=connect_timeout)

    @property
    def location(self) -> str:
        return self._where

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        """One transaction, committed on exit. A database that is down, full or read-only is an
        outage of the store (503), not a bug; constraint violations stay what they are."""
        try:
            with self._pool.connection() as con:
                yield con
        except psycopg.IntegrityError:
            raise
        except (psycopg.OperationalError, psycopg.errors.DiskFull, psycopg.errors.ReadOnlySqlTransaction,
                PoolTimeout) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StateStoreUnavailable(self._where, reason) from exc

    def _one(self, sql: str, params: tuple) -> tuple | None:
        with self._tx() as con:
            return con.execute(sql, params).fetchone()

    def _count(self, sql: str, params: tuple) -> int:
        with self._tx() as con:
            return con.execute(sql, params).rowcount

    # ------------------------------------------------------------------ key-value
    def kv_get(self, collection, key, now):
        row = self._one(f"SELECT document FROM {P}kv WHERE collection = %s AND key = %s "
                        "AND (expires_at IS NULL OR expires_at > %s)", (collection, key, now))
        return row[0] if row else None

    def kv_put(self, collection, key, document, expires_at):
        self._count(f"INSERT INTO {P}kv (collection, key, document, expires_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (collection, key) DO UPDATE SET document = excluded.document, "
                    "expires_at = excluded.expires_at", (collection, key, document, expires_at))

    def kv_delete(self, collection, key):
        return self._count(f"DELETE FROM {P}kv WHERE collection = %s AND key = %s", (collection, key)) > 0

    def kv_expire_unset(self, collection, expires_at):
        return self._count(f"UPDATE {P}kv SET expires_at = %s WHERE collection = %s AND expires_at IS NULL",
                           (expires_at, collection))

    # ------------------------------------------------------------------ codes
    def put_code(self, code_hash, family_id, sealed, expires_at):
        self._count(f"INSERT INTO {P}codes (code_hash, family_id, sealed, expires_at) VALUES (%s, %s, %s, %s)",
                    (code_hash, family_id, sealed, expires_at))

    def peek_code(self, code_hash, now):
        row = self._one(f"SELECT family_id, sealed FROM {P}codes WHERE code_hash = %s AND expires_at > %s",
                        (code_hash, now))
        return (row[0], row[1]) if row else None

    def take_code(self, code_hash, now, spent_until):
        with self._tx() as con:
            row = con.execute(f"DELETE FROM {P}codes WHERE code_hash = %s RETURNING family_id, sealed, expires_at",
                              (code_hash,)).fetchone()
            if row is None or row[2] <= now:
                return None
            con.execute(f"INSERT INTO {P}spent_codes (code_hash, family_id, expires_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT (code_hash) DO UPDATE SET family_id = excluded.family_id, "
                        "expires_at = excluded.expires_at", (code_hash, row[0], spent_until))
            return row[0], row[1]

    def spent_code_family(self, code_hash, now):
        row = self._one(f"SELECT family_id FROM {P}spent_codes WHERE code_hash = %s AND expires_at > %s",
                        (code_hash, now))
        return row[0] if row else None

    # ------------------------------------------------------------------ families
    def issue_family(self, family_id, expires_at, refresh_hash, sealed, now):
        with self._tx() as con:
            con.execute(f"INSERT INTO {P}families (family_id, generation, revoked, rotated_at, "
                        "expires_at) VALUES (%s, 1, false, %s, %s) ON CONFLICT (family_id) DO UPDATE SET "
                        f"generation = 1, "
                        f"expires_at = greatest({P}families.expires_at, excluded.expires_at)",
                        (family_id, now, expires_at))
            if refresh_hash is not None:
                con.execute(f"INSERT INTO {P}refresh_tokens (token_hash, family_id, generation, sealed, expires_at) "
                            "VALUES (%s, %s, 1, %s, %s)", (refresh_hash, family_id, sealed, expires_at))

    def find_refresh(self, refresh_hash, now):
        row = self._one(f"SELECT r.family_id, r.generation, f.generation, f.revoked, f.rotated_at, r.expires_at, "
                        f"r.sealed, r.successor, f.pending_since FROM {P}refresh_tokens r "
                        f"JOIN {P}families f ON f.family_id = r.family_id "
                        "WHERE r.token_hash = %s AND r.expires_at > %s", (refresh_hash, now))
        return tuple(row) if row else None

    def rotate_refresh(self, family_id, expected_generation, old_hash, refresh_hash, sealed, expires_at,
                       successor, pending, now):
        with self._tx() as con:
            row = con.execute(f"UPDATE {P}families SET generation = generation + 1, rotated_at = %s, "
                              "pending_since = %s, expires_at = greatest(expires_at, %s) "
                              "WHERE family_id = %s AND generation = %s AND NOT revoked RETURNING generation",
                              (now, now if pending else None, expires_at, family_id,
                               expected_generation)).fetchone()
            if row is None:
                return None
            con.execute(f"INSERT INTO {P}refresh_tokens (token_hash, family_id, generation, sealed, expires_at) "
                        "VALUES (%s, %s, %s, %s, %s)", (refresh_hash, family_id, row[0], sealed, expires_at))
            con.execute(f"UPDATE {P}refresh_tokens SET successor = %s WHERE token_hash = %s", (successor, old_hash))
            return row[0]

    def finish_rotation(self, family_id, generation, old_hash, successor):
        with self._tx() as con:
            row = con.execute(f"UPDATE {P}families SET pending_since = NULL WHERE family_id = %s "
                              "AND generation = %s AND NOT revoked RETURNING 1", (family_id, generation)).fetchone()
            if row is None:
                return False
            con.execute(f"UPDATE {P}refresh_tokens SET successor = %s WHERE token_hash = %s", (successor, old_hash))
            return True

    def take_over_rotation(self, family_id, generation, pending_since, now):
        return self._count(f"UPDATE {P}families SET pending_since = %s WHERE family_id = %s AND generation = %s "
                           "AND pending_since = %s AND NOT revoked",
                           (now, family_id, generation, pending_since)) == 1

    def undo_rotation(self, family_id, generation, refresh_hash, old_hash):
        with self._tx() as con:
            row = con.execute(f"UPDATE {P}families SET generation = generation - 1, pending_since = NULL "
                              "WHERE family_id = %s AND generation = %s AND NOT revoked RETURNING 1",
                              (family_id, generation)).fetchone()
            if row is None:
                return False
            con.execute(f"DELETE FROM {P}refresh_tokens WHERE token_hash = %s", (refresh_hash,))
            con.execute(f"UPDATE {P}refresh_tokens SET successor = NULL WHERE token_hash = %s", (old_hash,))
            return True

    def revoke_family(self, family_id, until, now):
        with self._tx() as con:
            con.execute(f"INSERT INTO {P}families (family_id, generation, revoked, rotated_at, expires_at) "
                        "VALUES (%s, 0, true, %s, %s) ON CONFLICT (family_id) DO UPDATE SET revoked = true, "
                        f"expires_at = greatest({P}families.expires_at, excluded.expires_at)",
                        (family_id, now, until))
            # held until commit: the next revocation's number waits for this one to be visible
            (seq,) = con.execute(f"UPDATE {P}revocation_counter SET seq = seq + 1 WHERE id = 1 "
                                 "RETURNING seq").fetchone()
            con.execute(f"INSERT INTO {P}revocations (seq, family_id, expires_at) VALUES (%s, %s, %s)",
                        (seq, family_id, until))

    def revocations_since(self, after, limit):
        if after is None:
            return int(self._one(f"SELECT seq FROM {P}revocation_counter WHERE id = 1", ())[0]), []
        with self._tx() as con:
            rows = con.execute(f"SELECT seq, family_id FROM {P}revocations WHERE seq > %s ORDER BY seq LIMIT %s",
                               (after, limit + 1)).fetchall()
        if len(rows) > limit:
            return self.revocations_since(None, limit)[0], None
        return (int(rows[-1][0]) if rows else after), [r[1] for r in rows]

    def is_family_revoked(self, family_id, now):
        row = self._one(f"SELECT revoked FROM {P}families WHERE family_id = %s", (family_id,))
        return bool(row and row[0])

    # ------------------------------------------------------------------ rate limits
    def count_hit(self, bucket, window_seconds, now):
        # ON CONFLICT DO UPDATE locks the row: concurrent hits of one bucket are serialised
        row = self._one(
            f"INSERT INTO {P}rate_windows AS w (bucket, window_start, hits, expires_at) VALUES (%s, %s, 1, %s) "
            "ON CONFLICT (bucket) DO UPDATE SET "
            "hits = CASE WHEN w.window_start + %s <= %s THEN 1 ELSE w.hits + 1 END, "
            "window_start = CASE WHEN w.window_start + %s <= %s THEN %s ELSE w.window_start END, "
            "expires_at = excluded.expires_at RETURNING hits, window_start",
            (bucket, now, now + window_seconds, window_seconds, now, window_seconds, now, now))
        return int(row[0]), float(row[1])

    def acquire_lease(self, bucket, lease_id, limit, expires_at, now):
        with self._tx() as con:
            # count-then-insert is a race under READ COMMITTED: one transaction-scoped advisory lock
            # per bucket orders the replicas taking a slot of the same bucket
            con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("sqlgate_lease:" + bucket,))
            con.execute(f"DELETE FROM {P}call_leases WHERE bucket = %s AND expires_at <= %s", (bucket, now))
            (held,) = con.execute(f"SELECT count(*) FROM {P}call_leases WHERE bucket = %s", (bucket,)).fetchone()
            if held >= limit:
                return False
            con.execute(f"INSERT INTO {P}call_leases (lease_id, bucket, expires_at) VALUES (%s, %s, %s)",
                        (lease_id, bucket, expires_at))
            return True

    def release_lease(self, lease_id):
        with self._tx() as con:
            con.execute(f"DELETE FROM {P}call_leases WHERE lease_id = %s", (lease_id,))

    # ------------------------------------------------------------------ upkeep
    def delete_expired(self, now):
        removed = 0
        with self._tx() as con:
            removed += con.execute(f"DELETE FROM {P}kv WHERE expires_at IS NOT NULL AND expires_at <= %s",
                                   (now,)).rowcount
            for table in ("codes", "spent_codes", "refresh_tokens", "families", "rate_windows", "call_leases",
                          "revocations"):
                removed += con.execute(f"DELETE FROM {P}{table} WHERE expires_at <= %s", (now,)).rowcount
        return removed

    def close(self):
        self._pool.close()
