"""The engine contract shared by DuckDB and PostgreSQL."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from sqlgate.answers import ENVELOPE_BYTES, encode_bytes, encoded_cost
from sqlgate.context import CallContext
from sqlgate.engine.values import column_converter
from sqlgate.errors import QueryFailed
from sqlgate.paging import CURSOR_RESERVE, FIRST, Page

# room in the message for the answer's own keys and the hint (counted in both encodings)
_ANSWER_KEYS_RESERVE = 700


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
    # paging: the statement can be re-run for a later page; it has its own ORDER BY; the page it is
    pageable: bool = False
    ordered: bool = False
    page: Page = FIRST

    def records(self) -> list[dict[str, Any]]:
        cols = self.columns
        return [dict(zip(cols, row)) for row in self.rows]  # noqa: B905 (rows have len(columns) by construction)

    def hint(self) -> str | None:
        if not self.truncated or self.limits is None:
            return None
        if self.truncated_by == "max_bytes":
            cap = f"the {self.limits.max_bytes}-byte result limit"
        else:
            cap = f"the {self.limits.max_rows}-row result limit"
        first, last = self.page.offset + 1, self.page.offset + len(self.rows)
        where = f"rows {first}-{last}" if self.page.offset else f"{len(self.rows)} rows"
        text = f"Result truncated at {where} by {cap}; the answer is partial. "
        if self.pageable:
            order = (" Rows are sorted by all columns (ORDER BY ALL) because the query has no ORDER BY."
                     if self.page.order_all else "")
            return text + "Call again with the same arguments and `cursor` = `next_cursor` for the next rows, " \
                          "or aggregate/filter." + order
        return text + "Aggregate, filter or add LIMIT/OFFSET to see the rest."


ROW_TOO_LARGE = ("a row of the result is larger than the result limit (limits.max_bytes); select fewer or "
                 "smaller columns")


class RowShaper:
    """Fetched rows -> JSON-ready rows, capped at max_rows and at max_bytes of the whole MCP message.

    A row costs what it adds to the message: its JSON twice (structuredContent and the JSON text),
    plus the escaping of the text form (`answers.encoded_cost`); room for the envelope, the answer's
    keys, a hint and a cursor is kept aside. Fed batch by batch, so an engine stops fetching (and
    converting) as soon as the answer is full: a thousand rows of megabyte values are never all
    turned into Python objects.
    """

    def __init__(self, columns: list[str], types: list[str], limits: Limits,
                 converters: dict[int, Any] | None = None):
        """`converters`: column index -> function applied to that column's (non-null) values first."""
        self.columns, self.types, self.limits = columns, types, limits
        self.rows: list[list[Any]] = []
        self.truncated_by: str | None = None
        # per column, chosen once from its type: most columns (integers, text) need no conversion,
        # so a page of them is copied, not visited value by value
        self._steps: list[tuple[int, Any, Any]] = []
        for i, type_name in enumerate(types):
            first = (converters or {}).get(i)
            then = column_converter(type_name)
            if first is not None or then is not None:
                self._steps.append((i, first, then))
        # the whole answer counts: column names and types too (an alias can be as long as the SQL)
        reserve = ENVELOPE_BYTES + CURSOR_RESERVE + _ANSWER_KEYS_RESERVE
        self._budget = limits.max_bytes - reserve - encoded_cost(encode_bytes([columns, types]))
        if self._budget < 0 and limits.max_bytes < 2 * reserve:
            raise QueryFailed(f"the {limits.max_bytes}-byte result limit (limits.max_bytes) leaves no room for rows: "
                              f"an answer needs about {reserve} bytes for its envelope, hint and cursor")
        if self._budget < 0:
            raise QueryFailed(f"the result's column names and types alone exceed the {limits.max_bytes}-byte "
                              "result limit; select fewer columns or give them shorter names")

    @property
    def full(self) -> bool:
        return self.truncated_by is not None

    def add(self, batch: list[tuple] | list[list[Any]]) -> None:
        room = self.limits.max_rows - len(self.rows)
        beyond = len(batch) > room  # a row beyond max_rows exists
        rows = self._convert(batch[:room])
        # the whole batch in one encoding when it fits: encoding row by row was most of the cost of
        # a page of small rows (64k one-integer rows: 1.5 s)
        cost = encoded_cost(encode_bytes(rows))  # = each row's cost and its comma (+2 for the brackets)
        if cost <= self._budget:
            self._budget -= cost
            self.rows.extend(rows)
        else:
            for row in rows:
                self._budget -= encoded_cost(encode_bytes(row)) + 2
                if self._budget < 0:
                    if not self.rows:
                        # an answer of no rows with a cursor back to this same row would send a
                        # paging client round forever: the row itself is the problem
                        raise QueryFailed(ROW_TOO_LARGE)
                    self.truncated_by = "max_bytes"
                    return
                self.rows.append(row)
        if beyond:
            self.truncated_by = "max_rows"

    def _convert(self, records: list[tuple] | list[list[Any]]) -> list[list[Any]]:
        rows = [list(record) for record in records]
        try:
            for i, first, then in self._steps:
                for row in rows:
                    value = row[i]
                    if value is not None:
                        if first is not None:
                            value = first(value)
                        row[i] = then(value) if then is not None else value
        except (OverflowError, ValueError) as exc:
            raise QueryFailed(f"the result holds a value that cannot be converted ({type(exc).__name__}: "
                              f"{exc}); cast it to text in the query") from None
        return rows

    def result(self) -> QueryResult:
        return QueryResult(columns=self.columns, types=self.types, rows=self.rows, truncated=self.full,
                           truncated_by=self.truncated_by, limits=self.limits)


def shape_rows(columns: list[str], types: list[str], raw: list[tuple], limits: Limits) -> QueryResult:
    """All fetched rows at once (at most max_rows + 1 of them) -> a capped QueryResult."""
    shaper = RowShaper(columns, types, limits)
    shaper.add(raw)
    return shaper.result()


class Engine(abc.ABC):
    """A database the server talks to. Implementations are safe for concurrent calls."""

    dialect: str

    @abc.abstractmethod
    async def execute(
        self, sql: str, params: dict[str, Any] | None, call: CallContext, limits: Limits, page: Page = FIRST
    ) -> QueryResult:
        """Trusted SQL (endpoints, catalog). A later `page` runs the statement as a subquery with
        LIMIT/OFFSET: the author's ORDER BY decides the order (see README, paging)."""

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

    async def describe_table(self, table: str, schema: str | None,
                             limits: Limits) -> tuple[dict[str, Any], QueryResult]:
        """(the relation: schema, name, kind, comment, keys; its columns as a result)."""
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
        return ({"schema": schema_name, "name": table_name, "kind": kind, "comment": comment,
                 "keys": keys.records()}, columns)

    @abc.abstractmethod
    async def catalog_entries(self) -> list[dict[str, Any]]:
        """Every table, view and column with its comment, for keyword search."""

    @abc.abstractmethod
    async def run_untrusted(self, sql: str, call: CallContext, limits: Limits, page: Page = FIRST) -> QueryResult:
        """Run SQL written by the AI client (the built-in `query` tool); `page` as the pager asks.

        The engine's guard decides with the engine's own parser (off the event loop); only the
        statement it admitted runs; the caller's upstream token is out of reach of this SQL; the
        connection is back to its clean state afterwards. Raises QueryRefused, QueryFailed,
        QueryTimeout or DatabaseUnavailable.
        """

    def bind_problem(self, sql: str, samples: dict[str, Any] | None = None) -> str | None:
        """Why the project's `sql` cannot be bound against the database (a missing table or column …),
        or None. For `sqlgate validate`; `samples` holds a value of each parameter's declared type for
        engines that need typed parameters to plan. An engine that cannot tell says None."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...


def trusted_page(sql: str, limit: int, page: Page) -> str:
    """Endpoint SQL (the project author's, not guarded) for a later page: the statement as a
    subquery with LIMIT/OFFSET, its trailing `;` removed."""
    body = sql.rstrip().rstrip(";").rstrip()
    return f"SELECT * FROM (\n{body}\n) q LIMIT {int(limit)} OFFSET {int(page.offset)}"
