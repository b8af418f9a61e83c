"""What a call tells its client besides the result: progress while it runs, log notifications.

Progress: a client that sends a `progressToken` with `tools/call` or `resources/read` gets a
`notifications/progress` once the call has run for a second, then every second until it ends
(progress = seconds elapsed; a query has no known total). Quick calls send none.

Log notifications (MCP logging, filtered by the client's `logging/setLevel`; FastMCP keeps the
level per session): a warning when a result was cut at a row or byte limit, and the call's error
at the level sqlgate logs it (a caller's mistake `info`, a timeout `warning`, an outage `error`).
They carry the same text the client gets in the result anyway — never arguments, SQL of other
calls, or any token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastmcp.exceptions import PromptError, ResourceError, ToolError
from fastmcp.server.middleware import Middleware

log = logging.getLogger("sqlgate.notices")
PROGRESS_AFTER_SECONDS = 1.0
_MCP_LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
              logging.ERROR: "error", logging.CRITICAL: "critical"}


class CallNotices(Middleware):
    def __init__(self, progress_after: float = PROGRESS_AFTER_SECONDS):
        self.progress_after = progress_after
        # FastMCP also writes every client log message to the server log; the audit line and the
        # error handling already log each call's outcome once
        logging.getLogger("fastmcp.server.context.to_client").setLevel(logging.CRITICAL + 1)

    async def on_call_tool(self, context, call_next):
        result = await self._observed(context, call_next, f"tool {context.message.name!r}")
        structured = getattr(result, "structured_content", None)
        if isinstance(structured, dict) and structured.get("truncated") is True:
            await _log(context, "warning", f"tool {context.message.name!r}: result truncated at a limit"
                       + (f" ({structured['hint']})" if isinstance(structured.get("hint"), str) else ""))
        return result

    async def on_read_resource(self, context, call_next):
        return await self._observed(context, call_next, f"resource {context.message.uri}")

    async def on_get_prompt(self, context, call_next):
        return await self._observed(context, call_next, f"prompt {context.message.name!r}")

    async def _observed(self, context, call_next, what: str):
        ticker = None
        token = _progress_token(context)
        if token is not None:
            ticker = asyncio.create_task(self._tick(context, what))
        try:
            return await call_next(context)
        except (ToolError, ResourceError, PromptError) as exc:
            level = _MCP_LEVEL.get(getattr(exc, "log_level", None) or logging.ERROR, "error")
            await _log(context, level, f"{what} failed: {exc}")
            raise
        finally:
            if ticker is not None:
                ticker.cancel()

    async def _tick(self, context, what: str) -> None:
        ctx = context.fastmcp_context
        elapsed = 0.0
        try:
            await asyncio.sleep(self.progress_after)
            elapsed = self.progress_after
            while True:
                await ctx.report_progress(elapsed, None, f"{what} running for {elapsed:g} s")
                await asyncio.sleep(1.0)
                elapsed += 1.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client gone mid-call: the call itself decides what happens
            log.debug("progress not delivered: %s", exc)


def _progress_token(context) -> Any:
    ctx = context.fastmcp_context
    rc = getattr(ctx, "request_context", None) if ctx is not None else None
    meta = getattr(rc, "meta", None)
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def _log(context, level: str, message: str) -> None:
    ctx = context.fastmcp_context
    if ctx is None:
        return
    try:
        await ctx.log(message, level=level, logger_name="sqlgate")  # type: ignore[arg-type]
    except Exception as exc:  # no channel (stateless, closing): the result still goes out
        log.debug("log notification not delivered: %s", exc)
