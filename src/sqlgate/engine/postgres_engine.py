"""PostgreSQL as a data source.

One call = one transaction on a pooled connection, within one deadline that starts when the call
arrives (waiting for the caller's share, for the pool and for a connection all count):
  [BEGIN [READ ONLY]; SELECT set_config(identity…, true), set_config('statement_timeout', <left>, true)
   [, set_config('role', <mapped role>, true)]]     one round trip (pipeline)
  <the statement>                                   streamed, extended protocol
  ROLLBACK; DISCARD ALL + a fresh random seed (pool reset, one round trip)
Everything a statement could leave behind on the connection (settings, role, temp objects,
prepared statements, advisory locks, LISTEN, the random seed) ends with ROLLBACK or the reset, so the
next caller gets a clean connection; a connection that cannot be reset is discarded.

The call answers at its deadline (plus _GRACE) even when the server does not stop the statement
(libxml2's XPath ignores statement_timeout and cancel): the statement runs in its own task; past the
deadline the caller gets its timeout at once, and in the background the backend is terminated from
a separate short-lived connection of the same role (a role may signal its own backends) and the
connection is closed, so the pool replaces it.

Untrusted SQL (the query tool) passes postgres_guard first and only the statement text it sliced
out runs. Every statement, trusted or not, goes through the extended protocol (`cursor.stream()`),
where the server itself refuses a second statement: psycopg's `execute()` with no or empty
parameters would use the simple protocol, which runs `SELECT 1; COMMIT; INSERT …` whole.

Caller identity: see postgres_identity (signed by default). The upstream token is never a setting;
endpoint SQL gets it as a bound parameter, the query tool not at all.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from contextlib import aclosing, suppress
from typing import Any

import psycopg
import psycopg.sql
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sqlgate.context import CallContext, current_call
from sqlgate.endpoints.sqlparams import to_pyformat
from sqlgate.engine.admission import Admission
from sqlgate.engine.base import Engine, Limits, QueryResult, RowShaper, trusted_page
from sqlgate.engine.postgres_checks import function_catalog, function_findings, service_role_problems
from sqlgate.engine.postgres_guard import FunctionCatalog, PostgresGuard, paged
from sqlgate.engine.postgres_identity import (
    TOKEN_PARAM,
    Identity,
    SettingsIdentity,
    SignedIdentity,
    endpoint_sql,
    installed,
    verify,
)
from sqlgate.errors import ConfigError, DatabaseUnavailable, QueryFailed, QueryTimeout
from sqlgate.paging import FIRST, Page

log = logging.getLogger("sqlgate.engine.postgres")
_ROLE_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,62}$")
# the guard's lexer (libpg_query) assumes these; pinned at connect so the server lexes the same way
_PINNED_OPTIONS = "-c standard_conforming_strings=on -c backslash_quote=safe_encoding"
_CHUNK = 256  # rows per network chunk while streaming a result
_BACKSTOP = 2.0  # seconds a ROLLBACK / reset / cancel may take before the connection is closed
_GRACE = 0.5  # seconds past the deadline before the client stops waiting for the server's timeout
_TERMINATE_WITHIN = 3.0  # bound on terminating a runaway backend from a side connection
# SQLSTATEs of an outage rather than of the statement: connection exceptions, server shutting down
_UNAVAILABLE = frozenset({"08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03"})


class PostgresEngine(Engine):
    dialect = "postgres"

    def __init__(self, dsn: str, pool_size: int, read_only: bool, role_mode: str, role_prefix: str,
                 identity: Identity, per_caller: int | None = None, functions: FunctionCatalog | None = None,
                 service_role: str | None = None):
        self._dsn = dsn
        self._pool_size = pool_size
        self._read_only = read_only
        self._role_mode = role_mode
        self._role_prefix = role_prefix
        self._identity = identity
        self._guard = PostgresGuard(functions)
        self._service_role = service_role
        self._admission = Admission(pool_size, per_caller)
        self._pool: AsyncConnectionPool | None = None
        self._pool_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sql_cache: dict[str, tuple[str, bool]] = {}
        self._tasks: set[asyncio.Task] = set()  # connections being given back, pool checks
        self._health = _Health()

    @classmethod
    def open(cls, project) -> PostgresEngine:
        cfg = project.settings.engine
        identity: Identity
        if cfg.identity == "settings":
            identity = SettingsIdentity()
            log.warning("engine.identity is 'settings': the caller's identity reaches PostgreSQL as plain settings "
                        "(sqlgate.username …) that any query able to call set_config() can overwrite. Do NOT protect "
                        "rows with them. Install the signed identity (python -m sqlgate.engine.postgres_identity "
                        "install) and drop engine.identity.")
        else:
            key = cfg.identity_key.get_secret_value() if cfg.identity_key else None
            identity = SignedIdentity(key)  # ConfigError when the key is missing or short
        set_role = cfg.role_mode == "set_role"
        try:  # start-up: reach the database (bounded), check the service role and the identity set-up
            with psycopg.connect(**cls._conninfo(cfg.dsn), autocommit=True) as probe:
                service_role = probe.execute("SELECT current_user").fetchone()[0]
                problems = service_role_problems(probe, identity.mode)
                fn_problems, fn_warnings = function_findings(probe, cfg.role_prefix if set_role else None)
                problems += fn_problems
                builtin, outside = function_catalog(probe)
                if isinstance(identity, SignedIdentity):
                    if not installed(probe):
                        raise ConfigError("the database has no sqlgate identity functions (schema sqlgate). Install "
                                          "them as an administrator: python -m sqlgate.engine.postgres_identity "
                                          "install --admin-dsn <admin DSN> -p <project>; or opt in to forgeable "
                                          "plain settings with engine.identity: settings", where="engine.identity")
                    verify(probe, identity)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to PostgreSQL: {str(exc).strip()}", where="engine.dsn") from None
        if problems:
            if cfg.role_checks == "refuse":
                raise ConfigError("the PostgreSQL service role can get around row-level security or the query "
                                  "guard; fix its privileges (or set engine.role_checks: warn)",
                                  where="engine.dsn", problems=problems)
            for p in problems:
                log.warning("PostgreSQL service role: %s", p)
        for w in fn_warnings:
            log.warning("PostgreSQL: %s", w)
        allowed = frozenset(tuple(name.split(".", 1)) for name in cfg.allowed_functions)
        for schema, name in sorted(allowed - outside):
            log.warning("engine.allowed_functions: the database has no function %s.%s (yet)", schema, name)
        functions = FunctionCatalog(builtin=builtin, outside=outside, allowed=allowed)  # type: ignore[arg-type]
        return cls(cfg.dsn, cfg.pool_size, cfg.read_only, cfg.role_mode, cfg.role_prefix, identity,
                   cfg.max_concurrent_per_caller, functions, service_role)

    @staticmethod
    def _conninfo(dsn: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(conninfo_to_dict(dsn))
        params["options"] = " ".join(p for p in (params.get("options"), _PINNED_OPTIONS) if p)
        params["client_encoding"] = "UTF8"
        params.setdefault("application_name", "sqlgate")
        params.setdefault("connect_timeout", 5)
        return params

    async def _get_pool(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:  # the first calls may arrive together: one pool, opened once
            if self._pool is None:
                self._loop = asyncio.get_running_loop()
                kwargs = self._conninfo(self._dsn)
                # autocommit: we send BEGIN ourselves, in the same round trip as the call's settings;
                # no automatic server-side prepared statements (DISCARD ALL would drop them)
                kwargs.update(autocommit=True, prepare_threshold=None)
                pool = AsyncConnectionPool(
                    "", kwargs=kwargs, min_size=1, max_size=self._pool_size, open=False, reset=_reset,
                    configure=_configure,
                    name="sqlgate-postgres", reconnect_timeout=10.0, connection_class=_tracking(self._health))
                # not waiting: a database that is down at this moment must not block or kill the
                # server; calls answer "database unavailable" until the pool's background connects work
                await pool.open(wait=False)
                self._pool = pool
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
        if not self._role_prefix or (self._service_role is not None
                                     and role.lower() == self._service_role.lower()):
            # the service role may be a member of more than the mapped roles; never run as itself
            raise QueryFailed(f"username {name!r} maps to the service role, not to a caller's role")
        return role

    # ------------------------------------------------------------------ statements
    async def execute(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                      limits: Limits, page: Page = FIRST) -> QueryResult:
        """Endpoint SQL written by the project author (and the catalog queries)."""
        deadline = time.monotonic() + limits.timeout_seconds
        if page.offset:
            sql = trusted_page(sql, limits.max_rows + 1, page)
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = self._sql_cache[sql] = endpoint_sql(to_pyformat(sql), self._identity)
        text, uses_token = cached
        bound = dict(params or {})
        if uses_token:
            bound[TOKEN_PARAM] = call.user.external_token or None
        # a mapping, even an empty one: psycopg then turns the %% of to_pyformat back into %
        qr = await self._call(text, bound, call, limits, deadline, read_only=self._read_only)
        qr.pageable, qr.page = True, page
        return qr

    def bind_problem(self, sql: str, samples: dict[str, Any] | None = None) -> str | None:
        # EXPLAIN plans (names, types, permissions) without running the statement; read-only and
        # bounded all the same. Sample values stand in for the parameters so their types are known.
        text, uses_token = endpoint_sql(to_pyformat(sql), self._identity)
        bound = dict(samples or {})
        if uses_token:
            bound[TOKEN_PARAM] = None
        try:
            with psycopg.connect(**self._conninfo(self._dsn), autocommit=True) as conn:
                conn.execute("BEGIN READ ONLY")
                conn.execute("SET LOCAL statement_timeout = '10s'")
                conn.execute(psycopg.sql.SQL("EXPLAIN ") + psycopg.sql.SQL(text), bound)  # type: ignore[arg-type]
                conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            # PostgreSQL names the SQL line ("LINE 3:"); "EXPLAIN " keeps the lines of `sql`
            line = re.search(r"\nLINE (\d+):", str(exc))
            return str(exc).strip().split("\n")[0] + (f" (SQL line {line.group(1)})" if line else "")
        return None

    async def run_untrusted(self, sql: str, call: CallContext, limits: Limits, page: Page = FIRST) -> QueryResult:
        deadline = time.monotonic() + limits.timeout_seconds
        checked = await asyncio.to_thread(self._guard.check, sql)
        text = checked.sql
        if checked.wrappable and (page.offset or page.order_all):
            # the page is a new text: it goes through the guard too, like any statement that runs
            text = (await asyncio.to_thread(
                self._guard.check, paged(text, limits.max_rows + 1, page.offset, page.order_all))).sql
        # params None: the text goes to the server byte for byte (no %-placeholder processing)
        qr = await self._call(text, None, call, limits, deadline, read_only=True)
        qr.pageable, qr.ordered, qr.page = checked.wrappable, checked.ordered, page
        return qr

    async def _call(self, text: str, params: dict[str, Any] | None, call: CallContext, limits: Limits,
                    deadline: float, read_only: bool) -> QueryResult:
        role = self._role_for(call)
        pool = await self._get_pool()
        async with self._admission.slot(call.principal, deadline, limits.timeout_seconds):
            try:
                conn = await pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
            except PoolTimeout:
                # the pool's last connect attempt failed: an outage; otherwise the connections
                # exist but are busy (being given back) past this call's deadline
                if self._health.last_error is not None:
                    raise DatabaseUnavailable(f"database unavailable: {self._health.last_error}") from None
                raise QueryTimeout(f"query not started within the {limits.timeout_seconds:g} s timeout: every "
                                   "database connection is busy. Try again shortly.") from None
            pid = conn.info.backend_pid
            work = asyncio.ensure_future(self._run(conn, text, params, call, role, limits, deadline, read_only))
            try:
                # the server's statement_timeout ends the statement at the deadline; should it not
                # (libxml2), the caller still gets its answer now and the connection is dealt with below
                await asyncio.wait({work}, timeout=max(deadline - time.monotonic(), 0) + _GRACE)
                if not work.done():
                    raise _timeout(limits)
                return work.result()
            except DatabaseUnavailable:
                # other idle connections are probably dead too: let the pool test them now
                self._background(pool.check())
                raise
            finally:
                # ROLLBACK and the pool's reset (DISCARD ALL) run after the answer has gone out: the
                # pool hands the connection to nobody before its reset is done, so this only takes
                # two round trips off the caller's latency, not a guarantee off the next caller
                self._background(self._give_back(pool, conn, work, pid, time.monotonic() >= deadline))

    async def _give_back(self, pool: AsyncConnectionPool, conn: psycopg.AsyncConnection,
                         work: asyncio.Future, pid: int, overdue: bool) -> None:
        if not work.done():
            # past the deadline the server's statement_timeout has already failed to stop it:
            # terminate the backend at once (from a side connection: this one is busy). A caller
            # who went away early gets psycopg's cancel first, termination if that does not help.
            if overdue:
                await self._terminate(pid)
            work.cancel()
            await asyncio.wait({work}, timeout=_BACKSTOP)
            if not work.done() and not overdue:
                await self._terminate(pid)
                await asyncio.wait({work}, timeout=_BACKSTOP)
            if not work.done() or overdue:
                await conn.close()  # the pool replaces it
        if work.done() and not work.cancelled():
            work.exception()  # retrieved: the caller got the outcome, or is gone
        await _give_back(pool, conn)

    async def _terminate(self, pid: int) -> None:
        """pg_terminate_backend(pid) as the service role itself, on a fresh connection, bounded."""
        try:
            async with asyncio.timeout(_TERMINATE_WITHIN):
                params = self._conninfo(self._dsn) | {"connect_timeout": max(1, int(_TERMINATE_WITHIN))}
                async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as side:
                    cur = await side.execute("SELECT pg_terminate_backend(%s, %s)",
                                             (pid, int(_TERMINATE_WITHIN * 500)))
                    done = (await cur.fetchone() or (False,))[0]
            log.warning("statement past its deadline not stopped by the server: backend %s %s", pid,
                        "terminated" if done else "signalled to terminate (still running)")
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("statement past its deadline: could not terminate backend %s: %s", pid, exc)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: psycopg.AsyncConnection, text: str, params: dict[str, Any] | None,
                   call: CallContext, role: str | None, limits: Limits, deadline: float,
                   read_only: bool) -> QueryResult:
        left = deadline - time.monotonic()
        if left <= 0.001:
            raise _timeout(limits)
        settings = self._identity.settings(call, conn.info.backend_pid, left + 30)
        settings["statement_timeout"] = str(max(1, int(left * 1000)))
        # intervals as ISO 8601 text (months kept), read as text below (psycopg's timedelta is lossy)
        settings["intervalstyle"] = "iso_8601"
        if role is not None:
            settings["role"] = role  # = SET LOCAL ROLE, checked by the server against membership
        names = list(settings)
        setup = "SELECT " + ", ".join(f"set_config(%(k{i})s, %(v{i})s, true)" for i in range(len(names)))
        setup_params = {f"k{i}": n for i, n in enumerate(names)} | {f"v{i}": settings[n] for i, n in enumerate(names)}
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN READ ONLY" if read_only else "BEGIN")
                await conn.execute(setup, setup_params)
            return await _fetch(conn, text, params, limits)
        except psycopg.errors.QueryCanceled:
            raise _timeout(limits) from None
        except psycopg.Error as exc:
            if conn.closed or conn.broken or exc.sqlstate in _UNAVAILABLE:
                raise DatabaseUnavailable(f"database unavailable: {_clean(exc)}") from None
            raise QueryFailed(_clean(exc)) from None

    def execute_blocking(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                         limits: Limits) -> QueryResult:
        if self._loop is None:
            raise QueryFailed("the PostgreSQL engine has not been started")
        future = asyncio.run_coroutine_threadsafe(self.execute(sql, params, call, limits), self._loop)
        return future.result()

    # ------------------------------------------------------------------ catalog
    async def _meta(self, sql: str, params: dict[str, Any] | None, limits: Limits) -> QueryResult:
        """Catalog queries run as the current caller: in set_role mode as the caller's role (so
        list_tables shows what that role can read), and under the caller's share of the pool."""
        return await self.execute(sql, params, current_call(), limits)

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
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._pool is not None:
            await self._pool.close(timeout=5)


async def _fetch(conn: psycopg.AsyncConnection, text: str, params: dict[str, Any] | None,
                 limits: Limits) -> QueryResult:
    """Stream the statement's rows into a RowShaper, stopping (and cancelling the statement) as soon
    as the answer is full, so a huge result never lands in memory whole."""
    cur = conn.cursor()
    shaper: RowShaper | None = None
    batch: list[tuple] = []
    size = 16  # rows handed to the shaper at once: growing, as DuckDB's fetch, so huge rows stop early
    try:
        async with aclosing(cur.stream(text, params, size=min(limits.max_rows + 1, _CHUNK))) as rows:
            async for row in rows:
                if shaper is None:
                    assert cur.description is not None
                    shaper = _shaper(conn, [(d.name, d.type_code) for d in cur.description], limits)
                batch.append(row)
                if len(batch) >= size:
                    shaper.add(batch)
                    batch, size = [], min(size * 4, 1024)
                    if shaper.full:
                        break
            if batch and shaper is not None:
                shaper.add(batch)
    except psycopg.ProgrammingError as exc:
        if exc.sqlstate is not None:  # a server error (class 42 …), not psycopg's "no result"
            raise
        # endpoint SQL that returns no rows at all (a utility statement): an empty result
        return QueryResult(columns=[], types=[], rows=[], limits=limits)
    if shaper is None:  # no rows: psycopg's stream() keeps no description; ask the (still open) portal
        res = await asyncio.to_thread(conn.pgconn.describe_portal, b"")
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise QueryFailed("could not describe the result")
        fields = [(res.fname(i).decode("utf-8"), res.ftype(i)) for i in range(res.nfields)]
        shaper = _shaper(conn, fields, limits)
    return shaper.result()


def _shaper(conn: psycopg.AsyncConnection, fields: list[tuple[str, int]], limits: Limits) -> RowShaper:
    return RowShaper([name for name, _ in fields], [_type_name(conn, oid) for _, oid in fields], limits)


class _Health:
    """The outcome of the pool's latest attempt to connect: None = it worked."""

    last_error: str | None = None


def _tracking(health: _Health) -> type[psycopg.AsyncConnection]:
    """A connection class that records in `health` whether the pool's connect attempts succeed,
    so a caller who got no connection learns why (database down, or merely busy)."""

    class TrackedConnection(psycopg.AsyncConnection):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                health.last_error = _clean(exc)
                raise
            health.last_error = None
            return conn

    return TrackedConnection


async def _give_back(pool: AsyncConnectionPool, conn: psycopg.AsyncConnection) -> None:
    await _finish(conn)
    await pool.putconn(conn)  # runs _reset, or discards the connection if that fails


async def _finish(conn: psycopg.AsyncConnection) -> None:
    """End the call's transaction; a connection that cannot do that is closed (the pool replaces it)."""
    if conn.closed:
        return
    status = conn.pgconn.transaction_status
    if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        try:
            async with asyncio.timeout(_BACKSTOP):  # a vanished server must not hold the call
                await conn.execute("ROLLBACK")
            return
        except (psycopg.Error, TimeoutError):
            pass
    elif status == pq.TransactionStatus.IDLE:
        return
    elif status == pq.TransactionStatus.ACTIVE:
        # abandoned mid-operation (client gone, backstop timeout) outside the row stream, which
        # cancels on its own: stop the statement on the server, which would otherwise run on after
        # the socket closes, up to statement_timeout
        with suppress(psycopg.Error):
            await conn.cancel_safe(timeout=_BACKSTOP)
    await conn.close()


async def _configure(conn: psycopg.AsyncConnection) -> None:
    """Every new connection: intervals come back as the server's text (ISO 8601, see _run), not as
    a timedelta that turns a month into 30 days."""
    conn.adapters.register_loader("interval", TextLoader)


async def _reset(conn: psycopg.AsyncConnection) -> None:
    """psycopg_pool's reset hook, run on every returned connection before anyone else gets it.

    DISCARD ALL = RESET ALL + SET SESSION AUTHORIZATION DEFAULT + DEALLOCATE ALL + CLOSE ALL +
    UNLISTEN * + pg_advisory_unlock_all() + DISCARD PLANS/TEMP/SEQUENCES. It keeps the random seed,
    which endpoint SQL may have set with setseed() (the query tool cannot): a new unpredictable seed
    from our side goes in the same pipeline, so the reset stays one round trip. If it fails the pool
    discards the connection."""
    seed = secrets.randbelow(2**31) / 2**30 - 1.0  # setseed() takes [-1, 1]
    async with asyncio.timeout(_BACKSTOP), conn.pipeline():
        await conn.execute("DISCARD ALL")
        await conn.execute("SELECT setseed(%s::float8)", (seed,))


def _type_name(conn, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    return info.name if info is not None else str(oid)


def _timeout(limits: Limits) -> QueryTimeout:
    return QueryTimeout(f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s timeout")


def _clean(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]

