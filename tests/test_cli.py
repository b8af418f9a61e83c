"""The `sqlgate` command line, run as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import isolated_env


def sqlgate(*args: str, tmp: Path, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sqlgate", *args], capture_output=True, text=True,
                          env=isolated_env(tmp, COLUMNS="200"), timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "acme"
    proc = sqlgate("init", str(root), tmp=root.parent, check=True)
    assert "Created project acme" in proc.stdout
    return root


def test_init_creates_a_working_project(project):
    assert (project / "sqlgate.yml").read_text().startswith("# sqlgate project")
    assert "name: acme" in (project / "sqlgate.yml").read_text()
    db = project / "data" / "shop.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone() == (2000,)


def test_init_prints_claude_desktop_snippet(tmp_path):
    proc = sqlgate("init", str(tmp_path / "demo"), tmp=tmp_path, check=True)
    snippet = json.loads(proc.stdout[proc.stdout.index("{"):])
    server = snippet["mcpServers"]["demo"]
    assert server["args"][-4:] == ["--project", str((tmp_path / "demo").resolve()), "--transport", "stdio"]


def test_init_refuses_non_empty_directory(project):
    proc = sqlgate("init", str(project), tmp=project.parent)
    assert proc.returncode == 2 and "is not empty" in proc.stderr and "Traceback" not in proc.stderr


def test_version_and_help(tmp_path):
    assert sqlgate("--version", tmp=tmp_path, check=True).stdout.strip().startswith("sqlgate 0.")
    helptext = sqlgate("--help", tmp=tmp_path, check=True).stdout
    for command in ("init", "serve", "list", "validate", "run", "test"):
        assert command in helptext


def test_list_json(project):
    rows = json.loads(sqlgate("list", "-p", str(project), "--json", tmp=project.parent, check=True).stdout)
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert ("tool", "query") in kinds and ("tool", "top_customers") in kinds
    assert ("resource", "shop://customers/{customer_id}") in kinds and ("prompt", "analyze_table") in kinds


def test_validate_ok(project):
    proc = sqlgate("validate", "-p", str(project), tmp=project.parent, check=True)
    assert "ok acme" in proc.stdout


def test_run_tool_with_params(project):
    proc = sqlgate("run", "tool", "top_customers", "-p", str(project), "--param", "limit=2",
                   "--param", "region=APAC", tmp=project.parent, check=True)
    out = json.loads(proc.stdout)
    assert len(out["result"]) == 2 and {r["region"] for r in out["result"]} == {"APAC"}
    assert out["truncated"] is False


def test_run_tool_with_user_context(project):
    proc = sqlgate("run", "tool", "whoami", "-p", str(project), "--user-context",
                   '{"username": "carol", "email": "carol@example.test", "provider": "keycloak"}',
                   tmp=project.parent, check=True)
    assert json.loads(proc.stdout)["result"] == {"username": "carol", "email": "carol@example.test",
                                                 "provider": "keycloak", "user_agent": ""}


def test_run_resource_and_prompt(project):
    proc = sqlgate("run", "resource", "shop://customers/{customer_id}", "-p", str(project),
                   "--param", "customer_id=11", tmp=project.parent, check=True)
    assert json.loads(proc.stdout)["result"]["customer_id"] == 11
    proc = sqlgate("run", "prompt", "analyze_table", "-p", str(project), "--param", "table=products",
                   "--param", "focus=prices", tmp=project.parent, check=True)
    messages = json.loads(proc.stdout)
    assert messages[0]["role"] == "user" and "Analyse the table products" in messages[0]["text"]
    assert "report on prices" in messages[0]["text"]


def test_run_errors_are_clear(project):
    proc = sqlgate("run", "tool", "nope", "-p", str(project), tmp=project.parent)
    assert proc.returncode == 2 and "no tool named 'nope'" in proc.stderr and "top_customers" in proc.stderr
    proc = sqlgate("run", "tool", "top_customers", "-p", str(project), "--param", "limit=1000",
                   tmp=project.parent)
    assert proc.returncode == 2 and "1000 is greater than the maximum of 100" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_test_command_passes_on_example(project):
    proc = sqlgate("test", "-p", str(project), tmp=project.parent, check=True)
    assert "9 passed, 0 failed" in proc.stdout
    assert "PASS tool top_customers :: region must be known" in proc.stdout


def test_test_command_reports_failures(project, tmp_path):
    bad = project.parent / "acme-bad"
    sqlgate("init", str(bad), tmp=project.parent, check=True)
    (bad / "tools" / "failing.yml").write_text(
        "tool:\n  name: failing\n  description: d\n  source:\n    code: SELECT 1 AS x\n"
        "  tests:\n    - name: wrong value\n      result: [{x: 2}]\n"
        "    - name: wrong error\n      expect_error: boom\n")
    proc = sqlgate("test", "failing", "-p", str(bad), tmp=project.parent)
    assert proc.returncode == 1
    assert "FAIL tool failing :: wrong value" in proc.stdout and "!= expected" in proc.stdout
    assert "expected an error containing 'boom', got a result" in proc.stdout
    assert "0 passed, 2 failed" in proc.stdout


def test_pg_identity_prints_its_setup_sql(tmp_path):
    proc = sqlgate("pg-identity", "sql", tmp=tmp_path, check=True)
    assert "SECURITY DEFINER" in proc.stdout and "CREATE SCHEMA" in proc.stdout.upper()
    usage = sqlgate("pg-identity", "--help", tmp=tmp_path)
    assert "sqlgate pg-identity" in usage.stdout and "install" in usage.stdout


def test_run_takes_the_project_before_or_after_the_kind(project):
    """The README writes `sqlgate run -p DIR tool NAME …`; `sqlgate run tool NAME -p DIR` works too."""
    before = sqlgate("run", "-p", str(project), "tool", "whoami", "--user-context", '{"username": "alice"}',
                     tmp=project.parent, check=True)
    after = sqlgate("run", "tool", "whoami", "-p", str(project), "--user-context", '{"username": "alice"}',
                    tmp=project.parent, check=True)
    assert json.loads(before.stdout)["result"]["username"] == "alice"
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_validate_binds_endpoint_sql_against_the_database(project, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(project, broken, ignore=shutil.ignore_patterns("*.duckdb", "*.wal"))
    tool = broken / "tools" / "top_customers.yml"
    tool.write_text(tool.read_text().replace("FROM customers", "FROM customerz", 1))
    proc = sqlgate("validate", "-p", str(broken), tmp=tmp_path)
    assert proc.returncode == 2
    # file:line of the SQL line DuckDB names (the `code: |` block starts on the line after the key)
    assert "tools/top_customers.yml:30: tool 'top_customers'" in proc.stderr
    assert "customerz does not exist" in proc.stderr
    sql_file = broken / "sql" / "orders_by_status.sql"
    sql_file.write_text(sql_file.read_text().replace("WHERE order_date", "WHERE order_datez", 1))
    proc = sqlgate("validate", "-p", str(broken), tmp=tmp_path)
    line = next(i for i, text in enumerate(sql_file.read_text().splitlines(), 1) if "order_datez" in text)
    assert f"sql/orders_by_status.sql:{line}: tool 'orders_by_status'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_resource_by_a_concrete_uri(project):
    proc = sqlgate("run", "-p", str(project), "resource", "shop://customers/42", tmp=project.parent, check=True)
    assert json.loads(proc.stdout)["result"]["customer_id"] == 42
    clash = sqlgate("run", "resource", "shop://customers/42", "-p", str(project), "--param", "customer_id=7",
                    tmp=project.parent)
    assert clash.returncode == 2 and "contradicts the URI" in clash.stderr
    unknown = sqlgate("run", "resource", "shop://nope/1", "-p", str(project), tmp=project.parent)
    assert unknown.returncode == 2 and "shop://customers/{customer_id}" in unknown.stderr


def test_query_prints_a_table_json_and_csv(project):
    sql = "SELECT region, count(*) AS n FROM customers GROUP BY region ORDER BY region"
    table = sqlgate("query", sql, "-p", str(project), tmp=project.parent, check=True).stdout
    assert "region" in table and "EU" in table and "row(s)" in table
    answer = json.loads(sqlgate("query", sql, "-p", str(project), "--json", tmp=project.parent, check=True).stdout)
    assert answer["columns"] == ["region", "n"] and answer["truncated"] is False
    assert sum(n for _, n in answer["rows"]) == 2000
    csv_lines = sqlgate("query", sql, "-p", str(project), "--csv", tmp=project.parent, check=True).stdout.splitlines()
    assert csv_lines[0] == "region,n" and len(csv_lines) == len(answer["rows"]) + 1


def test_query_uses_the_tools_guard_identity_and_limits(project):
    who = sqlgate("query", "SELECT get_username() AS u", "-p", str(project), "--json",
                  "--user-context", '{"username": "alice"}', tmp=project.parent, check=True)
    assert json.loads(who.stdout)["rows"] == [["alice"]]
    for sql, fragment in [("SELECT * FROM read_csv('/etc/passwd')", "not allowed"),
                          ("DELETE FROM customers", "read-only"),
                          ("SELECT 1; SELECT 2", "one statement")]:
        proc = sqlgate("query", sql, "-p", str(project), tmp=project.parent)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, sql
    many = sqlgate("query", "SELECT * FROM range(5000)", "-p", str(project), "--json", tmp=project.parent,
                   check=True)
    assert json.loads(many.stdout)["truncated"] is True and "truncated" in many.stderr
