"""Grant store backends for tests: a SQLite file, or a fresh PostgreSQL database on 127.0.0.1:5432.

Also runnable as a racer process: `python -m tests.grant_backends KIND LOCATION KEY START N`
waits until the wall clock reaches START, tries to consume codes code-0 … code-(N-1) and
prints the ones it won (two such processes race on every code).
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from sqlgate.auth.grants.base import GrantStore
from sqlgate.auth.store import fernet_for

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
KEY = "grant-store-test-key"


def postgres_available() -> bool:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own (unique name), dropped afterwards; yields its DSN."""
    name = f"sqlgate_grants_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def open_store(kind: str, location: str, key: str = KEY) -> GrantStore:
    if kind == "sqlite":
        from sqlgate.auth.grants.sqlite import SqliteGrantStore

        return SqliteGrantStore(location, fernet_for(key))
    from sqlgate.auth.grants.postgres import PostgresGrantStore

    return PostgresGrantStore(location, fernet_for(key), max_connections=2)


def _race(kind: str, location: str, key: str, start: float, n: int) -> None:
    store = open_store(kind, location, key)
    time.sleep(max(0.0, start - time.time()))
    for i in range(n):
        now = time.time()
        if store.consume_code(f"code-{i}", now, now + 600) is not None:
            print(f"code-{i}", flush=True)
    store.close()


if __name__ == "__main__":
    kind, location, key, start, n = sys.argv[1:6]
    _race(kind, location, key, float(start), int(n))
