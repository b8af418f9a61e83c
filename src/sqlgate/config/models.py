"""Pydantic models of the effective settings: project file + user profile + SQLGATE_* env.

Every section forbids unknown keys so a misspelt setting is an error, not a silent default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sqlgate.auth.config import AuthConfig
from sqlgate.policy import BUILTIN_PARAMETERS, Policies


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(Strict):
    type: Literal["duckdb", "postgres"] = "duckdb"
    # PostgreSQL: libpq connection string, e.g. postgresql://sqlgate@db:5432/shop
    dsn: str | None = None
    # PostgreSQL: run each call as the service role, or `SET ROLE` to the caller's mapped role
    role_mode: Literal["service", "set_role"] = "service"
    # PostgreSQL set_role: role = role_prefix + username (e.g. "app_" + "alice")
    role_prefix: str = ""
    # PostgreSQL: how the caller reaches the database. "signed" (default): a per-call identity signed
    # with identity_key, read by sqlgate.username() & co. (install them: python -m
    # sqlgate.engine.postgres_identity install); "settings": plain settings sqlgate.username …, which
    # a query can overwrite — opt-in only, for databases without the sqlgate schema and without RLS
    identity: Literal["signed", "settings"] = "signed"
    identity_key: SecretStr | None = None
    # PostgreSQL: the service role's privileges are checked at start-up; on a problem refuse or warn
    role_checks: Literal["refuse", "warn"] = "refuse"
    # PostgreSQL: functions outside pg_catalog the query tool may call, as schema.name (the guard
    # refuses every other one: their code is invisible to it); env: comma-separated
    allowed_functions: list[str] = Field(default_factory=list)
    # DuckDB file, relative to the project directory; ":memory:" for an in-memory database
    path: str = "data/sqlgate.duckdb"
    read_only: bool = True
    # SQL file run once to build the database when the file does not exist yet
    seed: str | None = None
    # files/directories SQL may read (e.g. CSV/Parquet); everything else stays off limits
    allowed_paths: list[str] = Field(default_factory=list)
    # concurrent queries (one DuckDB connection each); calls beyond this wait their turn
    pool_size: int = Field(default=4, ge=1, le=64)
    # a caller (user, or MCP session when anonymous) may hold at most this many connections at once,
    # so one client's slow queries never take the whole pool; default: half the pool (at least 1)
    max_concurrent_per_caller: int | None = Field(default=None, ge=1)
    # DuckDB resources: threads per query (None = DuckDB's default, all cores), a memory cap that
    # makes a hungry query fail with a clear error instead of growing the server, and where DuckDB
    # may spill (None = no spilling: a query over memory_limit fails rather than filling a disk)
    threads: int | None = Field(default=None, ge=1)
    memory_limit: str = "1GB"
    temp_directory: str | None = None
    # DuckDB extensions loaded at start from extension_directory (relative to the project; nothing is
    # downloaded), e.g. [httpfs]; a missing one stops the start naming it. The query tool still
    # reads no file or URL (the guard refuses readers); allowed_urls are the URL prefixes the
    # project's own SQL may reach through httpfs, everything else stays off
    extensions: list[str] = Field(default_factory=list)
    extension_directory: str | None = None
    allowed_urls: list[str] = Field(default_factory=list)

    @field_validator("extensions", "allowed_urls", mode="before")
    @classmethod
    def _split_lists(cls, value):
        if isinstance(value, str):  # SQLGATE_DB_EXTENSIONS=httpfs,spatial
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("extensions")
    @classmethod
    def _extension_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"{name!r} is not an extension name (e.g. httpfs)")
        return value

    @field_validator("allowed_urls")
    @classmethod
    def _url_prefixes(cls, value: list[str]) -> list[str]:
        for url in value:
            scheme, _, rest = url.partition("://")
            if scheme not in ("https", "http", "s3", "gcs", "r2", "hf") or not rest.split("/")[0] \
                    or not url.endswith("/"):
                raise ValueError(f"{url!r} must be a URL prefix ending in / (e.g. "
                                 "https://data.example.com/exports/), so it cannot match other hosts or paths")
        return value


    @field_validator("allowed_functions", mode="before")
    @classmethod
    def _split_functions(cls, value):
        if isinstance(value, str):  # SQLGATE_DB_ALLOWED_FUNCTIONS=ext.f,ext.g
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("allowed_functions")
    @classmethod
    def _qualified_functions(cls, value: list[str]) -> list[str]:
        for name in value:
            parts = name.split(".")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"engine.allowed_functions: {name!r} must be schema.name (e.g. public.my_fn)")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> EngineConfig:
        if self.type == "postgres" and not self.dsn:
            raise ValueError("engine.type postgres needs engine.dsn (e.g. postgresql://user@host:5432/db)")
        if self.type == "postgres" and self.role_mode == "set_role" and not self.role_prefix:
            raise ValueError("engine.role_prefix must not be empty with engine.role_mode set_role: the role is "
                             "role_prefix + username, and without a prefix a username could name any role the "
                             "service role belongs to (e.g. role_prefix: app_)")
        return self


SOURCE_FORMATS = ("csv", "tsv", "parquet", "json", "ndjson", "duckdb", "sqlite")
# option values a source may pass to DuckDB's reader: scalars, lists and mappings of them
OptionValue = str | int | float | bool | list[Any] | dict[str, Any]


class SourceConfig(Strict):
    """A named, read-only relation built from files or another database (DuckDB engine only).

    csv/tsv/parquet/json/ndjson: a view over the file(s), read live at every query; duckdb: the
    file attached read-only, one view per table in a schema named after the source; sqlite: its
    tables copied in when the database is built (DuckDB's sqlite extension cannot be installed
    offline), so `sqlgate refresh` re-reads them.
    """

    # a file, a glob (data/sales/*.parquet, **/*.csv) or a list of them; relative to the project
    path: str | list[str]
    # default: from the file extension (.csv .tsv .parquet .json .ndjson/.jsonl .duckdb .sqlite/.db)
    format: Literal["csv", "tsv", "parquet", "json", "ndjson", "duckdb", "sqlite"] | None = None
    description: str | None = None
    # named parameters of DuckDB's reader (read_csv, read_parquet, read_json), e.g. delim, header,
    # columns: {id: INTEGER}, dateformat; passed as quoted literals, never spliced as text
    options: dict[str, OptionValue] = Field(default_factory=dict)
    # column comments shown by describe_table / search_objects
    columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _some_path(cls, value: str | list[str]) -> str | list[str]:
        paths = [value] if isinstance(value, str) else value
        if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
            raise ValueError("needs a file, a glob or a list of them")
        if any("\0" in p for p in paths):
            raise ValueError("a path cannot hold a NUL character")
        return value

    @field_validator("options")
    @classmethod
    def _option_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"option name {key!r} must be a plain identifier (e.g. delim, header)")
        return value

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class LimitsConfig(Strict):
    """Per-call limits. Only configuration sets them; tool arguments cannot raise them."""

    max_rows: int = Field(default=1000, ge=1)
    # the whole MCP message of one answer (both encodings of a tool answer, JSON escaping, envelope):
    # the official Python client refuses an SSE event over 1 MiB (1,048,576 bytes)
    max_bytes: int = Field(default=1_000_000, ge=1024)
    timeout_seconds: float = Field(default=30.0, gt=0)
    # longest SQL text the query tool accepts, checked before anything parses it (characters)
    max_sql_length: int = Field(default=100_000, ge=100)
    # signs the cursors of paged answers; share it between replicas (default: the OAuth state key,
    # else engine.identity_key, else one made per server process)
    cursor_secret: SecretStr | None = None
    # how long a cursor stays valid
    cursor_ttl_seconds: float = Field(default=3600, gt=0)


class EndpointLimits(Strict):
    """Per-endpoint limits from YAML (trusted project code), each optional."""

    max_rows: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1024)
    timeout_seconds: float | None = Field(default=None, gt=0)


class RateLimitRule(Strict):
    """Per caller (user, else client address): calls per minute and calls at the same time; None = no limit."""

    calls_per_minute: int | None = Field(default=None, ge=1)
    concurrent_calls: int | None = Field(default=None, ge=1)

    @property
    def active(self) -> bool:
        return self.calls_per_minute is not None or self.concurrent_calls is not None


class RateLimitsConfig(RateLimitRule):
    """The limits every call counts against (tool calls, resource reads, prompt renders), shared by all
    workers and replicas through the OAuth state store (auth.persistence)."""

    # a concurrent-call slot whose holder vanished (kill -9, a lost replica) is free again after the
    # call's timeout plus this many seconds
    lease_grace_seconds: float = Field(default=30, ge=1)


BUILTIN_TOOLS = ("list_schemas", "list_tables", "describe_table", "search_objects", "query")


class SqlToolsConfig(Strict):
    enabled: bool = True
    list_schemas: bool = True
    list_tables: bool = True
    describe_table: bool = True
    search_objects: bool = True
    query: bool = True
    # scopes a caller needs per built-in tool, e.g. {query: [sql:query]}
    scopes: dict[str, list[str]] = Field(default_factory=dict)
    # request headers the query tool's SQL may read with get_request_header(); none by default
    # (headers carry credentials: X-Forwarded-Access-Token, X-Amzn-Oidc-Data, DPoP …). The project
    # author's own endpoints may read every header but Authorization and Cookie.
    request_headers: list[str] = Field(default_factory=list)
    # CEL policies per built-in tool, e.g. {query: {input: [{condition: ..., action: deny}]}}
    policies: dict[str, Policies] = Field(default_factory=dict)
    # calls-per-minute / concurrent-calls limits per caller, per built-in tool
    rate_limits: dict[str, RateLimitRule] = Field(default_factory=dict)

    @field_validator("policies")
    @classmethod
    def _known_variables(cls, v: dict[str, Policies]) -> dict[str, Policies]:
        for tool, policies in v.items():
            unknown = policies.unknown_variable(set(BUILTIN_PARAMETERS))
            if unknown is not None:
                where = f"{tool}.{unknown[0][0]}[{unknown[0][1]}].{unknown[0][2]}"
                raise ValueError(f"{where}: {unknown[1]}")
        return v

    @field_validator("scopes", "policies", "rate_limits")
    @classmethod
    def _known_tools(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(BUILTIN_TOOLS))
        if unknown:
            raise ValueError(f"unknown built-in tool(s) {', '.join(unknown)} (known: {', '.join(BUILTIN_TOOLS)})")
        return v


class TransportConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    path: str = "/mcp"
    # external URL when behind a reverse proxy, e.g. https://sql.example.com
    base_url: str | None = None
    scheme: Literal["http", "https"] = "http"
    trust_proxy: bool = False
    # DNS-rebinding protection: None = on for loopback binds (the safe default)
    host_origin_protection: bool | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    # no MCP sessions: every request stands alone, so replicas behind a plain round-robin load
    # balancer (or `serve --workers N`) need no sticky sessions
    stateless: bool = False
    # answer POSTs with one JSON body instead of an SSE stream (for JSON-only clients)
    json_response: bool = False
    # browser origins allowed to call the server (CORS), e.g. https://app.example.com; none by
    # default (CORS off). Env: comma-separated
    cors_origins: list[str] = Field(default_factory=list)
    # memory kept per server for SSE stream resumption (Last-Event-ID): recent events, oldest
    # dropped first; 0 turns resumption off (a GET with Last-Event-ID then gets a clean 400)
    resume_buffer_bytes: int = Field(default=8_000_000, ge=0)
    # MCP sessions: a ceiling for the server, a share per client (token principal or address), and
    # how long an idle session lives
    max_sessions: int = Field(default=10_000, ge=1)
    max_sessions_per_client: int = Field(default=100, ge=1)
    session_idle_timeout: float = Field(default=600, gt=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):  # SQLGATE_CORS_ORIGINS=https://a.example,https://b.example
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"cors_origins: {origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v.rstrip("/") or "/"


class AuditConfig(Strict):
    """The audit trail (audit/): one event per call and authorization step, see README "Operating sqlgate"."""

    enabled: bool = True
    log_arguments: bool = True
    # the one-line-per-call server log (user info in logs), independent of the stores below
    console: bool = True
    # JSON-lines file (relative to the project); None = no file
    path: str | None = None
    # rotation of the JSON-lines file: by size, and by age of its first event (None = never)
    rotate_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    rotate_seconds: float | None = Field(default=None, gt=0)
    keep: int = Field(default=7, ge=0)
    # the queryable table (`sqlgate log`): SQLite file (default), PostgreSQL (replicas), or none
    store: Literal["sqlite", "postgres", "none"] = "sqlite"
    database: str = "data/audit.db"  # sqlite, relative to the project
    dsn: SecretStr | None = None  # postgres: libpq DSN/URL (as auth.persistence.dsn)
    # postgres: how long a connection attempt may wait for the database to answer; the writer holds
    # its batch meanwhile (calls never wait), then counts it lost. libpq's minimum is 2 s.
    connect_timeout_seconds: int = Field(default=10, ge=2, le=600)
    # events waiting for the sinks; beyond it events are dropped, counted and logged
    queue_size: int = Field(default=10_000, ge=10)

    @model_validator(mode="after")
    def _store(self) -> AuditConfig:
        if self.store == "postgres" and not self.dsn:
            raise ValueError("audit.store postgres needs audit.dsn (env: SQLGATE_AUDIT_DSN)")
        return self


class TracesConfig(Strict):
    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    # OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (None: OTEL_EXPORTER_OTLP_* or the default)
    endpoint: str | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    service_name: str | None = None  # default: the project name
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class MetricsConfig(Strict):
    """Prometheus text format at `path`: on the MCP port behind `token`, or on its own host/port."""

    enabled: bool = False
    path: str = "/metrics"
    # scrapers send `Authorization: Bearer <token>`; required on the MCP port unless it is loopback
    token: SecretStr | None = None
    # a separate listener (e.g. an internal interface); None = the MCP port
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"


class TelemetryConfig(Strict):
    traces: TracesConfig = Field(default_factory=TracesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class Icon(Strict):
    """An icon clients may show next to the server or a component (MCP `Icon`)."""

    # https: URL or data: URI
    src: str = Field(pattern=r"^(https://|data:)")
    mime_type: str | None = None
    # e.g. ["48x48"], ["any"] for SVG
    sizes: list[str] | None = None
    theme: Literal["light", "dark"] | None = None

    def to_mcp(self):
        from mcp_types import Icon as McpIcon

        return McpIcon(src=self.src, mime_type=self.mime_type, sizes=self.sizes, theme=self.theme)


class Settings(Strict):
    """The effective configuration of one project under one profile."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    # shown by clients instead of the name, with the icons and a link to the project's site
    title: str | None = None
    website_url: str | None = Field(default=None, pattern=r"^https?://")
    icons: list[Icon] = Field(default_factory=list)
    # tools the caller lacks a scope for: "hide" them from tools/list (default), or "list" them
    # with a note naming the scope(s) they need, so a client can re-authorise (step up)
    locked_tools: Literal["hide", "list"] = "hide"
    # validate every tool answer against the tool's outputSchema before it is sent (for endpoint
    # authors while developing: a schema walk per call; clients validate what they receive anyway)
    check_answers: bool = False
    profile: str = "default"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    sql_tools: SqlToolsConfig = Field(default_factory=SqlToolsConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    # named relations from files and other databases (DuckDB only), keyed by relation name
    sources: dict[str, SourceConfig] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)) or str(name).lower().startswith("__sqlgate"):
                raise ValueError(f"source name {name!r} must be a plain identifier (letters, digits, _), "
                                 "as queries will name it")
        return value

    @model_validator(mode="after")
    def _sources_need_duckdb(self) -> Settings:
        if self.sources and self.engine.type != "duckdb":
            raise ValueError(f"sources: are DuckDB-only (engine.type is {self.engine.type}); read files into "
                             "PostgreSQL with its own tools, or remove the sources: section")
        return self


# sections a profile in the user config may override; name/description/profile are the project's
PROFILE_SECTIONS = ("engine", "limits", "sql_tools", "transport", "auth", "audit", "sources", "telemetry",
                    "rate_limits")
PROJECT_KEYS = ("name", "description", "title", "website_url", "icons", "locked_tools", "profile", "engine",
                "limits", "sql_tools", "transport", "audit", "sources", "telemetry", "rate_limits")
