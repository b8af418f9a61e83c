"""DuckDB, opened hardened.

- read-only where the profile says so; file access off (`enable_external_access=false`) except
  for allow-listed paths; extension autoinstall/autoload off; configuration locked — so even SQL
  that slips past the statement checker cannot write files, read /etc or load code.
- one connection per worker thread: concurrent calls run in parallel, never share a connection.
- per-call user context through a connection-local variable read by TEMP macros
  (`get_username()` …), set right before each call on that call's own connection.
- a watchdog interrupts statements that exceed the timeout; rows/bytes are capped while fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from sqlgate.context import CallContext
from sqlgate.engine.base import Engine, Limits, QueryResult, shape_rows
from sqlgate.engine.watchdog import Watchdog
from sqlgate.errors import ConfigError, QueryFailed, QueryTimeout

log = logging.getLogger("sqlgate.engine")

_CONTEXT_MACROS = (
    "CREATE OR REPLACE TEMP MACRO get_username() AS coalesce(getvariable('sqlgate_ctx').username, '')",
    "CREATE OR REPLACE TEMP MACRO get_user_id() AS coalesce(getvariable('sqlgate_ctx').user_id, '')",
    "CREATE OR REPLACE TEMP MACRO get_user_email() AS coalesce(getvariable('sqlgate_ctx').email, '')",
    "CREATE OR REPLACE TEMP MACRO get_user_provider() AS coalesce(getvariable('sqlgate_ctx').provider, '')",
    "CREATE OR REPLACE TEMP MACRO get_user_display_name() AS "
    "coalesce(getvariable('sqlgate_ctx').display_name, '')",
    "CREATE OR REPLACE TEMP MACRO get_user_external_token() AS "
    "coalesce(getvariable('sqlgate_ctx').external_token, '')",
    "CREATE OR REPLACE TEMP MACRO get_request_header(name) AS "
    "coalesce(getvariable('sqlgate_ctx').headers[lower(name)], '')",
)
_SET_CONTEXT = (
    "SET VARIABLE sqlgate_ctx = struct_pack(username := $u::VARCHAR, user_id := $i::VARCHAR, "
    "email := $e::VARCHAR, provider := $p::VARCHAR, display_name := $d::VARCHAR, "
    "external_token := $t::VARCHAR, headers := map($hk::VARCHAR[], $hv::VARCHAR[]))"
)
_HARDENING = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _context_key(call: CallContext, sql: str) -> tuple:
    """What the connection-local context must hold for this statement.

    Request headers differ on nearly every request (session ids, lengths), so they are only put
    into the context when the statement can read them; otherwise the context stays stable across
    calls of the same user and is not re-set each time. The headers entry is then empty, so no
    previous caller's headers remain visible either.
    """
    u = call.user
    lowered = sql.lower()
    wants_headers = "get_request_header" in lowered or "getvariable" in lowered
    headers = tuple(sorted(call.headers.items())) if wants_headers else ()
    return (u.username, u.user_id, u.email, u.provider, u.display_name, u.external_token, headers)


def _clean_error(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n\nLINE", 1)[0] if text else type(exc).__name__


class _Conn:
    """A worker thread's connection and the user context last set on it."""

    __slots__ = ("con", "context_key")

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.context_key: tuple | None = None


class DuckDBEngine(Engine):
    dialect = "duckdb"

    def __init__(self, db: duckdb.DuckDBPyConnection, pool_size: int, label: str):
        self._db = db
        self._label = label
        self._local = threading.local()
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="sqlgate-db")
        self._worker_threads: set[int] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, project) -> DuckDBEngine:
        cfg = project.settings.engine
        in_memory = cfg.path == ":memory:"
        path = ":memory:" if in_memory else str(project.path(cfg.path))
        seed = project.path(cfg.seed) if cfg.seed else None
        if seed is not None and not seed.is_file():
            raise ConfigError(f"engine.seed file not found: {seed}", where="sqlgate.yml")
        if not in_memory and not Path(path).exists():
            if seed is None:
                raise ConfigError(
                    f"database file {path} does not exist; set engine.seed to a SQL file that builds it, "
                    "or create it with `sqlgate init`",
                    where="sqlgate.yml (engine.path)",
                )
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            build_database(path, seed)
        config: dict[str, Any] = dict(_HARDENING)
        if cfg.threads:
            config["threads"] = cfg.threads
        if cfg.memory_limit:
            config["memory_limit"] = cfg.memory_limit
        dirs, files = [], []
        for entry in cfg.allowed_paths:
            p = project.path(entry).resolve()
            (dirs if p.is_dir() else files).append(str(p) + ("/" if p.is_dir() else ""))
        if dirs:
            config["allowed_directories"] = dirs
        if files:
            config["allowed_paths"] = files
        try:
            if in_memory:
                db = duckdb.connect(":memory:", config=config)
                if seed is not None:
                    db.execute(seed.read_text(encoding="utf-8"))
            else:
                db = duckdb.connect(path, read_only=cfg.read_only,
                                    config={**config, "enable_external_access": False,
                                            "lock_configuration": True})
        except duckdb.Error as exc:
            raise ConfigError(f"cannot open DuckDB database {path}: {_clean_error(exc)}",
                              where="sqlgate.yml (engine)") from None
        if in_memory:
            # seeded above with file access on (trusted project SQL); lock it down now
            db.execute("SET enable_external_access = false")
            db.execute("SET lock_configuration = true")
        return cls(db, cfg.pool_size, path)

    # ------------------------------------------------------------------ connections
    def _conn(self) -> _Conn:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                con = self._db.cursor()
                self._worker_threads.add(threading.get_ident())
            for macro in _CONTEXT_MACROS:
                con.execute(macro)
            conn = _Conn(con)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _apply_context(self, conn: _Conn, call: CallContext, sql: str) -> None:
        key = _context_key(call, sql)
        if key == conn.context_key:
            return
        u = call.user
        headers = key[-1]
        conn.con.execute(_SET_CONTEXT, {
            "u": u.username, "i": u.user_id, "e": u.email, "p": u.provider, "d": u.display_name,
            "t": u.external_token, "hk": [k for k, _ in headers], "hv": [v for _, v in headers],
        })
        conn.context_key = key

    # ------------------------------------------------------------------ execution
    def _run(self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits,
             slot: dict[str, Any] | None = None) -> QueryResult:
        conn = self._conn()
        if slot is not None:
            slot["conn"] = conn.con
        self._apply_context(conn, call, sql)
        ticket = self._watchdog.arm(limits.timeout_seconds, conn.con.interrupt)
        try:
            cur = conn.con.execute(sql, params) if params else conn.con.execute(sql)
            description = cur.description
            raw = cur.fetchmany(limits.max_rows + 1) if description is not None else []
        except duckdb.InterruptException:
            fired = self._watchdog.disarm(ticket)
            if fired:
                raise QueryTimeout(
                    f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s timeout"
                ) from None
            raise QueryFailed("query was interrupted") from None
        except duckdb.Error as exc:
            self._watchdog.disarm(ticket)
            raise QueryFailed(_clean_error(exc)) from None
        else:
            self._watchdog.disarm(ticket)
        if description is None:
            return QueryResult(columns=[], types=[], rows=[], limits=limits)
        return _shape(description, raw, limits)

    async def execute(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                      limits: Limits) -> QueryResult:
        loop = asyncio.get_running_loop()
        slot: dict[str, Any] = {}
        fut = loop.run_in_executor(self._pool, self._run, sql, params, call, limits, slot)
        try:
            return await fut
        except asyncio.CancelledError:
            # the client gave up (or the server is stopping): stop the statement too
            con = slot.get("conn")
            if con is not None:
                con.interrupt()
            raise

    def execute_blocking(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                         limits: Limits) -> QueryResult:
        if threading.get_ident() in self._worker_threads:
            return self._run(sql, params, call, limits)
        return self._pool.submit(self._run, sql, params, call, limits).result()

    # ------------------------------------------------------------------ catalog
    async def list_schemas(self, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT database_name AS database, schema_name AS schema, comment "
            "FROM duckdb_schemas() WHERE database_name NOT IN ('system', 'temp') "
            "AND schema_name NOT IN ('information_schema', 'pg_catalog') "
            "ORDER BY 1, 2", None, limits)

    async def list_tables(self, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT schema_name AS schema, table_name AS name, 'table' AS kind, comment, "
            "estimated_size AS estimated_rows, column_count FROM duckdb_tables() "
            "WHERE NOT internal AND NOT temporary AND ($s IS NULL OR schema_name = $s) "
            "UNION ALL "
            "SELECT v.schema_name, v.view_name, 'view', v.comment, NULL, "
            "(SELECT count(*) FROM duckdb_columns() c WHERE c.table_oid = v.view_oid) "
            "FROM duckdb_views() v WHERE NOT v.internal AND NOT v.temporary "
            "AND ($s IS NULL OR v.schema_name = $s) ORDER BY 1, 2", {"s": schema}, limits)

    async def _find_relation(self, table: str, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT schema_name, table_name, 'table' AS kind, comment, NULL FROM duckdb_tables() "
            "WHERE NOT internal AND NOT temporary AND table_name = $t AND ($s IS NULL OR schema_name = $s) "
            "UNION ALL SELECT schema_name, view_name, 'view', comment, NULL FROM duckdb_views() "
            "WHERE NOT internal AND NOT temporary AND view_name = $t AND ($s IS NULL OR schema_name = $s)",
            {"t": table, "s": schema}, limits)

    async def _describe_relation(self, schema: str, name: str, ref: Any,
                                 limits: Limits) -> tuple[QueryResult, QueryResult]:
        where = {"s": schema, "t": name}
        cols = await self._meta(
            "SELECT column_name AS name, data_type AS type, is_nullable AS nullable, "
            "column_default AS \"default\", comment FROM duckdb_columns() "
            "WHERE schema_name = $s AND table_name = $t ORDER BY column_index", where, limits)
        keys = await self._meta(
            "SELECT constraint_type AS type, constraint_column_names AS columns, "
            "referenced_table, referenced_column_names AS referenced_columns FROM duckdb_constraints() "
            "WHERE schema_name = $s AND table_name = $t "
            "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY', 'UNIQUE') ORDER BY constraint_index",
            where, limits)
        return cols, keys

    async def catalog_entries(self) -> list[dict[str, Any]]:
        big = Limits(max_rows=1_000_000, max_bytes=1 << 40, timeout_seconds=30)
        objs = await self._meta(
            "SELECT schema_name AS schema, table_name AS name, 'table' AS kind, comment, NULL AS columns "
            "FROM duckdb_tables() WHERE NOT internal AND NOT temporary "
            "UNION ALL SELECT schema_name, view_name, 'view', comment, NULL FROM duckdb_views() "
            "WHERE NOT internal AND NOT temporary", None, big)
        cols = await self._meta(
            "SELECT c.schema_name AS schema, c.table_name AS table, c.column_name AS name, "
            "c.data_type AS type, c.comment FROM duckdb_columns() c WHERE NOT c.internal "
            "AND c.database_name NOT IN ('system', 'temp')", None, big)
        entries = [dict(r, table=None) for r in objs.records()]
        entries += [dict(r, kind="column") for r in cols.records()]
        return entries

    async def close(self) -> None:
        self._watchdog.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(duckdb.Error):
                    conn.con.close()
            self._conns.clear()
        self._db.close()


def build_database(path: str, seed: Path) -> None:
    """Create a database file from trusted project SQL (runs with normal privileges)."""
    log.info("building %s from %s", path, seed)
    con = duckdb.connect(path)
    try:
        con.execute(seed.read_text(encoding="utf-8"))
    except duckdb.Error as exc:
        con.close()
        Path(path).unlink(missing_ok=True)
        raise ConfigError(f"seed SQL failed: {_clean_error(exc)}", where=str(seed)) from None
    con.close()


def _shape(description: list[tuple], raw: list[tuple], limits: Limits) -> QueryResult:
    return shape_rows([d[0] for d in description], [str(d[1]) for d in description], raw, limits)
