"""Audit events leave the request path here: a bounded queue drained by one background thread.

A call only puts its event on the queue (no I/O); the thread writes batches to every sink. When
the queue is full (the sinks cannot keep up) the event is dropped, counted
(`sqlgate_audit_events_lost{reason="queue_full"}`, `writer.lost`) and logged; when a sink fails,
its batch is lost for that sink only, counted and logged too. Neither ever fails the call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from sqlgate import metrics
from sqlgate.audit.sinks import Sink

log = logging.getLogger("sqlgate.audit")

BATCH = 500
LINGER = 0.05  # seconds an event may wait for others to share its write
_STOP = object()
_WARN_EVERY = 60.0  # seconds between repeated warnings of the same loss


class AuditWriter:
    def __init__(self, sinks: list[Sink], queue_size: int = 10_000):
        self.sinks = sinks
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.lost: Counter[str] = Counter()  # reason -> events lost
        self.written = 0
        self._warned: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> AuditWriter:
        if self._thread is None and self.sinks:
            self._thread = threading.Thread(target=self._run, name="sqlgate-audit", daemon=True)
            self._thread.start()
        return self

    def submit(self, event: dict[str, Any]) -> None:
        if not self.sinks:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._lose("queue_full", 1, "the audit queue is full (the sinks are slower than the calls)")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event submitted so far went through the sinks (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self.flush(timeout)
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.warning("closing the audit %s sink failed: %s", sink.name, exc)

    def _lose(self, reason: str, count: int, why: str) -> None:
        self.lost[reason] += count
        metrics.audit_lost(reason, count)
        now = time.monotonic()
        if now - self._warned.get(reason, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[reason] = now
            log.error("audit: %d event(s) lost: %s (%d lost so far this way)", count, why, self.lost[reason])

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # linger briefly: one transaction per batch costs far less per event than one per event.
            # Asleep, not waiting on the queue: a waiting thread woke at every event, and each wake-up
            # took the GIL from the calls being served
            if batch[0] is not _STOP:
                time.sleep(LINGER)
            while len(batch) < BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(e is _STOP for e in batch)
            events = [e for e in batch if e is not _STOP]
            try:
                if events:
                    self._write(events)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, events: list[dict[str, Any]]) -> None:
        for sink in self.sinks:
            try:
                sink.write(events)
            except Exception as exc:
                self._lose(f"sink_{sink.name}", len(events), f"the {sink.name} sink failed: "
                                                             f"{type(exc).__name__}: {exc}")
        self.written += len(events)


# the process's writer, for code outside the MCP middleware (authorization events); None = off
_current: AuditWriter | None = None
_console = False


def install(writer: AuditWriter | None, console: bool = True) -> None:
    global _current, _console
    _current, _console = writer, console


def current() -> AuditWriter | None:
    return _current


def console_enabled() -> bool:
    return _console
