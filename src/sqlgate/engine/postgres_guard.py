"""The PostgreSQL guard: decide about untrusted SQL with PostgreSQL's own parser (pglast = libpg_query).

Admitted: exactly one statement, a SELECT (with WITH / VALUES / TABLE / set operations) or an
EXPLAIN of such a SELECT. Refused anywhere in the tree: data-modifying statements (also as CTEs),
SELECT … INTO, FOR UPDATE/SHARE, and every built-in function that executes SQL text, changes
settings or roles, signals or waits on other backends, takes locks, touches server files, reaches
other servers, changes server state or runs XPath (libxml2 ignores cancellation: an XPath call runs
past every timeout) — the deny list below. Functions are matched on their last name part,
lower-cased, whatever the schema qualification or quoting (the parser has already decoded
`"pg_catalog"."PG_SLEEP"` / `U&"…"`); attribute notation `t.pg_sleep` is treated like a call.

Functions outside pg_catalog (created by the DBA or an extension) are code the guard cannot see: a
plpgsql `run_sql(q)` doing `EXECUTE q` undoes every rule here. They are refused unless the project
allow-lists them (engine.allowed_functions: [schema.fn, …]); sqlgate's identity accessors
(sqlgate.username() & co.) are always allowed. An unqualified name is resolved by the server, not
here, so the engine hands the guard the database's function names at start-up (FunctionCatalog):
an unqualified name is accepted only if pg_catalog has a function of that name and no other schema
had one at start-up (otherwise write pg_catalog.f or allow-list schema.f). Residual: operators and
casts that resolve to user functions, and overloads of built-in names created after start-up.

Why a deny list for built-ins while statements are an allow-list: PostgreSQL has thousands of
harmless functions and the dangerous ones are a small, known family; an allow-list of functions
would break ordinary SELECTs. Underneath, the transaction is READ ONLY, identity is signed (see
postgres_identity) and the connection is reset after each call, so the list is one layer of several.

The statement that runs is sliced out of the text by the parser's own statement location, and the
engine sends it through the extended protocol, where the server itself refuses a second statement.
Lexer assumptions pinned by the engine's connection options: standard_conforming_strings=on and
client_encoding=UTF8 (with standard_conforming_strings off, `'a\\'' , f() --'` is a string here but
code on the server).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pglast import parser as pg_parser

from sqlgate.engine.guard import CheckedStatement, Guard
from sqlgate.errors import QueryRefused

# exact lower-case function names -> why they are refused
_DENY_EXACT: dict[str, str] = {}
# name prefixes -> why; a function whose name starts with one of these is refused
_DENY_PREFIX: dict[str, str] = {}


def _deny(why: str, *names: str) -> None:
    for n in names:
        if n.endswith("*"):
            _DENY_PREFIX[n[:-1]] = why
        else:
            _DENY_EXACT[n] = why


_deny("executes SQL text", "query_to_xml*", "cursor_to_xml*", "table_to_xml*", "database_to_xml*",
      "schema_to_xml*", "ts_stat", "pg_background*")
_deny("reaches other servers", "dblink*", "postgres_fdw_*", "http", "http_*")
_deny("shows other callers' queries", "pg_stat_get_activity", "pg_stat_get_backend_activity",
      "pg_stat_statements")
_deny("changes settings or roles", "set_config")
_deny("signals other backends", "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend",
      "pg_log_backend_memory_contexts", "pg_reload_conf", "pg_rotate_logfile*", "pg_promote")
_deny("takes locks", "pg_advisory*", "pg_try_advisory*")
_deny("reads or writes server files", "pg_read_file*", "pg_read_binary_file*", "pg_ls_*", "pg_stat_file",
      "pg_file_*", "pg_current_logfile", "lo_*", "loread", "lowrite", "pg_import_system_collations",
      "pg_tablespace_location", "pg_config")
_deny("ties up a connection (waits)", "pg_sleep*")
_deny("changes server state", "pg_switch_wal", "pg_switch_xlog", "pg_create_*", "pg_drop_*", "pg_copy_*",
      "pg_logical_*", "pg_replication_*", "pg_wal_replay_*", "pg_backup_*", "pg_start_backup",
      "pg_stop_backup", "pg_stat_reset*", "pg_stat_statements_reset", "pg_export_snapshot",
      "pg_prewarm", "binary_upgrade_*", "pg_notify", "brin_summarize_*", "brin_desummarize_range",
      "gin_clean_pending_list")
# the random seed is per connection and outlives DISCARD ALL: it would make the next caller's
# random() predictable
_deny("changes the connection's random seed", "setseed")
# libxml2's XPath evaluation never checks for interrupts: neither statement_timeout nor a cancel
# stops `xpath('count(//*[count(//*[count(//*) > 0]) > 0])', …)` (XMLTABLE: the node RangeTableFunc)
_deny("evaluates XPath, which no timeout or cancel can stop", "xpath", "xpath_exists", "xmlexists",
      "xmltable")
_deny("assigns sequence values or transaction ids", "nextval", "setval", "txid_current",
      "pg_current_xact_id")
# sqlgate's identity machinery (postgres_identity.sql): only its public accessors may be called
_deny("is internal to sqlgate's identity", "_identity", "_sqlgate*")
_IDENTITY_SCHEMA = "sqlgate"
# views refused by name: every caller shares the service role, so these would show one caller the
# SQL text of the others' running (or past) queries
_DENY_RELATIONS = {"pg_stat_activity": "shows other callers' queries",
                   "pg_stat_statements": "shows other callers' queries",
                   "pg_stat_statements_info": "shows other callers' queries"}
IDENTITY_ACCESSORS = frozenset({"username", "user_id", "user_email", "user_provider", "user_display_name",
                                "claims"})

# keys refused wherever they appear in the JSON tree: node types (a Node* field or list element is
# wrapped as {"InsertStmt": {...}}) and the typed fields of SelectStmt, which libpg_query's JSON
# does not wrap (`"intoClause": {...}`), so both spellings are listed
_FORBIDDEN_NODES = {
    "InsertStmt": "data-modifying statement (INSERT)", "UpdateStmt": "data-modifying statement (UPDATE)",
    "DeleteStmt": "data-modifying statement (DELETE)", "MergeStmt": "data-modifying statement (MERGE)",
    "IntoClause": "SELECT … INTO (creates a table)", "intoClause": "SELECT … INTO (creates a table)",
    "LockingClause": "FOR UPDATE / FOR SHARE (takes row locks)",
    "lockingClause": "FOR UPDATE / FOR SHARE (takes row locks)",
    "RangeTableFunc": "XMLTABLE (evaluates XPath, which no timeout or cancel can stop)",
}
_CATALOG_SCHEMA = "pg_catalog"


@dataclass(frozen=True)
class FunctionCatalog:
    """What the engine learnt about the database's functions at start-up (lower-cased names).

    builtin: names of pg_catalog's functions; None = unknown (unqualified names then pass on the
    deny list alone — the engine always supplies it). outside: (schema, name) of every function
    outside pg_catalog. allowed: (schema, name) the project allow-listed (engine.allowed_functions).
    """

    builtin: frozenset[str] | None = None
    outside: frozenset[tuple[str, str]] = frozenset()
    allowed: frozenset[tuple[str, str]] = frozenset()
    # names that, unqualified, could resolve to a function outside pg_catalog nobody allow-listed
    shadowed: frozenset[str] = field(init=False)
    allowed_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shadowed", frozenset(n for s, n in self.outside
                                                       if (s, n) not in self.allowed
                                                       and not (s == _IDENTITY_SCHEMA and n in IDENTITY_ACCESSORS)))
        object.__setattr__(self, "allowed_names", frozenset(n for _, n in self.allowed))

    def refusal(self, names: list[str]) -> str | None:
        name = names[-1].lower()
        if len(names) > 1:
            schema = names[-2].lower()
            if schema == _CATALOG_SCHEMA or (schema, name) in self.allowed:
                return None
            return (f"is defined outside pg_catalog (in schema {names[-2]}), so the guard cannot see what it "
                    "does; the project can allow-list it (engine.allowed_functions)")
        if name in self.shadowed:
            hint = (f"write pg_catalog.{name}() for the built-in one" if self.builtin and name in self.builtin
                    else "the project can allow-list it as schema.name (engine.allowed_functions)")
            return f"resolves to a function outside pg_catalog that is not allow-listed; {hint}"
        if self.builtin is not None and name not in self.builtin and name not in self.allowed_names:
            return "is not a built-in function (functions outside pg_catalog must be allow-listed and qualified)"
        return None


def _denied_name(name: str) -> str | None:
    why = _DENY_EXACT.get(name)
    if why is None:
        why = next((w for p, w in _DENY_PREFIX.items() if name.startswith(p)), None)
    return why


def function_refusal(names: list[str], args: list | None = None) -> str | None:
    """Why a call of the function with this (possibly qualified) name is refused, or None."""
    name = names[-1].lower()
    schema = names[-2].lower() if len(names) > 1 else None
    if schema == _IDENTITY_SCHEMA:
        return None if name in IDENTITY_ACCESSORS else "is internal to sqlgate's identity"
    why = _denied_name(name)
    if why is not None:
        return why
    if name == "ts_rewrite" and len(args or ()) != 3:
        return "executes SQL text (the two-argument form runs a query)"
    if name == "current_setting":
        # No secret lives in a setting (the upstream token never does; sqlgate.identity is signed),
        # but sqlgate.* is refused outright, and a computed name cannot be checked: constants only.
        setting = _constant_string(args[0]) if args else None
        if setting is None:
            return "reads a setting whose name is not a string constant"
        if setting.lower().startswith("sqlgate."):
            return "reads sqlgate's own settings"
    return None


def _constant_string(node: dict) -> str | None:
    const = node.get("A_Const")
    if const is None:
        return None
    sval = const.get("sval")
    return sval.get("sval", "") if sval is not None else None


class PostgresGuard(Guard):
    def __init__(self, functions: FunctionCatalog | None = None):
        self.functions = functions or FunctionCatalog()

    def check(self, sql: str) -> CheckedStatement:
        try:
            tree = json.loads(pg_parser.parse_sql_json(sql))
        except pg_parser.ParseError as exc:
            raise QueryRefused(f"not valid PostgreSQL: {exc}") from None
        except RecursionError:  # the parse tree is deeper than Python's JSON reader goes
            raise QueryRefused("the query is nested too deeply") from None
        stmts = tree.get("stmts", [])
        if len(stmts) != 1:
            raise QueryRefused(f"exactly one statement is accepted; this text has {len(stmts)}")
        raw = stmts[0]
        kind, node = next(iter(raw["stmt"].items()))
        if kind == "ExplainStmt":
            inner_kind = next(iter(node["query"]))
            if inner_kind != "SelectStmt":
                raise QueryRefused(f"EXPLAIN is accepted only for a SELECT, not {_readable(inner_kind)}")
            label = "EXPLAIN"
        elif kind == "SelectStmt":
            label = "SELECT"
        else:
            raise QueryRefused(f"only SELECT (WITH, VALUES, set operations) and EXPLAIN are accepted, "
                               f"not {_readable(kind)}")
        _walk(node, self.functions)
        return CheckedStatement(sql=_slice(sql, raw), kind=label, wrappable=label == "SELECT",
                                ordered=label == "SELECT" and bool(node.get("sortClause")))


def paged(sql: str, limit: int, offset: int, order_columns: int) -> str:
    """One page of an admitted SELECT: the statement as a subquery (its own ORDER BY decides the
    order), or sorted by every column (`ORDER BY 1, …, n`) for a statement without one."""
    order = " ORDER BY " + ", ".join(str(i) for i in range(1, order_columns + 1)) if order_columns else ""
    return f"SELECT * FROM (\n{sql}\n) q{order} LIMIT {int(limit)} OFFSET {int(offset)}"


def _slice(sql: str, raw: dict) -> str:
    """The statement's own text: libpg_query locations are UTF-8 byte offsets; len 0 = to the end."""
    data = sql.encode("utf-8")
    start = raw.get("stmt_location", 0)
    length = raw.get("stmt_len", 0)
    end = start + length if length else len(data)
    return data[start:end].decode("utf-8")


def _walk(root: dict, functions: FunctionCatalog) -> None:
    stack: list = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in _FORBIDDEN_NODES:
                raise QueryRefused(f"refused: {_FORBIDDEN_NODES[key]} is not allowed in the query tool")
            if key == "FuncCall":
                names = [n["String"]["sval"] for n in value["funcname"]]
                why = function_refusal(names, value.get("args"))
                if why is None and not (len(names) > 1 and names[-2].lower() == _IDENTITY_SCHEMA):
                    why = functions.refusal(names)
                if why is not None:
                    raise QueryRefused(f"refused: function {'.'.join(names)}() {why}; "
                                       "it is not allowed in the query tool")
            elif key == "ColumnRef":
                fields = value.get("fields", [])
                # `t.f` is also function-call syntax for f(t) ("attribute notation")
                if len(fields) >= 2 and "String" in fields[-1]:
                    name = fields[-1]["String"]["sval"]
                    why = _attribute_refusal(name, functions)
                    if why is not None:
                        raise QueryRefused(f"refused: {name} (attribute notation calls function "
                                           f"{name}(), which {why})")
            elif key == "A_Expr":
                # OPERATOR(schema.op): an operator named in another schema runs that schema's function
                op = [n.get("String", {}).get("sval", "") for n in value.get("name", []) if isinstance(n, dict)]
                if len(op) > 1 and op[-2].lower() != _CATALOG_SCHEMA:
                    raise QueryRefused(f"refused: operator {'.'.join(op)} is defined outside pg_catalog; it is "
                                       "not allowed in the query tool")
            elif key == "ParamRef":
                raise QueryRefused("refused: parameters ($1 …) cannot be bound in the query tool; "
                                   "write the values into the query")
            elif key == "A_Indirection":
                # `(t).f` is function-call syntax for f(t) too
                for part in value.get("indirection", []):
                    name = part.get("String", {}).get("sval") if isinstance(part, dict) else None
                    why = _attribute_refusal(name, functions) if name else None
                    if why is not None:
                        raise QueryRefused(f"refused: {name} (attribute notation calls function "
                                           f"{name}(), which {why})")
            elif key == "RangeVar":
                if (value.get("schemaname") or "").lower() == _IDENTITY_SCHEMA:
                    raise QueryRefused("refused: the sqlgate schema's tables are internal")
                why = _DENY_RELATIONS.get((value.get("relname") or "").lower())
                if why is not None:
                    raise QueryRefused(f"refused: {value['relname']} {why}; it is not allowed in the query tool")
            if isinstance(value, (dict, list)):
                stack.append(value)


def _attribute_refusal(name: str, functions: FunctionCatalog) -> str | None:
    lower = name.lower()
    why = _denied_name(lower)
    if why is None and lower in functions.shadowed:
        why = "is defined outside pg_catalog and not allow-listed"
    return why


def _readable(node_kind: str) -> str:
    words = {"VariableSetStmt": "SET", "TransactionStmt": "transaction control", "CopyStmt": "COPY",
             "VariableShowStmt": "SHOW", "DoStmt": "DO", "CallStmt": "CALL", "PrepareStmt": "PREPARE",
             "ExecuteStmt": "EXECUTE", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
             "MergeStmt": "MERGE", "CreateTableAsStmt": "CREATE TABLE AS / SELECT INTO"}
    return words.get(node_kind, node_kind.removesuffix("Stmt").upper() if node_kind.endswith("Stmt")
                     else node_kind)
