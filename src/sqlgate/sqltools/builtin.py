"""The built-in tools: schema exploration and one read-only query tool.

Each is switchable in sqlgate.yml (`sql_tools:`). Engine-specific SQL lives in the engine; these
tools only shape arguments and results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from sqlgate import answers
from sqlgate.components import SqlgateTool
from sqlgate.config.models import SqlToolsConfig
from sqlgate.context import CallContext
from sqlgate.engine.base import ROW_TOO_LARGE, Engine, Limits, QueryResult
from sqlgate.engine.guard import check_length
from sqlgate.errors import InvalidArguments, QueryFailed, QueryTimeout
from sqlgate.paging import CURSOR_RESERVE, FIRST, Page, Pager
from sqlgate.policy import ColumnsView, Enforcer, guard_handler
from sqlgate.sqltools.search import search

MAX_KEYWORDS_CHARS = 1000
MAX_KEYWORDS_TERMS = 32
READ_ONLY = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _string(args: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise InvalidArguments(f"`{key}` is required")
        return None
    if not isinstance(value, str):
        raise InvalidArguments(f"`{key}` must be a string")
    return value


CURSOR_PARAM = {"type": "string", "maxLength": 2048,
                "description": "Only to continue a cut answer: the `next_cursor` it returned (send the same "
                               "other arguments)."}
SEARCH_COLUMNS = ("kind", "schema", "table", "name", "type", "comment", "score", "matched")
SEARCH_TYPES = ("VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "DOUBLE", "VARCHAR[]")
_TABLE = answers.table_schema()
_DESCRIBE = answers.table_schema({"table": {
    "type": "object", "description": "the relation itself: schema, name, kind, comment and keys",
    "properties": {"schema": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"},
                   "comment": {"type": ["string", "null"]}, "keys": {"type": "array", "items": {"type": "object"}}},
    "required": ["schema", "name", "kind", "comment", "keys"]}})


def table_answer(qr: QueryResult, max_bytes: int) -> dict[str, Any]:
    """A catalog result in the one answer shape, trimmed to the message budget."""
    out = answers.table(qr.columns, qr.types, qr.rows, qr.truncated, qr.hint())
    if answers.fit(out, max_bytes):
        out["truncated"] = True
        out.setdefault("hint", "Result truncated by the result size limit (limits.max_bytes); filter to see "
                               "the rest.")
    return out


def paged_answer(qr: QueryResult, max_bytes: int, next_cursor: Callable[[Page], str] | None) -> dict[str, Any]:
    """A query result as an answer: trimmed to the message budget, with a cursor when it was cut."""
    out = answers.table(qr.columns, qr.types, qr.rows, qr.truncated, qr.hint())
    if answers.fit(out, max_bytes, reserve=CURSOR_RESERVE if next_cursor else 0):
        qr.truncated, qr.truncated_by = True, "max_bytes"
        out["truncated"], out["hint"] = True, qr.hint()
    if out["truncated"] and next_cursor is not None:
        if not out["rows"]:  # a cursor to this same position again would page forever
            raise QueryFailed(ROW_TOO_LARGE)
        out["next_cursor"] = next_cursor(Page(qr.page.offset + len(out["rows"]), qr.page.order_all))
    return out


def builtin_tools(engine: Engine, cfg: SqlToolsConfig, limits: Callable[[], Limits],
                  call: Callable[[], CallContext], pager: Pager | None = None) -> list[SqlgateTool]:
    if not cfg.enabled:
        return []
    tools: list[SqlgateTool] = []

    def table_result(qr: QueryResult) -> dict[str, Any]:
        return table_answer(qr, limits().max_bytes)

    if cfg.list_schemas:
        async def list_schemas(args: dict[str, Any]) -> dict[str, Any]:
            return table_result(await engine.list_schemas(limits()))

        tools.append(SqlgateTool.create(
            name="list_schemas",
            description="List the database schemas (namespaces) with their comments. Start here to see "
                        "how the data is organised.",
            parameters=_obj({}), handler=list_schemas, output_schema=_TABLE, annotations=READ_ONLY,
            tags={"builtin"}))

    if cfg.list_tables:
        async def list_tables(args: dict[str, Any]) -> dict[str, Any]:
            return table_result(await engine.list_tables(_string(args, "schema"), limits()))

        tools.append(SqlgateTool.create(
            name="list_tables",
            description="List tables and views with their comments, row estimates and column counts, "
                        "optionally only those of one schema.",
            parameters=_obj({"schema": {"type": "string", "description": "Only this schema (optional)."}}),
            handler=list_tables, output_schema=_TABLE, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.describe_table:
        async def describe_table(args: dict[str, Any]) -> dict[str, Any]:
            lim = limits()
            about, columns = await engine.describe_table(_string(args, "table", required=True),
                                                         _string(args, "schema"), lim)
            out = table_answer(columns, lim.max_bytes - answers.encoded_cost(answers.dumps(about)))
            out["table"] = about
            return out

        tools.append(SqlgateTool.create(
            name="describe_table",
            description="Describe a table or view: columns with types, nullability, defaults and comments, "
                        "plus primary, unique and foreign keys.",
            parameters=_obj({
                "table": {"type": "string", "description": "Table or view name; `schema.table` also works."},
                "schema": {"type": "string", "description": "Schema of the table (optional)."},
            }, ["table"]),
            handler=describe_table, output_schema=_DESCRIBE, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.search_objects:
        async def search_objects(args: dict[str, Any]) -> dict[str, Any]:
            keywords = _string(args, "keywords", required=True) or ""
            if len(keywords) > MAX_KEYWORDS_CHARS or len(keywords.split()) > MAX_KEYWORDS_TERMS:
                raise InvalidArguments(f"`keywords` is limited to {MAX_KEYWORDS_TERMS} words and "
                                       f"{MAX_KEYWORDS_CHARS} characters")
            limit = args.get("limit", 20)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100:
                raise InvalidArguments("`limit` must be an integer from 1 to 100")
            # ranking costs words x catalog entries: off the event loop, so nobody else waits
            hits = await anyio.to_thread.run_sync(search, await engine.catalog_entries(), keywords, limit)
            rows = [[hit.get(c) for c in SEARCH_COLUMNS] for hit in hits]
            return table_result(QueryResult(columns=list(SEARCH_COLUMNS), types=list(SEARCH_TYPES), rows=rows))

        tools.append(SqlgateTool.create(
            name="search_objects",
            description="Find tables, views and columns by keywords in their names and comments "
                        "(ranked best first). Use it when you do not know where some data lives.",
            parameters=_obj({
                "keywords": {"type": "string", "maxLength": MAX_KEYWORDS_CHARS,
                             "description": "Words to look for, e.g. 'customer email'."},
                "limit": {"type": "integer", "description": "Maximum hits.", "default": 20,
                          "minimum": 1, "maximum": 100},
            }, ["keywords"]),
            handler=search_objects, output_schema=_TABLE, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.query:
        async def query(args: dict[str, Any]) -> dict[str, Any]:
            sql = _string(args, "sql", required=True) or ""
            lim = limits()
            check_length(sql, lim.max_sql_length)
            caller = call()
            bound = {"sql": sql}
            page = FIRST
            if args.get("cursor") is not None:
                if pager is None:
                    raise InvalidArguments("this server does not page answers; run the query without `cursor`")
                page = pager.open(args["cursor"], caller, "tool:query", bound)
            started = time.monotonic()
            qr = await engine.run_untrusted(sql, caller, lim, page)
            if qr.truncated and qr.pageable and not qr.ordered and page == FIRST and pager is not None:
                # a query without ORDER BY has no order a second run must repeat: page it in the
                # pager's own total order (all columns), from the first page on — within what is
                # left of the call's one timeout (the first run counts too)
                left = lim.timeout_seconds - (time.monotonic() - started)
                try:
                    if left < 0.05:
                        raise QueryTimeout("no time left")
                    qr = await engine.run_untrusted(sql, caller, lim.tightened(timeout_seconds=left),
                                                    Page(0, max(1, len(qr.columns))))
                except (QueryFailed, QueryTimeout) as exc:
                    why = (f"sorting by all columns did not finish within the {lim.timeout_seconds:g} s timeout"
                           if isinstance(exc, QueryTimeout) else f"sorting by all columns failed: {str(exc)[:200]}")
                    out = paged_answer(qr, lim.max_bytes, None)
                    out["hint"] = f"{out['hint']} To page through it, add an ORDER BY on a unique key ({why})"
                    return out
            cursor = None
            if qr.pageable and pager is not None:
                def cursor(next_page: Page) -> str:
                    return pager.issue(caller, "tool:query", bound, next_page)
            return paged_answer(qr, lim.max_bytes, cursor)

        tools.append(SqlgateTool.create(
            name="query",
            description=f"Run one read-only SQL query ({engine.dialect} dialect: SELECT, WITH, VALUES, "
                        f"{'TABLE' if engine.dialect == 'postgres' else 'DESCRIBE, SHOW, SUMMARIZE'} or EXPLAIN) and "
                        "get columns and rows. Writes, settings, "
                        "file access and multiple statements are refused. Results are capped by rows, "
                        "bytes and time; `truncated: true` means you saw only part of the answer: call again "
                        "with the same `sql` and `cursor` set to the answer's `next_cursor` for the next rows "
                        "(use an ORDER BY on a unique key for a stable order across pages).",
            parameters=_obj({"sql": {"type": "string", "description": "One read-only SQL statement."},
                             "cursor": CURSOR_PARAM}, ["sql"]),
            handler=query, output_schema=_TABLE, annotations=READ_ONLY, tags={"builtin"}))
    for tool in tools:  # the policies of sqlgate.yml `sql_tools.policies` wrap each tool's handler
        rules = cfg.policies.get(tool.name)
        if rules is not None:
            enforcer = Enforcer(rules, "tool", tool.name, f"sql_tools.policies.{tool.name}")
            # every built-in tool answers {columns, types, rows, row_count, …}
            tool._handler = guard_handler(enforcer, tool._handler, ColumnsView, call)
    return tools

