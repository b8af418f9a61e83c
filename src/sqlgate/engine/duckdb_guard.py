"""The DuckDB guard: untrusted SQL is judged by DuckDB's own parser, and only what it admitted runs.

1. `extract_statements()` splits the text exactly as DuckDB will: there must be one statement, of
   an allowed type (SELECT — which covers WITH, VALUES, FROM-first, set operations, DESCRIBE, SHOW
   and SUMMARIZE — or EXPLAIN of such a statement). Statement types are an allow-list.
2. `json_serialize_sql()` gives DuckDB's parse tree of that statement; every node is checked:
   table functions are an allow-list (file readers, `query()`, logging and settings functions are
   not on it), scalar functions with side effects or server disclosure are refused (the side-effect
   list comes from the engine itself, `duckdb_functions().has_side_effects`), quoted file names and
   the built-in views that expose server paths or settings are refused.
3. The statement text DuckDB extracted is what the engine executes: never the raw input.

The connection underneath stays the last line: read-only, external access off, configuration
locked. Decisions are cached by SQL text (parsing is deterministic and the lists are fixed).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

import duckdb

from sqlgate.engine.duckdb_identity import NOT_FOR_QUERIES
from sqlgate.engine.guard import CheckedStatement, Guard
from sqlgate.errors import QueryRefused

# Table functions the query tool may use: generators and catalog views with nothing to disclose.
SAFE_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_dependencies", "duckdb_functions", "duckdb_indexes",
    "duckdb_keywords", "duckdb_schemas", "duckdb_sequences", "duckdb_tables", "duckdb_types",
    "duckdb_views", "duckdb_optimizers", "pragma_table_info", "pragma_show", "pragma_version",
    "pragma_collations", "icu_calendar_names", "pg_timezone_names", "histogram", "histogram_values",
    "test_all_types", "summary",
})
# Scalar functions refused on top of the engine's own side-effect list: they read the server's
# environment or settings (paths), or reach what the AI client must never see.
DENIED_FUNCTIONS = frozenset({
    "getenv", "current_setting", "getvariable", "get_user_external_token", "json_execute_serialized_sql",
    "query", "query_table", "read_text", "read_blob", "current_query",
})
# Side-effect functions that are harmless for a reader (random values), so they stay usable.
_HARMLESS_SIDE_EFFECTS = frozenset({"random", "uuid", "uuidv4", "uuidv7", "gen_random_uuid", "error"})
# Built-in views over refused table functions (paths of databases, settings, logs, statements).
DENIED_VIEWS = frozenset({
    "duckdb_databases", "pragma_database_list", "duckdb_logs", "pg_settings", "pg_prepared_statements",
    "duckdb_settings", "duckdb_secrets", "duckdb_temporary_files", "duckdb_variables", "duckdb_extensions",
    "duckdb_memory", "pg_database",
})
# Query nodes a read may contain; anything else (INSERT/UPDATE/DELETE/MERGE nodes of a writable CTE
# …) is refused. An allow-list, so a node type added by a later DuckDB is refused until reviewed.
READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_FILE_LIKE = re.compile(r"[/\\:*?]|\.[A-Za-z0-9]{1,8}$")
_EXPLAIN_WORDS = ("explain", "analyze", "analyse")
_CACHE_SIZE = 1024

_PIVOT_HINT = ("PIVOT without an IN list (it creates a type first; list the values instead: "
               "PIVOT t ON col IN ('a', 'b') USING …)")


class DuckDBGuard(Guard):
    """Decides with the connection it is given (the worker's own), so the parser is the executor's."""

    def __init__(self, side_effect_functions: frozenset[str], project_table_macros: frozenset[str]):
        self._denied = (side_effect_functions - _HARMLESS_SIDE_EFFECTS) | DENIED_FUNCTIONS
        self._tables = SAFE_TABLE_FUNCTIONS | project_table_macros
        self._cache: OrderedDict[str, CheckedStatement] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_connection(cls, con: duckdb.DuckDBPyConnection) -> DuckDBGuard:
        """Read the engine's own function lists once, at open."""
        side_effects = {r[0].lower() for r in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE has_side_effects").fetchall()}
        macros = {r[0].lower() for r in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type = 'table_macro' AND NOT internal").fetchall()}
        return cls(frozenset(side_effects), frozenset(macros))

    def check(self, sql: str, con: duckdb.DuckDBPyConnection | None = None) -> CheckedStatement:  # type: ignore[override]
        with self._lock:
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
                return hit
        if con is None:
            raise RuntimeError("the DuckDB guard needs the connection that will execute the statement")
        checked = self._decide(sql, con)
        with self._lock:
            self._cache[sql] = checked
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return checked

    # ------------------------------------------------------------------ the decision
    def _decide(self, sql: str, con: duckdb.DuckDBPyConnection) -> CheckedStatement:
        statement = _one_statement(sql, con)
        kind = _type_name(statement)
        if kind == "SELECT":
            self._check_tree(statement.query, con)
            return CheckedStatement(sql=statement.query, kind="SELECT")
        if kind == "EXPLAIN":
            return self._explain(statement.query, con)
        raise QueryRefused(f"{_label(statement.query, kind)} is not allowed: only read-only queries are accepted")

    def _explain(self, text: str, con: duckdb.DuckDBPyConnection) -> CheckedStatement:
        """EXPLAIN [ANALYZE] <select>: check the inner statement and rebuild the text from it."""
        tokens = duckdb.tokenize(text)
        words: list[str] = []
        start = len(text)
        for i, (pos, _kind) in enumerate(tokens):
            end = tokens[i + 1][0] if i + 1 < len(tokens) else len(text)
            word = text[pos:end].strip().lower()
            if word not in _EXPLAIN_WORDS or (words and word == "explain"):
                start = pos
                break
            words.append(word)
        inner_text = text[start:]
        inner = _one_statement(inner_text, con)
        if _type_name(inner) != "SELECT":
            raise QueryRefused(f"EXPLAIN of {_type_name(inner)} is not allowed: only read-only queries "
                               "are accepted")
        self._check_tree(inner.query, con)
        prefix = "EXPLAIN ANALYZE " if len(words) > 1 else "EXPLAIN "
        rebuilt = prefix + inner.query
        again = _one_statement(rebuilt, con)
        if _type_name(again) != "EXPLAIN":  # pragma: no cover - DuckDB would have to change its grammar
            raise QueryRefused("could not rebuild the EXPLAIN statement")
        return CheckedStatement(sql=again.query, kind="EXPLAIN")

    def _check_tree(self, text: str, con: duckdb.DuckDBPyConnection) -> None:
        try:
            raw = con.execute("SELECT json_serialize_sql($1::VARCHAR, skip_null := true, skip_empty := true)",
                              [text]).fetchone()[0]
            tree = json.loads(raw)
        except RecursionError:
            raise QueryRefused("the query is nested too deeply") from None
        except duckdb.Error as exc:
            raise QueryRefused(f"could not check the query: {_first_line(exc)}") from None
        if tree.get("error"):
            raise QueryRefused(f"could not check the query: {tree.get('error_message', 'parse error')}")
        if len(tree.get("statements", [])) != 1:
            raise QueryRefused("only one statement per call is allowed")
        self._walk(tree["statements"])

    def _walk(self, root: object) -> None:
        stack = [root]  # iterative: a deeply nested query must not exhaust Python's stack
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
                continue
            if not isinstance(node, dict):
                continue
            kind = node.get("type")
            if isinstance(kind, str) and kind.endswith("_NODE") and kind not in READ_NODES:
                what = kind.removesuffix("_NODE").removesuffix("_QUERY")
                raise QueryRefused(f"{what} is not allowed (also not inside WITH): only read-only queries "
                                   "are accepted")
            if kind == "TABLE_FUNCTION":
                fn = node.get("function") or {}
                name = str(fn.get("function_name", "")).lower()
                if name not in self._tables:
                    raise QueryRefused(
                        f"table function {name}() is not allowed in read-only queries (files, other "
                        "databases, logs and server settings are off limits); query the database's "
                        "tables and views")
                stack.append(fn.get("children"))
                stack.append(node.get("subquery"))
                continue
            if node.get("class") == "FUNCTION":
                name = str(node.get("function_name", "")).lower()
                if name == "get_user_external_token":
                    raise QueryRefused(NOT_FOR_QUERIES)
                if name in self._denied:
                    raise QueryRefused(
                        f"function {name}() is not allowed in read-only queries (it changes state, reads "
                        "the server's environment or settings, or is reserved for the project's own SQL)")
            elif kind in ("BASE_TABLE", "SHOW_REF"):
                _check_table_name(str(node.get("table_name") or ""))
            stack.extend(v for v in node.values() if isinstance(v, dict | list))


def _check_table_name(name: str) -> None:
    if not name:
        return
    if name.lower() in DENIED_VIEWS:
        raise QueryRefused(f"{name} is not available in read-only queries (it shows server paths or settings)")
    if _FILE_LIKE.search(name):
        raise QueryRefused(f"reading files is not allowed (table reference {name!r})")


def _one_statement(sql: str, con: duckdb.DuckDBPyConnection):
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"could not parse the query, so it is refused: {_first_line(exc)}") from None
    except RecursionError:
        raise QueryRefused("the query is nested too deeply") from None
    if not statements:
        raise QueryRefused("empty query (only comments)")
    if len(statements) > 1:
        raise QueryRefused(f"only one statement per call is allowed; got {len(statements)} statements")
    return statements[0]


def _label(text: str, kind: str) -> str:
    """Name a refused statement by its first keyword (DuckDB files INSTALL under LOAD, USE under SET)."""
    if kind == "MULTI":
        return _PIVOT_HINT
    tokens = duckdb.tokenize(text)
    word = ""
    if tokens:
        end = tokens[1][0] if len(tokens) > 1 else len(text)
        word = text[tokens[0][0]:end].strip().upper()
    if not word.isalpha():
        word = kind.replace("_", " ")
    return f"{word} (transaction control)" if kind == "TRANSACTION" else word


def _type_name(statement) -> str:
    return str(statement.type).rsplit(".", 1)[-1].removesuffix("_STATEMENT")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n\nLINE", 1)[0]
    return text.splitlines()[0] if text else type(exc).__name__
