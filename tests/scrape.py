"""Reading a server's /metrics in tests: one sample's value, and waiting until a gauge shows work
in progress (a slow call holds its connection) instead of sleeping a fixed time and hoping."""

from __future__ import annotations

import asyncio
import re
import time

import httpx


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


async def until_sample(base: str, name: str, at_least: float, timeout: float = 15) -> float:
    """Poll `base`/metrics until `name` is at least `at_least`; returns the value (fails at the timeout)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            value = sample((await http.get(f"{base}/metrics")).text, name)
            if value >= at_least:
                return value
            assert time.monotonic() < deadline, f"{name} stayed at {value} (waited for {at_least})"
            await asyncio.sleep(0.02)
