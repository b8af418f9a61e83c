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
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from sqlgate.context import CallContext
from sqlgate.engine import duckdb_identity
from sqlgate.engine.admission import Admission
from sqlgate.engine.base import Engine, Limits, QueryResult, RowShaper, trusted_page
from sqlgate.engine.duckdb_guard import DuckDBGuard, paged, row_size_guarded
from sqlgate.engine.duckdb_sources import hide_paths, path_aliases
from sqlgate.engine.values import duckdb_interval
from sqlgate.engine.watchdog import Watchdog
from sqlgate.errors import ConfigError, QueryFailed, QueryTimeout
from sqlgate.paging import FIRST, Page

log = logging.getLogger("sqlgate.engine")

_HARDENING = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


# the catalog tools show the project's database only: not attached source files (their tables are
# shown through the source's schema) and not sqlgate's build record
_OWN = "database_name = current_database() AND {n} NOT LIKE '\\_\\_sqlgate%' ESCAPE '\\'"


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


class _Database:
    """One opened database file: its hardened connection, guard and per-thread cursors.

    `sqlgate refresh` swaps a new file in; a reload opens it as a new _Database while calls on the
    old one finish, and the old one is closed when its last call ends."""

    def __init__(self, db: duckdb.DuckDBPyConnection, file_id: tuple[int, int] | None):
        self.db = db
        self.file_id = file_id
        self.guard = DuckDBGuard.for_connection(db)
        self.local = threading.local()
        self.conns: list[duckdb.DuckDBPyConnection] = []
        self.active = 0
        self.retired = False
        self.closed = False

    def interrupt(self) -> None:
        for con in self.conns:
            with contextlib.suppress(duckdb.Error):
                con.interrupt()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for con in self.conns:
            with contextlib.suppress(duckdb.Error):
                con.close()
        self.conns.clear()
        with contextlib.suppress(duckdb.Error):
            self.db.close()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class DuckDBEngine(Engine):
    dialect = "duckdb"

    def __init__(self, db: duckdb.DuckDBPyConnection, pool_size: int, label: str,
                 per_caller: int | None = None, project=None):
        self._label = label
        self._project = project
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="sqlgate-db")
        self._worker_threads: set[int] = set()
        self._pool_size = pool_size
        self._per_caller = per_caller
        self._admission: Admission | None = None  # made on the event loop of the first call
        self._loop: asyncio.AbstractEventLoop | None = None
        self.query_headers: frozenset[str] = frozenset()  # sql_tools.request_headers
        self._path_aliases: list[tuple[str, str]] = []  # absolute paths errors show otherwise
        duckdb_identity.register(db)
        self._current = _Database(db, None if label == ":memory:" else _file_id(label))
        self._retired: list[_Database] = []

    @property
    def _db(self) -> duckdb.DuckDBPyConnection:
        return self._current.db

    @property
    def _conns(self) -> list[duckdb.DuckDBPyConnection]:
        return self._current.conns

    @property
    def guard(self) -> DuckDBGuard:
        return self._current.guard

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, project, progress=None) -> DuckDBEngine:
        """Open the project's database hardened, building it first when it is missing or stale."""
        db, path = _open_hardened(project, build=True, progress=progress)
        cfg = project.settings.engine
        engine = cls(db, cfg.pool_size, path, cfg.max_concurrent_per_caller, project)
        engine.query_headers = frozenset(h.lower() for h in project.settings.sql_tools.request_headers)
        engine._path_aliases = path_aliases(project)
        return engine

    def reopen_if_replaced(self) -> bool:
        """Switch to the database file now on disk if it was replaced (`sqlgate refresh`).

        Calls in flight finish on the old file; new calls use the new one. Blocking: run it off
        the event loop. Returns whether it switched."""
        if self._project is None or self._label == ":memory:":
            return False
        if _file_id(self._label) == self._current.file_id:
            return False
        # DuckDB keeps one instance per path in the process, and the old one (still serving calls)
        # would be handed back: open the new file through a name of its own, a hard link made
        # and removed around the open (the open file stays; only the name goes)
        alias = Path(self._label).with_name(f".{Path(self._label).name}.reopen-{os.getpid()}-{time.time_ns()}")
        try:
            os.link(self._label, alias)
        except OSError as exc:
            raise ConfigError(f"cannot open the rebuilt database {self._label}: {exc}; restart the server",
                              where="sqlgate.yml (engine.path)") from None
        try:
            db, _ = _open_hardened(self._project, build=False, open_path=str(alias))
        finally:
            alias.unlink(missing_ok=True)
        try:
            _require_same_sources(self._project, db)
        except ConfigError:
            db.close()
            raise
        duckdb_identity.register(db)
        fresh = _Database(db, _file_id(self._label))
        with self._lock:
            old, self._current = self._current, fresh
            old.retired = True
            if old.active == 0:
                old.close()
            else:
                self._retired.append(old)
        log.info("switched to the rebuilt database %s", self._label)
        return True

    # ------------------------------------------------------------------ connections
    def _enter(self) -> _Database:
        with self._lock:
            database = self._current
            database.active += 1
        return database

    def _leave(self, database: _Database) -> None:
        with self._lock:
            database.active -= 1
            if database.retired and database.active == 0:
                database.close()
                with contextlib.suppress(ValueError):
                    self._retired.remove(database)

    def _conn(self, database: _Database | None = None) -> duckdb.DuckDBPyConnection:
        database = database or self._current
        con = getattr(database.local, "con", None)
        if con is None:
            with self._lock:
                con = database.db.cursor()
                self._worker_threads.add(threading.get_ident())
                database.conns.append(con)
            database.local.con = con
        return con

    # ------------------------------------------------------------------ execution
    def _run(self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits,
             deadline: float, trusted: bool, slot: dict[str, Any] | None = None, page: Page = FIRST) -> QueryResult:
        # a cursor of its own per call: closing it frees a half-fetched result, and interrupting it
        # (timeout, cancelled client) can only ever stop this call
        database = self._enter()
        try:
            cur = self._conn(database).cursor()
        except BaseException:
            self._leave(database)
            raise
        if slot is not None:
            slot["cursor"] = cur
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueryTimeout(f"query not started within the {limits.timeout_seconds:g} s timeout")
            ticket = self._watchdog.arm(remaining, cur.interrupt)
            try:
                with duckdb_identity.bound(call, trusted, self.query_headers):
                    pageable, ordered = trusted, False
                    if not trusted:
                        # the guard runs here, on the worker, so a big query never blocks the event loop
                        checked = database.guard.check(sql, cur)
                        pageable, ordered = checked.wrappable, checked.ordered
                        inner = checked.sql
                        if checked.wrappable and (page.offset or page.order_all):
                            inner = paged(inner, limits.max_rows + 1, page.offset, page.order_all)
                        # rows are bounded inside DuckDB (2x max_bytes as text, so any row that could
                        # fit the JSON answer passes; the shaper cuts exactly)
                        sql = (row_size_guarded(inner, 2 * limits.max_bytes + 1024)
                               if checked.wrappable else inner)
                    elif page.offset:
                        sql = trusted_page(sql, limits.max_rows + 1, page)
                    cur.execute(sql, params) if params else cur.execute(sql)
                    intervals = _interval_columns(cur.description)
                    if intervals and pageable:
                        # DuckDB hands INTERVALs to Python as timedelta, a month as 30 days: read
                        # them as DuckDB's own text instead (the same statement, one projection over it)
                        types = [str(d[1]) for d in cur.description]
                        cur.execute(_intervals_as_text(sql, cur.description, intervals), params) \
                            if params else cur.execute(_intervals_as_text(sql, cur.description, intervals))
                        qr = self._fetch(cur, limits, deadline, types, intervals)
                    else:
                        qr = self._fetch(cur, limits, deadline)
                    qr.pageable, qr.ordered, qr.page = pageable, ordered, page
                    return qr
            except duckdb.InterruptException:
                if self._watchdog.disarm(ticket):
                    raise QueryTimeout(
                        f"query cancelled: it ran longer than the {limits.timeout_seconds:g} s timeout") from None
                raise QueryFailed("query was interrupted") from None
            except duckdb.OutOfMemoryException as exc:
                raise QueryFailed("the query needs more memory than the engine may use (engine.memory_limit): "
                                  f"{hide_paths(_clean_error(exc), self._path_aliases)}") from None
            except duckdb.Error as exc:
                raise QueryFailed(hide_paths(_clean_error(exc), self._path_aliases)) from None
            except (OverflowError, ValueError) as exc:  # DuckDB's own conversion to Python values
                raise QueryFailed(_unconvertible(exc)) from None
            finally:
                self._watchdog.disarm(ticket)
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()
            self._leave(database)

    @staticmethod
    def _fetch(cur: duckdb.DuckDBPyConnection, limits: Limits, deadline: float,
               types: list[str] | None = None, intervals: list[int] | None = None) -> QueryResult:
        """Fetch in growing batches until the answer is full, so huge rows stop early."""
        description = cur.description
        if description is None:
            return QueryResult(columns=[], types=[], rows=[], limits=limits)
        converters = {i: duckdb_interval for i in intervals or []}
        shaper = RowShaper([d[0] for d in description], types or [str(d[1]) for d in description], limits,
                           converters)
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
                      trusted: bool, page: Page = FIRST) -> QueryResult:
        deadline = time.monotonic() + limits.timeout_seconds  # one deadline: waiting counts too
        if self._admission is None:
            self._loop = asyncio.get_running_loop()
            self._admission = Admission(self._pool_size, self._per_caller)
        async with self._admission.slot(call.principal, deadline, limits.timeout_seconds):
            loop = asyncio.get_running_loop()
            slot: dict[str, Any] = {}
            fut = loop.run_in_executor(self._pool, self._run, sql, params, call, limits, deadline, trusted, slot,
                                       page)
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
                      limits: Limits, page: Page = FIRST) -> QueryResult:
        return await self._submit(sql, params, call, limits, trusted=True, page=page)

    async def run_untrusted(self, sql: str, call: CallContext, limits: Limits, page: Page = FIRST) -> QueryResult:
        return await self._submit(sql, None, call, limits, trusted=False, page=page)

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
            # DuckDB names the SQL line ("LINE 3:"); PREPARE … AS keeps the lines of `sql`
            line = re.search(r"\nLINE (\d+):", str(exc))
            return _clean_error(exc) + (f" (SQL line {line.group(1)})" if line else "")
        finally:
            cur.close()
        return None

    # ------------------------------------------------------------------ catalog
    async def list_schemas(self, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT database_name AS database, schema_name AS schema, comment "
            "FROM duckdb_schemas() WHERE database_name = current_database() "
            "AND schema_name NOT IN ('information_schema', 'pg_catalog') "
            "ORDER BY 1, 2", None, limits)

    async def list_tables(self, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT schema_name AS schema, table_name AS name, 'table' AS kind, comment, "
            "estimated_size AS estimated_rows, column_count FROM duckdb_tables() "
            "WHERE NOT internal AND NOT temporary AND ($s IS NULL OR schema_name = $s) AND "
            + _OWN.format(n="table_name") + " UNION ALL "
            "SELECT v.schema_name, v.view_name, 'view', v.comment, NULL, "
            "(SELECT count(*) FROM duckdb_columns() c WHERE c.table_oid = v.view_oid) "
            "FROM duckdb_views() v WHERE NOT v.internal AND NOT v.temporary "
            "AND ($s IS NULL OR v.schema_name = $s) AND " + _OWN.format(n="view_name") + " ORDER BY 1, 2",
            {"s": schema}, limits)

    async def _find_relation(self, table: str, schema: str | None, limits: Limits) -> QueryResult:
        return await self._meta(
            "SELECT schema_name, table_name, 'table' AS kind, comment, NULL FROM duckdb_tables() "
            "WHERE NOT internal AND NOT temporary AND table_name = $t AND ($s IS NULL OR schema_name = $s) AND "
            + _OWN.format(n="table_name") +
            " UNION ALL SELECT schema_name, view_name, 'view', comment, NULL FROM duckdb_views() "
            "WHERE NOT internal AND NOT temporary AND view_name = $t AND ($s IS NULL OR schema_name = $s) AND "
            + _OWN.format(n="view_name"),
            {"t": table, "s": schema}, limits)

    async def _describe_relation(self, schema: str, name: str, ref: Any,
                                 limits: Limits) -> tuple[QueryResult, QueryResult]:
        where = {"s": schema, "t": name}
        cols = await self._meta(
            "SELECT column_name AS name, data_type AS type, is_nullable AS nullable, "
            "column_default AS \"default\", comment FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = $s AND table_name = $t "
            "ORDER BY column_index", where, limits)
        keys = await self._meta(
            "SELECT constraint_type AS type, constraint_column_names AS columns, "
            "referenced_table, referenced_column_names AS referenced_columns FROM duckdb_constraints() "
            "WHERE database_name = current_database() AND schema_name = $s AND table_name = $t "
            "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY', 'UNIQUE') ORDER BY constraint_index",
            where, limits)
        return cols, keys

    async def catalog_entries(self) -> list[dict[str, Any]]:
        big = Limits(max_rows=1_000_000, max_bytes=1 << 40, timeout_seconds=30)
        objs = await self._meta(
            "SELECT schema_name AS schema, table_name AS name, 'table' AS kind, comment, NULL AS columns "
            "FROM duckdb_tables() WHERE NOT internal AND NOT temporary AND " + _OWN.format(n="table_name") +
            " UNION ALL SELECT schema_name, view_name, 'view', comment, NULL FROM duckdb_views() "
            "WHERE NOT internal AND NOT temporary AND " + _OWN.format(n="view_name"), None, big)
        cols = await self._meta(
            "SELECT c.schema_name AS schema, c.table_name AS table, c.column_name AS name, "
            "c.data_type AS type, c.comment FROM duckdb_columns() c WHERE NOT c.internal "
            "AND c.database_name = current_database() AND " + _OWN.format(n="c.table_name"), None, big)
        entries = [dict(r, table=None) for r in objs.records()]
        entries += [dict(r, kind="column") for r in cols.records()]
        return entries

    async def close(self) -> None:
        with self._lock:
            databases = [self._current, *self._retired]
            for database in databases:  # statements still running end now, so the pool can stop
                database.interrupt()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._watchdog.stop()
        with self._lock:
            for database in databases:
                database.close()
            self._retired.clear()


def _interval_columns(description) -> list[int]:
    return [i for i, d in enumerate(description or []) if str(d[1]) == "INTERVAL"]


def _intervals_as_text(sql: str, description, intervals: list[int]) -> str:
    """The same statement with its INTERVAL columns as VARCHAR (DuckDB's exact text of them)."""
    names = ", ".join(
        f'CAST(q."{description[i][0].replace(chr(34), chr(34) * 2)}" AS VARCHAR) AS '
        f'"{description[i][0].replace(chr(34), chr(34) * 2)}"' for i in intervals)
    return f"SELECT * REPLACE ({names}) FROM (\n{sql}\n) q"


def _open_hardened(project, build: bool, progress=None,
                   open_path: str | None = None) -> tuple[duckdb.DuckDBPyConnection, str]:
    """The project's database as the server uses it: built if needed (when `build`), sources
    attached, file access limited to the sources and allowed_paths, external access off,
    configuration locked. `open_path`: another name of the same file to open it by."""
    from sqlgate.engine import duckdb_build
    from sqlgate.engine.duckdb_sources import access_lists, attach, load_views, resolve_sources

    cfg = project.settings.engine
    in_memory = cfg.path == ":memory:"
    path = ":memory:" if in_memory else str(project.path(cfg.path))
    if cfg.seed and not project.path(cfg.seed).is_file():
        raise ConfigError(f"engine.seed file not found: {project.path(cfg.seed)}", where="sqlgate.yml")
    sources = resolve_sources(project)
    views = load_views(project.root)
    report = progress or duckdb_build._log_progress
    if not in_memory and build:
        duckdb_build.ensure_built(project, Path(path), sources, views, report)
    elif not in_memory and not Path(path).exists():
        raise ConfigError(f"database file {path} does not exist", where="sqlgate.yml (engine.path)")
    config: dict[str, Any] = dict(_HARDENING)
    if cfg.threads:
        config["threads"] = cfg.threads
    config["memory_limit"] = cfg.memory_limit
    # no spilling unless a directory is configured: DuckDB's default is next to the database
    # (or the working directory for :memory:), which is nobody's decision
    temp_directory = str(project.path(cfg.temp_directory)) if cfg.temp_directory else ""
    dirs, files = access_lists(sources)
    dirs += cfg.allowed_urls  # URL prefixes: DuckDB checks them like directories
    for entry in cfg.allowed_paths:
        p = Path(os.path.abspath(project.path(entry)))
        (dirs if p.is_dir() else files).append(str(p) + ("/" if p.is_dir() else ""))
    try:
        if in_memory:
            db = duckdb.connect(":memory:", config=config)
            duckdb_identity.register(db)
            duckdb_build.populate(db, project, sources, views, report)
        else:
            db = duckdb.connect(open_path or path, read_only=cfg.read_only, config=config)
            try:
                attach(db, sources)
            except ConfigError:
                db.close()  # a reload that refuses the file must not keep it open
                raise
    except duckdb.Error as exc:
        raise ConfigError(f"cannot open DuckDB database {path}: {_clean_error(exc)}",
                          where="sqlgate.yml (engine)") from None
    _load_extensions(db, project)
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
    _check_views(db, views)
    return db, path


def _require_same_sources(project, db: duckdb.DuckDBPyConnection) -> None:
    """A rebuilt file is served with the configuration the server started with (its allow-listed
    files, attached sources, path aliases): one built from another sqlgate.yml would fail on
    every query that reads a new source, so it is not switched to."""
    from sqlgate.engine.duckdb_sources import fingerprint, load_views, read_marker, resolve_sources

    built = read_marker(db)
    if built is not None and built != fingerprint(project, resolve_sources(project), load_views(project.root)):
        raise ConfigError("the rebuilt database was built from other sources, seed or views than this server "
                          "runs with (sqlgate.yml changed since it started): restart the server to serve it",
                          where="sqlgate.yml (sources)")


def _load_extensions(db: duckdb.DuckDBPyConnection, project) -> None:
    """Load the configured extensions from the project's extension directory (never downloaded:
    autoinstall is off), before the configuration is locked."""
    cfg = project.settings.engine
    if not cfg.extensions:
        return
    if cfg.extension_directory:
        db.execute("SET extension_directory = $1", [str(project.path(cfg.extension_directory))])
    for name in cfg.extensions:
        try:
            db.execute(f"LOAD {name}")  # a validated identifier (config/models.py)
        except duckdb.Error as exc:
            db.close()
            where = f"in {project.path(cfg.extension_directory)}" if cfg.extension_directory else \
                "(set engine.extension_directory to where it is installed)"
            raise ConfigError(f"DuckDB extension {name!r} cannot be loaded {where}: "
                              f"{_clean_error(exc).splitlines()[0]}", where="sqlgate.yml (engine.extensions)") \
                from None


def _check_views(db: duckdb.DuckDBPyConnection, views) -> None:
    """Bind every views/ file as the server will (external access off), so a view that reads a
    file by path fails at start with its file named, not at the first query."""
    from sqlgate.engine.duckdb_sources import VIEWS_DIR, ident

    for view in views:
        try:
            db.execute(f"SELECT * FROM {ident(view.name)} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            db.close()
            raise ConfigError(f"view {view.name!r} cannot be read by the server: {_clean_error(exc)} (views "
                              "read tables and sources; make a file a source instead of reading it by path)",
                              where=f"{VIEWS_DIR}/{view.path.name}") from None
