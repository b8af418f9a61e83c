"""One thread that interrupts queries whose deadline passed.

Cheaper than a timer thread per query and works the same for calls from the event loop and for
synchronous Python endpoints running in worker threads.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable

_REFIRE_SECONDS = 0.1


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._live: dict[int, bool] = {}
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, seconds: float, on_expiry: Callable[[], None]) -> int:
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sqlgate-watchdog", daemon=True)
                self._thread.start()
            ticket = next(self._ids)
            self._live[ticket] = False
            entry = (time.monotonic() + seconds, ticket, on_expiry)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # only a new earliest deadline needs the thread to wake up
                self._cv.notify()
            return ticket

    def disarm(self, ticket: int) -> bool:
        """Cancel a deadline; True when it had already fired (the query was interrupted)."""
        with self._cv:
            return self._live.pop(ticket, False)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _loop(self) -> None:
        with self._cv:
            while not self._stopped:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cv.wait()
                    continue
                deadline, ticket, fire = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cv.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._live[ticket] = True
                with contextlib.suppress(Exception):
                    fire()
                # An interrupt that lands before the statement has started is forgotten when it
                # starts: keep interrupting until the call disarms its ticket.
                heapq.heappush(self._heap, (time.monotonic() + _REFIRE_SECONDS, ticket, fire))
