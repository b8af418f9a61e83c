"""Revocations made by other processes and replicas, seen by this one within a bounded time.

A revocation in this process drops its tokens from the cache at once (GrantFlow.revoke_family).
Other processes (`--workers`, replicas) record theirs in the grant store's revocation log; this
process reads the log's new entries at most once per `max_staleness` seconds — one small indexed
read, usually of nothing — and drops the families it names from its cache.

The cache may only be used while the log was read less than `max_staleness` seconds ago, so a
token revoked anywhere is refused everywhere within that bound. When the store cannot be read,
the cache is not used: the request takes the full path, which reads the store too and is answered
503 when it is down — an outage never turns into accepting a token that may have been revoked.
"""

from __future__ import annotations

import logging
import time

import anyio

from sqlgate.auth.grants.base import GrantStore, StateStoreUnavailable
from sqlgate.auth.verified import VerifiedTokens

log = logging.getLogger("sqlgate.auth.revocations")

DEFAULT_MAX_STALENESS_SECONDS = 5.0
MAX_ENTRIES_READ = 1000  # more new revocations than this at once: the whole cache is dropped


class RevocationWatch:
    def __init__(self, grants: GrantStore, cache: VerifiedTokens,
                 max_staleness: float = DEFAULT_MAX_STALENESS_SECONDS) -> None:
        self.grants = grants
        self.cache = cache
        self.max_staleness = max_staleness
        self._after: int | None = None  # the newest log number read
        self._read_at = float("-inf")  # monotonic time the last successful read *started*
        self._lock = anyio.Lock()

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < self.max_staleness

    async def current(self) -> bool:
        """Whether the cache may be used now; reads the log first when it was read too long ago."""
        if self._fresh():
            return True
        async with self._lock:  # one read for all the requests that find the log stale
            if self._fresh():
                return True
            started = time.monotonic()
            try:
                newest, families = await anyio.to_thread.run_sync(self.grants.revocations_since, self._after,
                                                                  MAX_ENTRIES_READ)
            except StateStoreUnavailable:
                return False
            if families is None:
                log.info("more than %d revocations since the last check: every cached token is verified again",
                         MAX_ENTRIES_READ)
                self.cache.clear()
            elif families:
                for family in families:
                    self.cache.drop_family(family)
            self._after, self._read_at = newest, started
            return True
