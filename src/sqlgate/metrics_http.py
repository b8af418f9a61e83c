"""Serving /metrics: a route on the MCP port (behind a bearer token), or a listener of its own.

On the MCP port the route needs `telemetry.metrics.token` unless the server binds a loopback
address (nothing else can reach it then). A separate listener (`telemetry.metrics.port`, on
`telemetry.metrics.host`) is meant for an internal interface; the token applies there too when
set. With `--workers N` the separate listener runs in the supervisor and reports all workers.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from sqlgate import metrics
from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.metrics")


def authorized(header: str, token: Any) -> bool:
    if token is None:
        return True
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.get_secret_value().encode())


def check_exposure(cfg: Any, host: str) -> None:
    from sqlgate.serve import is_loopback

    if cfg.enabled and cfg.port is None and cfg.token is None and not is_loopback(host):
        raise ConfigError(f"telemetry.metrics on the MCP port ({host}) needs telemetry.metrics.token "
                          "(env: SQLGATE_METRICS_TOKEN), or a separate telemetry.metrics.port on an internal host")


def route(cfg: Any):
    async def serve_metrics(request: Request) -> Response:
        if not authorized(request.headers.get("authorization", ""), cfg.token):
            return PlainTextResponse("a bearer token is required for metrics\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return serve_metrics


def start_listener(cfg: Any) -> Any:
    """A small threaded HTTP server for the metrics alone; returns it (call .shutdown())."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    def app(environ, start_response):
        if environ.get("PATH_INFO", "") != cfg.path:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION", ""), cfg.token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"a bearer token is required for metrics\n"]
        body, content_type = metrics.exposition()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(cfg.host, cfg.port, app, ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="sqlgate-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d%s", cfg.host, server.server_port, cfg.path)
    return server
