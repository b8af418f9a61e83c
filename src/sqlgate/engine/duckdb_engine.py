"""DuckDB, opened hardened.

- read-only where the profile says so; file access off (`enable_external_access=false`) except
  for allow-listed paths; extension autoinstall/autoload off; configuration locked; memory, threads
  and spilling bounded — so even SQL that slipped past the guard could not write files, read /etc,
  load code or take the machine's memory.
- one connection per worker thread: concurrent calls run in parallel, never share a connection.
- untrusted SQL (the query tool) is decided by the DuckDB guard (`duckdb_guard`) on the worker
  thread, and only the statement it admitted runs.
- the caller's identity reaches SQL through Python functions reading a per-call slot
  (`duckdb_identity`), not through SQL state a statement could overwrite.
- admission (per-caller share, pool) and the statement share one deadline; a watchdog interrupts
  statements that exceed it; rows/bytes are capped while fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from sqlgate.context import CallContext
from sqlgate.engine import duckdb_identity
from sqlgate.engine.admission import Admission
from sqlgate.engine.base import Engine, Limits, QueryResult, RowShaper
from sqlgate.engine.duckdb_guard import DuckDBGuard, row_size_guarded
from sqlgate.engine.watchdog import Watchdog
from sqlgate.errors import ConfigError, QueryFailed, QueryTimeout

log = logging.getLogger("sqlgate.engine")

_HARDENING = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _unconvertible(exc: Exception) -> str:
    return (f"the result holds a value that cannot be converted ({type(exc).__name__}: {exc}); "
            "cast it to VARCHAR in the query")


def _clean_error(exc: Exception) -> str:
    text = str(exc).strip()
    text = text.split("\n\nLINE", 1)[0] if text else type(exc).__name__
    # a Python caller function's refusal arrives wrapped in DuckDB's UDF error; show just the reason
    marker = "Python exception occurred while executing the UDF: "
    if marker in text:
        text = text.split(marker, 1)[1].split(": ", 1)[-1]
    return text


class DuckDBEngine(Engine):
    dialect = "duckdb"

    def __init__(self, db: duckdb.DuckDBPyConnection, pool_size: int, label: str,
                 per_caller: int | None = None):
        self._db = db
        self._label = label
        self._local = threading.local()
        self._conns: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="sqlgate-db")
        self._worker_threads: set[int] = set()
        self._pool_size = pool_size
        self._per_caller = per_caller
        self._admission: Admission | None = None  # made on the event loop of the first call
        self._loop: asyncio.AbstractEventLoop | None = None
        self.query_headers: frozenset[str] = frozenset()  # sql_tools.request_headers
        duckdb_identity.register(db)
        self.guard = DuckDBGuard.for_connection(db)

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
        config["memory_limit"] = cfg.memory_limit
        # no spilling unless a directory is configured: DuckDB's default is next to the database
        # (or the working directory for :memory:), which is nobody's decision
        temp_directory = str(project.path(cfg.temp_directory)) if cfg.temp_directory else ""
        dirs, files = [], []
        for entry in cfg.allowed_paths:
            p = project.path(entry).resolve()
            (dirs if p.is_dir() else files).append(str(p) + ("/" if p.is_dir() else ""))
        try:
            if in_memory:
                db = duckdb.connect(":memory:", config=config)
                duckdb_identity.register(db)
                if seed is not None:
                    db.execute(seed.read_text(encoding="utf-8"))
            else:
                db = duckdb.connect(path, read_only=cfg.read_only, config=config)
        except duckdb.Error as exc:
            raise ConfigError(f"cannot open DuckDB database {path}: {_clean_error(exc)}",
                              where="sqlgate.yml (engine)") from None
        # in this order: temp_directory cannot change once external access is off, and nothing
        # can change once the configuration is locked (the seed ran above with file access on)
        db.execute("SET temp_directory = $1", [temp_directory])
        # files SQL may read despite external access being off; DuckDB takes them only once the
        # database has started and before external access is switched off
        if dirs:
            db.execute("SET allowed_directories = $1", [dirs])
        if files:
            db.execute("SET allowed_paths = $1", [files])
        # DuckDB draws a progress bar on stdout for long queries: on stdio that would corrupt MCP
        # (a connection setting; cursors made from this connection inherit it)
        db.execute("SET enable_progress_bar = false")
        db.execute("SET enable_external_access = false")
        db.execute("SET lock_configuration = true")
        engine = cls(db, cfg.pool_size, path, cfg.max_concurrent_per_caller)
        engine.query_headers = frozenset(h.lower() for h in project.settings.sql_tools.request_headers)
        return engine

    # ------------------------------------------------------------------ connections
    def _conn(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            with self._lock:
                con = self._db.cursor()
                self._worker_threads.add(threading.get_ident())
                self._conns.append(con)
            self._local.con = con
        return con

    # ------------------------------------------------------------------ execution
    def _run(self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits,
             deadline: float, trusted: bool, slot: dict[str, Any] | None = None) -> QueryResult:
        # a cursor of its own per call: closing it frees a half-fetched result, and interrupting it
        # (timeout, cancelled client) can only ever stop this call
        cur = self._conn().cursor()
        if slot is not None:
            slot["cursor"] = cur
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueryTimeout(f"query not started within the {limits.timeout_seconds:g} s timeout")
            ticket = self._watchdog.arm(remaining, cur.interrupt)
            try:
                with duckdb_identity.bound(call, trusted, self.query_headers):
                    if not trusted:
                        # the guard runs here, on the worker, so a big query never blocks the event loop
                        checked = self.guard.check(sql, cur)
                        # rows are bounded inside DuckDB (2x max_bytes as text, so any row that could
                        # fit the JSON answer passes; the shaper cuts exactly)
                        sql = (row_size_guarded(checked.sql, 2 * limits.max_bytes + 1024)
                               if checked.wrappable else checked.sql)
                    cur.execute(sql, params) if params else cur.execute(sql)
                    return self._fetch(cur, limits, deadline)
            except duckdb.InterruptException:
                if self._watchdog.disarm(ticket):
                    raise QueryTimeout(
                        f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s timeout") from None
                raise QueryFailed("query was interrupted") from None
            except duckdb.OutOfMemoryException as exc:
                raise QueryFailed("the query needs more memory than the engine may use (engine.memory_limit): "
                                  f"{_clean_error(exc)}") from None
            except duckdb.Error as exc:
                raise QueryFailed(_clean_error(exc)) from None
            except (OverflowError, ValueError) as exc:  # DuckDB's own conversion to Python values
                raise QueryFailed(_unconvertible(exc)) from None
            finally:
                self._watchdog.disarm(ticket)
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()

    @staticmethod
    def _fetch(cur: duckdb.DuckDBPyConnection, limits: Limits, deadline: float) -> QueryResult:
        """Fetch in growing batches until the answer is full, so huge rows stop early."""
        description = cur.description
        if description is None:
            return QueryResult(columns=[], types=[], rows=[], limits=limits)
        shaper = RowShaper([d[0] for d in description], [str(d[1]) for d in description], limits)
        batch = 16
        while not shaper.full:
            rows = cur.fetchmany(batch)
            if not rows:
                break
            shaper.add(rows)
            if time.monotonic() > deadline:
                raise QueryTimeout(f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s timeout")
            batch = min(batch * 4, 1024)
        return shaper.result()

    async def _submit(self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits,
                      trusted: bool) -> QueryResult:
        deadline = time.monotonic() + limits.timeout_seconds  # one deadline: waiting counts too
        if self._admission is None:
            self._loop = asyncio.get_running_loop()
            self._admission = Admission(self._pool_size, self._per_caller)
        async with self._admission.slot(call.principal, deadline, limits.timeout_seconds):
            loop = asyncio.get_running_loop()
            slot: dict[str, Any] = {}
            fut = loop.run_in_executor(self._pool, self._run, sql, params, call, limits, deadline, trusted, slot)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                # the client gave up (or the server is stopping): stop this call's statement, and keep
                # its connection slot until the worker is really free again
                cur = slot.get("cursor")
                if cur is not None:
                    with contextlib.suppress(duckdb.Error):
                        cur.interrupt()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(fut, 5)
                raise

    async def execute(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                      limits: Limits) -> QueryResult:
        return await self._submit(sql, params, call, limits, trusted=True)

    async def run_untrusted(self, sql: str, call: CallContext, limits: Limits) -> QueryResult:
        return await self._submit(sql, None, call, limits, trusted=False)

    def execute_blocking(self, sql: str, params: dict[str, Any] | None, call: CallContext,
                         limits: Limits) -> QueryResult:
        deadline = time.monotonic() + limits.timeout_seconds
        if threading.get_ident() in self._worker_threads:
            return self._run(sql, params, call, limits, deadline, True)
        loop = self._loop
        if loop is not None and loop.is_running():
            # a synchronous Python endpoint in a worker thread: take a slot like every other call
            return asyncio.run_coroutine_threadsafe(self.execute(sql, params, call, limits), loop).result()
        return self._pool.submit(self._run, sql, params, call, limits, deadline, True).result()

    def bind_problem(self, sql: str, samples: dict[str, Any] | None = None) -> str | None:
        # PREPARE binds names and types without running anything ($name parameters stay open)
        cur = self._db.cursor()
        try:
            with duckdb_identity.bound(CallContext(), trusted=True):
                cur.execute(f"PREPARE __sqlgate_validate AS {sql}")
                cur.execute("DEALLOCATE __sqlgate_validate")
        except duckdb.Error as exc:
            return _clean_error(exc)
        finally:
            cur.close()
        return None

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
        with self._lock:
            for con in self._conns:  # statements still running end now, so the pool can stop
                with contextlib.suppress(duckdb.Error):
                    con.interrupt()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._watchdog.stop()
        with self._lock:
            for con in self._conns:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            self._conns.clear()
        self._db.close()


def build_database(path: str, seed: Path) -> None:
    """Create a database file from trusted project SQL (runs with normal privileges)."""
    log.info("building %s from %s", path, seed)
    con = duckdb.connect(path)
    try:
        duckdb_identity.register(con)  # views of the seed may use get_username() …
        con.execute(seed.read_text(encoding="utf-8"))
    except duckdb.Error as exc:
        con.close()
        Path(path).unlink(missing_ok=True)
        raise ConfigError(f"seed SQL failed: {_clean_error(exc)}", where=str(seed)) from None
    con.close()
