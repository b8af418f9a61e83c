"""Tell connected clients that the tool, resource and prompt lists changed (after a reload).

A reload (SIGHUP) happens outside any MCP request, so FastMCP's per-request notifications cannot
carry it. `OpenConnections` remembers each live MCP connection (one per stdio process or stateful
HTTP session) from its first request until it closes, and `list_changed()` sends the three
`notifications/*/list_changed` on each connection's standalone channel (the GET stream on HTTP).
Stateless HTTP has no channel between requests, so there `listChanged` is not advertised at all.
"""

from __future__ import annotations

import logging
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.middleware import Middleware
from mcp.server.lowlevel.server import NotificationOptions

log = logging.getLogger("sqlgate.broadcast")
LIST_CHANGED = ("notifications/tools/list_changed", "notifications/resources/list_changed",
                "notifications/prompts/list_changed")


class OpenConnections(Middleware):
    def __init__(self) -> None:
        self._open: set[Any] = set()

    def __len__(self) -> int:
        return len(self._open)

    async def on_request(self, context, call_next):
        connection = _connection_of(context)
        if connection is not None and connection not in self._open:
            self._open.add(connection)
            # forgotten when the connection closes (its exit stack unwinds then)
            connection.exit_stack.callback(self._open.discard, connection)
        return await call_next(context)

    async def list_changed(self) -> int:
        """Notify every open connection; returns how many were reached."""
        reached = 0
        for connection in list(self._open):
            try:
                for method in LIST_CHANGED:
                    await connection.outbound.notify(method, None)
                reached += 1
            except Exception as exc:  # a connection closing under us is not the reload's problem
                log.debug("list_changed not delivered to a closing connection: %s", exc)
        return reached


def _connection_of(context) -> Any:
    ctx = context.fastmcp_context
    request_context = getattr(ctx, "request_context", None) if ctx is not None else None
    session = getattr(request_context, "session", None)
    # ServerSession is built per request; the Connection behind it lives as long as the client's
    # session (FastMCP reads the same attribute for logging/setLevel)
    return getattr(session, "_connection", None)


def announce_list_changes(mcp: FastMCP, enabled: bool) -> None:
    """What `initialize` advertises as listChanged: only what a reload really sends."""
    mcp._mcp_server.notification_options = NotificationOptions(
        prompts_changed=enabled, resources_changed=enabled, tools_changed=enabled)
