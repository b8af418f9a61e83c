"""The caller's identity inside PostgreSQL, in a form no query can forge.

Mode "signed" (default): for every call sqlgate sets one transaction-local setting,
`sqlgate.identity` = <hex HMAC-SHA256> "." <JSON body>, signed with `engine.identity_key`. The
SECURITY DEFINER functions of templates/postgres/identity.sql (`sqlgate.username()`,
`sqlgate.user_id()`, `sqlgate.user_email()`, `sqlgate.user_provider()`,
`sqlgate.user_display_name()`, `sqlgate.claims()`) verify the signature with a copy of the key in
a table only their owner can read, check the backend pid and the expiry, and return NULL for
anything sqlgate did not sign. A query can still *set* the setting (if it got past the guard), but
it cannot sign it, so it cannot make anyone else's rows visible.

Mode "settings" (explicit opt-in): the old plain settings `sqlgate.username` … — any query that can
call set_config() can overwrite them, so they must not protect rows.

The upstream (external) token is never put into a setting in either mode: endpoint SQL written by
the project author gets it as a bound parameter (see `endpoint_sql`), the query tool never.

Install: python -m sqlgate.engine.postgres_identity install --admin-dsn postgresql://admin@db/shop \\
         [--project DIR] (key from engine.identity_key / SQLGATE_DB_IDENTITY_KEY)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
import time
from importlib import resources
from typing import Any

from sqlgate.context import CallContext, UserContext
from sqlgate.errors import ConfigError

MIN_KEY_LENGTH = 32
TOKEN_PARAM = "_sqlgate_external_token"
# endpoint SQL names the caller with these functions on both engines
_USER_FUNCTIONS = re.compile(r"\bget_(username|user_id|user_email|user_provider|user_display_name|"
                             r"user_external_token)\(\s*\)", re.IGNORECASE)
_SETTING_OF = {"username": "username", "user_id": "user_id", "user_email": "email", "user_provider": "provider",
               "user_display_name": "display_name"}


def identity_sql() -> str:
    """The setup SQL (schema sqlgate, key table, verifying functions); idempotent."""
    return (resources.files("sqlgate") / "templates" / "postgres" / "identity.sql").read_text(encoding="utf-8")


def key_pads(key: str) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys (RFC 2104), as the SQL side stores them."""
    k = key.encode("utf-8")
    if len(k) > 64:
        k = hashlib.sha256(k).digest()
    k = k.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)


def check_key(key: str | None) -> str:
    if not key or len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"engine.identity_key (or SQLGATE_DB_IDENTITY_KEY) must be at least {MIN_KEY_LENGTH} "
                          "characters: it signs the caller's identity for the database", where="engine.identity_key")
    return key


class SignedIdentity:
    mode = "signed"

    def __init__(self, key: str, clock_offset: float = 0.0):
        self._key = check_key(key).encode("utf-8")
        # server clock minus ours: the expiry is checked against the database server's clock
        self.clock_offset = clock_offset

    def sign(self, body: dict[str, Any]) -> str:
        # ASCII-only JSON: the bytes the server hashes are the bytes we hashed, whatever its encoding
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=True, default=str)
        return hmac.new(self._key, text.encode("ascii"), hashlib.sha256).hexdigest() + "." + text

    def settings(self, call: CallContext, pid: int, ttl: float) -> dict[str, str]:
        u = call.user
        body = {"u": u.username, "i": u.user_id, "e": u.email, "p": u.provider, "d": u.display_name,
                "c": dict(u.claims), "pid": pid, "exp": round(time.time() + self.clock_offset + ttl, 3)}
        return {"sqlgate.identity": self.sign(body)}

    @staticmethod
    def function_sql(name: str) -> str:
        # a scalar subquery: verified once per statement, not once per row
        return f"coalesce((SELECT sqlgate.{name}()), '')"


class SettingsIdentity:
    """Opt-in legacy mode: plain transaction-local settings a query can overwrite."""

    mode = "settings"
    clock_offset = 0.0

    def settings(self, call: CallContext, pid: int, ttl: float) -> dict[str, str]:
        u = call.user
        return {"sqlgate.username": u.username or "", "sqlgate.user_id": u.user_id or "",
                "sqlgate.email": u.email or "", "sqlgate.provider": u.provider or "",
                "sqlgate.display_name": u.display_name or "",
                "sqlgate.claims": json.dumps(dict(u.claims), default=str)}

    @staticmethod
    def function_sql(name: str) -> str:
        return f"coalesce(current_setting('sqlgate.{_SETTING_OF[name]}', true), '')"


Identity = SignedIdentity | SettingsIdentity


def endpoint_sql(pyformat_sql: str, identity: Identity) -> tuple[str, bool]:
    """Endpoint SQL (already in psycopg's %(name)s form) with get_username() & co. mapped to the
    database's identity functions; get_user_external_token() becomes a bound parameter. Returns
    (sql, whether it needs the token parameter)."""
    uses_token = False

    def one(match: re.Match[str]) -> str:
        nonlocal uses_token
        name = match.group(1).lower()
        if name == "user_external_token":
            uses_token = True
            return f"coalesce(%({TOKEN_PARAM})s::text, '')"
        return identity.function_sql(name)

    return _USER_FUNCTIONS.sub(one, pyformat_sql), uses_token


def installed(conn) -> bool:
    """Whether the sqlgate schema's verifying functions exist (psycopg sync connection)."""
    row = conn.execute("SELECT to_regprocedure('sqlgate.username()') IS NOT NULL "
                       "AND to_regprocedure('sqlgate._identity()') IS NOT NULL").fetchone()
    return bool(row and row[0])


def verify(conn, identity: SignedIdentity) -> None:
    """Prove on a service-role connection that a signed identity verifies (same key, same clock)
    and that an unsigned one does not. Measures the server's clock offset first."""
    server_now = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
    identity.clock_offset = server_now - time.time()
    pid = conn.info.backend_pid
    probe = CallContext(user=UserContext(username="sqlgate-start-up-probe"))
    try:
        with conn.transaction(force_rollback=True):
            value = identity.settings(probe, pid, 30)["sqlgate.identity"]
            conn.execute("SELECT set_config('sqlgate.identity', %s, true)", (value,))
            signed = conn.execute("SELECT sqlgate.username()").fetchone()[0]
            conn.execute("SELECT set_config('sqlgate.identity', %s, true)", ("0" * 64 + value[64:],))
            forged = conn.execute("SELECT sqlgate.username()").fetchone()[0]
    except Exception as exc:  # psycopg.Error: e.g. no EXECUTE on the functions
        raise ConfigError(f"the sqlgate identity functions do not work for the service role: {exc}",
                          where="engine.identity") from None
    if forged is not None:
        raise ConfigError("sqlgate.username() accepted an unsigned identity: the installed functions are not "
                          "sqlgate's; re-run the install", where="engine.identity")
    if signed != "sqlgate-start-up-probe":
        raise ConfigError("engine.identity_key does not match the key installed in the database (sqlgate.username() "
                          "rejected sqlgate's own signature); re-run `python -m sqlgate.engine.postgres_identity "
                          "install` with this key", where="engine.identity_key")


def install(admin_dsn: str, key: str) -> None:
    """Create/replace the sqlgate schema's objects and store the key (as an administrator)."""
    import psycopg

    ikey, okey = key_pads(check_key(key))
    with psycopg.connect(admin_dsn, connect_timeout=10) as conn, conn.transaction():
        conn.execute(identity_sql())  # trusted file, several statements: simple protocol on purpose
        conn.execute("INSERT INTO sqlgate.identity_key (id, ikey, okey) VALUES (1, %s, %s) "
                     "ON CONFLICT (id) DO UPDATE SET ikey = excluded.ikey, okey = excluded.okey", (ikey, okey))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sqlgate pg-identity",
                                 description="Install sqlgate's signed-identity functions into a PostgreSQL database.")
    sub = ap.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="create schema sqlgate, its functions and the key (needs an admin DSN)")
    inst.add_argument("--admin-dsn", required=True, help="connection string of a role that may create the schema "
                      "(not sqlgate's service role: the owner of these functions can read the key)")
    inst.add_argument("--project", "-p", default=".", help="project directory (for engine.identity_key)")
    inst.add_argument("--profile", default=None)
    sub.add_parser("sql", help="print the setup SQL to review it (install runs it and also stores the key)")
    args = ap.parse_args(argv)
    if args.command == "sql":
        sys.stdout.write(identity_sql())
        return 0
    from pathlib import Path

    from sqlgate.config.loader import load_project

    try:
        settings = load_project(Path(args.project), profile=args.profile).settings
        secret = settings.engine.identity_key
        install(args.admin_dsn, secret.get_secret_value() if secret else "")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("installed: schema sqlgate, sqlgate.username() & co., key stored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
