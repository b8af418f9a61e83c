"""Run an App over stdio or streamable HTTP, in one process or several (`--workers N`).

With N workers, uvicorn's supervisor binds the port once and runs N processes that each build the
app from the same project and profile (`worker_app`, a factory). Each worker has its own MCP
session table, so workers serve stateless HTTP: every request stands alone. OAuth state is shared
through the grant store; the database is opened by each worker (DuckDB files read-only).

On SIGTERM the server stops accepting work and lets calls in flight finish, for up to the query
timeout, before it exits.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from typing import Any

import anyio

from sqlgate import sessions
from sqlgate.server import App, settle_heap

log = logging.getLogger("sqlgate.serve")
_WORKER_SPEC = "SQLGATE_WORKER_SPEC"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def http_options(app: App, host: str) -> dict[str, Any]:
    """Host/Origin (DNS-rebinding) protection: on by default for loopback binds."""
    t = app.project.settings.transport
    protection: Any = t.host_origin_protection
    if protection is None:
        protection = "auto"
    allowed_hosts = list(t.allowed_hosts)
    if protection and is_loopback(host):
        allowed_hosts += [host, "127.0.0.1", "localhost", "[::1]"]
    return {
        "host_origin_protection": protection,
        "allowed_hosts": allowed_hosts or None,
        "allowed_origins": list(t.allowed_origins) or None,
    }


def uvicorn_options(app: App, log_level: str) -> dict[str, Any]:
    t = app.project.settings.transport
    return {
        "access_log": log_level == "debug",
        # X-Forwarded-* are honoured only when the profile says a trusted proxy is in front
        "proxy_headers": t.trust_proxy,
        "forwarded_allow_ips": "*" if t.trust_proxy else None,
        "log_level": log_level,
        # SIGTERM: calls in flight may finish (FastMCP's default gives them 2 s)
        "timeout_graceful_shutdown": app.project.settings.limits.timeout_seconds + 5,
    }


def session_options(app: App, stateless: bool | None = None) -> dict[str, Any]:
    t = app.project.settings.transport
    sessions.install(sessions.SessionLimits(max_sessions=t.max_sessions,
                                            max_sessions_per_client=t.max_sessions_per_client,
                                            idle_timeout_seconds=t.session_idle_timeout))
    return {"stateless_http": t.stateless if stateless is None else stateless, "json_response": t.json_response}


def serve(app: App, transport: str, host: str, port: int, log_level: str = "info") -> None:
    settle_heap()
    if transport == "stdio":
        anyio.run(lambda: app.mcp.run_stdio_async(show_banner=False, log_level=log_level.upper()))
        return
    t = app.project.settings.transport
    anyio.run(lambda: app.mcp.run_http_async(
        show_banner=False, transport="http", host=host, port=port, path=t.path, log_level=log_level,
        uvicorn_config=uvicorn_options(app, log_level), middleware=http_middleware(app), **http_options(app, host),
        **session_options(app),
    ))


def serve_workers(app: App, project: str, profile: str | None, host: str, port: int, log_level: str,
                  workers: int) -> None:
    """Serve HTTP from `workers` processes sharing one port (stateless; see the module doc)."""
    import uvicorn

    if not app.project.settings.transport.stateless:
        log.info("serving with %d workers: stateless HTTP (each worker has its own MCP sessions)", workers)
    options = uvicorn_options(app, log_level)
    os.environ[_WORKER_SPEC] = json.dumps({"project": project, "profile": profile, "host": host, "port": port,
                                          "log_level": log_level})
    uvicorn.run("sqlgate.serve:worker_app", factory=True, host=host, port=port, workers=workers,
                lifespan="on", **options)


def worker_app():
    """uvicorn factory: one worker's ASGI app, built from the spec the supervisor left in the environment."""
    from sqlgate.config.loader import load_project
    from sqlgate.server import build_app

    spec = json.loads(os.environ[_WORKER_SPEC])
    logging.basicConfig(level=spec["log_level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = load_project(spec["project"], spec["profile"]).with_transport(host=spec["host"], port=spec["port"])
    app = build_app(loaded)
    t = loaded.settings.transport
    asgi = app.mcp.http_app(path=t.path, transport="http", middleware=http_middleware(app),
                            **session_options(app, stateless=True), **http_options(app, spec["host"]))
    settle_heap()
    return asgi


def http_middleware(app: App) -> list[Any]:
    """Outermost the in-flight counter (graceful SIGTERM); the per-tool scope guard and the rate
    limits sit behind authentication, in front of the MCP endpoint."""
    from starlette.middleware import Middleware

    from sqlgate.drain import InFlight

    t = app.project.settings.transport
    stack = [Middleware(InFlight)]
    if app.scopes is not None:
        from sqlgate.auth.factory import public_base_url
        from sqlgate.auth.scopes import ScopeGuard

        prm = f"{public_base_url(t)}/.well-known/oauth-protected-resource{t.path}"
        stack.append(Middleware(ScopeGuard, registry=app.scopes, mcp_path=t.path, resource_metadata_url=prm))
    if app.rate_limiter is not None:
        # behind the scope guard: a call refused for its scopes is not counted
        from sqlgate.ratelimit import RateLimitGuard

        stack.append(Middleware(RateLimitGuard, limiter=app.rate_limiter, mcp_path=t.path))
    return stack
