"""Error types that carry a precise location, so every refusal names file, line/key and reason."""

from __future__ import annotations


class SqlgateError(Exception):
    """Base class for errors shown to users (CLI prints them without a traceback)."""


class ConfigError(SqlgateError):
    """A configuration or endpoint file is invalid.

    `where` is e.g. "tools/orders.yml:12 (tool.parameters[0].type)"; `problems` lists every
    problem found in one file so users fix them all in one go.
    """

    def __init__(self, message: str, where: str | None = None, problems: list[str] | None = None):
        self.message = message
        self.where = where
        self.problems = problems or []
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class QueryRefused(SqlgateError):
    """The statement checker refused a statement (never reaches the engine)."""


class QueryFailed(SqlgateError):
    """The engine raised an error executing a statement."""


class QueryTimeout(SqlgateError):
    """The call's deadline passed: waiting for a connection or running the statement."""


class DatabaseUnavailable(QueryFailed):
    """The database could not be reached (an outage, not a mistake of the caller)."""


class InvalidArguments(SqlgateError):
    """Arguments do not match an endpoint's declared parameters."""


class ResourceNotFound(SqlgateError):
    """A resource URI that names nothing (e.g. a record id with no row)."""


class PolicyDenied(SqlgateError):
    """A policy refused the call or its answer (also when a policy could not be evaluated)."""


class RateLimited(SqlgateError):
    """A principal is over a calls-per-minute or concurrent-calls limit."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class AnswerMismatch(QueryFailed):
    """An answer does not match its tool's declared outputSchema (only checked with `check_answers`)."""
