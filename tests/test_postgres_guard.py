"""The PostgreSQL guard: decisions on PostgreSQL's own parser, and what actually reaches the server.

- decisions for each refused family (statement types, functions however they are spelt);
- a differential corpus (dollar-quote tags with every Unicode space class, nested comments, E''
  strings, standard_conforming_strings quirks, semicolons in strings and identifiers, multi-statement
  variants): sqlgate admits a text exactly when pglast reads one allowed statement, and whatever it
  admits the server itself parses as one statement;
- bypassing the guard: a multi-statement text handed to the engine's executor never runs its second
  statement (a control run through psycopg's simple protocol shows the same text does write).
"""

from __future__ import annotations

import statistics
import time
import unicodedata

import psycopg
import pytest
from pglast import ast, parse_sql
from pglast.parser import ParseError

from sqlgate.engine.postgres_engine import PostgresEngine
from sqlgate.engine.postgres_guard import PostgresGuard
from sqlgate.errors import QueryFailed, QueryRefused
from tests.test_postgres import LIMITS, _as, _engine, pg_database
from tests.test_postgres import pytestmark as _pg_only

pytestmark = _pg_only
GUARD = PostgresGuard()


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        yield info


@pytest.mark.parametrize("sql,fragment", [
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("", "exactly one statement"),
    ("INSERT INTO accounts VALUES (1)", "not INSERT"),
    ("SET ROLE postgres", "not SET"),
    ("COMMIT", "not transaction control"),
    ("COPY accounts TO '/tmp/x'", "not COPY"),
    ("DO $$ BEGIN END $$", "not DO"),
    ("EXPLAIN ANALYZE DELETE FROM accounts", "EXPLAIN is accepted only for a SELECT"),
    ("WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d", "DELETE"),
    ("SELECT * FROM (WITH u AS (UPDATE accounts SET name = '' RETURNING 1) SELECT * FROM u) s", "UPDATE"),
    ("SELECT * INTO copy FROM accounts", "SELECT … INTO"),
    ("SELECT * FROM accounts FOR UPDATE", "FOR UPDATE"),
    ("SELECT 1 UNION (SELECT 1 FROM accounts FOR KEY SHARE)", "FOR UPDATE"),
    ("SELECT query_to_xml('select 1', true, false, '')", "query_to_xml"),
    ("SELECT PG_CATALOG.\"query_to_xml_and_xmlschema\"('select 1', true, false, '')", "executes SQL text"),
    ("SELECT cursor_to_xml('c', 1, true, false, '')", "executes SQL text"),
    ("SELECT table_to_xml('accounts', true, false, '')", "executes SQL text"),
    ("SELECT database_to_xml(true, false, '')", "executes SQL text"),
    ("SELECT schema_to_xmlschema('public', true, false, '')", "executes SQL text"),
    ("SELECT * FROM ts_stat('select 1')", "ts_stat"),
    ("SELECT ts_rewrite('a'::tsquery, 'select 1')", "ts_rewrite"),
    ("SELECT set_config('sqlgate.identity', 'x', true)", "set_config"),
    ("SELECT U&\"set\\005fconfig\"('role', 'x', true)", "set_config"),
    ("SELECT dblink_connect('host=evil')", "dblink_connect"),
    ("SELECT pg_terminate_backend(1)", "signals other backends"),
    ("SELECT pg_catalog.pg_cancel_backend(1)", "signals other backends"),
    ("SELECT pg_advisory_lock(1)", "takes locks"),
    ("SELECT pg_advisory_xact_lock_shared(1)", "takes locks"),
    ("SELECT pg_try_advisory_lock(1, 2)", "takes locks"),
    ("SELECT pg_read_file('/etc/passwd')", "server files"),
    ("SELECT pg_read_binary_file('x')", "server files"),
    ("SELECT * FROM pg_ls_dir('.')", "server files"),
    ("SELECT pg_stat_file('x')", "server files"),
    ("SELECT pg_tablespace_location(oid) FROM pg_tablespace", "server files"),
    ("SELECT pg_read_file_old('x', 0, 1)", "server files"),
    ("SELECT setseed(0.5)", "random seed"),
    ("SELECT brin_summarize_new_values('i'::regclass)", "server state"),
    ("SELECT lo_import('/etc/passwd')", "server files"),
    ("SELECT loread(0, 1)", "server files"),
    ("SELECT pg_sleep(1)", "waits"),
    ("SELECT pg_sleep_for('1 s')", "waits"),
    ("SELECT pg_reload_conf()", "signals"),
    ("SELECT pg_rotate_logfile()", "signals"),
    ("SELECT pg_switch_wal()", "server state"),
    ("SELECT pg_create_restore_point('x')", "server state"),
    ("SELECT pg_drop_replication_slot('x')", "server state"),
    ("SELECT nextval('s')", "sequence"),
    ("SELECT setval('s', 1)", "sequence"),
    ("SELECT txid_current()", "transaction ids"),
    ("SELECT pg_current_xact_id()", "transaction ids"),
    ("SELECT pg_notify('c', 'x')", "server state"),
    ("SELECT pg_logical_emit_message(true, 'x', 'y')", "server state"),
    ("SELECT pg_replication_origin_create('x')", "server state"),
    ("SELECT current_setting('sqlgate.identity')", "sqlgate's own settings"),
    ("SELECT current_setting('SQLGATE.external_token', true)", "sqlgate's own settings"),
    ("SELECT current_setting('sqlgate.' || 'x')", "not a string constant"),
    ("SELECT sqlgate._identity()", "internal to sqlgate's identity"),
    ("SELECT \"sqlgate\".\"anything\"()", "internal to sqlgate's identity"),
    ("SELECT * FROM sqlgate.identity_key", "internal"),
    ("SELECT a.pg_sleep FROM accounts a", "attribute notation"),
    ("SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM accounts", "waits"),
    ("SELECT * FROM accounts ORDER BY (SELECT set_config('a.b', 'c', true))", "set_config"),
    ("SELECT * FROM ROWS FROM (pg_ls_waldir()) w", "server files"),
    ("SELECT 1 " + "+ (1 " * 2000 + ")" * 2000, "nested too deeply|not valid"),
    ("SELECT 'unterminated", "not valid PostgreSQL"),
    ("SELECT $1", "parameters"),
    ("SELECT (a).pg_sleep FROM accounts a", "attribute notation"),
    ("SELECT query FROM pg_catalog.pg_stat_activity", "other callers' queries"),
    ("SELECT * FROM pg_stat_get_activity(NULL)", "other callers' queries"),
    ("SELECT * FROM pg_stat_statements", "other callers' queries"),
    ("SELECT http_get('http://169.254.169.254/')", "reaches other servers"),
    ("SELECT pg_background_launch('delete from accounts')", "executes SQL text"),
    ("SELECT xpath('count(//*[count(//*) > 0])', x) FROM t", "XPath"),
    ("SELECT PG_CATALOG.XPATH_EXISTS('//a', x) FROM t", "XPath"),
    ("SELECT 1 WHERE XMLEXISTS('//a' PASSING BY REF (x))", "XPath"),
    ("SELECT * FROM XMLTABLE('/r' PASSING (x) COLUMNS a int)", "XMLTABLE"),
    ("SELECT public.run_sql('select 1')", "outside pg_catalog"),
    ("SELECT * FROM \"Ext\".f()", "outside pg_catalog"),
    ("SELECT mydb.public.run_sql('select 1')", "outside pg_catalog"),
    ("SELECT 1 OPERATOR(public.===) 2", "operator public.=== is defined outside pg_catalog"),
])
def test_refused(sql, fragment):
    with pytest.raises(QueryRefused, match=fragment):
        GUARD.check(sql)


@pytest.mark.parametrize("sql,runs", [
    ("SELECT 1", "SELECT 1"),
    ("/* lead */ SELECT 1; -- trailing", "SELECT 1"),
    ("SELECT 'a;b' AS \"c;d\" ;", "SELECT 'a;b' AS \"c;d\" "),
    ("WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t", None),
    ("VALUES (1), (2)", None),
    ("TABLE accounts", None),
    ("SELECT 1 INTERSECT SELECT 1 EXCEPT SELECT 2", None),
    ("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM accounts", None),
    ("SELECT current_setting('TimeZone'), sqlgate.username(), SQLGATE.USER_EMAIL()", None),
    ("SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)", None),
    ("SELECT 'é€' AS \"naïve\"", None),
])
def test_admitted_and_sliced(sql, runs):
    checked = GUARD.check(sql)
    assert checked.sql == (runs or sql)
    assert checked.kind in ("SELECT", "EXPLAIN")


# ---------------------------------------------------------------- the differential corpus
def _spaces() -> list[str]:
    """Every Unicode space separator (Zs, Zl, Zp), the ASCII whitespace and the usual invisible ones."""
    found = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")]
    return sorted(set(found) | set(" \t\n\v\f\r") | {"\x85", "\u180e", "\u200b", "\u2060", "\ufeff"})


WRITE = "INSERT INTO victim VALUES (1)"


def _corpus() -> list[str]:
    texts = []
    for c in _spaces():
        texts += [
            f"SELECT $a{c}$ ; {WRITE}; $a{c}$ AS s",
            f"SELECT $a{c}$x$a{c}$; {WRITE}",
            f"SELECT ${c}$ ; {WRITE}; ${c}$",
            f"SELECT 1{c}; {WRITE}",
            f"SELECT 'x{c}' AS \"y{c}\";{c}{WRITE}",
            f"SELECT $q$ $a{c}$ $q$; {WRITE} --",
            f"SELECT 1 /*{c}*/;{c}{WRITE}",
        ]
    texts += [
        f"SELECT 1 /* outer /* inner */ ; {WRITE}; */",
        f"SELECT 1 /* outer /* inner */ */; {WRITE}",
        f"SELECT 1 /* /* /* deep */ */ */ -- ; {WRITE}",
        f"SELECT 1 -- ; {WRITE}",
        f"SELECT 1 --\n; {WRITE}",
        f"SELECT E'\\''; {WRITE}; --'",
        f"SELECT E'\\\\'; {WRITE}; --'",
        f"SELECT e'a\\'b'; {WRITE}",
        f"SELECT 'a\\'; {WRITE}; --'",
        f"SELECT 'a\\'' ; {WRITE} ; --'",
        f"SELECT 'it''s; {WRITE}'",
        f"SELECT U&'d\\0061t\\+000061; {WRITE}'",
        f"SELECT U&'d!0061t' UESCAPE '!'; {WRITE}",
        f"SELECT 1 AS \"a;{WRITE}\"",
        f"SELECT 1 AS \"a\"\";{WRITE}\"",
        f"SELECT $$;$$; {WRITE}",
        f"SELECT $$ $$$; {WRITE}; $$",
        f"SELECT $_$ ; {WRITE} ; $_$",
        f"SELECT $tag$ $TAG$ ; {WRITE} ; $tag$",
        f"SELECT 1;{WRITE}",
        f"SELECT 1; COMMIT; {WRITE}; COMMIT",
        f"COMMIT; {WRITE}",
        f";;SELECT 1;;; {WRITE}",
        "SELECT 1;;",
        "  ;  SELECT 1  ;  ",
        f"{WRITE}; SELECT 1",
        f"SELECT 1 \\; {WRITE}",
        f"SELECT B'101'; {WRITE}",
        f"SELECT X'1F' AS \"$$\"; {WRITE}",
        "SELECT $1",
        "SELECT 0x1F",
        "SELECT 1_000",
        f"SELECT 123abc; {WRITE}",
        "",
        "-- only a comment",
    ]
    return texts


def _pglast_reading(sql: str) -> str:
    """'syntax', 'empty', 'one' or 'many', by pglast's AST API (independent of the guard's JSON path)."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return "syntax"
    return {0: "empty", 1: "one"}.get(len(stmts), "many")


def _pglast_admits(sql: str) -> bool:
    """Exactly one allowed statement according to pglast: a SELECT (or EXPLAIN of one) without DML
    and without parameters (the query tool binds none)."""
    if _pglast_reading(sql) != "one":
        return False
    stmt = parse_sql(sql)[0].stmt
    if isinstance(stmt, ast.ExplainStmt):
        stmt = stmt.query
    return isinstance(stmt, ast.SelectStmt) and not any(n in repr(stmt) for n in ("InsertStmt", "ParamRef"))


def _server_reading(conn: psycopg.Connection, sql: str) -> str:
    """How PostgreSQL itself splits the text: a Parse message (extended protocol) of the whole text."""
    res = conn.pgconn.prepare(b"", sql.encode("utf-8"))
    if res.status == psycopg.pq.ExecStatus.COMMAND_OK:
        return "one"
    message = (res.error_message or b"").decode("utf-8", "replace")
    if "multiple commands" in message:
        return "many"
    if res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42601":
        return "syntax"
    return "one"  # parsed as one statement; failed later (unknown table, parameter type …)


@pytest.fixture(scope="module")
def victim(pg):
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg['db']}", autocommit=True) as con:
        con.execute("CREATE TABLE victim (x int)")
        con.execute(f"GRANT SELECT, INSERT, DELETE ON victim TO {pg['svc']}")
    return f"postgresql://postgres@127.0.0.1:5432/{pg['db']}"


def _victims(admin_dsn: str) -> int:
    with psycopg.connect(admin_dsn) as con:
        return con.execute("SELECT count(*) FROM victim").fetchone()[0]


async def test_differential_corpus(pg, victim):
    corpus = _corpus()
    assert len(corpus) > 150
    engine = _engine(pg)
    mismatches = []
    try:
        with psycopg.connect(**PostgresEngine._conninfo(pg["dsn"]), autocommit=True) as conn:
            for sql in corpus:
                mine = _pglast_reading(sql)
                server = _server_reading(conn, sql)
                try:
                    admitted = GUARD.check(sql)
                except QueryRefused:
                    admitted = None
                # sqlgate's decision == exactly one allowed statement according to pglast
                assert (admitted is not None) == _pglast_admits(sql), sql
                if admitted is not None:
                    # ... and PostgreSQL itself never reads more than one statement in what it admits
                    # (it may refuse: the server is older than pglast's PostgreSQL 17 parser, e.g.
                    # 0x1F is a literal since 16 and "trailing junk" on 15)
                    assert server in ("one", "syntax"), sql
                    assert _server_reading(conn, admitted.sql) in ("one", "syntax"), sql
                    try:
                        await engine.run_untrusted(sql, _as("alice"), LIMITS)
                    except QueryFailed:
                        assert server == "syntax", sql
                # where neither refuses the text, both split it the same way (the server parses an
                # empty text as one empty query)
                if mine == "empty":
                    mine = "one"
                if mine != server and "syntax" not in (mine, server):
                    mismatches.append((sql, mine, server))
    finally:
        await engine.close()
    assert not mismatches
    assert _victims(victim) == 0


MULTI = [f"SELECT 1; {WRITE}", f"SELECT 1; COMMIT; {WRITE}; COMMIT", f"COMMIT; {WRITE}; COMMIT",
         f"SELECT $a\u3000$; $a\u3000$; {WRITE}; COMMIT"]


@pytest.mark.parametrize("sql", MULTI)
async def test_multi_statement_never_executes_without_the_guard(pg, victim, sql):
    # control: through psycopg's simple protocol (no parameters) the same text does write
    with psycopg.connect(pg["dsn"], autocommit=True) as con:
        con.execute(sql)
    assert _victims(victim) >= 1
    with psycopg.connect(victim, autocommit=True) as con:
        con.execute("DELETE FROM victim")
    engine = _engine(pg)
    try:
        with pytest.raises(QueryRefused):
            await engine.run_untrusted(sql, _as("alice"), LIMITS)
        # the executor underneath the guard, in a read-write transaction: the server gets one Parse
        # message and refuses the second statement itself
        deadline = time.monotonic() + LIMITS.timeout_seconds
        with pytest.raises(QueryFailed, match="multiple commands"):
            await engine._call(sql, None, _as("alice"), LIMITS, deadline, read_only=False)
    finally:
        await engine.close()
    assert _victims(victim) == 0


async def test_untrusted_text_reaches_the_server_verbatim(pg):
    engine = _engine(pg)
    try:
        qr = await engine.run_untrusted("SELECT '100%' AS p, '%(x)s' AS q, '%%' AS r", _as("alice"), LIMITS)
        assert qr.rows == [["100%", "%(x)s", "%%"]]
        # and endpoint SQL keeps its %-escaping contract
        qr = await engine.execute("SELECT '100%' AS p, $n::int AS n", {"n": 3}, _as("alice"), LIMITS)
        assert qr.rows == [["100%", 3]]
    finally:
        await engine.close()


async def test_lexer_settings_are_pinned_whatever_the_dsn_says(pg, tmp_path):
    """With standard_conforming_strings off, `'a\\'' , x --'` is one string to pglast but code to the
    server. The engine pins it on at connect, over the DSN's own options."""
    tricky = "SELECT 'a\\'' AS s, current_user AS u --'"
    with psycopg.connect(pg["dsn"], options="-c standard_conforming_strings=off", autocommit=True) as off:
        assert off.execute(tricky).fetchone()[1] == pg["svc"]  # the server ran current_user
    assert GUARD.check(tricky).sql == tricky  # pglast: one string literal, no column u
    dsn = pg["dsn"] + "?options=-c%20standard_conforming_strings%3Doff"
    engine = PostgresEngine(dsn, 2, True, "service", "", _engine(pg)._identity)
    try:
        qr = await engine.run_untrusted("SELECT current_setting('standard_conforming_strings') AS scs, "
                                        "current_setting('client_encoding') AS enc", _as("alice"), LIMITS)
        assert qr.rows == [["on", "UTF8"]]
        qr = await engine.run_untrusted(tricky, _as("alice"), LIMITS)
        assert qr.rows == [["a\\' AS s, current_user AS u --"]]  # one string, exactly as the guard read it
    finally:
        await engine.close()


def test_guard_cost():
    """Per-call cost of the guard on a typical query (parse + tree walk), for the README table."""
    sql = ("WITH recent AS (SELECT owner, sum(balance) AS total FROM accounts WHERE id > 10 GROUP BY owner) "
           "SELECT a.owner, a.name, r.total, upper(a.name) FROM accounts a JOIN recent r USING (owner) "
           "WHERE a.balance > (SELECT avg(balance) FROM accounts) ORDER BY 1 LIMIT 50")
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            GUARD.check(sql)
        runs.append((time.perf_counter() - started) / 200)
    per_call = statistics.median(runs)
    print(f"\nguard: {per_call * 1e6:.0f} µs per call")
    assert per_call < 0.005
