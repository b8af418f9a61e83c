"""A plain round-robin HTTP load balancer for tests: every request goes to the next live backend.

No sticky sessions and no knowledge of MCP or OAuth — the worst case for a replicated server: an
OAuth flow's registration, authorization, callback and token requests, and an MCP client's calls,
all land on alternating replicas. Responses are streamed through (SSE included). A backend that
refuses the connection is skipped, as a load balancer's health check would. Loopback only.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time

import httpx
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te", "trailer",
               "content-length"}


class RoundRobin:
    def __init__(self, backends: list[str]):
        self.backends = backends
        self._turn = itertools.count()
        self.hits: dict[str, int] = dict.fromkeys(backends, 0)
        self.log: list[tuple[str, str, str]] = []  # (method, path, backend) of every answered request
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/mcp"
        self._server = uvicorn.Server(uvicorn.Config(self._app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off", interface="asgi3"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> RoundRobin:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        client = httpx.AsyncClient(timeout=httpx.Timeout(60, read=300))
        for _ in range(len(self.backends)):
            backend = self.backends[next(self._turn) % len(self.backends)]
            url = backend + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            try:
                upstream = await client.send(client.build_request(request.method, url, headers=headers,
                                                                  content=body), stream=True)
            except httpx.ConnectError:
                continue  # a dead replica: the next one answers
            self.hits[backend] += 1
            self.log.append((request.method, request.url.path, backend))
            async def close(upstream=upstream) -> None:
                await upstream.aclose()
                await client.aclose()

            response = StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                         background=BackgroundTask(close))
            # every header as sent, repeated ones (Set-Cookie) included
            response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                                    for k, v in upstream.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
            await response(scope, receive, send)
            return
        await client.aclose()
        await Response("no live backend", status_code=502)(scope, receive, send)
