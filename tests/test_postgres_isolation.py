"""Poisoning on PostgreSQL, then many interleaved calls of other users over HTTP with JWT auth.

Poison comes from two sides: the query tool (every attempt refused) and deliberately poisoning
endpoint SQL (trusted, so it runs: session advisory locks, session-level settings and role,
PREPARE, temp tables shadowing `accounts`, LISTEN, WITH HOLD cursors). Interleaved with it, three
users each call a tool that reports what its connection looks like; every call must see only its
own identity and rows, and none of the poison.
"""

from __future__ import annotations

import itertools
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from sqlgate.engine import postgres_engine
from tests.conftest import free_port, isolated_env, start_server, stop_server
from tests.test_postgres import LIMITS, SECRET, _as, _engine, pg_database
from tests.test_postgres import pytestmark as _pg_only

pytestmark = _pg_only
OWN_ROWS = {"alice": 20, "bob": 20, "carol": 5}

PROBE = """SELECT get_username() AS me, count(*) AS n, min(owner) AS lo, max(owner) AS hi,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
  (SELECT count(*) FROM pg_prepared_statements) AS prepared,
  (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,
  (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps,
  (SELECT count(*) FROM pg_listening_channels()) AS listening,
  current_setting('search_path') AS search_path, current_user AS role,
  coalesce(current_setting('sqlgate.username', true), '') AS legacy
FROM accounts"""


def _poison_tools(bob_role: str) -> dict[str, str]:
    return {
        "poison_lock": "SELECT pg_try_advisory_lock(4242) AS got",
        "poison_settings": "SELECT set_config('search_path', 'pg_catalog', false), "
                           "set_config('sqlgate.identity', 'forged', false), "
                           f"set_config('sqlgate.username', 'mallory', false), set_config('role', '{bob_role}', false)",
        "poison_prepare": "PREPARE sneaky AS SELECT 1",
        "poison_temp": "CREATE TEMP TABLE accounts AS SELECT 1 AS id, 'alice' AS owner",
        "poison_listen": "LISTEN sqlgate_poison",
        "poison_cursor": "DECLARE sneaky CURSOR WITH HOLD FOR SELECT 1",
    }


UNTRUSTED_POISON = [
    "SELECT pg_advisory_lock(4242)",
    "SELECT set_config('search_path', 'pg_catalog', false)",
    "SELECT 1; SET ROLE postgres",
    "SELECT 1; PREPARE p AS SELECT 1",
    "CREATE TEMP TABLE accounts AS SELECT 1",
    "SELECT query_to_xml('create temp table accounts as select 1', true, false, '')",
    "LISTEN x",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
]


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        extra = [f"app_{info['tag']}_carol", f"app_{info['tag']}_mallory"]  # set_role mode: a role per user
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{info['db']}", autocommit=True) as admin:
            admin.execute("INSERT INTO accounts SELECT 100 + i, 'carol', 'Carol ' || i, i FROM generate_series(1, 5) i")
            for role in extra:
                admin.execute(f"CREATE ROLE {role} NOLOGIN")
                admin.execute(f"GRANT {role} TO {info['svc']}")
                admin.execute(f"GRANT SELECT ON accounts TO {role}")
        try:
            yield info
        finally:
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {info['db']} WITH (FORCE)")
                for role in extra:
                    admin.execute(f"DROP ROLE IF EXISTS {role}")


class Mcp:
    """One MCP session over streamable HTTP with a bearer token."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.ids = itertools.count(2)  # concurrent calls of one session need distinct JSON-RPC ids
        self.http = httpx.Client(timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                        "MCP-Protocol-Version": "2025-06-18"}
        init = self._post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        self.headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
        self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _post(self, body: dict) -> httpx.Response:
        resp = self.http.post(self.url, headers=self.headers, json=body)
        assert resp.status_code in (200, 202), resp.text
        return resp

    def call(self, tool: str, arguments: dict | None = None) -> dict:
        from tests.test_auth_flows import result_of

        resp = self._post({"jsonrpc": "2.0", "id": next(self.ids), "method": "tools/call",
                           "params": {"name": tool, "arguments": arguments or {}}})
        return result_of(resp)["result"]


@pytest.mark.parametrize("mode", ["service", "set_role"])
def test_poisoning_then_interleaved_users_over_http(pg, tmp_path, mode):
    project = tmp_path / "project"
    shutil.copytree(pg["project"], project)
    text = (project / "sqlgate.yml").read_text().replace("  pool_size: 4\n", "  pool_size: 4\n  read_only: false\n")
    (project / "sqlgate.yml").write_text(text)
    tools = _poison_tools(pg["roles"]["bob"]) | {"probe": PROBE}
    for name, sql in tools.items():
        code = "\n".join("      " + line for line in sql.splitlines())
        (project / "tools" / f"{name}.yml").write_text(
            f"tool:\n  name: {name}\n  description: test tool {name}\n  source:\n    code: |\n{code}\n")
    port = free_port()
    env = isolated_env(tmp_path, SQLGATE_AUTH_MODE="jwt", SQLGATE_AUTH_SECRET=SECRET,
                       SQLGATE_AUTH_ALGORITHM="HS256", SQLGATE_AUTH_ISSUER="https://iss.test")
    prefix = f"app_{pg['tag']}_"
    if mode == "set_role":
        env |= {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": prefix}
    server = start_server(project, tmp_path, env=env, port=port)

    def token(name: str) -> str:
        claims = {"iss": "https://iss.test", "aud": f"http://127.0.0.1:{port}/mcp", "sub": name,
                  "preferred_username": name, "exp": int(time.time()) + 600}
        return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET.encode()))

    try:
        sessions = {name: Mcp(server.url, token(name)) for name in [*OWN_ROWS, "mallory"]}
        plan: list[tuple[str, str, dict | None]] = [(u, "probe", None) for u in OWN_ROWS for _ in range(70)]
        plan += [("mallory", t, None) for t in tools if t != "probe" for _ in range(6)]
        plan += [("mallory", "query", {"sql": sql}) for sql in UNTRUSTED_POISON for _ in range(2)]
        random.Random(7).shuffle(plan)

        def run(step):
            user, tool, args = step
            return step, sessions[user].call(tool, args)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, plan))
        probes = 0
        for (user, tool, args), result in results:
            if tool == "query":
                assert result["isError"], (args, result)  # every poisoning attempt is refused
                continue
            if tool != "probe":
                continue
            probes += 1
            assert not result.get("isError"), result
            row = result["structuredContent"]["result"][0]
            assert row["me"] == user and row["n"] == OWN_ROWS[user] and row["lo"] == row["hi"] == user, row
            assert (row["locks"], row["prepared"], row["cursors"], row["temps"], row["listening"]) == (0, 0, 0, 0, 0)
            role = prefix + user if mode == "set_role" else pg["svc"]
            assert row["search_path"] == '"$user", public' and row["role"] == role and row["legacy"] == ""
        assert probes == 210
        # the poison did take effect inside its own calls (the lock was free to take, every time)
        got = [r["structuredContent"]["result"][0]["got"] for (u, t, a), r in results if t == "poison_lock"]
        assert got == [True] * 6
        assert "Traceback" not in server.logs()
    finally:
        stop_server(server)


async def test_control_without_the_reset_poison_survives(pg, monkeypatch):
    """The probe's checks do detect poison: with the pool's reset switched off, a session advisory
    lock and a prepared statement outlive the call on a one-connection pool."""
    async def no_reset(conn):
        return None

    probe_sql = ("SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
                 "(SELECT count(*) FROM pg_prepared_statements)")
    for reset, survives in ((no_reset, True), (postgres_engine._reset, False)):
        monkeypatch.setattr(postgres_engine, "_reset", reset)
        engine = _engine(pg, {"SQLGATE_DB_POOL_SIZE": "1", "SQLGATE_DB_READ_ONLY": "false"})
        try:
            await engine.execute("SELECT pg_try_advisory_lock(99)", None, _as("mallory"), LIMITS)
            await engine.execute("PREPARE sneaky AS SELECT 1", None, _as("mallory"), LIMITS)
            qr = await engine.run_untrusted(probe_sql, _as("alice"), LIMITS)
            assert qr.rows == ([[1, 1]] if survives else [[0, 0]])
        finally:
            await engine.close()
