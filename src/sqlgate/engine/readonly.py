"""Statement checker for untrusted SQL (the built-in query tool).

It parses *every* statement with sqlglot and admits exactly one read: SELECT / WITH / VALUES /
set operations / DESCRIBE / SHOW / SUMMARIZE, or EXPLAIN of one of those. Anything that writes,
changes settings, touches files or extensions, or controls transactions is refused anywhere in the
tree (writable CTEs, SELECT INTO, `query('…')` table functions included). It is the second layer:
the engine underneath is opened read-only with file access off, and that is the real guard.
"""

from __future__ import annotations

import contextlib
import logging
import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from sqlgate.errors import QueryRefused

# sqlglot warns on stderr whenever it falls back to an opaque Command; we refuse those anyway
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_READ_ROOTS = (exp.Query, exp.Values, exp.Describe, exp.Show, exp.Summarize)

_FORBIDDEN_NODES: dict[type, str] = {
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
    exp.Create: "CREATE",
    exp.Drop: "DROP",
    exp.Alter: "ALTER",
    exp.Copy: "COPY",
    exp.Set: "SET",
    exp.Pragma: "PRAGMA",
    exp.Attach: "ATTACH",
    exp.Detach: "DETACH",
    exp.Install: "INSTALL",
    exp.Command: "this command",
    exp.Transaction: "BEGIN/START TRANSACTION",
    exp.Commit: "COMMIT",
    exp.Rollback: "ROLLBACK",
    exp.Use: "USE",
    exp.Into: "SELECT … INTO",
    exp.TruncateTable: "TRUNCATE",
    exp.LoadData: "LOAD",
}
for _name in ("Grant", "Revoke", "Analyze", "Cache", "Uncache", "Refresh", "Lock"):
    if hasattr(exp, _name):
        _FORBIDDEN_NODES[getattr(exp, _name)] = _name.upper()

# table/scalar functions that read files, reach other databases, run SQL strings, or change state
_FORBIDDEN_FUNCTIONS = frozenset(
    {
        "query", "query_table", "glob", "sniff_csv", "read_text", "read_blob", "parquet_scan",
        "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
        "sqlite_scan", "sqlite_attach", "postgres_scan", "postgres_attach", "postgres_query",
        "postgres_execute", "mysql_scan", "mysql_query", "mysql_execute", "iceberg_scan",
        "delta_scan", "st_read", "excel_scan", "nextval", "setval", "setseed", "getenv",
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
        "dblink", "dblink_exec", "set_config", "pg_sleep", "pg_terminate_backend", "pg_cancel_backend",
        "pg_reload_conf", "pg_advisory_lock", "txid_current", "load_extension", "checkpoint",
        "force_checkpoint",
    }
)
_FORBIDDEN_PREFIXES = ("read_", "pg_read", "pg_ls", "lo_")
_FORBIDDEN_SUFFIXES = ("_scan", "_attach", "_execute")
# statements sqlglot cannot parse but whose refusal should still say what they are
_ADMIN_KEYWORDS = frozenset({"EXPORT", "IMPORT", "CREATE", "VACUUM", "CHECKPOINT", "FORCE", "LOAD", "CALL",
                             "RESET", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "COPY", "ATTACH",
                             "DETACH", "INSTALL", "SET", "PRAGMA", "GRANT", "REVOKE", "COMMENT"})
_FILE_LIKE = re.compile(r"[/\\:*?]|\.[A-Za-z0-9]{1,8}$")
_EXPLAIN = re.compile(r"^\s*explain(\s+analy[sz]e)?\b", re.IGNORECASE)


def _function_names(node: exp.Func) -> set[str]:
    names = {type(node).__name__.lower()}
    if isinstance(node, exp.Anonymous):
        names.add(str(node.name).lower())
    else:
        with contextlib.suppress(AttributeError, ValueError):
            names.add(node.sql_name().lower())
    return names


def _check_function(node: exp.Func) -> None:
    for name in _function_names(node):
        if (
            name in _FORBIDDEN_FUNCTIONS
            or name.startswith(_FORBIDDEN_PREFIXES)
            or name.endswith(_FORBIDDEN_SUFFIXES)
        ):
            raise QueryRefused(
                f"function {name}() is not allowed in read-only queries "
                "(file, network, extension and state-changing functions are blocked)"
            )


def _check_tree(root: exp.Expression) -> None:
    forbidden = tuple(_FORBIDDEN_NODES)
    for node in root.walk():
        if isinstance(node, forbidden):
            label = next(lbl for kind, lbl in _FORBIDDEN_NODES.items() if isinstance(node, kind))
            raise QueryRefused(f"{label} is not allowed: only read-only queries are accepted")
        if isinstance(node, exp.Func):
            _check_function(node)
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            name = node.this.name
            if node.this.quoted and _FILE_LIKE.search(name):
                raise QueryRefused(f"reading files is not allowed (table reference {name!r})")


def check_read_only(sql: str, dialect: str) -> None:
    """Raise QueryRefused unless `sql` is a single read-only statement."""
    if not sql or not sql.strip():
        raise QueryRefused("empty query")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (ParseError, TokenError) as exc:
        keyword = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        if keyword in _ADMIN_KEYWORDS:
            raise QueryRefused(f"{keyword} statement is not allowed: only read-only queries are accepted") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QueryRefused(f"could not parse the query, so it is refused: {first}") from None
    if not statements:
        raise QueryRefused("empty query (only comments)")
    if len(statements) > 1:
        raise QueryRefused(
            f"only one statement per call is allowed; got {len(statements)} statements"
        )
    stmt = statements[0]
    if isinstance(stmt, exp.Command) and _EXPLAIN.match(sql.lstrip()) is not None:
        # sqlglot keeps EXPLAIN as an opaque command: check the statement being explained.
        # EXPLAIN ANALYZE executes it, so the inner statement must itself be a read.
        inner = _EXPLAIN.sub("", sql.lstrip(), count=1)
        check_read_only(inner, dialect)
        return
    if not isinstance(stmt, _READ_ROOTS):
        kind = _FORBIDDEN_NODES.get(type(stmt))
        if isinstance(stmt, exp.Command):
            kind = str(stmt.this).upper()
        if kind is None:
            words = sql.strip().split(None, 1)
            kind = f"{words[0].upper()} statement" if words else "this statement"
        raise QueryRefused(f"{kind} is not allowed: only read-only queries are accepted")
    _check_tree(stmt)
