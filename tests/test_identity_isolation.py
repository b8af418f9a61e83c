"""Identity no query can forge, over real HTTP with JWT auth and the official mcp client.

Mallory first tries every way to leave something behind on the pooled DuckDB connections
(replace the caller functions, set variables, temp views shadowing tables, multi-statement tricks
the engine's parser sees, transactions, prepared statements). Then alice, bob and carol make 216
interleaved calls — the YAML endpoints `whoami` and `my_customers` and the `query` tool — and each
sees only their own identity and their own rows.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.auth_support import start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import free_port, stop_server

SECRET = "identity-isolation-shared-secret-0123456789"
USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    port = free_port()
    srv = start_auth_server(tmp, {"jwt": {"secret": SECRET, "algorithms": ["HS256"],
                                          "issuer": "https://issuer.test"}}, port=port)
    yield srv, f"http://127.0.0.1:{port}/mcp"
    stop_server(srv)


def session_as(url: str, aud: str, name: str):
    return mcp_session(url, hs256_bearer(SECRET, aud, name))


POISON = [
    "CREATE OR REPLACE TEMP MACRO get_username() AS 'alice'",
    "SET VARIABLE sqlgate_ctx = struct_pack(username := 'alice')",
    "CREATE TEMP VIEW customers AS SELECT * FROM customers WHERE account_manager = 'mallory'",
    "SELECT $t\u3000$ x $t\u3000$; CREATE OR REPLACE TEMP MACRO get_username() AS 'alice'",
    "SELECT $t\u00a0$;$t\u00a0$; SET VARIABLE x = 1",
    "BEGIN TRANSACTION",
    "PREPARE p AS SELECT 'alice'",
    "SELECT * FROM (PIVOT customers ON region USING count(*))",
    "SELECT * FROM query('CREATE TEMP MACRO get_username() AS ''alice''')",
    "WITH x AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM x",
]


async def test_poisoning_then_interleaved_users_each_see_only_themselves(server):
    srv, url = server
    aud = url
    async with session_as(url, aud, "mallory") as mallory:
        for sql in POISON:
            res = await mallory.call_tool("query", {"sql": sql})
            assert res.is_error, f"not refused: {sql!r}"
            assert "Traceback" not in res.content[0].text
        # DuckDB nests block comments: this is one harmless SELECT by the engine's reading, and runs
        res = await mallory.call_tool("query", {"sql": "SELECT 1 /* /* */ ; CREATE TEMP TABLE orders AS "
                                                       "SELECT 1; -- */"})
        assert res.structured_content["rows"] == [[1]]

    async def calls_of(name: str) -> list[tuple[str, str, object]]:
        seen = []
        async with session_as(url, aud, name) as s:
            for i in range(24):
                who = await s.call_tool("whoami")
                seen.append((name, "whoami", who.structured_content["result"]["username"]))
                mine = await s.call_tool("my_customers", {"limit": 50})
                managers = {row["customer_id"] for row in mine.structured_content["result"]}
                seen.append((name, "my_customers", len(managers)))
                q = await s.call_tool("query", {"sql": "SELECT get_username() AS u, "
                                                       "count(*) FILTER (WHERE account_manager <> get_username()) "
                                                       "AS foreign_rows FROM customers "
                                                       "WHERE account_manager = get_username()"})
                assert not q.is_error, q.content
                u, foreign = q.structured_content["rows"][0]
                seen.append((name, "query", (u, foreign)))
                if i % 5 == 0:
                    await asyncio.sleep(0)
        return seen

    # three users at once, each with their own session, calls interleaving on the pool
    results = await asyncio.gather(*(calls_of(n) for n in USERS))
    flat = [r for per_user in results for r in per_user]
    assert len(flat) == 3 * 24 * 3 >= 200
    for name, what, value in flat:
        if what == "whoami":
            assert value == name
        elif what == "query":
            assert value == (name, 0), f"{name} saw {value}"
        else:
            assert value > 0, f"{name} got no customers of their own"
    # and the rows themselves belong to the caller (checked once per user with the manager column)
    for name in USERS:
        async with session_as(url, aud, name) as s:
            res = await s.call_tool("query", {"sql": "SELECT DISTINCT account_manager FROM customers "
                                                     "WHERE account_manager = get_username()"})
            assert res.structured_content["rows"] == [[name]]
    logs = srv.logs()
    assert "Traceback" not in logs
