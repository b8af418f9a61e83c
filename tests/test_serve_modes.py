"""How the HTTP server runs: session limits per client, idle expiry, stateless and JSON modes,
several worker processes, and a SIGTERM that lets calls in flight finish.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.auth_support import start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import copy_shop, free_port, isolated_env, start_server, stop_server

HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
SECRET = "serve-modes-shared-secret-0123456789abcdef"


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    copy_shop(project)
    (project / "python" / "slow.py").write_text(
        "import pathlib, time, uuid\n\n\ndef slow(seconds: float, marker_dir: str = '') -> dict:\n"
        "    if marker_dir:\n        (pathlib.Path(marker_dir) / uuid.uuid4().hex).touch()\n"
        "    time.sleep(seconds)\n    return {'slept': seconds}\n")
    (project / "tools" / "slow.yml").write_text(
        "tool:\n  name: slow\n  description: sleeps\n  parameters:\n    - name: seconds\n      type: number\n"
        "      description: how long\n    - name: marker_dir\n      type: string\n      description: where to "
        "say it started\n      default: ''\n  source:\n    file: ../python/slow.py\n")
    return project


def open_session(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url, json=INIT, headers={**HEADERS, **(headers or {})}, timeout=10)


def test_sessions_are_capped_per_client_and_expire_when_idle(tmp_path):
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": SECRET, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"}}, port=port,
                               extra_env={"SQLGATE_MAX_SESSIONS_PER_CLIENT": "3",
                                          "SQLGATE_SESSION_IDLE_TIMEOUT": "2"})

    def bearer(name: str) -> dict[str, str]:
        return hs256_bearer(SECRET, server.url, name)

    try:
        greedy = [open_session(server.url, bearer("greedy")) for _ in range(3)]
        last_used = time.monotonic()  # greedy[1] and [2] see no request after this
        assert all(r.status_code == 200 and r.headers.get("mcp-session-id") for r in greedy)
        refused = open_session(server.url, bearer("greedy"))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many open MCP sessions for this client (limit 3)" in refused.json()["error"]["message"]
        # another user is not locked out by someone else's sessions
        assert open_session(server.url, bearer("polite")).status_code == 200
        # closing one session makes room again
        sid = greedy[0].headers["mcp-session-id"]
        closed = httpx.delete(server.url, headers={**HEADERS, **bearer("greedy"), "Mcp-Session-Id": sid})
        assert closed.status_code in (200, 204)
        assert open_session(server.url, bearer("greedy")).status_code == 200
        # idle sessions end after session_idle_timeout, and their slots are free again
        time.sleep(max(0.0, last_used + 2 + 1 - time.monotonic()))
        stale_id = greedy[1].headers["mcp-session-id"]
        stale = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 5, "method": "ping"},
                           headers={**HEADERS, **bearer("greedy"), "Mcp-Session-Id": stale_id})
        assert stale.status_code == 404
        assert all(open_session(server.url, bearer("greedy")).status_code == 200 for _ in range(3))
    finally:
        stop_server(server)


async def test_stateless_json_mode_works_with_the_official_client(tmp_path):
    project = _project(tmp_path)
    server = start_server(project, tmp_path, env=isolated_env(tmp_path, SQLGATE_STATELESS="true",
                                                               SQLGATE_JSON_RESPONSE="true"))
    try:
        raw = open_session(server.url)
        assert raw.status_code == 200
        assert raw.headers["content-type"].startswith("application/json")
        assert "mcp-session-id" not in raw.headers
        async with mcp_session(server.url) as s:
            res = await s.call_tool("query", {"sql": "SELECT 7 AS n"})
            assert res.structured_content["rows"] == [[7]]
    finally:
        stop_server(server)


async def test_two_workers_share_the_port(tmp_path):
    project = _project(tmp_path)
    server = start_server(project, tmp_path, args=["--workers", "2"], timeout=60)
    try:
        master = psutil.Process(server.proc.pid)
        deadline = time.monotonic() + 30
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline:
            workers = [c for c in master.children(recursive=True) if "multiprocessing" not in " ".join(c.cmdline())
                       or "spawn_main" in " ".join(c.cmdline())]
            if len(workers) >= 2:
                break
            await asyncio.sleep(0.2)
        assert len(workers) >= 2, master.children(recursive=True)

        async def calls(n: int) -> list[int]:
            async with mcp_session(server.url) as s:
                out = []
                for i in range(n):
                    res = await s.call_tool("query", {"sql": f"SELECT {i} AS i"})
                    out.append(res.structured_content["rows"][0][0])
                return out

        results = await asyncio.gather(*(calls(10) for _ in range(6)))
        assert all(r == list(range(10)) for r in results)
        busy = [w for w in workers if w.cpu_times().user + w.cpu_times().system > 0.5]
        assert len(busy) >= 2, "both workers should have served calls"
    finally:
        stop_server(server)


async def test_sigterm_lets_calls_in_flight_finish(tmp_path):
    project = _project(tmp_path)
    server = start_server(project, tmp_path)
    try:
        async def one() -> object:
            result = None
            try:
                async with mcp_session(server.url) as s:
                    # as real clients do; the official client otherwise lists tools right after the
                    # answer (to validate it against the output schema), which a stopping server refuses
                    await s.list_tools()
                    result = await s.call_tool("slow", {"seconds": 2.5, "marker_dir": str(markers)})
            except Exception:  # closing the session after the server is gone may fail
                pass
            return result

        markers = tmp_path / "started"
        markers.mkdir()
        tasks = [asyncio.create_task(one()) for _ in range(8)]
        deadline = time.monotonic() + 20
        while len(list(markers.iterdir())) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(list(markers.iterdir())) == 8, "the eight calls did not all start"
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for res in results:
            assert res is not None, "a call in flight was dropped without an answer"
            assert res.structured_content["result"] == {"slept": 2.5}, res
        # uvicorn re-raises the signal once drained, so the exit status says "terminated by SIGTERM"
        assert server.proc.wait(20) in (0, -signal.SIGTERM)
        # and it refused new work while draining: the port is closed afterwards
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.base}/healthz", timeout=2)
    finally:
        if server.proc.poll() is None:
            stop_server(server)


def test_oauth_flow_across_two_workers(tmp_path):
    """`--workers 2`: login, calls and refreshes, whichever worker takes each request (shared SQLite
    state); a revoked token is refused by whichever worker answers once the revocation-check bound
    has passed (the worker that revoked it, at once)."""
    from tests.idp.launcher import OidcProvider
    from tests.test_auth_flows import login, provider_config
    from tests.test_auth_grants import refresh, works

    port = free_port()
    idp = OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback"])
    server = None
    try:
        auth = {**provider_config("oidc", idp, port)}
        auth["persistence"] = {**auth["persistence"], "path": str(tmp_path / "oauth.db")}
        server = start_auth_server(tmp_path, auth, port=port, args=["--workers", "2"])
        storage = login({"server": server}, "alice")
        for _ in range(6):
            assert works(server.url, storage.tokens.access_token)
        client_id = storage.client.client_id
        token = storage.tokens.refresh_token
        for _ in range(3):
            fresh = refresh(server.base, client_id, token)
            assert fresh.status_code == 200, fresh.text
            token = fresh.json()["refresh_token"]
            assert works(server.url, fresh.json()["access_token"])
        workers = psutil.Process(server.proc.pid).children(recursive=True)
        assert sum(1 for w in workers if w.cpu_times().user > 0.5) >= 2, "both workers should have served"
        revoked = httpx.post(f"{server.base}/revoke", data={"token": storage.tokens.access_token,
                                                            "client_id": client_id})
        assert revoked.status_code == 200, revoked.text
        time.sleep(5 + 0.5)  # auth.token_cache.revocation_check_seconds (default 5), and a margin
        assert not any(works(server.url, storage.tokens.access_token) for _ in range(8))
    finally:
        if server is not None:
            stop_server(server)
        idp.stop()


def _accepted_nodelay(listener, conn) -> None:
    """In a spawned worker, as uvicorn's: serve the inherited listener with asyncio, report the first
    accepted connection's (proto, TCP_NODELAY)."""
    import socket as socketlib

    async def main() -> None:
        accepted = asyncio.get_running_loop().create_future()

        class Report(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result((sock.proto, sock.getsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY)))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Report, sock=listener)
        conn.send("listening")
        conn.send(await asyncio.wait_for(accepted, 30))
        server.close()

    asyncio.run(main())


def test_worker_connections_get_tcp_nodelay():
    # uvicorn's own --workers listener leaves Nagle on (every keep-alive call waited ~44 ms for a
    # delayed ACK); the one sqlgate hands its workers is marked TCP, and survives the spawn
    import multiprocessing
    import socket as socketlib

    import uvicorn

    from sqlgate.serve import tcp_listener

    config = uvicorn.Config("sqlgate.serve:worker_app", factory=True, host="127.0.0.1", port=free_port(), workers=2)
    listener = tcp_listener(config)
    try:
        assert listener.proto == socketlib.IPPROTO_TCP
        ctx = multiprocessing.get_context("spawn")  # how uvicorn starts its workers
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=_accepted_nodelay, args=(listener, child))
        worker.start()
        try:
            assert parent.poll(60) and parent.recv() == "listening"
            with socketlib.create_connection(listener.getsockname(), timeout=10):
                assert parent.poll(30)
                assert parent.recv() == (socketlib.IPPROTO_TCP, 1)
        finally:
            worker.join(30)
            worker.kill()
    finally:
        listener.close()


def _tool_names(url: str) -> set[str]:
    async def names() -> set[str]:
        async with mcp_session(url) as s:
            return {t.name for t in (await s.list_tools()).tools}
    return asyncio.run(names())


def test_sighup_with_workers_replaces_them_and_keeps_them_on_error(tmp_path):
    # with --workers, SIGHUP to the supervisor is a rolling restart: each worker is replaced by one
    # built from the project's files, which must start before the old one stops
    project = _project(tmp_path)
    server = start_server(project, tmp_path, args=["--workers", "2"], timeout=60)
    try:
        assert "echo_later" not in _tool_names(server.url)
        (project / "tools" / "echo_later.yml").write_text(
            "tool:\n  name: echo_later\n  description: added while serving\n  source:\n    code: SELECT 1 AS one\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 90
        seen = 0
        while time.monotonic() < deadline and seen < 6:  # six sessions in a row, whichever worker
            seen = seen + 1 if "echo_later" in _tool_names(server.url) else 0
            time.sleep(0.2)
        assert seen == 6, server.log.read_text()[-3000:]

        # a broken file: the replacement cannot start, so the workers that serve stay as they were
        (project / "tools" / "broken.yml").write_text("tool:\n  name: broken\n  source: {}\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "aborting the restart" not in server.log.read_text():
            time.sleep(0.2)
        log = server.log.read_text()
        assert "aborting the restart" in log, log[-3000:]
        assert "broken.yml" in log  # the log names the file that stopped it
        assert {"echo_later", "slow"} <= _tool_names(server.url)
        assert server.proc.poll() is None
    finally:
        stop_server(server)
