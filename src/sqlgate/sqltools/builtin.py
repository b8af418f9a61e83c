"""The built-in tools: schema exploration and one read-only query tool.

Each is switchable in sqlgate.yml (`sql_tools:`). Engine-specific SQL lives in the engine; these
tools only shape arguments and results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from sqlgate.components import SqlgateTool
from sqlgate.config.models import SqlToolsConfig
from sqlgate.context import CallContext
from sqlgate.engine.base import Engine, Limits
from sqlgate.engine.guard import check_length
from sqlgate.errors import InvalidArguments
from sqlgate.policy import Enforcer, builtin_view, guard_handler
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


def builtin_tools(engine: Engine, cfg: SqlToolsConfig, limits: Callable[[], Limits],
                  call: Callable[[], CallContext]) -> list[SqlgateTool]:
    if not cfg.enabled:
        return []
    tools: list[SqlgateTool] = []

    def table_result(qr) -> dict[str, Any]:
        out: dict[str, Any] = {"items": qr.records(), "truncated": qr.truncated}
        if qr.truncated:
            out["hint"] = qr.hint()
        return out

    if cfg.list_schemas:
        async def list_schemas(args: dict[str, Any]) -> dict[str, Any]:
            return table_result(await engine.list_schemas(limits()))

        tools.append(SqlgateTool.create(
            name="list_schemas",
            description="List the database schemas (namespaces) with their comments. Start here to see "
                        "how the data is organised.",
            parameters=_obj({}), handler=list_schemas, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.list_tables:
        async def list_tables(args: dict[str, Any]) -> dict[str, Any]:
            return table_result(await engine.list_tables(_string(args, "schema"), limits()))

        tools.append(SqlgateTool.create(
            name="list_tables",
            description="List tables and views with their comments, row estimates and column counts, "
                        "optionally only those of one schema.",
            parameters=_obj({"schema": {"type": "string", "description": "Only this schema (optional)."}}),
            handler=list_tables, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.describe_table:
        async def describe_table(args: dict[str, Any]) -> dict[str, Any]:
            return await engine.describe_table(_string(args, "table", required=True),
                                               _string(args, "schema"), limits())

        tools.append(SqlgateTool.create(
            name="describe_table",
            description="Describe a table or view: columns with types, nullability, defaults and comments, "
                        "plus primary, unique and foreign keys.",
            parameters=_obj({
                "table": {"type": "string", "description": "Table or view name; `schema.table` also works."},
                "schema": {"type": "string", "description": "Schema of the table (optional)."},
            }, ["table"]),
            handler=describe_table, annotations=READ_ONLY, tags={"builtin"}))

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
            return {"items": hits, "truncated": False}

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
            handler=search_objects, annotations=READ_ONLY, tags={"builtin"}))

    if cfg.query:
        async def query(args: dict[str, Any]) -> dict[str, Any]:
            sql = _string(args, "sql", required=True) or ""
            lim = limits()
            check_length(sql, lim.max_sql_length)
            qr = await engine.run_untrusted(sql, call(), lim)
            out: dict[str, Any] = {"columns": qr.columns, "types": qr.types, "rows": qr.rows,
                                   "row_count": len(qr.rows), "truncated": qr.truncated}
            if qr.truncated:
                out["hint"] = qr.hint()
            return out

        tools.append(SqlgateTool.create(
            name="query",
            description=f"Run one read-only SQL query ({engine.dialect} dialect: SELECT, WITH, VALUES, "
                        f"{'TABLE' if engine.dialect == 'postgres' else 'DESCRIBE, SHOW, SUMMARIZE'} or EXPLAIN) and "
                        "get columns and rows. Writes, settings, "
                        "file access and multiple statements are refused. Results are capped by rows, "
                        "bytes and time; `truncated: true` means you saw only part of the answer.",
            parameters=_obj({"sql": {"type": "string", "description": "One read-only SQL statement."}},
                            ["sql"]),
            handler=query, annotations=READ_ONLY, tags={"builtin"}))
    for tool in tools:  # the policies of sqlgate.yml `sql_tools.policies` wrap each tool's handler
        rules = cfg.policies.get(tool.name)
        if rules is not None:
            enforcer = Enforcer(rules, "tool", tool.name, f"sql_tools.policies.{tool.name}")
            tool._handler = guard_handler(enforcer, tool._handler, builtin_view(tool.name), call)
    return tools
