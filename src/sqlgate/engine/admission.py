"""Who gets a database connection, and for how long they may wait.

Two gates, both bounded by the call's one deadline (the timeout starts when the call arrives,
not when it finally gets a connection):
- a per-caller share: one caller (user, or MCP session when anonymous) holds at most
  `per_caller` connections, so twenty slow queries of one client leave room for everyone else;
- the pool itself: at most `pool_size` statements run at once.
Both gates are FIFO (asyncio semaphores), so waiting callers are served in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlgate import metrics
from sqlgate.errors import QueryTimeout


class _Share:
    __slots__ = ("sem", "users")

    def __init__(self, size: int):
        self.sem = asyncio.Semaphore(size)
        self.users = 0  # calls holding or waiting for this share; the entry is dropped at 0


class Admission:
    def __init__(self, pool_size: int, per_caller: int | None = None):
        self.pool_size = pool_size
        self.per_caller = min(per_caller or max(1, pool_size // 2), pool_size)
        self._pool = asyncio.Semaphore(pool_size)
        self._shares: dict[str, _Share] = {}

    @asynccontextmanager
    async def slot(self, caller: str, deadline: float, timeout: float) -> AsyncIterator[None]:
        """Hold one connection slot for `caller`; QueryTimeout once `deadline` (monotonic) passes."""
        share = self._shares.get(caller)
        if share is None:
            share = self._shares[caller] = _Share(self.per_caller)
        share.users += 1
        try:
            await _acquire(share.sem, deadline, timeout, "you already have "
                           f"{self.per_caller} queries running; wait for one to finish")
            try:
                metrics.POOL_WAITING.inc()  # pool saturation, for /metrics
                try:
                    await _acquire(self._pool, deadline, timeout, "every database connection is busy")
                finally:
                    metrics.POOL_WAITING.dec()
                metrics.POOL_IN_USE.inc()
                try:
                    yield
                finally:
                    self._pool.release()
                    metrics.POOL_IN_USE.dec()
            finally:
                share.sem.release()
        finally:
            share.users -= 1
            if share.users == 0:
                self._shares.pop(caller, None)


async def _acquire(sem: asyncio.Semaphore, deadline: float, timeout: float, why: str) -> None:
    if not sem.locked():
        await sem.acquire()  # free: no timer needed
        return
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        await asyncio.wait_for(sem.acquire(), remaining)
    except TimeoutError:
        raise QueryTimeout(
            f"query not started within the {timeout:g} s timeout: {why}. Try again shortly."
        ) from None
