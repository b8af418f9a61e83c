"""PostgreSQL as a data source: RLS by caller, SET ROLE mode, read-only guarantees, built-in tools.

Uses the PostgreSQL on 127.0.0.1:5432; each test module creates its own database and roles and
drops them afterwards. The `pg` fixture installs sqlgate's signed identity (schema sqlgate) and
protects `accounts` with the recommended policy, USING (owner = (SELECT sqlgate.username())).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext, UserContext
from sqlgate.engine import Limits, open_engine
from sqlgate.engine.postgres_identity import install
from sqlgate.errors import QueryFailed, QueryRefused
from tests.conftest import EXAMPLE, free_port, isolated_env, start_server, stop_server
from tests.grant_backends import ADMIN_DSN, postgres_available

SECRET = "postgres-test-shared-secret-0123456789abcdef"
IDENTITY_KEY = "identity-key-for-tests-0123456789abcdef"
LIMITS = Limits(max_rows=1000, max_bytes=1_000_000, timeout_seconds=10)


pytestmark = pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432")


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        yield info


@contextmanager
def pg_database(tmp_path_factory):
    """A fresh database (signed identity installed, RLS on accounts), roles and a project using it."""
    tag = secrets.token_hex(4)
    db, svc = f"sqlgate_t_{tag}", f"sqlgate_svc_{tag}"
    roles = {"alice": f"app_{tag}_alice", "bob": f"app_{tag}_bob"}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
        admin.execute(f"CREATE ROLE {svc} LOGIN NOSUPERUSER NOBYPASSRLS")
        for role in roles.values():
            admin.execute(f"CREATE ROLE {role} NOLOGIN")
            admin.execute(f"GRANT {role} TO {svc}")
    install(f"postgresql://postgres@127.0.0.1:5432/{db}", IDENTITY_KEY)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as con:
        con.execute("""
            CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, name text NOT NULL, balance numeric);
            COMMENT ON TABLE accounts IS 'Customer accounts, one owner each';
            COMMENT ON COLUMN accounts.owner IS 'Username of the account manager';
            INSERT INTO accounts SELECT i, CASE WHEN i % 2 = 0 THEN 'alice' ELSE 'bob' END, 'Account ' || i, i * 10
              FROM generate_series(1, 40) i;
            ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
            ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
            CREATE POLICY by_caller ON accounts USING (owner = (SELECT sqlgate.username()));
            CREATE TABLE role_notes (id int PRIMARY KEY, note text);
            INSERT INTO role_notes VALUES (1, 'for alice only');
        """)
        con.execute(f"GRANT USAGE ON SCHEMA public TO {svc}")
        con.execute(f"GRANT SELECT ON accounts TO {svc}, {roles['alice']}, {roles['bob']}")
        con.execute(f"GRANT SELECT ON role_notes TO {roles['alice']}")
    tmp = tmp_path_factory.mktemp("pgproj")
    project = tmp / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__", "tools", "resources",
                                                                     "python"))
    (project / "tools").mkdir()
    (project / "tools" / "my_accounts.yml").write_text("""tool:
  name: my_accounts
  description: The caller's accounts (row-level security decides).
  source:
    code: SELECT id, owner, get_username() AS seen_as FROM accounts ORDER BY id
""")
    dsn = f"postgresql://{svc}@127.0.0.1:5432/{db}"
    (project / "sqlgate.yml").write_text(f"name: pgshop\nengine:\n  type: postgres\n  dsn: {dsn}\n  pool_size: 4\n"
                                         f"  identity_key: {IDENTITY_KEY}\n")
    try:
        yield {"db": db, "svc": svc, "roles": roles, "tag": tag, "project": project, "dsn": dsn, "tmp": tmp}
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            for role in [*roles.values(), svc]:
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def _engine(pg, env=None):
    return open_engine(load_project(pg["project"], env=isolated_env(pg["tmp"], **(env or {}))))


async def active(pg, fragment: str) -> int:
    """How many statements containing `fragment` run on the server now (pg_stat_activity)."""
    async with await psycopg.AsyncConnection.connect(f"postgresql://postgres@127.0.0.1:5432/{pg['db']}",
                                                     autocommit=True) as admin:
        cur = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                                  "pid <> pg_backend_pid() AND query LIKE %s", (f"%{fragment}%",))
        return (await cur.fetchone())[0]


async def running(pg, fragment: str, count: int, timeout: float = 10) -> None:
    """Wait until `count` statements containing `fragment` are active on the server: the calls hold
    their connections now (instead of sleeping a fixed time and hoping they do)."""
    deadline = time.monotonic() + timeout
    while (found := await active(pg, fragment)) < count:
        assert time.monotonic() < deadline, f"{found} of {count} statements with {fragment!r} running"
        await asyncio.sleep(0.02)


def _as(name: str) -> CallContext:
    return CallContext(user=UserContext(username=name, provider="jwt"))


async def test_rls_sees_only_the_callers_rows_concurrently(pg):
    engine = _engine(pg)
    try:
        sql = "SELECT owner, count(*) AS n, max(get_username()) AS me, pg_sleep(0.05) FROM accounts GROUP BY owner"

        async def one(name):
            return name, await engine.execute(sql, None, _as(name), LIMITS)

        results = await asyncio.gather(*(one(n) for n in ["alice", "bob"] * 6))
        for name, qr in results:
            assert [(r[0], r[1], r[2]) for r in qr.rows] == [(name, 20, name)]
        anonymous = await engine.execute("SELECT count(*) FROM accounts", None, CallContext(), LIMITS)
        assert anonymous.rows == [[0]]
    finally:
        await engine.close()


async def test_set_role_mode(pg):
    engine = _engine(pg, {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": f"app_{pg['tag']}_"})
    try:
        qr = await engine.execute("SELECT current_user AS u, (SELECT count(*) FROM role_notes) AS notes",
                                  None, _as("alice"), LIMITS)
        assert qr.rows == [[pg["roles"]["alice"], 1]]
        with pytest.raises(QueryFailed, match="permission denied"):
            await engine.execute("SELECT * FROM role_notes", None, _as("bob"), LIMITS)
        # the role does not outlive the call on a pooled connection
        after = await engine.execute("SELECT current_user", None, _as("bob"), LIMITS)
        assert after.rows == [[pg["roles"]["bob"]]]
    finally:
        await engine.close()


@pytest.mark.parametrize("sql", ["COMMIT; DELETE FROM accounts", "SET TRANSACTION READ WRITE",
                                 "SELECT 1; DELETE FROM accounts", "DELETE FROM accounts",
                                 "WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d",
                                 "COPY accounts TO '/tmp/x.csv'"])
async def test_read_only_bypass_attempts(pg, sql):
    engine = _engine(pg)
    try:
        with pytest.raises(QueryRefused):
            await engine.run_untrusted(sql, _as("alice"), LIMITS)
        # and underneath, without the guard: the read-only transaction / single-statement protocol hold
        with pytest.raises(QueryFailed):
            await engine.execute(sql, None, _as("alice"), LIMITS)
    finally:
        await engine.close()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg['db']}") as con:
        assert con.execute("SELECT count(*) FROM accounts").fetchone() == (40,)


async def test_impersonation_attempt_does_not_outlive_its_call(pg):
    engine = _engine(pg)
    try:
        with pytest.raises(QueryRefused, match="set_config"):
            await engine.run_untrusted("SELECT set_config('sqlgate.identity', 'x', false)", _as("alice"), LIMITS)
        # even run directly (trusted path), a session-level setting ends with the call
        await engine.execute("SELECT set_config('sqlgate.identity', 'forged', false), "
                             "set_config('sqlgate.username', 'bob', false)", None, _as("alice"), LIMITS)
        for _ in range(4):  # whichever pooled connection comes next
            qr = await engine.execute("SELECT current_setting('sqlgate.identity', true) AS i, "
                                      "current_setting('sqlgate.username', true) AS u, get_username() AS me",
                                      None, CallContext(), LIMITS)
            i, u, me = qr.rows[0]
            assert u in (None, "") and me == "" and "forged" not in (i or "")
    finally:
        await engine.close()


async def test_limits_and_timeout(pg):
    engine = _engine(pg)
    try:
        qr = await engine.execute("SELECT g FROM generate_series(1, 100000) g", None, CallContext(),
                                  Limits(max_rows=50, max_bytes=1_000_000, timeout_seconds=10))
        assert len(qr.rows) == 50 and qr.truncated
        started = time.monotonic()
        with pytest.raises(Exception, match="timeout"):
            await engine.execute("SELECT pg_sleep(5)", None, CallContext(),
                                 Limits(max_rows=10, max_bytes=10_000, timeout_seconds=1))
        assert time.monotonic() - started < 4
        assert (await engine.execute("SELECT 1", None, CallContext(), LIMITS)).rows == [[1]]
    finally:
        await engine.close()


async def test_builtin_tools_on_postgres(pg):
    engine = _engine(pg)
    try:
        tables = {r["name"]: r for r in (await engine.list_tables("public", LIMITS)).records()}
        assert tables["accounts"]["comment"] == "Customer accounts, one owner each"
        about, columns = await engine.describe_table("accounts", None, LIMITS)
        assert [c["name"] for c in columns.records()] == ["id", "owner", "name", "balance"]
        assert about["keys"][0]["type"] == "PRIMARY KEY" and about["keys"][0]["columns"] == ["id"]
        assert any(e["name"] == "owner" and e["kind"] == "column" for e in await engine.catalog_entries())
    finally:
        await engine.close()


def test_two_users_over_http_see_their_own_rows(pg):
    port = free_port()
    env = isolated_env(pg["tmp"], SQLGATE_AUTH_MODE="jwt", SQLGATE_AUTH_SECRET=SECRET, SQLGATE_AUTH_ALGORITHM="HS256",
                       SQLGATE_AUTH_ISSUER="https://iss.test")
    server = start_server(pg["project"], pg["tmp"], env=env, port=port)

    def token(name):
        now = int(time.time())
        return jwt.encode({"alg": "HS256"}, {"iss": "https://iss.test", "aud": f"http://127.0.0.1:{port}/mcp",
                                             "sub": name, "preferred_username": name, "exp": now + 120},
                          OctKey.import_key(SECRET.encode()))

    def call(name):
        from tests.test_auth_flows import bearer_call, result_of

        resp = bearer_call(server.url, token(name), tool="my_accounts")
        assert resp.status_code == 200, resp.text
        return result_of(resp)["result"]["structuredContent"]["result"]

    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, ["alice", "bob", "alice", "bob"]))
        for name, rows in zip(["alice", "bob", "alice", "bob"], results, strict=True):
            assert len(rows) == 20 and {r["owner"] for r in rows} == {name} and {r["seen_as"] for r in rows} == {name}
        assert httpx.get(f"{server.base}/healthz").status_code == 200
    finally:
        stop_server(server)


def test_validate_binds_endpoint_sql_against_postgres(pg, tmp_path):
    import subprocess
    import sys

    project = tmp_path / "p"
    shutil.copytree(pg["project"], project)
    tool = "tool:\n  name: {n}\n  description: d\n  parameters:\n    - name: owner\n      type: string\n" \
           "      description: o\n  source:\n    code: {sql}\n"
    (project / "tools" / "by_owner.yml").write_text(
        tool.format(n="by_owner", sql="SELECT id FROM accounts WHERE owner = $owner AND get_username() <> ''"))
    validate = [sys.executable, "-m", "sqlgate", "validate", "-p", str(project)]
    ok = subprocess.run(validate, capture_output=True, text=True, env=isolated_env(tmp_path))
    assert ok.returncode == 0, ok.stderr
    (project / "tools" / "broken.yml").write_text(
        tool.format(n="broken", sql="SELECT nam FROM accountz WHERE owner = $owner"))
    bad = subprocess.run(validate, capture_output=True, text=True, env=isolated_env(tmp_path))
    assert bad.returncode == 2 and "tools/broken.yml:9: tool 'broken'" in bad.stderr and "accountz" in bad.stderr
    assert "Traceback" not in bad.stderr
    (project / "sqlgate.yml").write_text("name: pgshop\nengine:\n  type: postgres\n"
                                         "  dsn: postgresql://nobody@127.0.0.1:1/none\n"
                                         f"  identity_key: {IDENTITY_KEY}\n")
    unreachable = subprocess.run(validate, capture_output=True, text=True, env=isolated_env(tmp_path))
    assert unreachable.returncode == 0 and "not checked against the database" in unreachable.stderr
