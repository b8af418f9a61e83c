"""Building a project's DuckDB database: the seed SQL, then the sources and views.

A database file is built into a new file next to it and swapped in with os.replace, so a server
that has the old file open keeps reading it until it reopens (SIGHUP), and a failed build leaves
the old file untouched. The build records a fingerprint of what it was built from (seed text,
source definitions, view files); a start finds a stale build and rebuilds it. File sources need no
rebuild: they are views, read live.

The seed runs with DuckDB's file_search_path set to the project directory, so relative paths in it
(`read_csv('data/x.csv')`) mean the project's files wherever the server was started from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from sqlgate.engine import duckdb_identity
from sqlgate.engine.duckdb_sources import (
    Source,
    ViewFile,
    attach,
    build_sources,
    fingerprint,
    load_views,
    read_marker,
    resolve_sources,
    write_marker,
)
from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.build")

Progress = Callable[[str], None]
# how often a long seed statement reports how far it is
PROGRESS_INTERVAL = 2.0


def _log_progress(message: str) -> None:
    log.info("%s", message)


def populate(con: duckdb.DuckDBPyConnection, project, sources: list[Source], views: list[ViewFile],
             progress: Progress = _log_progress) -> None:
    """Run the seed and create the sources and views in `con` (a database being built, or :memory:)."""
    con.execute("SET file_search_path = $1", [str(project.root)])
    attach(con, sources)
    cfg = project.settings.engine
    if cfg.seed:
        seed = project.path(cfg.seed)
        if not seed.is_file():
            raise ConfigError(f"engine.seed file not found: {seed}", where="sqlgate.yml")
        run_seed(con, seed, progress)
    build_sources(con, sources, views, progress)


def run_seed(con: duckdb.DuckDBPyConnection, seed: Path, progress: Progress) -> None:
    text = seed.read_text(encoding="utf-8")
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise ConfigError(f"seed SQL failed: {_clean(exc)}", where=str(seed)) from None
    started = time.monotonic()
    for number, statement in enumerate(statements, 1):
        label = f"seed {seed.name}: statement {number}/{len(statements)}"
        with _ticker(con, label, progress):
            try:
                con.execute(statement.query)
            except duckdb.Error as exc:
                raise ConfigError(f"seed SQL failed at statement {number}: {_clean(exc)}", where=str(seed)) from None
    progress(f"seed {seed.name}: {len(statements)} statement(s) in {time.monotonic() - started:.1f} s")


@contextlib.contextmanager
def _ticker(con: duckdb.DuckDBPyConnection, label: str, progress: Progress):
    """Report a long statement's progress every PROGRESS_INTERVAL seconds (DuckDB's own estimate)."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(PROGRESS_INTERVAL):
            try:
                pct = con.query_progress()
            except duckdb.Error:
                pct = -1
            share = f"{pct:.0f}%, " if pct is not None and pct >= 0 else ""
            progress(f"{label}: {share}{time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=tick, name="sqlgate-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def build_file(project, path: Path, sources: list[Source], views: list[ViewFile],
               progress: Progress = _log_progress) -> None:
    """Build the database into a new file, then swap it in (atomic on POSIX and Windows)."""
    _refuse_package_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.building-{os.getpid()}-{threading.get_ident()}")
    _remove(building)
    progress(f"building {path}")
    started = time.monotonic()
    con = duckdb.connect(str(building))
    try:
        duckdb_identity.register(con)  # views of the seed may use get_username() …
        populate(con, project, sources, views, progress)
        write_marker(con, fingerprint(project, sources, views))
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        _remove(building)
        raise
    con.close()
    # a write-ahead log left by someone who wrote the old file must not be replayed onto the new one
    Path(str(path) + ".wal").unlink(missing_ok=True)
    os.replace(building, path)
    progress(f"built {path} in {time.monotonic() - started:.1f} s")


def _refuse_package_dir(path: Path) -> None:
    """Never write a database into the installed package (examples/shop links to its template)."""
    package = Path(__file__).resolve().parent.parent
    if path.resolve().is_relative_to(package):
        raise ConfigError(
            f"refusing to build the database inside the sqlgate package ({path}); serve the bundled example "
            "with `make serve` (it sets SQLGATE_DB_PATH), set engine.path / SQLGATE_DB_PATH to a writable "
            "place, or create your own project with `sqlgate init DIR`", where="sqlgate.yml (engine.path)")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(str(path) + ".wal").unlink(missing_ok=True)


def ensure_built(project, path: Path, sources: list[Source], views: list[ViewFile],
                 progress: Progress = _log_progress) -> None:
    """Build the database when it is missing or was built from other seed/sources/views."""
    cfg = project.settings.engine
    managed = bool(cfg.seed or sources or views)
    if not path.exists():
        if not managed:
            raise ConfigError(
                f"database file {path} does not exist; set engine.seed to a SQL file that builds it, add "
                "sources:, or create a project with `sqlgate init`", where="sqlgate.yml (engine.path)")
        build_file(project, path, sources, views, progress)
        return
    if not managed:
        return
    marker = _marker_of(path)
    if marker == fingerprint(project, sources, views):
        return
    if marker is None and not (sources or views):
        return  # built before sqlgate recorded fingerprints, or the operator's own database
    if marker is None and not cfg.seed:
        raise ConfigError(
            f"{path} was not built by sqlgate, and sources:/views/ are created inside the database sqlgate "
            "builds; point engine.path at a new file (it is built from the sources), or attach this one as a "
            "source (format: duckdb)", where="sqlgate.yml (engine.path)")
    progress("the seed, sources or views changed since the database was built: rebuilding it")
    build_file(project, path, sources, views, progress)


def _marker_of(path: Path) -> str | None:
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise ConfigError(f"cannot open DuckDB database {path}: {_clean(exc)}",
                          where="sqlgate.yml (engine.path)") from None
    try:
        return read_marker(con)
    finally:
        con.close()


def refresh(project, progress: Progress = _log_progress) -> Path:
    """`sqlgate refresh`: rebuild the database now, whatever its fingerprint says."""
    cfg = project.settings.engine
    if cfg.type != "duckdb":
        raise ConfigError("refresh builds DuckDB databases; engine.type is " + cfg.type, where="sqlgate.yml")
    if cfg.path == ":memory:":
        raise ConfigError("nothing to refresh: engine.path is :memory:, which is built at every start",
                          where="sqlgate.yml (engine.path)")
    sources = resolve_sources(project)
    views = load_views(project.root)
    if not (cfg.seed or sources or views):
        raise ConfigError("nothing to refresh: the project has no engine.seed, sources: or views/",
                          where="sqlgate.yml")
    path = project.path(cfg.path)
    build_file(project, path, sources, views, progress)
    return path


def _clean(exc: BaseException) -> str:
    text = str(exc).strip().split("\n\nLINE", 1)[0]
    return text or type(exc).__name__
