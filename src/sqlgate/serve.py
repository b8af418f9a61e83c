"""Run an App over stdio or streamable HTTP."""

from __future__ import annotations

import ipaddress
from typing import Any

import anyio

from sqlgate.server import App, settle_heap


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
    }


def serve(app: App, transport: str, host: str, port: int, log_level: str = "info") -> None:
    settle_heap()
    if transport == "stdio":
        anyio.run(lambda: app.mcp.run_stdio_async(show_banner=False, log_level=log_level.upper()))
        return
    t = app.project.settings.transport
    anyio.run(lambda: app.mcp.run_http_async(
        show_banner=False, transport="http", host=host, port=port, path=t.path, log_level=log_level,
        uvicorn_config=uvicorn_options(app, log_level), middleware=http_middleware(app), **http_options(app, host),
    ))


def http_middleware(app: App) -> list[Any]:
    """The per-tool scope guard sits behind authentication, in front of the MCP endpoint."""
    if app.scopes is None:
        return []
    from starlette.middleware import Middleware

    from sqlgate.auth.factory import public_base_url
    from sqlgate.auth.scopes import ScopeGuard

    t = app.project.settings.transport
    prm = f"{public_base_url(t)}/.well-known/oauth-protected-resource{t.path}"
    return [Middleware(ScopeGuard, registry=app.scopes, mcp_path=t.path, resource_metadata_url=prm)]
