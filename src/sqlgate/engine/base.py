"""The engine contract shared by DuckDB and PostgreSQL."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from sqlgate.context import CallContext
from sqlgate.errors import QueryFailed


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_bytes: int
    timeout_seconds: float
    max_sql_length: int = 100_000

    def tightened(self, max_rows=None, max_bytes=None, timeout_seconds=None) -> Limits:
        """Endpoint limits may only lower the configured ones, never raise them."""
        return Limits(
            max_rows=min(max_rows, self.max_rows) if max_rows else self.max_rows,
            max_bytes=min(max_bytes, self.max_bytes) if max_bytes else self.max_bytes,
            timeout_seconds=min(timeout_seconds, self.timeout_seconds) if timeout_seconds else self.timeout_seconds,
            max_sql_length=self.max_sql_length,
        )


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]  # JSON-ready values
    truncated: bool = False
    # why the result was cut ("max_rows" / "max_bytes"), for the hint shown to the model
    truncated_by: str | None = None
    limits: Limits | None = field(default=None, repr=False)

    def records(self) -> list[dict[str, Any]]:
        cols = self.columns
        return [dict(zip(cols, row, strict=True)) for row in self.rows]

    def hint(self) -> str | None:
        if not self.truncated or self.limits is None:
            return None
        if self.truncated_by == "max_bytes":
            cap = f"the {self.limits.max_bytes}-byte result limit"
        else:
            cap = f"the {self.limits.max_rows}-row result limit"
        return (
            f"Result truncated at {len(self.rows)} rows by {cap}; the answer is partial. "
            "Aggregate, filter or add LIMIT/OFFSET to see the rest."
        )


def shape_rows(columns: list[str], types: list[str], raw: list[tuple], limits: Limits) -> QueryResult:
    """Fetched rows -> JSON-ready QueryResult, capped at max_rows and max_bytes (UTF-8)."""
    import json

    from sqlgate.engine.values import to_json

    rows: list[list[Any]] = []
    truncated_by = "max_rows" if len(raw) > limits.max_rows else None
    dumps = json.dumps
    # the whole answer counts: column names and types too (an alias can be as long as the SQL)
    budget = limits.max_bytes - len(dumps([columns, types], ensure_ascii=False).encode("utf-8"))
    if budget < 0:
        raise QueryFailed(f"the result's column names and types alone exceed the {limits.max_bytes}-byte "
                          "result limit; select fewer columns or give them shorter names")
    for record in raw[: limits.max_rows]:
        row = [to_json(v) for v in record]
        budget -= len(dumps(row, ensure_ascii=False).encode("utf-8")) + 1
        if budget < 0:
            truncated_by = "max_bytes"
            break
        rows.append(row)
    return QueryResult(columns=columns, types=types, rows=rows, truncated=truncated_by is not None,
                       truncated_by=truncated_by, limits=limits)


class Engine(abc.ABC):
    """A database the server talks to. Implementations are safe for concurrent calls."""

    dialect: str

    @abc.abstractmethod
    async def execute(
        self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits
    ) -> QueryResult: ...

    @abc.abstractmethod
    def execute_blocking(
        self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits
    ) -> QueryResult:
        """For synchronous Python endpoints running in a worker thread."""

    # --- catalog, for the built-in schema tools
    async def _meta(self, sql: str, params: dict[str, Any] | None, limits: Limits) -> QueryResult:
        """Catalog queries run as nobody in particular."""
        return await self.execute(sql, params, CallContext(), limits)

    @abc.abstractmethod
    async def list_schemas(self, limits: Limits) -> QueryResult: ...

    @abc.abstractmethod
    async def list_tables(self, schema: str | None, limits: Limits) -> QueryResult: ...

    @abc.abstractmethod
    async def _find_relation(self, table: str, schema: str | None, limits: Limits) -> QueryResult:
        """Rows (schema, name, kind, comment, engine reference) of tables/views with that name."""

    @abc.abstractmethod
    async def _describe_relation(self, schema: str, name: str, ref: Any,
                                 limits: Limits) -> tuple[QueryResult, QueryResult]:
        """(columns, keys) of one relation found by _find_relation."""

    async def describe_table(self, table: str, schema: str | None, limits: Limits) -> dict[str, Any]:
        if schema is None and "." in table:
            schema, table = table.rsplit(".", 1)
        found = await self._find_relation(table, schema, limits)
        if not found.rows:
            where = f"{schema}.{table}" if schema else table
            raise QueryFailed(f"table or view {where!r} not found; use list_tables to see what exists")
        if len(found.rows) > 1:
            schemas = ", ".join(r[0] for r in found.rows)
            raise QueryFailed(f"{table!r} exists in several schemas ({schemas}); pass `schema`")
        schema_name, table_name, kind, comment, ref = found.rows[0]
        columns, keys = await self._describe_relation(schema_name, table_name, ref, limits)
        return {"schema": schema_name, "name": table_name, "kind": kind, "comment": comment,
                "columns": columns.records(), "keys": keys.records()}

    @abc.abstractmethod
    async def catalog_entries(self) -> list[dict[str, Any]]:
        """Every table, view and column with its comment, for keyword search."""

    @abc.abstractmethod
    async def run_untrusted(self, sql: str, call: CallContext, limits: Limits) -> QueryResult:
        """Run SQL written by the AI client (the built-in `query` tool).

        The engine's guard decides with the engine's own parser (off the event loop); only the
        statement it admitted runs; the caller's upstream token is out of reach of this SQL; the
        connection is back to its clean state afterwards. Raises QueryRefused, QueryFailed,
        QueryTimeout or DatabaseUnavailable.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...
