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
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from sqlgate import sessions
from sqlgate.broadcast import announce_list_changes
from sqlgate.errors import SqlgateError
from sqlgate.resume import BoundedEventStore
from sqlgate.server import App, settle_heap

log = logging.getLogger("sqlgate.serve")
_WORKER_SPEC = "SQLGATE_WORKER_SPEC"
WORKER_HEALTHCHECK_SECONDS = 30


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
    # a browser origin allowed by CORS must also pass the Origin check
    origins = list(t.allowed_origins) + [o for o in t.cors_origins if o != "*" and o not in t.allowed_origins]
    return {
        "host_origin_protection": protection,
        "allowed_hosts": allowed_hosts or None,
        "allowed_origins": origins or None,
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


def session_options(app: App, stateless: bool) -> dict[str, Any]:
    t = app.project.settings.transport
    sessions.install(sessions.SessionLimits(max_sessions=t.max_sessions,
                                            max_sessions_per_client=t.max_sessions_per_client,
                                            idle_timeout_seconds=t.session_idle_timeout))
    return {"stateless_http": stateless, "json_response": t.json_response}


def serve(app: App, transport: str, host: str, port: int, log_level: str = "info") -> None:
    settle_heap()
    if transport == "stdio":
        anyio.run(lambda: app.mcp.run_stdio_async(show_banner=False, log_level=log_level.upper()))
        return
    import uvicorn

    asgi = http_asgi(app, host)
    log.info("serving MCP on http://%s:%d%s", host, port, app.project.settings.transport.path)
    server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, lifespan="on",
                                           **uvicorn_options(app, log_level)))
    anyio.run(server.serve)


def http_asgi(app: App, host: str, stateless: bool | None = None) -> Any:
    """The ASGI app of the MCP endpoint with every sqlgate HTTP option (one process or a worker)."""
    t = app.project.settings.transport
    stateless = t.stateless if stateless is None else stateless
    # nothing can reach a client between its requests without a session: do not promise it
    announce_list_changes(app.mcp, enabled=not stateless)
    store = BoundedEventStore(t.resume_buffer_bytes) if t.resume_buffer_bytes and not stateless else None
    return app.mcp.http_app(path=t.path, transport="http", middleware=http_middleware(app, resumable=bool(store)),
                            event_store=store, **session_options(app, stateless), **http_options(app, host))


def serve_workers(app: App, project: str, profile: str | None, host: str, port: int, log_level: str,
                  workers: int) -> None:
    """Serve HTTP from `workers` processes sharing one port (stateless; see the module doc)."""
    import uvicorn

    if not app.project.settings.transport.stateless:
        log.info("serving with %d workers: stateless HTTP (each worker has its own MCP sessions)", workers)
    options = uvicorn_options(app, log_level)
    os.environ[_WORKER_SPEC] = json.dumps({"project": project, "profile": profile, "host": host, "port": port,
                                          "log_level": log_level})
    from uvicorn.supervisors import Multiprocess

    # what uvicorn.run(workers=N) does, but with a listener whose connections get TCP_NODELAY.
    # SIGHUP makes uvicorn replace the workers one by one, each replacement built from the files and
    # ready before the old one stops; a worker builds the whole project, so it gets longer than
    # uvicorn's 5 s to answer its health check (a busy machine, thousands of endpoints)
    config = uvicorn.Config("sqlgate.serve:worker_app", factory=True, host=host, port=port, workers=workers,
                            lifespan="on", timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS, **options)
    with _shared_metrics(app):
        Multiprocess(config, sockets=[tcp_listener(config)]).run()


def tcp_listener(config: Any) -> socket.socket:
    """uvicorn's bound listening socket, marked as TCP so accepted connections get TCP_NODELAY.

    uvicorn (0.54) creates the socket it hands to its workers with `proto` 0; accepted sockets inherit
    it, and asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP (uvicorn issue
    #3149). With Nagle's algorithm on, the last part of every answer waited for the client's delayed
    ACK: each call after the first on a keep-alive connection took ~44 ms (2 workers served 0.42x
    the calls/s of one process). The same descriptor is wrapped again with the right `proto`.
    """
    sock = config.bind_socket()
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    tcp.set_inheritable(True)
    return tcp


@contextmanager
def _shared_metrics(app: App) -> Iterator[None]:
    """Workers count into one directory (prometheus_client multiprocess mode, see metrics.py), set
    before they start; a separate metrics port is served here, by the supervisor, for all of them."""
    from sqlgate import metrics_http
    from sqlgate.metrics import MULTIPROC_ENV

    cfg = app.project.settings.telemetry.metrics
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="sqlgate-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    listener = metrics_http.start_listener(cfg) if cfg.enabled and cfg.port is not None else None
    try:
        yield
    finally:
        if listener is not None:
            listener.shutdown()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def worker_app():
    """uvicorn factory: one worker's ASGI app, built from the spec the supervisor left in the environment."""
    from sqlgate.config.loader import load_project
    from sqlgate.server import build_app

    spec = json.loads(os.environ[_WORKER_SPEC])
    logging.basicConfig(level=spec["log_level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        loaded = load_project(spec["project"], spec["profile"]).with_transport(host=spec["host"],
                                                                               port=spec["port"])
        app = build_app(loaded, metrics_listener=False)
    except SqlgateError as exc:
        # a replacement worker (SIGHUP: a rolling restart) reads the files as they are now; when they
        # are broken it does not start, the workers that serve stay, and the log says why in one line
        log.error("worker not started, the running workers keep serving: %s", exc)
        raise SystemExit(1) from None
    asgi = http_asgi(app, spec["host"], stateless=True)
    settle_heap()
    return asgi


def http_middleware(app: App, resumable: bool = False) -> list[Any]:
    """Outermost CORS (a preflight carries no token) and the in-flight counter (graceful SIGTERM);
    the JSON-RPC checks, the per-tool scope guard and the rate limits sit behind authentication,
    in front of the MCP endpoint."""
    from starlette.middleware import Middleware

    from sqlgate.audit.http import RequestAudit
    from sqlgate.drain import InFlight
    from sqlgate.http_extras import JsonRpcIdGuard, NoReplayGuard, cors_middleware

    t = app.project.settings.transport
    stack = [cors_middleware(t.cors_origins)] if t.cors_origins else []
    stack += [Middleware(InFlight), Middleware(RequestAudit, mcp_path=t.path),
              Middleware(JsonRpcIdGuard, mcp_path=t.path)]
    if not resumable:
        stack.append(Middleware(NoReplayGuard, mcp_path=t.path))
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
