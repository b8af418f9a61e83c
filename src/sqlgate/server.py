"""Build the MCP server of a project: endpoints + built-in tools + audit, on FastMCP."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastmcp import FastMCP
from mcp_types import Icon as McpIcon
from starlette.requests import Request
from starlette.responses import JSONResponse

from sqlgate import __version__, metrics, metrics_http, tracing
from sqlgate.audit import writer as audit_writer
from sqlgate.audit.middleware import CallObserver
from sqlgate.audit.setup import build_writer, labeller
from sqlgate.auth.factory import build_auth
from sqlgate.auth.scopes import ScopeFilter, ScopeRegistry
from sqlgate.broadcast import OpenConnections
from sqlgate.completions import Completer
from sqlgate.component_index import index_components
from sqlgate.components import (
    SqlgatePrompt,
    SqlgateResource,
    SqlgateResourceTemplate,
    SqlgateTool,
    prompt_arguments,
)
from sqlgate.config.loader import LoadedProject
from sqlgate.config.models import Icon
from sqlgate.context import current_call
from sqlgate.endpoints import executor
from sqlgate.endpoints.loader import Endpoint, load_endpoints, reset_module_cache
from sqlgate.endpoints.models import ResourceDef, ToolDef
from sqlgate.engine import Engine, Limits, open_engine
from sqlgate.errors import SqlgateError
from sqlgate.notices import CallNotices
from sqlgate.paging import Pager, resolve_secret
from sqlgate.ratelimit import RateLimiter, RateLimitMiddleware
from sqlgate.sqltools.builtin import builtin_tools

log = logging.getLogger("sqlgate.server")


@dataclass
class App:
    project: LoadedProject
    engine: Engine
    endpoints: list[Endpoint]
    mcp: FastMCP
    builtin_names: list[str] = field(default_factory=list)
    scopes: ScopeRegistry | None = None
    pager: Pager | None = None
    rate_limiter: RateLimiter | None = None
    connections: OpenConnections = field(default_factory=OpenConnections)
    _announcing: set[asyncio.Task] = field(default_factory=set)

    @property
    def limits(self) -> Limits:
        lim = self.project.settings.limits
        return Limits(lim.max_rows, lim.max_bytes, lim.timeout_seconds, lim.max_sql_length)

    def register(self, endpoints: list[Endpoint]) -> None:
        for ep in endpoints:
            if self.scopes is not None:
                key = ep.definition.uri if ep.kind == "resource" else ep.name
                self.scopes.set(ep.kind, key, list(ep.definition.scopes))
            if self.rate_limiter is not None:
                self.rate_limiter.set(ep.kind, ep.definition.uri if ep.kind == "resource" else ep.name,
                                      getattr(ep.definition, "rate_limit", None))
            elif getattr(ep.definition, "rate_limit", None) is not None:
                log.warning("%s: rate_limit ignored until restart (no rate limit was configured at start-up)",
                            ep.file)
            if ep.kind == "tool":
                self.mcp.add_tool(_tool(ep, self))
            elif ep.kind == "resource":
                component = _resource(ep, self)
                if isinstance(component, SqlgateResourceTemplate):
                    self.mcp.add_template(component)
                else:
                    self.mcp.add_resource(component)
            else:
                self.mcp.add_prompt(_prompt(ep))
        self.endpoints = endpoints

    def may_use(self, kind: str, key: str) -> bool:
        """Does the current caller hold the scopes this endpoint needs (for requests that bypass the
        scope guard and filter, such as completions)?"""
        if self.scopes is None:
            return True
        from fastmcp.server.dependencies import get_access_token

        token = get_access_token()
        return token is None or not self.scopes.missing(kind, key, self.scopes.caller_scopes(token))

    def reload(self) -> int:
        """Re-read every endpoint file (explicit reload, e.g. SIGHUP).

        All files are validated first; on any error the running set stays untouched and the
        ConfigError propagates, so a typo never takes tools away from connected clients.
        """
        reset_module_cache()
        fresh = load_endpoints(self.project.root)
        provider = self.mcp.local_provider
        for ep in self.endpoints:
            if self.scopes is not None:
                self.scopes.set(ep.kind, ep.definition.uri if ep.kind == "resource" else ep.name, [])
            if self.rate_limiter is not None:
                self.rate_limiter.set(ep.kind, ep.definition.uri if ep.kind == "resource" else ep.name, None)
            if ep.kind == "tool":
                provider.remove_tool(ep.name)
            elif ep.kind == "prompt":
                provider.remove_prompt(ep.name)
            elif ep.definition.parameters:
                provider.remove_template(ep.definition.uri)
            else:
                provider.remove_resource(ep.definition.uri)
        self.register(fresh)
        return len(fresh)

    def reload_logged(self) -> None:
        try:
            count = self.reload()
        except SqlgateError as exc:
            log.error("reload refused, keeping the previous endpoints: %s", exc)
        else:
            settle_heap()
            log.info("reloaded %d endpoint(s)", count)
            self.announce_reload()
        self._reopen_database()

    def announce_reload(self) -> None:
        """Send list_changed to every connected client (from the event loop, e.g. the SIGHUP handler)."""
        task = asyncio.get_running_loop().create_task(self.connections.list_changed())
        self._announcing.add(task)  # a reference until done, so the task is not collected mid-way
        task.add_done_callback(self._announcing.discard)

    def _reopen_database(self) -> None:
        """After `sqlgate refresh` swapped the database file: open the new one off the event loop;
        calls in flight finish on the old file (DuckDBEngine.reopen_if_replaced)."""
        reopen = getattr(self.engine, "reopen_if_replaced", None)
        if reopen is None:
            return

        async def run() -> None:
            try:
                await asyncio.to_thread(reopen)
            except SqlgateError as exc:
                log.error("reload could not open the rebuilt database, keeping the previous one: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._announcing.add(task)  # same: a reference until done
        task.add_done_callback(self._announcing.discard)


async def _clean_oauth_state(auth, settings) -> None:
    """Delete expired OAuth rows periodically (reads already ignore them)."""
    interval = settings.auth.persistence.cleanup_interval_seconds
    while True:
        try:
            removed = await asyncio.to_thread(auth.state.cleanup)
            if removed:
                log.info("removed %d expired OAuth record(s)", removed)
        except Exception as exc:
            log.warning("OAuth state cleanup failed: %s", exc)
        await asyncio.sleep(interval)


def settle_heap() -> None:
    """Move long-lived objects out of the garbage collector's reach.

    Full collections over the ~130k objects FastMCP, pydantic and the endpoints leave behind
    take 70-95 ms; frozen, they no longer decide the p99 latency under load. Unfreezing first
    lets a reload's replaced endpoints be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _tool(ep: Endpoint, app: App) -> SqlgateTool:
    defn = ep.definition
    assert isinstance(defn, ToolDef)

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        return await executor.execute(ep, args, app.engine, app.limits, current_call(), app.pager)

    annotations = defn.annotations.model_dump(exclude_none=True) if defn.annotations else None
    tool = SqlgateTool.create(
        name=ep.name, title=defn.title, description=defn.description, parameters=executor.tool_input_schema(ep),
        output_schema=executor.output_schema(ep), handler=handler, annotations=annotations,
        tags=set(defn.tags), validate=False,
    )
    tool.icons = _icons(defn.icons)
    if app.project.settings.check_answers:
        tool.check_answers()
    return tool


def _icons(icons: list[Icon]) -> list[McpIcon] | None:
    return [icon.to_mcp() for icon in icons] or None


def _resource(ep: Endpoint, app: App) -> SqlgateResource | SqlgateResourceTemplate:
    defn = ep.definition
    assert isinstance(defn, ResourceDef)

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        args = executor.coerce_string_args(ep, args)
        return await executor.execute(ep, args, app.engine, app.limits, current_call())

    common = dict(name=ep.name, title=defn.title, description=defn.description, mime_type=defn.mime_type,
                  tags=set(defn.tags), icons=_icons(defn.icons))
    if defn.parameters:
        component: Any = SqlgateResourceTemplate(uri_template=defn.uri, parameters=ep.input_schema, **common)
    else:
        component = SqlgateResource(uri=defn.uri, **common)
    component._handler = handler
    return component


def _prompt(ep: Endpoint) -> SqlgatePrompt:
    prompt = SqlgatePrompt(name=ep.name, title=ep.definition.title, description=ep.definition.description,
                           arguments=prompt_arguments(ep.definition.parameters), tags=set(ep.definition.tags),
                           icons=_icons(ep.definition.icons))
    prompt._renderer = lambda args: executor.render_prompt(ep, args)
    return prompt


def _rate_limiter(settings, auth, endpoints: list[Endpoint]):
    """(limiter, state it opened itself) when any rate limit is configured, else (None, None).

    The counters live in the OAuth state store: the proxy's own when sqlgate is the authorization
    server, else one opened from `auth.persistence` (default ~/.sqlgate/oauth.db), so workers and
    replicas sharing it share the limits."""
    wanted = (settings.rate_limits.active or any(r.active for r in settings.sql_tools.rate_limits.values())
              or any(getattr(ep.definition, "rate_limit", None) is not None for ep in endpoints))
    if not wanted:
        return None, None
    state = getattr(auth, "state", None)
    own = None
    if state is None:
        from sqlgate.auth.store import open_state

        state = own = open_state(settings.auth.persistence)
    # a slot whose holder died frees itself once no call could still be running in it
    lease = settings.limits.timeout_seconds + 5 + settings.rate_limits.lease_grace_seconds
    log.info("rate limits: counted in %s", state.grants.location)
    return RateLimiter(state.grants, settings.rate_limits, lease), own


def build_app(project: LoadedProject, engine: Engine | None = None,
              endpoints: list[Endpoint] | None = None, metrics_listener: bool = True) -> App:
    """`metrics_listener=False` for `--workers` processes: the supervisor serves a separate metrics port."""
    settings = project.settings
    telemetry = settings.telemetry
    metrics_http.check_exposure(telemetry.metrics, settings.transport.host)
    tracing.setup(telemetry.traces, settings.name)
    auth = build_auth(settings.auth, settings.transport)
    engine = engine or open_engine(project)
    if tracing.enabled():
        engine = tracing.TracedEngine(engine)  # type: ignore[assignment]
    metrics.POOL_SIZE.set(settings.engine.pool_size)
    endpoints = load_endpoints(project.root) if endpoints is None else endpoints
    writer = build_writer(project) if settings.audit.enabled else None
    audit_writer.install(writer, console=settings.audit.enabled and settings.audit.console)

    @asynccontextmanager
    async def lifespan(_server: FastMCP):
        loop = asyncio.get_running_loop()
        reload_signal = getattr(signal, "SIGHUP", None)
        if reload_signal is not None and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(reload_signal, app.reload_logged)
        has_state = getattr(auth, "state", None) is not None
        cleanup = asyncio.create_task(_clean_oauth_state(auth, settings)) if has_state else None
        listener = None
        if telemetry.metrics.enabled and telemetry.metrics.port is not None and metrics_listener:
            listener = metrics_http.start_listener(telemetry.metrics)
        try:
            yield {}
        finally:
            if own_rate_state is not None:
                own_rate_state.close()
            if cleanup is not None:
                cleanup.cancel()
            if listener is not None:
                listener.shutdown()
            if writer is not None:
                await asyncio.to_thread(writer.close)
            if reload_signal is not None and threading.current_thread() is threading.main_thread():
                loop.remove_signal_handler(reload_signal)
            await engine.close()

    mcp = FastMCP(
        name=settings.name,
        instructions=settings.description or f"SQL data of project {settings.name}, served by sqlgate.",
        version=__version__,
        lifespan=lifespan,
        mask_error_details=True,  # unexpected exceptions never leak internals to clients
        on_duplicate="error",
        auth=auth,
        website_url=settings.website_url,
        icons=_icons(settings.icons),
    )
    mcp._mcp_server.title = settings.title  # FastMCP passes no title to the SDK's server info
    index_components(mcp)  # before any component is added: registering n endpoints is then O(n)
    app = App(project=project, engine=engine, endpoints=[], mcp=mcp,
              pager=Pager(resolve_secret(settings, auth), settings.limits.cursor_ttl_seconds))
    if settings.audit.enabled or telemetry.metrics.enabled or tracing.enabled():
        # outermost: calls refused further in (scopes, policies, connection limits) are observed too
        mcp.add_middleware(CallObserver(labeller(app), audit=settings.audit.enabled,
                                        log_arguments=settings.audit.log_arguments,
                                        count=telemetry.metrics.enabled))
    mcp.add_middleware(app.connections)
    mcp.add_middleware(CallNotices())
    if settings.auth.enabled:
        app.scopes = ScopeRegistry(list(settings.auth.authorization.claim_mappings))
        mcp.add_middleware(ScopeFilter(app.scopes, list_locked_tools=settings.locked_tools == "list"))
    mcp.add_completion_handler(Completer(lambda: app.endpoints, engine, lambda: app.limits,
                                         app.may_use).__call__)

    app.rate_limiter, own_rate_state = _rate_limiter(settings, auth, endpoints)
    if app.rate_limiter is not None:
        mcp.add_middleware(RateLimitMiddleware(app.rate_limiter))

    for tool in builtin_tools(engine, settings.sql_tools, lambda: app.limits, current_call, app.pager):
        if settings.check_answers:
            tool.check_answers()
        mcp.add_tool(tool)
        app.builtin_names.append(tool.name)
        if app.scopes is not None:
            app.scopes.set("tool", tool.name, settings.sql_tools.scopes.get(tool.name, []))
        if app.rate_limiter is not None:
            app.rate_limiter.set("tool", tool.name, settings.sql_tools.rate_limits.get(tool.name))
    app.register(endpoints)

    @mcp.custom_route("/healthz", methods=["GET"], include_in_schema=False)
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "name": settings.name, "version": __version__})

    if telemetry.metrics.enabled and telemetry.metrics.port is None:
        mcp.custom_route(telemetry.metrics.path, methods=["GET"], include_in_schema=False)(
            metrics_http.route(telemetry.metrics))

    return app
