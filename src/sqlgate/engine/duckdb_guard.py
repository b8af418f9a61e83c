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
    "duckdb_optimizers", "pragma_table_info", "pragma_show", "pragma_version",
    "pragma_collations", "icu_calendar_names", "pg_timezone_names", "test_all_types", "summary",
})
# Scalar functions refused on top of the engine's own side-effect list: they read the server's
# environment or settings (paths), or reach what the AI client must never see.
DENIED_FUNCTIONS = frozenset({
    "getenv", "current_setting", "getvariable", "get_user_external_token", "json_execute_serialized_sql",
    "query", "query_table", "read_text", "read_blob", "current_query",
    # they take SQL text, which this guard never sees parsed: json_serialize_plan plans it and writes
    # constants it evaluated (current_setting('allowed_paths') …) into the plan
    "json_serialize_plan", "json_serialize_sql", "json_deserialize_sql",
})
# Side-effect functions that are harmless for a reader (random values), so they stay usable.
_HARMLESS_SIDE_EFFECTS = frozenset({"random", "uuid", "uuidv4", "uuidv7", "gen_random_uuid", "error"})
# Built-in views over refused table functions (paths of databases, settings, logs, statements).
# duckdb_views() is refused too: a view's definition holds the absolute paths of the files a source
# reads (`read_csv('/home/…/data/x.csv')`), and list_tables / describe_table describe views without it.
DENIED_VIEWS = frozenset({
    "duckdb_databases", "pragma_database_list", "duckdb_logs", "pg_settings", "pg_prepared_statements",
    "duckdb_settings", "duckdb_secrets", "duckdb_temporary_files", "duckdb_variables", "duckdb_extensions",
    "duckdb_memory", "pg_database",
    "duckdb_views", "information_schema.views", "pg_views", "pg_class", "pg_description",
    "sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema",
})
# sqlgate's own catalog entries (the hidden aliases of attached source files, the build record):
# the query tool reaches source data through the source's schema, whose views were checked.
HIDDEN_PREFIX = "__sqlgate"
# Query nodes a read may contain; anything else (INSERT/UPDATE/DELETE/MERGE nodes of a writable CTE
# …) is refused. An allow-list, so a node type added by a later DuckDB is refused until reviewed.
READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
# How big a query may become once DuckDB has expanded its macros (nodes of the parse tree, each
# macro argument counted as often as the macro body uses it): five nested calls of a built-in macro
# that uses its parameter 17 times are 123 characters of SQL and gigabytes of planner memory.
MAX_EXPANDED_NODES = 60_000
_QUERY_NODE_WEIGHT = 20
_FILE_LIKE = re.compile(r"[/\\:*?]|\.[A-Za-z0-9]{1,8}$")
_EXPLAIN_WORDS = ("explain", "analyze", "analyse")
_CACHE_SIZE = 1024
_CACHE_MAX_TEXT = 4096

_PIVOT_HINT = ("PIVOT without an IN list (it creates a type first; list the values instead: "
               "PIVOT t ON col IN ('a', 'b') USING …)")


class DuckDBGuard(Guard):
    """Decides with the connection it is given (the worker's own), so the parser is the executor's."""

    def __init__(self, side_effect_functions: frozenset[str], project_table_macros: frozenset[str],
                 table_functions: frozenset[str] = frozenset(), settings: frozenset[str] = frozenset(),
                 macros: dict[str, tuple[str, list[int]]] | None = None):
        """`macros`: name -> (definition text, how often the body uses each parameter)."""
        self._tables = SAFE_TABLE_FUNCTIONS | project_table_macros
        denied = (side_effect_functions - _HARMLESS_SIDE_EFFECTS) | DENIED_FUNCTIONS
        refused = denied | (table_functions - self._tables)
        macros = macros or {}
        # macros are expanded after this check: one whose body calls a refused function
        # (pg_sleep -> sleep_ms, get_block_size -> pragma_database_size …) is refused itself, and
        # so is one calling such a macro, however deep (until nothing new is refused)
        refused_macros: set[str] = set()
        called = {name: _called_names(body) for name, (body, _) in macros.items()}
        odd = {n for n in refused if not _WORD.fullmatch(n)}  # operator-like names: matched as text
        odd_calls = _calls_pattern(odd) if odd else None
        while True:
            more = {name for name, (body, _) in macros.items()
                    if name not in refused_macros and (called[name] & (refused | refused_macros)
                                                       or (odd_calls is not None and odd_calls.search(body)))}
            if not more:
                break
            refused_macros |= more
        self._denied = denied | refused_macros
        self._fanout = {name: fan for name, (_, fan) in macros.items()}
        self._settings = settings
        self._cache: OrderedDict[str, CheckedStatement] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_connection(cls, con: duckdb.DuckDBPyConnection) -> DuckDBGuard:
        """Read the engine's own function, macro and setting lists once, at open (one scan of
        duckdb_functions(): each scan lists every overload of every function, ~0.1 s)."""
        side_effects: set[str] = set()
        table_macros: set[str] = set()
        table_functions: set[str] = set()
        macros: dict[str, tuple[str, list[int]]] = {}
        for name, kind, side_effect, internal, params, body in con.execute(
                "SELECT function_name, function_type, has_side_effects, internal, parameters, macro_definition "
                "FROM duckdb_functions()").fetchall():
            name = name.lower()
            if side_effect:
                side_effects.add(name)
            if kind == "table_macro" and not internal:
                table_macros.add(name)
            elif kind == "table":
                table_functions.add(name)
            if kind in ("macro", "table_macro") and body is not None:
                fan = [max(1, len(re.findall(rf"\b{re.escape(p)}\b", body))) for p in (params or [])]
                seen_body, seen_fan = macros.get(name, ("", []))  # overloads: keep the widest
                width = max(len(fan), len(seen_fan))
                fan = [max(a, b) for a, b in zip(fan + [1] * width, seen_fan + [1] * width, strict=False)][:width]
                macros[name] = (seen_body + "\n" + body, fan)
        settings = frozenset(r[0].lower() for r in con.execute("SELECT name FROM duckdb_settings()").fetchall())
        return cls(frozenset(side_effects), frozenset(table_macros), frozenset(table_functions), settings, macros)

    def check(self, sql: str, con: duckdb.DuckDBPyConnection | None = None) -> CheckedStatement:  # type: ignore[override]
        with self._lock:
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
                return hit
        if con is None:
            raise RuntimeError("the DuckDB guard needs the connection that will execute the statement")
        checked = self._decide(sql, con)
        if len(sql) > _CACHE_MAX_TEXT:
            return checked  # long texts are rare and would make the cache hold megabytes
        with self._lock:
            self._cache[sql] = checked
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return checked

    # ------------------------------------------------------------------ the decision
    def _decide(self, sql: str, con: duckdb.DuckDBPyConnection) -> CheckedStatement:
        statement = _one_statement(sql, con)
        kind = _type_name(statement)
        if kind == "UNKNOWN":
            raise QueryRefused("this statement is not allowed: only read-only queries are accepted")
        if kind == "SELECT":
            tree = self._check_tree(statement.query, con)
            node = tree["statements"][0].get("node") or {}
            ordered = any(m.get("type") == "ORDER_MODIFIER" for m in node.get("modifiers") or [])
            return CheckedStatement(sql=_as_subquery(statement.query, con), kind="SELECT", wrappable=True,
                                    ordered=ordered)
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

    def _check_tree(self, text: str, con: duckdb.DuckDBPyConnection) -> dict:
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
        return tree

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
            if node.get("materialized") == "CTE_MATERIALIZE_NEVER":
                # each reference inlines the whole body again: ten nested ones are 2^10 copies
                raise QueryRefused("WITH … AS NOT MATERIALIZED is not accepted in read-only queries (it can "
                                   "multiply the query's size); leave out NOT MATERIALIZED")
            if kind == "TABLE_FUNCTION":
                fn = node.get("function") or {}
                name = str(fn.get("function_name", "")).lower()
                if name not in self._tables:
                    raise QueryRefused(
                        f"table function {name}() is not allowed in read-only queries (files, other "
                        "databases, logs and server settings are off limits); query the database's "
                        "tables and views")
            elif node.get("class") == "FUNCTION":
                name = str(node.get("function_name", "")).lower()
                if name == "get_user_external_token":
                    raise QueryRefused(NOT_FOR_QUERIES)
                _check_hidden(node.get("catalog"), node.get("schema"), name)
                if name in self._denied:
                    raise QueryRefused(
                        f"function {name}() is not allowed in read-only queries (it changes state, reads "
                        "the server's environment or settings, or is reserved for the project's own SQL)")
            elif kind in ("BASE_TABLE", "SHOW_REF"):
                table = str(node.get("table_name") or "")
                # SHOW <name> of something that is no table reads a setting (SHOW allowed_paths …)
                if kind == "SHOW_REF" and table.lower() in self._settings:
                    raise QueryRefused(f"SHOW {table} reads a server setting, which is not available in "
                                       "read-only queries")
                _check_table_name(table, str(node.get("schema_name") or ""), str(node.get("catalog_name") or ""))
            # every child, table-function arguments included: nothing is passed over unvisited
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        if self._expanded_size(root) > MAX_EXPANDED_NODES:
            raise QueryRefused(f"the query is too complex once its macros are expanded (more than "
                               f"{MAX_EXPANDED_NODES:,} parse-tree nodes); simplify it or split it up")

    def _expanded_size(self, root: object) -> int:
        """Parse-tree nodes after macro expansion: a macro argument counts once per use in the body."""
        sizes: dict[int, int] = {}
        stack: list[tuple[object, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            if isinstance(node, list):
                children = node
            elif isinstance(node, dict):
                children = [v for v in node.values() if isinstance(v, dict | list)]
            else:
                continue
            if not done:
                stack.append((node, True))
                stack.extend((c, False) for c in children)
                continue
            total = sum(sizes.get(id(c), 0) for c in children)
            if isinstance(node, dict):
                # a query node costs the planner far more than an expression (5,000 UNION ALL
                # branches of 95 kB took a gigabyte to plan)
                total += _QUERY_NODE_WEIGHT if node.get("type") in READ_NODES else 1
                fan = self._fanout.get(str(node.get("function_name", "")).lower()) \
                    if node.get("class") == "FUNCTION" else None
                if fan:
                    for i, arg in enumerate(_arguments(node)):
                        weight = fan[i] if i < len(fan) else 1
                        total += (weight - 1) * sizes.get(id(arg), 0)
            sizes[id(node)] = min(total, 1 << 40)
        return sizes.get(id(root), 0)


def view_query(create_sql: str) -> str | None:
    """The query of a `CREATE VIEW name [(columns)] AS query` text (duckdb_views().sql), by DuckDB's
    tokens: the text after the first AS keyword outside parentheses. None when there is none."""
    tokens = duckdb.tokenize(create_sql)
    depth = 0
    for i, (pos, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(create_sql)
        word = create_sql[pos:end].strip()
        kind_name = str(kind).rsplit(".", 1)[-1]
        if kind_name == "operator":
            depth += word.count("(") - word.count(")")
        elif kind_name == "keyword" and depth == 0 and word.upper() == "AS":
            return create_sql[end:].strip() or None
    return None


def _arguments(call: dict) -> list:
    """A function call's argument expressions (DuckDB 2 nests each under `arguments[i].expression`)."""
    args = call.get("arguments")
    if isinstance(args, list):
        return [a.get("expression") if isinstance(a, dict) and "expression" in a else a for a in args]
    return list(call.get("children") or [])


_WORD = re.compile(r"\w+")
_CALL = re.compile(r"\b(\w+)\s*\(")


def _called_names(body: str) -> set[str]:
    """Every `name(` in a macro body, lower-cased: what _calls_pattern(names) finds for word-like
    names, without compiling an alternation of hundreds of names per round (0.2 s each)."""
    return {m.lower() for m in _CALL.findall(body)}


def _calls_pattern(names: frozenset[str] | set[str]) -> re.Pattern:
    """A call of any of `names` in a macro body (DuckDB stores bodies normalised: `name(`)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"
    return re.compile(rf"\b(?:{alternatives})\s*\(", re.IGNORECASE)


def row_size_guarded(sql: str, max_row_chars: int) -> str:
    """The admitted SELECT as a subquery whose rows fail, inside DuckDB, once one is longer than
    `max_row_chars` as text: a single 10-million-element list would otherwise become gigabytes of
    Python objects before max_bytes could cut it. Order and column names are kept (duplicate names
    get DuckDB's _1 suffixes)."""
    limit = int(max_row_chars)
    return (f"SELECT q.* FROM (\n{sql}\n) q WHERE CASE WHEN strlen(CAST(q AS VARCHAR)) > {limit} "
            f"THEN error('a row of the result is larger than the result limit (limits.max_bytes); select fewer "
            f"or smaller columns') ELSE true END")


def paged(sql: str, limit: int, offset: int, order_all: bool) -> str:
    """One page of an admitted (wrappable) SELECT: the statement stays a subquery, so its own
    ORDER BY decides the order; `order_all` sorts by every column for a statement without one."""
    order = " ORDER BY ALL" if order_all else ""
    return f"SELECT * FROM (\n{sql}\n) q{order} LIMIT {int(limit)} OFFSET {int(offset)}"


def _as_subquery(text: str, con: duckdb.DuckDBPyConnection) -> str:
    """The statement without a trailing `;` (and the comments after it), proven to nest as a subquery."""
    tokens = duckdb.tokenize(text)
    code = [pos for pos, kind in tokens if str(kind).rsplit(".", 1)[-1] != "comment"]
    while code and text[code[-1]:].startswith(";"):  # `SELECT 1;;` too
        text = text[:code.pop()]
    wrapped = row_size_guarded(text, 1)
    try:
        statements = con.extract_statements(wrapped)
    except duckdb.Error:
        statements = []
    if len(statements) != 1 or _type_name(statements[0]) != "SELECT":
        raise QueryRefused("this statement cannot be used as a subquery, so it is refused; "
                           "remove trailing text after the statement")
    return text


def _check_hidden(*parts: object) -> None:
    for part in parts:
        if isinstance(part, str) and part.lower().startswith(HIDDEN_PREFIX):
            raise QueryRefused(f"{part} is sqlgate's own and not available in read-only queries; query the "
                               "tables and views list_tables shows")


def _check_table_name(name: str, schema: str = "", catalog: str = "") -> None:
    if not name:
        return
    _check_hidden(catalog, schema, name)
    if name.lower() in DENIED_VIEWS or f"{schema}.{name}".lower() in DENIED_VIEWS:
        raise QueryRefused(f"{name} is not available in read-only queries (it shows server paths or settings); "
                           "list_tables and describe_table describe the database")
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
    try:
        kind = statement.type
    except ValueError:  # a statement type the Python package does not know (UPDATE EXTENSIONS …)
        return "UNKNOWN"
    return str(kind).rsplit(".", 1)[-1].removesuffix("_STATEMENT")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n\nLINE", 1)[0]
    return text.splitlines()[0] if text else type(exc).__name__
