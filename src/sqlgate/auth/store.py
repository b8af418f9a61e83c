"""OAuth state in SQLite: clients, grants, refresh and upstream tokens survive restarts.

- The database file is created 0600 (its directory 0700) before SQLite touches it.
- Values are Fernet-encrypted (FastMCP's FernetEncryptionWrapper around this store): no token,
  secret or e-mail address is readable in the file. Keys are ids and hashes, not secrets.
- The key comes from configuration; without one, a key is generated once into a 0600 key file
  beside the database (and the log says so), so a restart can still read what was written.
- Expired rows are deleted periodically; reads never return an expired entry.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from cryptography.fernet import Fernet
from key_value.aio._utils.managed_entry import ManagedEntry
from key_value.aio.errors import DeserializationError
from key_value.aio.protocols import AsyncKeyValue
from key_value.aio.stores.base import BaseStore
from key_value.aio.stores.memory import MemoryStore
from key_value.aio.wrappers.encryption import FernetEncryptionWrapper

from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.auth.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    document   TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
"""


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)  # an existing file created by someone else's umask is tightened too


class SqliteStore(BaseStore):
    """A py-key-value store on one SQLite file (stdlib sqlite3, calls run off the event loop)."""

    def __init__(self, path: Path) -> None:
        super().__init__(stable_api=True)
        self.path = path
        _create_private_file(path)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        self._con.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, params).fetchall()

    async def _get_managed_entry(self, *, key: str, collection: str) -> ManagedEntry | None:
        rows = await anyio.to_thread.run_sync(
            self._run, "SELECT document FROM kv WHERE collection = ? AND key = ? "
                       "AND (expires_at IS NULL OR expires_at > ?)", (collection, key, time.time()))
        if not rows:
            return None
        try:
            return self._serialization_adapter.load_json(rows[0][0])
        except DeserializationError:
            return None

    async def _put_managed_entry(self, *, key: str, collection: str, managed_entry: ManagedEntry) -> None:
        document = self._serialization_adapter.dump_json(entry=managed_entry, key=key, collection=collection)
        expires = managed_entry.expires_at.timestamp() if managed_entry.expires_at else None
        await anyio.to_thread.run_sync(
            self._run, "INSERT INTO kv (collection, key, document, expires_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (collection, key) DO UPDATE SET document = excluded.document, "
                       "expires_at = excluded.expires_at", (collection, key, document, expires))

    async def _delete_managed_entry(self, *, key: str, collection: str) -> bool:
        def delete() -> bool:
            with self._lock:
                return self._con.execute("DELETE FROM kv WHERE collection = ? AND key = ?",
                                         (collection, key)).rowcount > 0

        return await anyio.to_thread.run_sync(delete)

    def delete_expired(self) -> int:
        with self._lock:
            return self._con.execute("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                     (time.time(),)).rowcount

    def close(self) -> None:
        with self._lock:
            self._con.close()


def fernet_for(secret: str) -> Fernet:
    """A Fernet from a Fernet key, or from any passphrase (derived with PBKDF2)."""
    try:
        return Fernet(secret.encode() if isinstance(secret, str) else secret)
    except (ValueError, TypeError):
        derived = hashlib.pbkdf2_hmac("sha256", secret.encode(), b"sqlgate-oauth-store", 200_000)
        return Fernet(base64.urlsafe_b64encode(derived))


def load_or_create_key(key_file: Path) -> str:
    if key_file.exists():
        mode = key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"key file {key_file} is readable by others (mode {mode:o}); chmod 600 it")
        return key_file.read_text(encoding="ascii").strip()
    _create_private_file(key_file)
    key = Fernet.generate_key().decode("ascii")
    key_file.write_text(key + "\n", encoding="ascii")
    log.warning("no persistence.encryption_key configured: generated one into %s (mode 0600); keep it "
                "with the database, or set auth.persistence.encryption_key", key_file)
    return key


class OAuthState:
    """The encrypted store handed to the OAuth proxy, plus what it needs to run."""

    def __init__(self, kv: AsyncKeyValue, secret: str, sqlite: SqliteStore | None):
        self.kv = kv
        self.secret = secret  # also the root of the token-signing key: restarts keep tokens valid
        self.sqlite = sqlite

    def cleanup(self) -> int:
        return self.sqlite.delete_expired() if self.sqlite is not None else 0

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()


def open_state(persistence: Any) -> OAuthState:
    """Build the OAuth state store from `auth.persistence`."""
    if persistence.type == "memory":
        secret = persistence.encryption_key or Fernet.generate_key().decode("ascii")
        kv: AsyncKeyValue = MemoryStore()
        return OAuthState(FernetEncryptionWrapper(kv, fernet=fernet_for(secret), raise_on_decryption_error=False),
                          secret, None)
    path = Path(persistence.path).expanduser() if persistence.path else Path.home() / ".sqlgate" / "oauth.db"
    secret = persistence.encryption_key or load_or_create_key(path.with_name(path.name + ".key"))
    try:
        sqlite = SqliteStore(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the OAuth state database {path}: {exc}",
                          where="auth.persistence.path") from None
    # undecryptable rows (e.g. after a key change) read as missing: clients simply log in again
    wrapped = FernetEncryptionWrapper(sqlite, fernet=fernet_for(secret), raise_on_decryption_error=False)
    return OAuthState(wrapped, secret, sqlite)
