"""Opening the OAuth state: the grant store backend from `auth.persistence`, its key, its errors.

- `sqlite` (default): one file, created 0600 in a 0700 directory; several processes on one
  machine may share it. `postgres`: a DSN; several replicas share the database. `memory`: the
  SQLite backend on `:memory:` (tests, throw-away servers).
- Values are Fernet-encrypted: the grant store seals its own records, and FastMCP's key-value
  state goes through FernetEncryptionWrapper. No token, secret or e-mail address is readable in
  the file or the tables; keys are ids and hashes, not secrets.
- The key comes from configuration. For SQLite without one, a key is generated once into a 0600
  key file beside the database (and the log says so). PostgreSQL needs a configured key: replicas
  must share it (it also derives the token-signing key).
- A store that cannot be opened is a start-up error naming the path or DSN and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from key_value.aio.protocols import AsyncKeyValue
from key_value.aio.wrappers.encryption import FernetEncryptionWrapper

from sqlgate.auth.grants.base import GrantStore
from sqlgate.auth.grants.kv import GrantKeyValue
from sqlgate.auth.grants.sqlite import MEMORY, SqliteGrantStore, create_private_file
from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.auth.store")


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
    create_private_file(key_file)
    key = Fernet.generate_key().decode("ascii")
    key_file.write_text(key + "\n", encoding="ascii")
    log.warning("no persistence.encryption_key configured: generated one into %s (mode 0600); keep it "
                "with the database, or set auth.persistence.encryption_key", key_file)
    return key


class OAuthState:
    """The grant store, FastMCP's encrypted key-value view of it, and the secret they derive from."""

    def __init__(self, grants: GrantStore, secret: str):
        self.grants = grants
        self.secret = secret  # also the root of the token-signing key: restarts keep tokens valid
        # undecryptable values (e.g. after a key change) read as missing: clients simply log in again
        self.kv: AsyncKeyValue = FernetEncryptionWrapper(GrantKeyValue(grants), fernet=fernet_for(secret),
                                                         raise_on_decryption_error=False)

    def cleanup(self) -> int:
        return self.grants.delete_expired(time.time())

    def close(self) -> None:
        self.grants.close()


def open_state(persistence: Any) -> OAuthState:
    """Build the OAuth state store from `auth.persistence`."""
    if persistence.type == "memory":
        secret = persistence.encryption_key or Fernet.generate_key().decode("ascii")
        return OAuthState(SqliteGrantStore(MEMORY, fernet_for(secret)), secret)
    if persistence.type == "postgres":
        return OAuthState(_open_postgres(persistence), persistence.encryption_key)
    path = Path(persistence.path).expanduser() if persistence.path else Path.home() / ".sqlgate" / "oauth.db"
    try:
        secret = persistence.encryption_key or load_or_create_key(path.with_name(path.name + ".key"))
        return OAuthState(SqliteGrantStore(path, fernet_for(secret)), secret)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the OAuth state database {path}: {exc}. Make its directory writable by "
                          "this user, or point auth.persistence.path (SQLGATE_AUTH_STATE_PATH) elsewhere",
                          where="auth.persistence.path") from None


def _open_postgres(persistence: Any) -> GrantStore:
    import psycopg
    from psycopg_pool import PoolTimeout

    from sqlgate.auth.grants.postgres import PostgresGrantStore, redacted

    try:
        return PostgresGrantStore(persistence.dsn, fernet_for(persistence.encryption_key),
                                  connect_timeout=persistence.connect_timeout_seconds)
    except (psycopg.Error, PoolTimeout) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the OAuth state database {redacted(persistence.dsn)}: {reason}. Check that "
                          "PostgreSQL is reachable and the database exists and this role may create tables in it, "
                          "or fix auth.persistence.dsn (SQLGATE_AUTH_PERSISTENCE_DSN)",
                          where="auth.persistence.dsn") from None
