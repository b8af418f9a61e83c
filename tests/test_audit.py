"""The audit trail end to end: a real OpenID provider, the official client over HTTP, every event
kind written once with its fields to both sinks (SQLite table and JSON lines); `sqlgate log`
filters and formats; rotation; a failing sink neither fails the call nor goes uncounted."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from sqlgate.audit.events import FIELDS, mask_arguments, new_event, normalise_sql, sql_fingerprint
from sqlgate.audit.query import EventFilter, FileTrail
from sqlgate.audit.sinks import JsonLinesSink
from tests.auth_support import MemoryTokenStorage, auth_project, oauth_client
from tests.browser import Browser
from tests.conftest import EXAMPLE, free_port, isolated_env, start_server, stop_server
from tests.idp.launcher import OidcProvider
from tests.test_auth_flows import bearer_call
from tests.test_scopes import ADMIN_TOOL, _session_run

KEY = "audit-test-encryption-key-0123456789"


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def table_events(db: Path) -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit_events ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """sqlgate with OIDC login; registrations limited to 3 a minute (the 4th is a 429)."""
    tmp = tmp_path_factory.mktemp("audit")
    port = free_port()
    idp = OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback"])
    auth = {"provider": "oidc",
            "oidc": {"issuer": idp.issuer, "client_id": idp.client_id, "client_secret": idp.client_secret,
                     "callback_path": "/oidc/callback"},
            "scopes": ["sqlgate:access", "sqlgate:admin"], "persistence": {"encryption_key": KEY},
            "authorization": {"required_scopes": ["sqlgate:access"]},
            "registration": {"rate_limit": 3}}
    project, env, _ = auth_project(tmp, auth, port)
    (project / "tools" / "admin_report.yml").write_text(ADMIN_TOOL)
    (project / "sqlgate.yml").write_text((project / "sqlgate.yml").read_text() + "\naudit:\n  path: logs/audit.jsonl\n")
    server = start_server(project, tmp, env=env, port=port)
    try:
        yield {"server": server, "project": project, "env": env, "db": project / "data" / "audit.db",
               "jsonl": project / "logs" / "audit.jsonl"}
    finally:
        stop_server(server)
        idp.stop()


@pytest.fixture(scope="module")
def workload(stack):
    """One of everything, as alice: register, log in, get a token, call a tool, read a resource, render
    a prompt, run SQL, refresh, be refused (401, 403, 429), revoke."""
    server = stack["server"]
    storage = MemoryTokenStorage()
    browser = Browser("alice", "alice-password")

    async def calls(session):
        await session.call_tool("whoami", {})
        await session.call_tool("query", {"sql": "SELECT customer_id FROM customers WHERE customer_id < 4 "
                                                 "-- audited", "password": "hunter2"})  # refused by the schema
        await session.call_tool("query", {"sql": "SELECT customer_id FROM customers WHERE customer_id < 4"})
        await session.read_resource("shop://customers/1")
        await session.get_prompt("analyze_table", {"table": "orders"})

    anyio.run(_session_run, server.url, oauth_client(server.url, browser, storage), calls)
    browser.close()
    client_id = storage.client.client_id
    refreshed = httpx.post(f"{server.base}/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                         "refresh_token": storage.tokens.refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json()["access_token"]
    assert bearer_call(server.url, token, tool="admin_report").status_code == 403
    assert bearer_call(server.url, "not-a-token").status_code == 401
    statuses = [httpx.post(f"{server.base}/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"]}).status_code
                for _ in range(3)]
    assert statuses[-1] == 429, statuses
    assert httpx.post(f"{server.base}/revoke", data={"token": token, "client_id": client_id}).status_code == 200
    expected = {("auth", "register"), ("auth", "login"), ("auth", "token.issue"), ("auth", "token.refresh"),
                ("auth", "token.revoke"), ("auth", "refusal"), ("tool", "whoami"), ("tool", "query"),
                ("resource", "shop://customers/1"), ("prompt", "analyze_table")}
    events = wait_for(lambda: (e := table_events(stack["db"])) and
                      expected <= {(x["kind"], x["endpoint"]) for x in e} and e)
    assert events, table_events(stack["db"])
    return {"events": events, "client_id": client_id, "token": token, "refresh": storage.tokens.refresh_token,
            "access": storage.tokens.access_token}


def only(events, **where) -> list[dict]:
    return [e for e in events if all(e.get(k) == v for k, v in where.items())]


def test_every_call_kind_is_one_event_with_its_fields(workload):
    events = workload["events"]
    (whoami,) = only(events, kind="tool", endpoint="whoami")
    assert whoami["outcome"] == "ok" and whoami["username"] == "alice" and whoami["email"] == "alice@example.test"
    assert whoami["provider"] == "oidc" and whoami["user_id"] == "alice"
    assert whoami["client_id"] == workload["client_id"] and whoami["session_id"] and whoami["request_id"]
    assert whoami["rows"] == 1 and whoami["bytes"] > 0 and whoami["truncated"] == 0
    assert whoami["duration_ms"] > 0 and whoami["time"].endswith("Z") and "T" in whoami["time"]

    refused_args, ok = only(events, kind="tool", endpoint="query")
    assert refused_args["outcome"] == "error" and refused_args["error_class"] == "InvalidArguments"
    assert "password" in refused_args["error_message"]
    assert json.loads(refused_args["arguments"])["password"] == "***"  # masked
    assert ok["outcome"] == "ok" and ok["rows"] == 3 and ok["error_class"] is None
    # the fingerprint is the normalised SQL's: the same query with other literals or comments matches
    assert ok["sql_fingerprint"] == sql_fingerprint("select customer_id from customers where customer_id < 99")
    assert refused_args["sql_fingerprint"] == ok["sql_fingerprint"]

    (resource,) = only(events, kind="resource")
    assert resource["endpoint"] == "shop://customers/1" and resource["rows"] == 1 and resource["outcome"] == "ok"
    assert resource["username"] == "alice" and resource["bytes"] > 0
    (prompt,) = only(events, kind="prompt")
    assert prompt["endpoint"] == "analyze_table" and json.loads(prompt["arguments"]) == {"table": "orders"}


def test_every_authorization_step_is_one_event(workload):
    events = workload["events"]
    registered = only(events, endpoint="register", outcome="ok")
    assert workload["client_id"] in {e["client_id"] for e in registered}
    (limited,) = only(events, endpoint="register", status=429)
    assert limited["outcome"] == "refused" and limited["error_class"] == "too_many_requests"
    (login,) = only(events, endpoint="login")
    assert login["outcome"] == "ok" and login["status"] == 302
    (issued,) = only(events, endpoint="token.issue")
    assert issued["client_id"] == workload["client_id"] and issued["username"] == "alice"
    (refreshed,) = only(events, endpoint="token.refresh")
    assert refreshed["client_id"] == workload["client_id"] and refreshed["username"] == "alice"
    (revoked,) = only(events, endpoint="token.revoke")
    assert "revoked by client" in revoked["error_message"]
    forbidden = only(events, endpoint="refusal", status=403)
    assert len(forbidden) == 1 and forbidden[0]["username"] == "alice"
    assert forbidden[0]["error_class"] == "insufficient_scope" and forbidden[0]["outcome"] == "refused"
    unauthorized = only(events, endpoint="refusal", status=401)
    assert unauthorized and not any(e["username"] for e in unauthorized)  # the official client's first try too
    assert "invalid_token" in {e["error_class"] for e in unauthorized}


def test_no_token_or_claims_reach_the_trail(stack, workload):
    text = stack["jsonl"].read_text() + json.dumps(workload["events"], default=str)
    for secret in (workload["token"], workload["refresh"], workload["access"], "hunter2"):
        assert secret not in text
    assert "sqlgate_upstream_token" not in text and "claims" not in text


def test_both_sinks_hold_the_same_events(stack, workload):
    lines = wait_for(lambda: (ls := [json.loads(x) for x in stack["jsonl"].read_text().splitlines()])
                     and len(ls) >= len(workload["events"]) and ls)
    assert set(lines[0]) == set(FIELDS)
    key = [(e["request_id"], e["endpoint"], e["outcome"]) for e in workload["events"]]
    assert [(e["request_id"], e["endpoint"], e["outcome"]) for e in lines][:len(key)] == key


def sqlgate_log(stack, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "sqlgate", "log", "-p", str(stack["project"]), *args],
                          capture_output=True, text=True, env=stack["env"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sqlgate_log_filters_and_formats(stack, workload):
    rows = [json.loads(x) for x in sqlgate_log(stack, "--user", "alice", "--endpoint", "query", "--json").splitlines()]
    assert [r["outcome"] for r in rows] == ["error", "ok"] and all(r["username"] == "alice" for r in rows)
    refused = [json.loads(x) for x in sqlgate_log(stack, "--outcome", "refused", "--json").splitlines()]
    assert refused and {r["endpoint"] for r in refused} == {"refusal", "register"}
    assert sqlgate_log(stack, "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02", "--json") == ""
    recent = [json.loads(x) for x in sqlgate_log(stack, "--since", "1h", "--kind", "prompt", "--json").splitlines()]
    assert [r["endpoint"] for r in recent] == ["analyze_table"]
    texts = [json.loads(x) for x in sqlgate_log(stack, "--text", "InvalidArguments", "--json").splitlines()]
    assert len(texts) == 1 and texts[0]["error_class"] == "InvalidArguments"
    last = [json.loads(x) for x in sqlgate_log(stack, "-n", "2", "--json").splitlines()]
    assert last == [e for e in [json.loads(x) for x in sqlgate_log(stack, "--json").splitlines()]][-2:]
    table = sqlgate_log(stack, "--kind", "tool")
    assert "whoami" in table and "alice" in table and "endpoint" in table and "outcome" in table
    reader = list(csv.DictReader(io.StringIO(sqlgate_log(stack, "--csv", "--endpoint", "whoami"))))
    assert len(reader) == 1 and reader[0]["username"] == "alice" and list(reader[0]) == list(FIELDS)
    # the JSON-lines file answers the same filters
    from_file = [json.loads(x) for x in sqlgate_log(stack, "--file", str(stack["jsonl"]), "--user", "alice",
                                                      "--endpoint", "query", "--json").splitlines()]
    assert from_file == rows


def test_sqlgate_log_follow_prints_new_events(stack, workload):
    follower = subprocess.Popen([sys.executable, "-m", "sqlgate", "log", "-p", str(stack["project"]), "-f",
                                 "--json", "-n", "1", "--endpoint", "token.refresh"],
                                stdout=subprocess.PIPE, text=True, env=stack["env"])
    try:
        assert json.loads(follower.stdout.readline())["outcome"] == "ok"  # the newest matching event first
        httpx.post(f"{stack['server'].base}/token", data={
            "grant_type": "refresh_token", "client_id": workload["client_id"], "refresh_token": "not-a-token"})
        event = json.loads(follower.stdout.readline())  # then what happens next
        assert event["endpoint"] == "token.refresh" and event["outcome"] == "refused" and event["status"] == 400
        assert event["error_class"] == "invalid_grant" and event["client_id"] == workload["client_id"]
    finally:
        follower.terminate()
        follower.wait(10)


def test_json_lines_rotate_by_size_and_age(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path, rotate_bytes=2000, rotate_seconds=None, keep=2)
    for i in range(30):
        sink.write([new_event("tool", f"t{i}", duration_ms=1.0)])
    rotated = sorted(p.name for p in tmp_path.glob("audit.jsonl*") if not p.name.endswith(".lock"))
    assert rotated == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]  # the oldest beyond keep are gone
    assert all(p.stat().st_size <= 2000 for p in tmp_path.glob("audit.jsonl*"))
    kept = FileTrail(path).events(EventFilter(), None)
    names = [e["endpoint"] for e in kept]
    assert names == sorted(names, key=lambda n: int(n[1:])) and names[-1] == "t29"  # in order, newest last
    # by age: a file whose first event is older than rotate_seconds is rotated before the next write
    aged = JsonLinesSink(tmp_path / "aged.jsonl", rotate_bytes=10**9, rotate_seconds=60, keep=3)
    old = new_event("tool", "old")
    old["time"] = "2000-01-01T00:00:00.000Z"
    aged.write([old])
    aged.write([new_event("tool", "new")])
    assert json.loads((tmp_path / "aged.jsonl.1").read_text())["endpoint"] == "old"
    assert json.loads((tmp_path / "aged.jsonl").read_text())["endpoint"] == "new"


def test_sql_fingerprint_normalises_literals_and_comments():
    assert normalise_sql("SELECT * FROM t WHERE a = 'x' AND b IN (1, 2, 3) -- why\n;") == \
        "select * from t where a = ? and b in (?)"
    assert sql_fingerprint("select 1") == sql_fingerprint("SELECT   2 /* other */")
    assert sql_fingerprint("select a from t") != sql_fingerprint("select b from t")


def test_a_failing_sink_neither_fails_the_call_nor_goes_uncounted(tmp_path):
    from tests.clients import mcp_session

    project = tmp_path / "shop"
    import shutil

    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (project / "sqlgate.yml").write_text((project / "sqlgate.yml").read_text() +
                                         "\naudit:\n  path: logs/audit.jsonl\ntelemetry:\n  metrics: {enabled: true}\n")
    (project / "logs" / "audit.jsonl").mkdir(parents=True)  # a directory where the file should be: writes fail
    server = start_server(project, tmp_path, env=isolated_env(tmp_path), timeout=60)
    try:
        async def call():
            async with mcp_session(server.url) as session:
                return [await session.call_tool("query", {"sql": f"SELECT {i} AS n"}) for i in range(2)] + \
                    [await session.call_tool("query", {"sql": "SELECT * FROM range(5000)"})]

        results = anyio.run(call)
        assert [r.structured_content["rows"] for r in results[:2]] == [[[0]], [[1]]]
        assert results[2].structured_content["truncated"] is True

        def lost() -> float:
            text = httpx.get(f"{server.base}/metrics").text
            line = next((x for x in text.splitlines()
                         if x.startswith('sqlgate_audit_events_lost_total{reason="sink_jsonl"}')), None)
            return float(line.split()[-1]) if line else 0.0

        assert wait_for(lambda: lost() >= 3) and lost() == 3
        # the other sink still got every event, and the loss is in the server log
        stored = only(wait_for(lambda: len(table_events(project / "data" / "audit.db")) >= 3 and
                               table_events(project / "data" / "audit.db")), endpoint="query")
        assert len(stored) == 3
        # a truncated answer is ok, marked truncated, with the rows it did carry
        assert (stored[2]["outcome"], stored[2]["truncated"], stored[2]["rows"]) == ("ok", 1, 1000)
        assert "tool query by anonymous" in server.logs() and "-> ok (1000 rows, truncated)" in server.logs()
        assert "audit: " in server.logs() and "the jsonl sink failed: IsADirectoryError" in server.logs()
    finally:
        stop_server(server)


def test_an_unwritable_audit_database_stops_the_start_with_a_clear_error(tmp_path):
    import shutil

    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (project / "data" / "audit.db").mkdir(parents=True)  # a directory where the database file should be
    proc = subprocess.run([sys.executable, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http",
                           "--port", "0"], capture_output=True, text=True, env=isolated_env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "the audit trail cannot be written" in proc.stderr and "audit.store: none" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif("not __import__('tests.grant_backends', fromlist=['x']).postgres_available()")
def test_a_shared_postgres_table_served_to_sqlgate_log(tmp_path):
    """Replicas writing one trail: two writers (as two processes would) into one PostgreSQL table,
    read back by `sqlgate log` with filters pushed into SQL."""
    import shutil

    from sqlgate.audit.sinks import PostgresSink
    from sqlgate.audit.writer import AuditWriter
    from tests.grant_backends import postgres_database

    with postgres_database() as dsn:
        writers = [AuditWriter([PostgresSink(dsn)]).start() for _ in range(2)]
        for n, writer in enumerate(writers):
            for i in range(5):
                writer.submit(new_event("tool", "query", username=f"user{n}", rows=i, duration_ms=1.0,
                                        arguments=mask_arguments({"sql": f"SELECT {i}", "api_key": "k"}),
                                        sql_fingerprint=sql_fingerprint(f"SELECT {i}")))
        for writer in writers:
            writer.close()
        assert all(not w.lost for w in writers)
        project = tmp_path / "shop"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
        env = isolated_env(tmp_path, SQLGATE_AUDIT_STORE="postgres", SQLGATE_AUDIT_DSN=dsn)
        proc = subprocess.run([sys.executable, "-m", "sqlgate", "log", "-p", str(project), "--user", "user1",
                               "--json", "-n", "0"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(x) for x in proc.stdout.splitlines()]
        assert [r["rows"] for r in rows] == [0, 1, 2, 3, 4] and {r["username"] for r in rows} == {"user1"}
        assert rows[0]["arguments"] == {"sql": "SELECT 0", "api_key": "***"}
        assert len({r["sql_fingerprint"] for r in rows}) == 1


def test_a_stalled_sink_does_not_slow_calls(tmp_path):
    """The audit table's database accepts connections and never answers (a hung server): calls go
    on at full speed while the writer waits (audit.connect_timeout_seconds), and the batch it could
    not store is counted."""
    import shutil
    import socket

    from tests.clients import mcp_session

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # connections complete in the kernel; nobody ever reads or answers
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
    stall = 3  # seconds the writer waits for the database
    (project / "sqlgate.yml").write_text((project / "sqlgate.yml").read_text() +
                                         f"\naudit:\n  connect_timeout_seconds: {stall}\n"
                                         "telemetry:\n  metrics: {enabled: true}\n")
    env = isolated_env(tmp_path, SQLGATE_AUDIT_STORE="postgres",
                       SQLGATE_AUDIT_DSN=f"postgresql://sqlgate@127.0.0.1:{hung.getsockname()[1]}/audit")
    server = start_server(project, tmp_path, env=env, timeout=60)
    try:
        def lost() -> float:
            text = httpx.get(f"{server.base}/metrics").text
            line = next((x for x in text.splitlines()
                         if x.startswith('sqlgate_audit_events_lost_total{reason="sink_postgres"}')), None)
            return float(line.split()[-1]) if line else 0.0

        async def calls():
            async with mcp_session(server.url) as session:
                started = time.monotonic()
                for i in range(5):
                    assert not (await session.call_tool("query", {"sql": f"SELECT {i}"})).is_error
                return time.monotonic() - started

        elapsed = anyio.run(calls)
        # every call was answered while the writer still waited on its first batch: had a call waited
        # for the sink, that attempt would have run out (and counted its loss) before the call returned
        assert lost() == 0, f"the calls waited for the stalled audit sink ({elapsed:.1f} s)"
        assert wait_for(lambda: lost() >= 1, timeout=30)
    finally:
        stop_server(server)
        hung.close()


def test_sqlgate_log_follows_a_json_lines_file_across_rotation(tmp_path):
    import shutil

    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path, rotate_bytes=1500, rotate_seconds=None, keep=3)
    sink.write([new_event("tool", "before", duration_ms=1.0)])
    follower = subprocess.Popen([sys.executable, "-m", "sqlgate", "log", "-p", str(project), "--file", str(path),
                                 "-f", "--json", "-n", "1", "--kind", "tool"], stdout=subprocess.PIPE, text=True,
                                env=isolated_env(tmp_path))
    try:
        assert json.loads(follower.stdout.readline())["endpoint"] == "before"
        time.sleep(1.0)  # the follower is at the end of the file now
        for i in range(8):  # about 500 bytes each: the file rotates twice on the way
            sink.write([new_event("tool", f"after{i}", duration_ms=1.0)])
            sink.write([new_event("auth", "refusal", status=401)])  # filtered out
            time.sleep(0.2)
        seen = [json.loads(follower.stdout.readline())["endpoint"] for _ in range(8)]
        assert seen == [f"after{i}" for i in range(8)]
        assert (tmp_path / "audit.jsonl.2").exists()
    finally:
        follower.terminate()
        follower.wait(10)


def test_the_readme_log_commands_run_as_written(stack, workload, tmp_path):
    """README "Querying the trail", each command as written (but --follow, which never ends), against
    this module's trail; the project directory is called `shop` there."""
    import os

    from tests.readme import bash_block

    (tmp_path / "shop").symlink_to(stack["project"])
    env = {**stack["env"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{stack['env']['PATH']}"}
    commands = [c for c in bash_block("### Querying the trail") if "--follow" not in c]
    assert len(commands) >= 6
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (command, proc.stderr)
    assert (tmp_path / "timeouts.csv").read_text().startswith("time,kind,endpoint,outcome")
