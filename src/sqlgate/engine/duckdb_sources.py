"""Data sources (`sources:` in sqlgate.yml, `views/*.sql`) as relations of the DuckDB database.

Untrusted SQL never reads a file itself (the guard refuses file table functions), so every source
is something it can name like a table:

- csv / tsv / parquet / json / ndjson: a view over `read_csv(…)`, `read_parquet(…)`, `read_json(…)`
  with absolute paths. DuckDB binds a view when a query uses it, so the file's current content is
  served (always live). The engine allow-lists exactly these files (a glob: its directory) before
  external access is switched off and the configuration locked; nothing else can be read.
- duckdb: the file is attached READ_ONLY under a hidden alias at every open; a schema named after
  the source holds one view per table, so queries say `source.table`.
- sqlite: DuckDB's sqlite extension cannot be installed offline for DuckDB 2.x, so the tables are
  copied in with Python's sqlite3 when the database is built (`sqlgate refresh` re-reads them).
- views/NAME.sql: one view per file, its leading `--` comment lines the view's comment.

Everything is created from the operator's configuration with identifiers and literals quoted here,
never by pasting configuration text into SQL (view files are the project's SQL and are checked to be
one SELECT).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from sqlgate.errors import ConfigError

VIEWS_DIR = "views"
ATTACH_PREFIX = "__sqlgate_src_"
BUILD_MARKER = "__sqlgate_build"
# bumped when the way sources are built changes, so old builds are rebuilt
BUILD_FORMAT = 1
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".json": "json", ".ndjson": "ndjson",
               ".jsonl": "ndjson", ".duckdb": "duckdb", ".sqlite": "sqlite", ".sqlite3": "sqlite"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_CHARS = re.compile(r"[*?\[]")
_SQLITE_CHUNK = 50_000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    name: str
    format: str
    patterns: list[str]      # absolute, normalised (`..` folded, symlinks kept: DuckDB checks these)
    files: list[str]         # what the patterns match now
    description: str | None
    options: dict[str, Any]
    columns: dict[str, str]

    @property
    def attach_alias(self) -> str:
        return ATTACH_PREFIX + self.name


@dataclass(frozen=True)
class ViewFile:
    name: str
    path: Path
    sql: str
    description: str | None


# ---------------------------------------------------------------------------- quoting
def ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def literal(value: Any) -> str:
    """A DuckDB literal for a configuration value (no backslash escapes exist in '…' strings)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return repr(value)
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("text cannot hold a NUL character")
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(str(k))}: {literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"unsupported value {value!r}")


# ---------------------------------------------------------------------------- resolving
def _where(name: str) -> str:
    return f"sqlgate.yml (sources.{name})"


def _format_of(name: str, path: str, declared: str | None) -> str:
    if declared:
        return declared
    lower = path.lower().removesuffix(".gz").removesuffix(".zst")
    fmt = _EXTENSIONS.get(os.path.splitext(lower)[1])
    if fmt is None and lower.endswith(".db"):
        fmt = "sqlite"
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path!r} from its extension; set format: "
                          "(csv, tsv, parquet, json, ndjson, duckdb or sqlite)", where=_where(name))
    return fmt


def _absolute(root: Path, pattern: str) -> str:
    p = os.path.expanduser(pattern)
    # abspath folds `..` without resolving symlinks: DuckDB's allow-list compares these strings
    return os.path.abspath(p if os.path.isabs(p) else os.path.join(root, p))


def resolve_sources(project) -> list[Source]:
    """Each configured source with absolute patterns and the files they match now.

    A pattern matching no file is a configuration error naming the source and the pattern."""
    root = project.root
    out = []
    for name, cfg in project.settings.sources.items():
        patterns = [_absolute(root, p) for p in cfg.paths]
        fmt = _format_of(name, cfg.paths[0], cfg.format)
        files: list[str] = []
        for pattern, raw in zip(patterns, cfg.paths, strict=True):
            matched = sorted(glob.glob(pattern, recursive=True)) if _GLOB_CHARS.search(pattern) else (
                [pattern] if os.path.isfile(pattern) else [])
            if not matched:
                raise ConfigError(f"source {name!r}: no file matches {raw!r} (looked for {pattern})",
                                  where=_where(name))
            files += matched
        if fmt in ("duckdb", "sqlite") and (len(files) != 1 or _GLOB_CHARS.search(patterns[0])):
            raise ConfigError(f"source {name!r}: a {fmt} source is one database file, not a glob or a list",
                              where=_where(name))
        if fmt in ("duckdb", "sqlite") and cfg.options:
            raise ConfigError(f"source {name!r}: options: are for file readers (csv, parquet, json), "
                              f"not {fmt} databases", where=_where(name))
        if fmt == "sqlite":
            _check_sqlite_header(name, files[0])
        # no description: say where the rows come from, which is what a reader of the catalog needs
        description = cfg.description or (f"Rows of {', '.join(cfg.paths)} ({fmt})"
                                          if fmt not in ("duckdb", "sqlite") else None)
        out.append(Source(name=name, format=fmt, patterns=patterns, files=files, description=description,
                          options=dict(cfg.options), columns=dict(cfg.columns)))
    return out


def _check_sqlite_header(name: str, path: str) -> None:
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\0":
            raise ConfigError(f"source {name!r}: {path} is not a SQLite database", where=_where(name))


def load_views(root: Path) -> list[ViewFile]:
    """views/NAME.sql, sorted by name; the leading `--` lines are the view's description."""
    folder = root / VIEWS_DIR
    if not folder.is_dir():
        return []
    views = []
    for path in sorted(folder.glob("*.sql")):
        name = path.stem
        where = f"{VIEWS_DIR}/{path.name}"
        if not _IDENT.fullmatch(name) or name.lower().startswith("__sqlgate"):
            raise ConfigError(f"view file name {path.name!r} must be a plain identifier (letters, digits, _) "
                              "followed by .sql: it becomes the view's name", where=where)
        text = path.read_text(encoding="utf-8")
        comment = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("--"):
                comment.append(stripped[2:].strip())
            elif stripped:
                break
        views.append(ViewFile(name=name, path=path, sql=text, description=" ".join(c for c in comment if c) or None))
    return views


def access_lists(sources: list[Source]) -> tuple[list[str], list[str]]:
    """(directories, files) the engine allow-lists for the sources' views.

    A glob allows the directory before its first wildcard (so files added later are served too);
    a plain path allows exactly that file."""
    dirs: list[str] = []
    files: list[str] = []
    for src in sources:
        if src.format in ("duckdb", "sqlite"):
            continue  # attached before external access is off, or copied in
        for pattern in src.patterns:
            match = _GLOB_CHARS.search(pattern)
            if match:
                dirs.append(os.path.dirname(pattern[:match.start()]).rstrip("/") + "/")
            else:
                files.append(pattern)
    return dirs, files


def fingerprint(project, sources: list[Source], views: list[ViewFile]) -> str:
    """What the built database depends on besides live file contents: the seed, the source
    definitions (absolute paths, so a moved project rebuilds its views), the views' SQL."""
    cfg = project.settings.engine
    seed = project.path(cfg.seed) if cfg.seed else None
    doc = {
        "format": BUILD_FORMAT,
        "seed": hashlib.sha256(seed.read_bytes()).hexdigest() if seed and seed.is_file() else None,
        "sources": [[s.name, s.format, s.patterns, s.description, s.options, s.columns] for s in sources],
        "views": [[v.name, hashlib.sha256(v.sql.encode()).hexdigest()] for v in views],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- building
def attach(con: duckdb.DuckDBPyConnection, sources: list[Source]) -> None:
    """Attach the DuckDB-file sources read-only (at build and at every open, before the lock)."""
    for src in sources:
        if src.format == "duckdb":
            try:
                con.execute(f"ATTACH {literal(src.files[0])} AS {ident(src.attach_alias)} (READ_ONLY)")
            except duckdb.Error as exc:
                raise ConfigError(f"source {src.name!r}: cannot attach {src.files[0]}: {_short(exc)}",
                                  where=_where(src.name)) from None


def build_sources(con: duckdb.DuckDBPyConnection, sources: list[Source], views: list[ViewFile],
                  progress: Progress) -> None:
    """Create every source and view in the database `con` is building (attach() ran before)."""
    for src in sources:
        started = time.monotonic()
        try:
            if src.format == "duckdb":
                _duckdb_views(con, src)
            elif src.format == "sqlite":
                _copy_sqlite(con, src, progress)
            else:
                _file_view(con, src)
        except duckdb.Error as exc:
            raise ConfigError(f"source {src.name!r}: {_short(exc)}", where=_where(src.name)) from None
        progress(f"source {src.name} ({src.format}, {len(src.files)} file(s)) ready "
                 f"in {time.monotonic() - started:.1f} s")
    for view in views:
        _view_file(con, view)
        progress(f"view {view.name} ({VIEWS_DIR}/{view.path.name}) created")


def _reader(src: Source) -> str:
    files = src.patterns[0] if len(src.patterns) == 1 else src.patterns
    options = dict(src.options)
    if src.format in ("csv", "tsv"):
        if src.format == "tsv":
            options.setdefault("delim", "\t")
        function = "read_csv"
    elif src.format == "parquet":
        function = "read_parquet"
    else:
        function = "read_json"
        if src.format == "ndjson":
            options.setdefault("format", "newline_delimited")
    args = [literal(files)] + [f"{key} := {literal(value)}" for key, value in options.items()]
    return f"{function}({', '.join(args)})"


def _file_view(con: duckdb.DuckDBPyConnection, src: Source) -> None:
    con.execute(f"CREATE VIEW {ident(src.name)} AS SELECT * FROM {_reader(src)}")
    # a view binds lazily: read the header now, so a bad option or file fails the build, not a query
    con.execute(f"SELECT * FROM {ident(src.name)} LIMIT 0").fetchall()
    _comments(con, "VIEW", ident(src.name), src)


def _comments(con: duckdb.DuckDBPyConnection, kind: str, target: str, src: Source) -> None:
    if src.description:
        con.execute(f"COMMENT ON {kind} {target} IS {literal(src.description)}")
    if not src.columns:
        return
    known = {r[0] for r in con.execute(f"SELECT * FROM {target} LIMIT 0").description}
    for column, text in src.columns.items():
        if column not in known:
            raise ConfigError(f"source {src.name!r}: columns: names {column!r}, which the data does not have "
                              f"(columns: {', '.join(sorted(known))})", where=_where(src.name))
        con.execute(f"COMMENT ON COLUMN {target}.{ident(column)} IS {literal(text)}")


def _duckdb_views(con: duckdb.DuckDBPyConnection, src: Source) -> None:
    relations = con.execute(
        "SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE database_name = $db "
        "UNION ALL SELECT schema_name, view_name, comment FROM duckdb_views() "
        "WHERE database_name = $db AND NOT internal ORDER BY 1, 2", {"db": src.attach_alias}).fetchall()
    con.execute(f"CREATE SCHEMA {ident(src.name)}")
    for schema, table, comment in relations:
        # tables of the attached file's main schema keep their names; others become schema_table
        name = table if schema == "main" else f"{schema}_{table}"
        target = f"{ident(src.name)}.{ident(name)}"
        con.execute(f"CREATE VIEW {target} AS SELECT * FROM "
                    f"{ident(src.attach_alias)}.{ident(schema)}.{ident(table)}")
        comment = _table_comment(src, table, comment)
        if comment:
            con.execute(f"COMMENT ON VIEW {target} IS {literal(comment)}")
        for column, col_comment in con.execute(
                "SELECT column_name, comment FROM duckdb_columns() WHERE database_name = $db "
                "AND schema_name = $s AND table_name = $t AND comment IS NOT NULL",
                {"db": src.attach_alias, "s": schema, "t": table}).fetchall():
            con.execute(f"COMMENT ON COLUMN {target}.{ident(column)} IS {literal(col_comment)}")


def _table_comment(src: Source, table: str, own: str | None) -> str | None:
    """A table's own comment, else the source's description naming the table (DuckDB has no
    schema comments)."""
    if own:
        return own
    return f"{src.description} (table {table} of source {src.name})" if src.description else None


# SQLite declared type -> DuckDB type, by SQLite's own affinity rules (and the common date names)
def _sqlite_type(declared: str) -> str:
    t = (declared or "").upper()
    if "INT" in t:
        return "BIGINT"
    if any(w in t for w in ("CHAR", "CLOB", "TEXT")):
        return "VARCHAR"
    if "BLOB" in t:
        return "BLOB"
    if any(w in t for w in ("REAL", "FLOA", "DOUB")):
        return "DOUBLE"
    if "BOOL" in t:
        return "BOOLEAN"
    if "DATETIME" in t or "TIMESTAMP" in t:
        return "TIMESTAMP"
    if "DATE" in t:
        return "DATE"
    if any(w in t for w in ("NUMERIC", "DECIMAL")):
        return "DOUBLE"
    return "VARCHAR"  # no declared type: SQLite stores anything; text keeps every value


def _copy_sqlite(con: duckdb.DuckDBPyConnection, src: Source, progress: Progress) -> None:
    import numpy as np

    path = src.files[0]
    lite = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True)
    try:
        tables = lite.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                              "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").fetchall()
        con.execute(f"CREATE SCHEMA {ident(src.name)}")
        for table, _kind in tables:
            info = lite.execute(f"PRAGMA table_info({ident(table)})").fetchall()
            columns = [(row[1], _sqlite_type(row[2])) for row in info]
            target = f"{ident(src.name)}.{ident(table)}"
            con.execute(f"CREATE TABLE {target} ("
                        + ", ".join(f"{ident(c)} {t}" for c, t in columns) + ")")
            cursor = lite.execute(f"SELECT {', '.join(ident(c) for c, _ in columns)} FROM {ident(table)}")
            copied = 0
            while True:
                rows = cursor.fetchmany(_SQLITE_CHUNK)
                if not rows:
                    break
                # one chunk as text (BLOBs as bytes) registered with DuckDB, cast by the engine:
                # row-by-row inserts run at ~1,000 rows/s
                chunk = {}
                for i, (_, kind) in enumerate(columns):
                    chunk[f"c{i}"] = np.array([_cell(r[i], kind) for r in rows], dtype=object)
                con.register("__sqlgate_chunk", chunk)
                try:
                    con.execute(f"INSERT INTO {target} SELECT "
                                + ", ".join(f"CAST(c{i} AS {kind})" for i, (_, kind) in enumerate(columns))
                                + " FROM __sqlgate_chunk")
                except duckdb.Error as exc:
                    raise ConfigError(f"source {src.name!r}: table {table!r} could not be copied: {_short(exc)}",
                                      where=_where(src.name)) from None
                finally:
                    con.unregister("__sqlgate_chunk")
                copied += len(rows)
                progress(f"source {src.name}: {table}: {copied:,} rows copied")
            comment = _table_comment(src, table, None)
            if comment:
                con.execute(f"COMMENT ON TABLE {target} IS {literal(comment)}")
    except sqlite3.Error as exc:
        raise ConfigError(f"source {src.name!r}: cannot read SQLite file {path}: {exc}",
                          where=_where(src.name)) from None
    finally:
        lite.close()


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "BLOB":
        return value if isinstance(value, bytes) else str(value).encode()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _view_file(con: duckdb.DuckDBPyConnection, view: ViewFile) -> None:
    where = f"{VIEWS_DIR}/{view.path.name}"
    try:
        statements = con.extract_statements(view.sql)
    except duckdb.Error as exc:
        raise ConfigError(f"cannot parse the view: {_short(exc)}", where=where) from None
    kinds = [str(s.type).rsplit(".", 1)[-1] for s in statements]
    if kinds != ["SELECT"]:
        raise ConfigError("a view file holds exactly one SELECT statement (WITH, VALUES and FROM-first "
                          f"count), got {len(statements)} statement(s)", where=where)
    try:
        con.execute(f"CREATE VIEW {ident(view.name)} AS {statements[0].query}")
        if view.description:
            con.execute(f"COMMENT ON VIEW {ident(view.name)} IS {literal(view.description)}")
    except duckdb.Error as exc:
        raise ConfigError(f"view {view.name!r}: {_short(exc)}", where=where) from None


def write_marker(con: duckdb.DuckDBPyConnection, fp: str) -> None:
    con.execute(f"CREATE TABLE main.{BUILD_MARKER} AS SELECT $fp::VARCHAR AS fingerprint, "
                "now() AS built_at", {"fp": fp})


def read_marker(con: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = con.execute(f"SELECT fingerprint FROM main.{BUILD_MARKER}").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0] if row else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().split("\n\nLINE", 1)[0]
    return text or type(exc).__name__
