"""PostgreSQL: code the guard cannot see, and statements the server cannot stop.

- XPath (libxml2 ignores statement_timeout and cancel) is refused by the guard; endpoint SQL that
  runs one anyway still answers at its own deadline, the backend is terminated and the pool
  replaces the connection;
- functions outside pg_catalog (a DBA's plpgsql `run_sql(q)` doing EXECUTE q, a SECURITY DEFINER
  variant) are refused unless allow-listed, qualified or not; the start-up checks warn about them,
  and refuse a SECURITY DEFINER one owned by a superuser;
- the random seed endpoint SQL sets does not reach the next caller;
- set_role mode: the catalog tools run as the caller's role; an empty role_prefix is a
  configuration error; a username that maps to the service role is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
import pytest

from sqlgate.context import pinned_call
from sqlgate.engine import Limits
from sqlgate.errors import ConfigError, QueryFailed, QueryRefused, QueryTimeout
from tests.test_postgres import LIMITS, _as, _engine, pg_database
from tests.test_postgres import pytestmark as _pg_only

pytestmark = _pg_only
ONE_SECOND = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=1)
# O(n³) XPath inside libxml2, which never checks for interrupts (about 6 s here at n = 700)
XPATH = "SELECT xpath('count(//*[count(//*[count(//*) > 0]) > 0])', ('<r>' || repeat('<a/>', {n}) || '</r>')::xml)"


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        info["admin"] = f"postgresql://postgres@127.0.0.1:5432/{info['db']}"
        with psycopg.connect(info["admin"], autocommit=True) as admin:
            # what the security tester found: a DBA's helper that runs any SQL text it is given
            admin.execute("CREATE FUNCTION public.run_sql(q text) RETURNS text LANGUAGE plpgsql "
                          "AS $$ DECLARE r text; BEGIN EXECUTE q INTO r; RETURN r; END $$")
            admin.execute("CREATE FUNCTION public.add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE "
                          "AS $$ SELECT i + 1 $$")
            admin.execute("CREATE SCHEMA ext")
            admin.execute(f"GRANT USAGE ON SCHEMA ext TO {info['svc']}")
            admin.execute("CREATE FUNCTION ext.add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE "
                          "AS $$ SELECT i + 100 $$")
        yield info


@pytest.mark.parametrize("sql", [
    XPATH.format(n=1000),
    "SELECT xpath_exists('//a', x) FROM (VALUES ('<a/>'::xml)) v(x)",
    "SELECT pg_catalog.xpath('/a', '<a/>'::xml)",
    "SELECT 1 WHERE XMLEXISTS('//a' PASSING BY REF ('<a/>'::xml))",
    "SELECT * FROM XMLTABLE('/r/a' PASSING ('<r><a/></r>'::xml) COLUMNS n int PATH '1')",
])
async def test_xpath_is_refused(pg, sql):
    engine = _engine(pg)
    try:
        with pytest.raises(QueryRefused, match="XPath"):
            await engine.run_untrusted(sql, _as("alice"), ONE_SECOND)
    finally:
        await engine.close()


async def test_a_statement_the_server_cannot_stop_still_answers_at_its_deadline(pg, caplog):
    """Endpoint SQL is not guarded: an XPath there ignores statement_timeout and psycopg's cancel."""
    engine = _engine(pg, {"SQLGATE_DB_POOL_SIZE": "2"})
    try:
        await engine.execute("SELECT 1", None, _as("alice"), LIMITS)
        with caplog.at_level(logging.WARNING, logger="sqlgate.engine.postgres"):
            started = time.monotonic()
            with pytest.raises(QueryTimeout, match="1 s timeout"):
                await engine.execute(XPATH.format(n=700), None, _as("alice"), ONE_SECOND)
            took = time.monotonic() - started
            assert took < 1.9, took  # not timeout + 2 s backstop + psycopg's 5 s wait after its cancel
            # the pool serves the next calls meanwhile (both connections, one of them a new one)
            for _ in range(3):
                again = await asyncio.gather(*(engine.execute("SELECT pg_backend_pid()", None, _as(u), ONE_SECOND)
                                               for u in ("alice", "bob")))
                assert all(len(r.rows) == 1 for r in again)
            # the runaway backend was signalled from a side connection of the service role and is gone
            # once libxml2 hands control back
            with psycopg.connect(pg["admin"], autocommit=True) as admin:
                for _ in range(100):
                    left = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                         "AND query LIKE %s", (pg["db"], "%xpath(%")).fetchone()[0]
                    if left == 0:
                        break
                    await asyncio.sleep(0.2)
                assert left == 0

            # said in the log once the side connection that terminated it is closed, which can be a
            # moment after the backend is gone
            def terminated() -> bool:
                return any("terminate" in r.getMessage() and "backend" in r.getMessage() for r in caplog.records)

            for _ in range(50):
                if terminated():
                    break
                await asyncio.sleep(0.1)
            assert terminated()
    finally:
        await engine.close()


@pytest.mark.parametrize("sql", [
    "SELECT public.run_sql('SELECT set_config(''role'', ''postgres'', false)')",
    "SELECT run_sql('SELECT pg_terminate_backend(1)::text')",
    "SELECT RUN_SQL('SELECT setseed(0.5)::text')",
    "SELECT * FROM public.run_sql('SELECT 1')",
    "SELECT \"public\".\"run_sql\"('SELECT 1')",
    "SELECT a.run_sql FROM (SELECT 'SELECT 1'::text) a",
    "SELECT add_one(1)",  # resolves by search_path to public.add_one
    "SELECT ext.add_one(1)",
])
async def test_functions_outside_pg_catalog_are_refused(pg, sql):
    engine = _engine(pg)
    try:
        with pytest.raises(QueryRefused, match="outside pg_catalog"):
            await engine.run_untrusted(sql, _as("alice"), LIMITS)
        # built-ins and sqlgate's identity accessors still work
        qr = await engine.run_untrusted("SELECT lower('A'), count(*), sqlgate.username() FROM accounts",
                                        _as("alice"), LIMITS)
        assert qr.rows == [["a", 20, "alice"]]
        with pytest.raises(QueryRefused, match="not a built-in function"):
            await engine.run_untrusted("SELECT made_up_later(1)", _as("alice"), LIMITS)
    finally:
        await engine.close()


async def test_allow_listed_functions(pg):
    engine = _engine(pg, {"SQLGATE_DB_ALLOWED_FUNCTIONS": "ext.add_one, public.add_one"})
    try:
        qr = await engine.run_untrusted("SELECT ext.add_one(1), public.add_one(1), add_one(1)", _as("alice"), LIMITS)
        assert qr.rows == [[101, 2, 2]]
        with pytest.raises(QueryRefused, match="outside pg_catalog"):
            await engine.run_untrusted("SELECT run_sql('SELECT 1')", _as("alice"), LIMITS)
    finally:
        await engine.close()
    # only ext.add_one listed: the unqualified name could still mean public.add_one
    engine = _engine(pg, {"SQLGATE_DB_ALLOWED_FUNCTIONS": "ext.add_one"})
    try:
        assert (await engine.run_untrusted("SELECT ext.add_one(1)", _as("alice"), LIMITS)).rows == [[101]]
        with pytest.raises(QueryRefused, match="outside pg_catalog"):
            await engine.run_untrusted("SELECT add_one(1)", _as("alice"), LIMITS)
    finally:
        await engine.close()
    with pytest.raises(ConfigError, match=r"schema\.name"):
        _engine(pg, {"SQLGATE_DB_ALLOWED_FUNCTIONS": "add_one"})


def test_start_up_checks_of_functions(pg, caplog):
    with caplog.at_level(logging.WARNING, logger="sqlgate.engine.postgres"):
        engine = _engine(pg)
    asyncio.run(engine.close())
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "public.run_sql(q text) is written in plpgsql" in warned
    assert "add_one" not in warned  # plain SQL, not SECURITY DEFINER
    assert "sqlgate.username" not in warned  # sqlgate's own
    with psycopg.connect(pg["admin"], autocommit=True) as admin:
        # a SECURITY DEFINER variant owned by the superuser reads every row past RLS
        admin.execute("CREATE FUNCTION public.all_accounts() RETURNS SETOF accounts LANGUAGE sql "
                      "SECURITY DEFINER AS $$ SELECT * FROM accounts $$")
    try:
        with pytest.raises(ConfigError) as refused:
            _engine(pg)
        assert any("public.all_accounts() is SECURITY DEFINER and owned by postgres" in p
                   for p in refused.value.problems)
        engine = _engine(pg, {"SQLGATE_DB_ROLE_CHECKS": "warn"})
        try:
            with pytest.raises(QueryRefused, match="outside pg_catalog"):
                asyncio.run(engine.run_untrusted("SELECT count(*) FROM all_accounts()", _as("alice"), LIMITS))
        finally:
            asyncio.run(engine.close())
        with psycopg.connect(pg["admin"], autocommit=True) as admin:
            admin.execute("REVOKE EXECUTE ON FUNCTION public.all_accounts() FROM PUBLIC")
        _engine(pg)  # not executable by sqlgate's roles: starts
        # set_role mode: what the mapped roles may execute counts too
        with psycopg.connect(pg["admin"], autocommit=True) as admin:
            admin.execute(f"GRANT EXECUTE ON FUNCTION public.all_accounts() TO {pg['roles']['bob']}")
        with pytest.raises(ConfigError) as refused:
            _engine(pg, {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": f"app_{pg['tag']}_"})
        assert any("all_accounts" in p for p in refused.value.problems)
    finally:
        with psycopg.connect(pg["admin"], autocommit=True) as admin:
            admin.execute("DROP FUNCTION public.all_accounts()")


async def test_random_seed_does_not_reach_the_next_caller(pg):
    with psycopg.connect(pg["admin"], autocommit=True) as admin:
        predicted = admin.execute("SELECT setseed(0.5), random()").fetchone()[1]
    engine = _engine(pg, {"SQLGATE_DB_POOL_SIZE": "1"})  # one connection: the next call gets the same one
    try:
        pid = (await engine.execute("SELECT setseed(0.5), pg_backend_pid()", None, _as("alice"), LIMITS)).rows[0][1]
        qr = await engine.execute("SELECT random(), pg_backend_pid()", None, _as("bob"), LIMITS)
        assert qr.rows[0][1] == pid
        assert qr.rows[0][0] != predicted
        # the reset stays one round trip: DISCARD ALL and the new seed are pipelined
        from sqlgate.engine import postgres_engine
        pool = await engine._get_pool()
        async with pool.connection() as conn:
            started = time.perf_counter()
            for _ in range(50):
                await postgres_engine._reset(conn)
            with_seed = (time.perf_counter() - started) / 50
            started = time.perf_counter()
            for _ in range(50):
                await conn.execute("DISCARD ALL")
            alone = (time.perf_counter() - started) / 50
        assert with_seed < alone * 2 + 0.002, (with_seed, alone)
    finally:
        await engine.close()


async def test_set_role_catalog_tools_run_as_the_caller(pg):
    prefix = f"app_{pg['tag']}_"
    engine = _engine(pg, {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": prefix})
    try:
        with pinned_call(_as("alice")):
            tables = {r["name"] for r in (await engine.list_tables("public", LIMITS)).records()}
            _, described = await engine.describe_table("role_notes", None, LIMITS)
            entries = await engine.catalog_entries()
            schemas = (await engine.list_schemas(LIMITS)).records()
        assert {"accounts", "role_notes"} <= tables
        assert [c["name"] for c in described.records()] == ["id", "note"]
        assert any(e["name"] == "role_notes" for e in entries) and any(s["schema"] == "public" for s in schemas)
        with pinned_call(_as("bob")):  # bob's role cannot read role_notes: he does not see it
            tables = {r["name"] for r in (await engine.list_tables("public", LIMITS)).records()}
        assert "accounts" in tables and "role_notes" not in tables
    finally:
        await engine.close()


async def test_set_role_prefix_is_required_and_the_service_role_is_not_a_user(pg):
    with pytest.raises(ConfigError, match="role_prefix"):
        _engine(pg, {"SQLGATE_DB_ROLE_MODE": "set_role"})
    svc = pg["svc"]  # sqlgate_svc_<tag>: with prefix "sqlgate_", user "svc_<tag>" would name it
    engine = _engine(pg, {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": "sqlgate_",
                          "SQLGATE_DB_ROLE_CHECKS": "warn"})
    try:
        for user in (svc.removeprefix("sqlgate_"), svc.removeprefix("sqlgate_").upper()):
            with pytest.raises(QueryFailed, match="maps to the service role"):
                await engine.run_untrusted("SELECT current_user", _as(user), LIMITS)
    finally:
        await engine.close()


async def test_query_tool_description_names_what_postgres_accepts(pg):
    from sqlgate.config.models import SqlToolsConfig
    from sqlgate.context import CallContext
    from sqlgate.sqltools.builtin import builtin_tools

    engine = _engine(pg)
    try:
        tools = {t.name: t for t in builtin_tools(engine, SqlToolsConfig(), lambda: LIMITS, CallContext)}
        text = tools["query"].description
        assert "postgres dialect: SELECT, WITH, VALUES, TABLE or EXPLAIN)" in text
        assert not any(word in text for word in ("DESCRIBE", "SHOW", "SUMMARIZE"))
    finally:
        await engine.close()
