"""Caller identity on PostgreSQL that no query can forge, the upstream token out of the query tool's
reach, and the start-up checks of the service role.

RLS on `accounts` is the recommended policy, USING (owner = (SELECT sqlgate.username())).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

import psycopg
import pytest

from sqlgate.context import CallContext, UserContext
from sqlgate.engine.postgres_identity import SignedIdentity, identity_sql, install, key_pads, main
from sqlgate.errors import ConfigError, QueryFailed, QueryRefused
from tests.test_postgres import IDENTITY_KEY, LIMITS, _as, _engine, pg_database, running
from tests.test_postgres import pytestmark as _pg_only

pytestmark = _pg_only
TOKEN = "gho_UPSTREAM_" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        info["admin"] = f"postgresql://postgres@127.0.0.1:5432/{info['db']}"
        yield info


def _rows_of(admin_conn, identity_value: str | None, sql: str = "SELECT sqlgate.username()"):
    with admin_conn.transaction(force_rollback=True):
        if identity_value is not None:
            admin_conn.execute("SELECT set_config('sqlgate.identity', %s, true)", (identity_value,))
        return admin_conn.execute(sql).fetchone()[0]


def test_identity_functions_reject_anything_sqlgate_did_not_sign(pg):
    """Called directly on an admin connection after a raw set_config: only a genuine signature for
    this backend and not yet expired yields a name."""
    signer = SignedIdentity(IDENTITY_KEY)
    alice = CallContext(user=UserContext(username="alice", user_id="u1", email="a@x.test", provider="jwt",
                                         display_name="Alice", claims={"team": "red"}))
    with psycopg.connect(pg["admin"]) as admin:
        pid = admin.info.backend_pid
        good = signer.settings(alice, pid, 30)["sqlgate.identity"]
        assert _rows_of(admin, good) == "alice"
        assert _rows_of(admin, good, "SELECT ROW(sqlgate.user_id(), sqlgate.user_email(), sqlgate.user_provider(), "
                                     "sqlgate.user_display_name(), sqlgate.claims() ->> 'team')::text") \
            == "(u1,a@x.test,jwt,Alice,red)"
        sig, body = good.split(".", 1)
        forged_body = body.replace('"u":"alice"', '"u":"bob"')
        assert forged_body != body
        spoofed = {
            "unsigned plain setting": None,
            "signature of another body": f"{sig}.{forged_body}",
            "flipped signature bit": f"{sig[:-1]}{'0' if sig[-1] != '0' else '1'}.{body}",
            "signed with another key": SignedIdentity("x" * 40).settings(alice, pid, 30)["sqlgate.identity"],
            "issued for another backend": signer.settings(alice, pid + 1, 30)["sqlgate.identity"],
            "expired": signer.settings(alice, pid, -1)["sqlgate.identity"],
            "garbage": "not-an-identity",
            "empty": "",
        }
        for why, value in spoofed.items():
            with admin.transaction(force_rollback=True):
                admin.execute("SELECT set_config('sqlgate.username', 'bob', true)")  # the old, forgeable way
                if value is not None:
                    admin.execute("SELECT set_config('sqlgate.identity', %s, true)", (value,))
                assert admin.execute("SELECT sqlgate.username()").fetchone()[0] is None, why
        # the SQL side's HMAC (sha256 over the stored pads) is RFC 2104 HMAC-SHA256
        ikey, okey = key_pads(IDENTITY_KEY)
        mac = admin.execute("SELECT encode(sha256(%s || sha256(%s || convert_to(%s, 'UTF8'))), 'hex')",
                            (okey, ikey, body)).fetchone()[0]
        assert mac == sig


def test_the_service_role_cannot_reach_the_key(pg):
    with psycopg.connect(pg["dsn"]) as svc:
        for sql in ("SELECT * FROM sqlgate.identity_key", "SELECT sqlgate._identity()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                svc.execute(sql)
            svc.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            svc.execute("CREATE OR REPLACE FUNCTION sqlgate.username() RETURNS text LANGUAGE sql AS $$ SELECT 'bob' $$")


# a SQL-text built-in that changes the identity settings, then reads bob's rows
NESTED = ("select set_config(''sqlgate.username'', ''bob'', true), "
          "set_config(''sqlgate.identity'', "
          "replace(current_setting(''sqlgate.identity'', true), ''alice'', ''bob''), true); "
          "select count(*) as n from accounts where owner = ''bob''")
ATTACKS = [
    f"SELECT query_to_xml('{NESTED}', true, false, '')::text AS x",
    "SELECT * FROM ts_stat('select set_config(''sqlgate.username'', ''bob'', true)::tsvector')",
    "SELECT set_config('sqlgate.identity', 'x', true), (SELECT count(*) FROM accounts WHERE owner = 'bob')",
    "SELECT pg_catalog.set_config('role', 'none', true)",
    "SELECT count(*) AS n FROM accounts WHERE owner = 'bob'",
    "SELECT count(*) AS n FROM accounts WHERE owner <> 'alice'",
    "SELECT count(*) AS n FROM (SELECT set_config('sqlgate.username', 'bob', true)) s, accounts WHERE owner = 'bob'",
]


@pytest.mark.parametrize("mode", ["service", "set_role"])
async def test_rls_bypass_attempts_see_no_foreign_rows(pg, mode):
    env = {"SQLGATE_DB_ROLE_MODE": "set_role", "SQLGATE_DB_ROLE_PREFIX": f"app_{pg['tag']}_"} \
        if mode == "set_role" else {}
    engine = _engine(pg, env)
    try:
        for sql in ATTACKS:
            try:
                qr = await engine.run_untrusted(sql, _as("alice"), LIMITS)
            except QueryRefused:
                continue
            assert qr.rows == [[0]], sql
        # below the guard (the trusted path runs any SQL): the nested set_config()s happen, but the
        # signed identity does not follow them, so RLS still shows bob's rows to nobody but bob
        qr = await engine.execute(ATTACKS[0], None, _as("alice"), LIMITS)
        assert "<n>0</n>" in qr.rows[0][0]
        assert (await engine.execute(ATTACKS[6], None, _as("alice"), LIMITS)).rows == [[0]]
        assert (await engine.execute(ATTACKS[4], None, _as("bob"), LIMITS)).rows == [[20]]
    finally:
        await engine.close()


async def test_control_plain_settings_are_forgeable(pg, caplog):
    """Why the signed identity exists: in the opt-in 'settings' mode (RLS on current_setting) the same
    nested-SQL trick below the guard does reach bob's rows; the guard is then the only layer."""
    with psycopg.connect(pg["admin"], autocommit=True) as admin:
        admin.execute("CREATE TABLE legacy (owner text)")
        admin.execute("INSERT INTO legacy VALUES ('alice'), ('bob'), ('bob')")
        admin.execute("ALTER TABLE legacy ENABLE ROW LEVEL SECURITY")
        admin.execute("CREATE POLICY p ON legacy USING (owner = current_setting('sqlgate.username', true))")
        admin.execute(f"GRANT SELECT ON legacy TO {pg['svc']}")
    with caplog.at_level(logging.WARNING, logger="sqlgate.engine.postgres"):
        engine = _engine(pg, {"SQLGATE_DB_IDENTITY": "settings"})
    assert any("can overwrite" in r.getMessage() for r in caplog.records)
    try:
        assert (await engine.execute("SELECT count(*) FROM legacy", None, _as("alice"), LIMITS)).rows == [[1]]
        nested = NESTED.replace("accounts", "legacy")
        qr = await engine.execute(f"SELECT query_to_xml('{nested}', true, false, '')::text", None, _as("alice"),
                                  LIMITS)
        assert "<n>2</n>" in qr.rows[0][0]  # forged: alice saw bob's rows
        with pytest.raises(QueryRefused):  # the query tool still refuses it
            await engine.run_untrusted(f"SELECT query_to_xml('{nested}', true, false, '')", _as("alice"), LIMITS)
    finally:
        await engine.close()


def _caller_with_token(name: str) -> CallContext:
    return CallContext(user=UserContext(username=name, provider="github", external_token=TOKEN))


async def test_external_token_out_of_the_query_tools_reach(pg):
    engine = _engine(pg)
    alice = _caller_with_token("alice")
    try:
        # a YAML endpoint (trusted SQL) gets it, as a bound parameter
        qr = await engine.execute("SELECT get_user_external_token() AS t, get_username() AS u", None, alice, LIMITS)
        assert qr.rows == [[TOKEN, "alice"]]
        refused_or_failing = ["SELECT get_user_external_token()",
                              "SELECT current_setting('sqlgate.external_token', true)",
                              "SELECT current_setting('sqlgate.identity')",
                              "SELECT getvariable('sqlgate_ctx')"]
        for sql in refused_or_failing:
            with pytest.raises((QueryRefused, QueryFailed)):
                await engine.run_untrusted(sql, alice, LIMITS)

        # while a trusted call that uses the token runs, another caller looks at every catalog route
        async def endpoint_holding_the_token():
            return await engine.execute("SELECT pg_sleep(1.0), get_user_external_token() AS t", None, alice, LIMITS)

        busy = asyncio.create_task(endpoint_holding_the_token())
        await running(pg, "pg_sleep(1.0)", 1)
        looks = ["SELECT * FROM pg_settings",
                 "SELECT name, setting FROM pg_settings WHERE name LIKE 'sqlgate%'",
                 "SELECT sqlgate.claims(), sqlgate.username(), sqlgate.user_id(), sqlgate.user_provider()",
                 "SELECT * FROM pg_prepared_statements",
                 "SELECT * FROM pg_cursors"]
        seen = []
        for sql in looks:
            qr = await engine.run_untrusted(sql, alice, LIMITS)
            seen.append(json.dumps([qr.columns, qr.rows], default=str))
        # other callers' query texts are refused to the query tool; even the author's SQL that
        # looks at them sees the token only as a parameter placeholder
        with pytest.raises(QueryRefused, match="other callers' queries"):
            await engine.run_untrusted("SELECT query FROM pg_stat_activity", alice, LIMITS)
        qr = await engine.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database()", None,
                                  _as("bob"), LIMITS)
        activity = json.dumps(qr.rows)
        assert "pg_sleep" in activity  # the busy call was visible, with its parameter as $n
        assert (await busy).rows[0][1] == TOKEN
        assert not any(TOKEN in s for s in [*seen, activity])
    finally:
        await engine.close()


async def test_signed_mode_needs_the_installed_functions(pg, tmp_path_factory):
    db = f"sqlgate_bare_{secrets.token_hex(4)}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    try:
        env = {"SQLGATE_DB_DSN": f"postgresql://{pg['svc']}@127.0.0.1:5432/{db}"}
        started = time.monotonic()
        with pytest.raises(ConfigError, match="no sqlgate identity functions"):
            _engine(pg, env)
        assert time.monotonic() - started < 5
        engine = _engine(pg, env | {"SQLGATE_DB_IDENTITY": "settings"})  # explicit opt-in
        try:
            qr = await engine.execute("SELECT get_username() AS u", None, _as("alice"), LIMITS)
            assert qr.rows == [["alice"]]
        finally:
            await engine.close()
        with pytest.raises(ConfigError, match="identity_key"):
            _engine(pg, {"SQLGATE_DB_IDENTITY_KEY": "short"})
        with pytest.raises(ConfigError, match="does not match"):
            _engine(pg, {"SQLGATE_DB_IDENTITY_KEY": "another-key-of-sufficient-length-0123456789"})
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_install_is_idempotent_and_the_sql_is_reviewable(pg, capsys, monkeypatch):
    install(pg["admin"], IDENTITY_KEY)  # second run over the fixture's install
    # the command line, with the key from the project's engine.identity_key
    monkeypatch.setenv("SQLGATE_CONFIG", str(pg["tmp"] / "no-user-config.yml"))
    assert main(["install", "--admin-dsn", pg["admin"], "-p", str(pg["project"])]) == 0
    assert main(["sql"]) == 0
    printed = capsys.readouterr().out
    assert "installed" in printed and "SECURITY DEFINER" in printed
    assert "search_path = pg_catalog, pg_temp" in identity_sql()
    with psycopg.connect(pg["admin"]) as admin:
        assert admin.execute("SELECT count(*) FROM sqlgate.identity_key").fetchone()[0] == 1


def test_start_up_checks_refuse_or_warn(pg, caplog):
    svc = pg["svc"]
    with psycopg.connect(pg["admin"], autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {svc} BYPASSRLS")
        admin.execute(f"GRANT pg_signal_backend TO {svc}")
        admin.execute(f"GRANT pg_read_all_data TO {svc}")
        admin.execute(f"CREATE TABLE owned_by_svc (owner text)")  # noqa: F541
        admin.execute(f"ALTER TABLE owned_by_svc OWNER TO {svc}")
        admin.execute("ALTER TABLE owned_by_svc ENABLE ROW LEVEL SECURITY")
        admin.execute(f"GRANT SELECT ON sqlgate.identity_key TO {svc}")
    try:
        with pytest.raises(ConfigError) as refused:
            _engine(pg)
        problems = "\n".join(refused.value.problems)
        assert "BYPASSRLS" in problems and "pg_signal_backend" in problems and "pg_read_all_data" in problems
        assert "owned_by_svc" in problems and "FORCE ROW LEVEL SECURITY" in problems
        assert "sqlgate.identity_key" in problems
        with caplog.at_level(logging.WARNING, logger="sqlgate.engine.postgres"):
            engine = _engine(pg, {"SQLGATE_DB_ROLE_CHECKS": "warn"})
        assert sum("service role" in r.getMessage() for r in caplog.records) == len(refused.value.problems)
        asyncio.run(engine.close())
    finally:
        with psycopg.connect(pg["admin"], autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {svc} NOBYPASSRLS")
            admin.execute(f"REVOKE pg_signal_backend FROM {svc}")
            admin.execute(f"REVOKE pg_read_all_data FROM {svc}")
            admin.execute("DROP TABLE owned_by_svc")
            admin.execute(f"REVOKE SELECT ON sqlgate.identity_key FROM {svc}")
    _engine(pg)  # clean again: starts
