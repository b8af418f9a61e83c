"""Database engines: hardened connections, per-call user context, limits and timeouts."""

from sqlgate.engine.base import Engine, Limits, QueryResult

__all__ = ["Engine", "Limits", "QueryResult", "open_engine"]


def open_engine(project) -> Engine:  # project: LoadedProject
    cfg = project.settings.engine
    if cfg.type == "duckdb":
        from sqlgate.engine.duckdb_engine import DuckDBEngine

        return DuckDBEngine.open(project)
    if cfg.type == "postgres":
        from sqlgate.engine.postgres_engine import PostgresEngine

        return PostgresEngine.open(project)
    raise ValueError(f"unsupported engine type {cfg.type!r}")
