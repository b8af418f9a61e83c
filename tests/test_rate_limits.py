"""Rate limits per principal: calls per minute and concurrent calls, shared through the state store.

Over HTTP the N+1st call in the window is an HTTP 429 with Retry-After while another user goes on,
also when two worker processes share the work; over stdio it is a tool error. The concurrent-call
slots are leases taken atomically in the grant store (SQLite and PostgreSQL) that expire by
themselves when their holder dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.auth_support import auth_project
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import SQLGATE, copy_shop, free_port, isolated_env, start_server, stop_server, together
from tests.grant_backends import open_store

SECRET = "rate-limit-tests-shared-secret-0123456789abcdef"
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}

PID_PY = "import os\nimport time\n\n\ndef pid() -> int:\n    return os.getpid()\n\n\n" \
         "def slow(seconds: float) -> float:\n    time.sleep(seconds)\n    return seconds\n"


def _tool(name: str, function: str, extra: str = "", params: str = "") -> str:
    return (f"tool:\n  name: {name}\n  description: test tool {name}\n{params}  return: {{type: number}}\n"
            f"  source: {{file: ../python/rl.py, function: {function}}}\n{extra}")


SECONDS = "  parameters:\n    - {name: seconds, type: number, description: how long}\n"


def _project(tmp: Path, settings: dict | None = None) -> Path:
    project = tmp / "project"
    copy_shop(project)
    (project / "python" / "rl.py").write_text(PID_PY)
    (project / "tools" / "pid.yml").write_text(_tool("pid", "pid", "  rate_limit: {calls_per_minute: 4}\n"))
    (project / "tools" / "pid_free.yml").write_text(_tool("pid_free", "pid"))
    (project / "tools" / "slow.yml").write_text(_tool("slow", "slow", "  rate_limit: {concurrent_calls: 1}\n",
                                                      SECONDS))
    if settings:
        data = yaml.safe_load((project / "sqlgate.yml").read_text())
        data.update(settings)
        (project / "sqlgate.yml").write_text(yaml.safe_dump(data))
    return project


def _call(url: str, who: str, tool: str, args: dict | None = None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args or {}}}
    return httpx.post(url, json=body, headers={**HEADERS, **hs256_bearer(SECRET, url, who)}, timeout=30)


def _value(response: httpx.Response):
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]["result"]


JWT = {"jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": "https://issuer.test"}}


def slot_taken(state_db: Path, timeout: float = 15) -> bool:
    """Wait until a call holds a concurrent-call slot (a lease row in the server's SQLite state store),
    so the next call is sent while it surely runs rather than after a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(state_db, timeout=5)) as db:
            if db.execute("SELECT count(*) FROM call_leases").fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


def _server(tmp: Path, settings: dict | None = None, **kw):
    _project(tmp, settings)
    project, env, port = auth_project(tmp, JWT, transport={"stateless": True, "json_response": True})
    return start_server(project, tmp, env=env, port=port, **{"timeout": 120, **kw})


# ------------------------------------------------------------------------------------------ store
def test_leases_are_atomic_expire_and_release(backend):
    """12 threads, each with its own connection, race for 3 slots of one bucket: exactly 3 win."""
    n = 12
    stores = [open_store(*backend) for _ in range(n)]
    gate = threading.Barrier(n)
    won: list[bool] = [False] * n
    now = time.time()

    def race(i: int) -> None:
        gate.wait()
        won[i] = stores[i].acquire_lease("running:alice:*", f"lease-{i}", 3, now + 60, now)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(won) == 3
        s = stores[0]
        assert s.acquire_lease("running:bob:*", "bob-1", 1, now + 60, now), "buckets are independent"
        assert not s.acquire_lease("running:alice:*", "late", 3, now + 60, now)
        s.release_lease(f"lease-{won.index(True)}")
        assert s.acquire_lease("running:alice:*", "after-release", 3, now + 60, now)
        # a holder that died never releases: its lease expires and the slot is free again
        assert s.acquire_lease("running:alice:*", "after-expiry", 3, now + 120, now + 61)
        assert not s.acquire_lease("running:alice:*", "one-too-many", 1, now + 120, now + 61)
        assert s.delete_expired(now + 200) >= 2
    finally:
        for s in stores:
            s.close()


# ------------------------------------------------------------------------------------------ HTTP
def test_http_429_per_user_and_concurrency_cap(tmp_path):
    server = _server(tmp_path, {"rate_limits": {"calls_per_minute": 5}})
    try:
        assert all(isinstance(_value(_call(server.url, "alice", "pid_free")), int) for _ in range(5))
        refused = _call(server.url, "alice", "pid_free")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "rate limit: at most 5 calls per minute" in refused.json()["error"]["message"]
        # the window is alice's: bob is not affected
        assert isinstance(_value(_call(server.url, "bob", "pid_free")), int)
        # a listing is not a call: alice may still look
        listing = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                             headers={**HEADERS, **hs256_bearer(SECRET, server.url, "alice")})
        assert listing.status_code == 200 and listing.json()["result"]["tools"]

        # concurrent calls: `slow` allows one per user at a time
        first: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: first.append(_call(server.url, "carol", "slow", {"seconds": 2})))
        runner.start()
        assert slot_taken(tmp_path / "oauth.db")
        second = _call(server.url, "carol", "slow", {"seconds": 0})
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert "at most 1 calls at the same time of tool slow" in second.json()["error"]["message"]
        assert _value(_call(server.url, "dave", "slow", {"seconds": 0})) == 0, "another user has a slot of their own"
        runner.join()
        assert _value(first[0]) == 2
        assert _value(_call(server.url, "carol", "slow", {"seconds": 0})) == 0, "the slot is free once answered"
        assert "Traceback" not in server.logs()
    finally:
        stop_server(server)


def test_limits_hold_across_two_workers(tmp_path):
    """`pid` allows 4 calls per minute per user; each worker answering with its own counter would allow
    up to 8 of alice's 12 calls. bob's unlimited calls show that both workers serve meanwhile."""
    server = _server(tmp_path, args=["--workers", "2"])
    try:
        answers, seen_pids = [], set()
        for _ in range(12):
            answers.append(_call(server.url, "alice", "pid"))
            for _ in range(3):
                seen_pids.add(_value(_call(server.url, "bob", "pid_free")))
        assert len(seen_pids) == 2, "both workers should have answered calls"
        assert [r.status_code for r in answers].count(200) == 4
        assert all(r.status_code == 429 and int(r.headers["retry-after"]) >= 1 for r in answers[4:])
        assert _value(_call(server.url, "bob", "pid")) in seen_pids, "bob's own window is untouched"
    finally:
        stop_server(server)


# ------------------------------------------------------------------------------------------ stdio
async def test_stdio_answers_a_tool_error(tmp_path):
    project = _project(tmp_path, {"rate_limits": {"calls_per_minute": 2}})
    params = StdioServerParameters(command=SQLGATE[0], args=[*SQLGATE[1:], "serve", "-p", str(project)],
                                   env=isolated_env(tmp_path))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for _ in range(2):
            assert not (await session.call_tool("pid_free", {})).is_error
        refused = await session.call_tool("pid_free", {})
        assert refused.is_error
        text = refused.content[0].text
        assert text.startswith("rate limit: at most 2 calls per minute; retry in ") and text.endswith(" s")
    # counted in the state store under the (isolated) home directory, as the OAuth state would be
    assert (tmp_path / ".sqlgate" / "oauth.db").exists()


async def test_official_client_sees_the_refusal_in_a_stateful_session(tmp_path):
    """Default transport (MCP sessions, SSE answers): the slot is held until the streamed answer is
    complete, and the official client reports the 429's message."""
    _project(tmp_path)
    project, env, port = auth_project(tmp_path, {"jwt": {"secret": SECRET, "algorithms": ["HS256"],
                                                         "issuer": "https://issuer.test"}})
    server = start_server(project, tmp_path, env=env, port=port, timeout=120)
    try:
        carol = hs256_bearer(SECRET, server.url, "carol")
        async with mcp_session(server.url, carol) as first, mcp_session(server.url, carol) as second:
            running = asyncio.create_task(first.call_tool("slow", {"seconds": 2}))
            assert await asyncio.to_thread(slot_taken, tmp_path / "oauth.db")
            with pytest.raises(MCPError, match="at most 1 calls at the same time of tool slow"):
                await second.call_tool("slow", {"seconds": 0})
            assert (await running).structured_content["result"] == 2
            assert (await second.call_tool("slow", {"seconds": 0})).structured_content["result"] == 0
    finally:
        stop_server(server)


def test_state_store_down_is_503_never_unlimited(tmp_path):
    from tests.test_auth_outages import immutable

    server = _server(tmp_path, {"rate_limits": {"calls_per_minute": 50}})
    try:
        assert isinstance(_value(_call(server.url, "alice", "pid_free")), int)
        # the database and its journal refuse writes (an immutable -shm would make SQLite's shared
        # memory map fault with SIGBUS: a trait of chattr on a mapped file, not of a read-only disk)
        with immutable(tmp_path / "oauth.db", tmp_path / "oauth.db-wal"):
            refused = _call(server.url, "alice", "pid_free")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
            assert "rate limits cannot be checked" in refused.json()["error"]["message"]
        assert isinstance(_value(_call(server.url, "alice", "pid_free")), int), "back once the store is"
        logs = server.logs()
        assert f"rate limits: OAuth state store {tmp_path / 'oauth.db'} unavailable" in logs
        assert "Traceback" not in logs
    finally:
        stop_server(server)


def test_a_killed_server_frees_its_slots_when_the_lease_expires(tmp_path):
    """Two servers share the state store (as replicas do); one is killed with SIGKILL during carol's
    call, so nobody gives her slot back: the other refuses her until the lease expires (timeout 2 s
    + 5 + grace 1 = 8 s after it was taken), then serves her."""
    lease = 2 + 5 + 1
    _project(tmp_path, {"limits": {"timeout_seconds": 2}, "rate_limits": {"lease_grace_seconds": 1}})
    project, env, _ = auth_project(tmp_path, JWT, transport={"stateless": True, "json_response": True})
    first, second = together(*(partial(start_server, project, tmp_path, env=env, port=free_port(), timeout=120)
                               for _ in range(2)))  # the port on the command line wins over the config's
    try:
        taken = time.monotonic()  # the lease is taken after this, so it expires after taken + lease

        def doomed_call() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its connection dies with the server
                _call(first.url, "carol", "slow", {"seconds": 1.9})

        caller = threading.Thread(target=doomed_call)
        caller.start()
        assert slot_taken(tmp_path / "oauth.db")  # her call is running on the first server
        first.proc.kill()
        first.proc.wait(10)
        caller.join()
        refused = _call(second.url, "carol", "slow", {"seconds": 0})
        assert refused.status_code == 429, "the killed call's lease still holds carol's slot"
        assert time.monotonic() - taken < lease - 0.5, "the refusal above must come before the lease can expire"
        time.sleep(max(0.0, taken + lease - 0.5 - time.monotonic()))
        while (retry := _call(second.url, "carol", "slow", {"seconds": 0})).status_code == 429:
            assert time.monotonic() < taken + lease + 10, "the lease never expired"
            time.sleep(0.2)
        assert time.monotonic() >= taken + lease, "the slot was free before the lease expired"
        assert _value(retry) == 0, "expired: the slot is free"
    finally:
        stop_server(second)
        stop_server(first)
