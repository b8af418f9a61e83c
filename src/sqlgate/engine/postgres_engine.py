"""PostgreSQL as a data source.

Every call runs in its own transaction on a pooled connection:
  BEGIN READ ONLY (where the profile is read-only)
  set_config('sqlgate.username' / '.user_id' / '.email' / '.provider' / '.claims', …, true)
  SET LOCAL ROLE <mapped role>             (role_mode: set_role)
  SET LOCAL statement_timeout = <limit>
  <the statement>
  ROLLBACK
Settings and role are transaction-local, so nothing of one caller survives into the next call on
that connection; row-level-security policies can use current_setting('sqlgate.username').
Statements go through the extended protocol (always with a parameter mapping), which executes
exactly one statement — `COMMIT; DELETE …` cannot ride along even past the checker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import AsyncConnectionPool

from sqlgate.context import CallContext
from sqlgate.endpoints.sqlparams import to_pyformat
from sqlgate.engine.base import Engine, Limits, QueryResult, shape_rows
from sqlgate.errors import ConfigError, QueryFailed, QueryTimeout

log = logging.getLogger("sqlgate.engine.postgres")
_ROLE_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,62}$")
# the caller functions of the DuckDB engine, so endpoint SQL reads the same on both engines
_USER_FUNCTIONS = re.compile(r"\bget_(username|user_id|user_email|user_provider|user_display_name|"
                             r"user_external_token)\(\s*\)", re.IGNORECASE)
_SETTING_OF = {"username": "username", "user_id": "user_id", "user_email": "email", "user_provider": "provider",
               "user_display_name": "display_name", "user_external_token": "external_token"}


def _user_function_sql(match: re.Match[str]) -> str:
    return f"coalesce(current_setting('sqlgate.{_SETTING_OF[match.group(1).lower()]}', true), '')"


class PostgresEngine(Engine):
    dialect = "postgres"

    def __init__(self, dsn: str, pool_size: int, read_only: bool, role_mode: str, role_prefix: str):
        self._dsn = dsn
        self._pool_size = pool_size
        self._read_only = read_only
        self._role_mode = role_mode
        self._role_prefix = role_prefix
        self._pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sql_cache: dict[str, str] = {}

    @classmethod
    def open(cls, project) -> PostgresEngine:
        cfg = project.settings.engine
        try:  # fail at start-up, with the reason, when the database cannot be reached
            with psycopg.connect(cfg.dsn, connect_timeout=10) as probe:
                probe.execute("SELECT 1")
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to PostgreSQL: {str(exc).strip()}", where="engine.dsn") from None
        return cls(cfg.dsn, cfg.pool_size, cfg.read_only, cfg.role_mode, cfg.role_prefix)

    async def _get_pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            self._loop = asyncio.get_running_loop()
            self._pool = AsyncConnectionPool(self._dsn, min_size=1, max_size=self._pool_size, open=False,
                                             kwargs={"autocommit": False})
            await self._pool.open(wait=True, timeout=30)
        return self._pool

    def _role_for(self, call: CallContext) -> str | None:
        if self._role_mode != "set_role":
            return None
        name = call.user.username
        if not name:
            raise QueryFailed("role_mode set_role needs an authenticated caller (no username)")
        role = self._role_prefix + name
        if not _ROLE_OK.match(role):
            raise QueryFailed(f"username {name!r} cannot be mapped to a database role")
        return role

    async def execute(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                      limits: Limits) -> QueryResult:
        pool = await self._get_pool()
        text = self._sql_cache.get(sql)
        if text is None:
            text = self._sql_cache[sql] = to_pyformat(_USER_FUNCTIONS.sub(_user_function_sql, sql))
        role = self._role_for(call)
        async with pool.connection() as conn:
            try:
                return await asyncio.wait_for(self._run(conn, text, params or {}, call, role, limits),
                                              limits.timeout_seconds + 2)
            except TimeoutError:
                conn.cancel()  # server-side statement_timeout should have fired first; make sure
                raise QueryTimeout(f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s "
                                   "timeout") from None
            finally:
                if not conn.closed:
                    await conn.rollback()

    async def _run(self, conn, text: str, params: dict[str, Any], call: CallContext, role: str | None,
                   limits: Limits) -> QueryResult:
        u = call.user
        async with conn.cursor() as cur:
            try:
                if self._read_only:
                    await cur.execute("SET TRANSACTION READ ONLY")
                await cur.execute(
                    "SELECT set_config('sqlgate.username', %(u)s, true), set_config('sqlgate.user_id', %(i)s, true),"
                    " set_config('sqlgate.email', %(e)s, true), set_config('sqlgate.provider', %(p)s, true),"
                    " set_config('sqlgate.display_name', %(d)s, true), set_config('sqlgate.claims', %(c)s, true),"
                    " set_config('sqlgate.external_token', %(t)s, true)",
                    {"u": u.username, "i": u.user_id, "e": u.email, "p": u.provider, "d": u.display_name,
                     "c": json.dumps(dict(u.claims), default=str), "t": u.external_token})
                if role is not None:
                    await cur.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(role)))
                await cur.execute(pgsql.SQL("SET LOCAL statement_timeout = {}").format(
                    pgsql.Literal(int(limits.timeout_seconds * 1000))))
                await cur.execute(text, params, prepare=False)
                if cur.description is None:
                    return QueryResult(columns=[], types=[], rows=[], limits=limits)
                raw = await cur.fetchmany(limits.max_rows + 1)
                columns = [d.name for d in cur.description]
                types = [_type_name(conn, d.type_code) for d in cur.description]
            except psycopg.errors.QueryCanceled:
                raise QueryTimeout(f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s "
                                   "timeout") from None
            except psycopg.Error as exc:
                raise QueryFailed(_clean(exc)) from None
        return shape_rows(columns, types, raw, limits)

    def execute_blocking(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                         limits: Limits) -> QueryResult:
        if self._loop is None:
            raise QueryFailed("the PostgreSQL engine has not been started")
        future = asyncio.run_coroutine_threadsafe(self.execute(sql, params, call, limits), self._loop)
        return future.result()

    # ------------------------------------------------------------------ catalog
    async def list_schemas(self, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT current_database() AS database, n.nspname AS schema, obj_description(n.oid, 'pg_namespace') "
            "AS comment FROM pg_namespace n WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' "
            "AND has_schema_privilege(n.oid, 'USAGE') ORDER BY 2", None, limits)

    async def list_tables(self, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT n.nspname AS schema, c.relname AS name, CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN "
            "'view' ELSE 'table' END AS kind, obj_description(c.oid, 'pg_class') AS comment, "
            "CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS estimated_rows, "
            "(SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
            "AS column_count FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND ($s::text IS NULL OR n.nspname = $s) "
            "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2", {"s": schema}, limits)

    async def _find_relation(self, table: str, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT n.nspname, c.relname, CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END, "
            "obj_description(c.oid, 'pg_class'), c.oid::bigint FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relname = $t AND ($s::text IS NULL OR n.nspname = $s) "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            {"t": table, "s": schema}, limits)

    async def _describe_relation(self, schema: str, name: str, ref: Any,
                                 limits: Limits) -> tuple[QueryResult, QueryResult]:
        oid = ref
        cols = await self._meta(
            "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable, "
            "pg_get_expr(d.adbin, d.adrelid) AS \"default\", col_description(a.attrelid, a.attnum) AS comment "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = $oid::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            {"oid": oid}, limits)
        keys = await self._meta(
            "SELECT CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'f' THEN 'FOREIGN KEY' ELSE 'UNIQUE' END "
            "AS type, (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(n, ord) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n) AS columns, "
            "con.confrelid::regclass::text AS referenced_table, (SELECT array_agg(a.attname ORDER BY k.ord) FROM "
            "unnest(con.confkey) WITH ORDINALITY k(n, ord) JOIN pg_attribute a ON a.attrelid = con.confrelid "
            "AND a.attnum = k.n) AS referenced_columns FROM pg_constraint con WHERE con.conrelid = $oid::oid "
            "AND con.contype IN ('p', 'f', 'u') ORDER BY con.contype, con.conname", {"oid": oid}, limits)
        # a FOREIGN KEY names its table; other keys have none (regclass prints "-" for oid 0)
        for row in keys.rows:
            if row[2] == "-":
                row[2] = None
        return cols, keys

    async def catalog_entries(self) -> list[dict[str, Any]]:
        big = Limits(max_rows=1_000_000, max_bytes=1 << 40, timeout_seconds=30)
        objs = await self.list_tables(None, big)
        cols = await self._meta(
            "SELECT n.nspname AS schema, c.relname AS table, a.attname AS name, "
            "format_type(a.atttypid, a.atttypmod) AS type, col_description(a.attrelid, a.attnum) AS comment "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "AND has_table_privilege(c.oid, 'SELECT')", None, big)
        entries = [{"schema": r["schema"], "name": r["name"], "kind": r["kind"], "comment": r["comment"],
                    "table": None} for r in objs.records()]
        entries += [dict(r, kind="column") for r in cols.records()]
        return entries

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _type_name(conn, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    return info.name if info is not None else str(oid)


def _clean(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).strip().splitlines()[0]
