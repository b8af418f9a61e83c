"""The contract of an engine guard: decide about untrusted SQL with the executing engine's own parser.

Untrusted SQL is what an AI client sends to the built-in `query` tool. A guard turns it into a
`CheckedStatement` or raises `QueryRefused`; the engine then executes `CheckedStatement.sql` and
nothing else — never the raw text — so what runs is exactly what was checked. A guard never uses a
second parser: any disagreement between two parsers is a way around the check (sqlglot read one
SELECT where DuckDB and PostgreSQL read three statements).

Each engine has one guard module (`duckdb_guard`, `postgres_guard`); this module holds what they
share: the length limit checked before any parsing, and the shape of the decision.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from sqlgate.errors import QueryRefused


@dataclass(frozen=True)
class CheckedStatement:
    """One statement the guard admitted: the exact text the engine runs, and what kind it is."""

    sql: str
    kind: str  # e.g. "SELECT", "EXPLAIN"
    # the text may be used as a subquery (no trailing `;`), so the engine can wrap it, e.g. to
    # bound the size of each result row before any value reaches Python
    wrappable: bool = False
    # the statement itself ends in ORDER BY, so its row order is the author's (paging keeps it;
    # a statement without one is paged in the pager's own total order)
    ordered: bool = False


class Guard(abc.ABC):
    """Admits exactly one read-only statement of untrusted SQL, decided by the engine's parser."""

    @abc.abstractmethod
    def check(self, sql: str) -> CheckedStatement:
        """Return the statement to execute, or raise QueryRefused naming the problem."""


def check_length(sql: str, max_length: int) -> None:
    """Refuse oversize SQL before anything parses it: parsing cost grows with the text."""
    if len(sql) > max_length:
        raise QueryRefused(
            f"the query is {len(sql):,} characters long; the limit is {max_length:,} "
            "(limits.max_sql_length). Send a shorter query."
        )
    if not sql.strip():
        raise QueryRefused("empty query")
