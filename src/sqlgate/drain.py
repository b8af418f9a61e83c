"""Graceful shutdown: on SIGTERM, calls in flight finish; only then do open streams close.

MCP answers a tool call over streamable HTTP as an SSE stream (sse-starlette). By default
sse-starlette ends every stream the moment uvicorn is asked to exit, so a SIGTERM (a deploy, a
scale-down) dropped every running call without an answer. Here that automatic drain is off; the
`InFlight` middleware counts requests that are still being answered, and on the exit signal a
drain task waits until none is left (bounded by uvicorn's `timeout_graceful_shutdown`, the query
timeout plus a margin) before it lets sse-starlette close the idle streams (standalone GET streams
would otherwise hold the connections open until that timeout).

The exit signal reaches us through uvicorn's `Server.handle_exit`, which sse-starlette already
wraps for the same purpose; we wrap it once more, calling what was there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("sqlgate.drain")
_LINGER_SECONDS = 1.0


class InFlight:
    """ASGI middleware: how many HTTP requests are being answered right now."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        _watch(self)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        self.loop = self.loop or asyncio.get_running_loop()
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


_counters: list[InFlight] = []
_installed = False


def _watch(counter: InFlight) -> None:
    global _installed
    _counters.append(counter)
    if _installed:
        return
    from sse_starlette.sse import AppStatus
    from uvicorn.server import Server

    AppStatus.disable_automatic_graceful_drain()
    previous = Server.handle_exit

    def handle_exit(*args: Any, **kwargs: Any) -> None:
        previous(*args, **kwargs)
        for c in _counters:
            if c.loop is not None and not c.loop.is_closed():
                c.loop.call_soon_threadsafe(lambda c=c: c.loop.create_task(_drain(c)))
                return
        AppStatus.should_exit = True  # nothing was ever served: close at once

    Server.handle_exit = handle_exit  # type: ignore[method-assign]
    _installed = True


async def _drain(counter: InFlight, poll: float = 0.05, limit: float = 3600) -> None:
    from sse_starlette.sse import AppStatus

    started = time.monotonic()
    if counter.count:
        log.info("shutting down: waiting for %d request(s) in flight", counter.count)
    # only POSTs are counted: a call answered as SSE keeps its POST open until the result is sent,
    # while idle GET streams end below, once AppStatus says so
    while counter.count > 0 and time.monotonic() - started < limit:
        await asyncio.sleep(poll)
    # a moment for clients to take in the last answers before their GET streams end: some clients
    # treat a closed stream they cannot reopen as the end of everything still pending
    await asyncio.sleep(_LINGER_SECONDS)
    AppStatus.should_exit = True
