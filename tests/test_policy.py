"""Policies: CEL rules on who may call what with which arguments, and what they see of the answer.

Two users with different claims (HS256 JWTs: alice in `admins`, bob in `sales`) call a YAML tool
and the built-in tools through the official MCP client over HTTP; a policy that cannot be evaluated
denies; bad CEL stops start-up with file and line; `sqlgate test` runs policy tests as a given user.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.auth_support import auth_project
from tests.clients import hs256_bearer, mcp_session, records
from tests.conftest import SQLGATE, copy_shop, isolated_env, start_server, stop_server

SECRET = "policy-tests-shared-secret-0123456789abcdef"

CUSTOMERS_BY_REGION = """tool:
  name: customers_by_region
  description: Customers of one region.
  parameters:
    - {name: region, type: string, description: Sales region., enum: [EU, US, APAC]}
  source:
    code: |
      SELECT customer_id, name, email, region, account_manager
      FROM customers WHERE region = $region ORDER BY customer_id LIMIT 6
  policies:
    input:
      - condition: "region == 'APAC' && !('apac' in user.groups)"
        action: deny
        reason: APAC data is for the APAC team.
    output:
      - condition: "!('admins' in user.groups)"
        action: mask_fields
        fields: [email]
        mask: "[hidden]"
      - condition: "!('admins' in user.groups)"
        action: filter_rows
        keep: "row.account_manager == user.username"
  tests:
    - name: an admin sees every row and every e-mail
      user: {username: alice, claims: {groups: [admins]}}
      arguments: {region: EU}
      result_length: 6
      result_contains: [{customer_id: 3, email: customer3@example.test}]
    - name: sales see only their customers, e-mail masked
      user: {username: bob, claims: {groups: [sales]}}
      arguments: {region: EU}
      result: [{customer_id: 3, name: Customer 3, email: "[hidden]", region: EU, account_manager: bob},
               {customer_id: 12, name: Customer 12, email: "[hidden]", region: EU, account_manager: bob}]
    - name: APAC refused outside the APAC team
      user_context: {username: bob, claims: {groups: [sales]}}
      arguments: {region: APAC}
      expect_error: APAC data is for the APAC team
"""

# a rule over a claim the caller's token does not carry: it cannot be evaluated, so it denies
NEEDS_ROLE = """tool:
  name: needs_role
  description: Guarded by a rule over a `role` claim.
  parameters:
    - {name: note, type: string, description: Anything.}
  source: {code: "SELECT $note AS note"}
  policies:
    input:
      - condition: "user.role == 'intern'"
        action: deny
        reason: Interns may not.
  tests:
    - name: a user without the claim is denied
      user: {username: carol}
      arguments: {note: hi}
      expect_error: could not be evaluated
    - name: a user with another role passes
      user: {username: carol, claims: {role: manager}}
      arguments: {note: hi}
      result: [{note: hi}]
"""

# allow rules (one must hold), a warning, and an output rule over the whole `response`
REGION_COUNTS = """tool:
  name: region_counts
  description: Customers per region.
  source: {code: "SELECT region, count(*) AS n FROM customers GROUP BY region ORDER BY region"}
  policies:
    input:
      - condition: "'analysts' in user.groups || 'admins' in user.groups"
        action: allow
        reason: Only analysts and admins may count customers.
      - condition: "user.email.endsWith('@contractor.test')"
        action: warn
        reason: contractor access
    output:
      - condition: "size(response) > 2 && !('admins' in user.groups)"
        action: deny
        reason: Analysts see at most two regions.
  tests:
    - name: guests match no allow rule
      user: {username: gus, claims: {groups: [guests]}}
      expect_error: Only analysts and admins may count customers.
    - name: an analyst meets the output rule
      user: {username: ann, email: ann@contractor.test, claims: {groups: [analysts]}}
      expect_error: Analysts see at most two regions.
    - name: an admin sees every region
      user: {username: alice, claims: {groups: [admins]}}
      result_length: 3
"""

# one record (a resource template): shown whole or refused, never half
CUSTOMER_CARD = """resource:
  uri: shop://cards/{customer_id}
  description: A customer's card, for their account manager only.
  parameters:
    - {name: customer_id, type: integer, description: The customer's id.}
  return: {type: object}
  source: {code: "SELECT customer_id, name, account_manager FROM customers WHERE customer_id = $customer_id"}
  policies:
    output:
      - condition: "true"
        action: filter_rows
        keep: "row.account_manager == user.username"
        reason: Only the account manager sees this card.
  tests:
    - name: the account manager reads it
      user: {username: bob}
      arguments: {customer_id: 3}
      result: {customer_id: 3, name: Customer 3, account_manager: bob}
    - name: someone else is refused
      user: {username: carol}
      arguments: {customer_id: 3}
      expect_error: Only the account manager sees this card.
"""

# values CEL has no type for (a 128-bit integer) and an empty one-object answer
EDGE_VALUES = """tool:
  name: {name}
  description: Edge values for the rules.
  return: {{type: object}}
  source: {{code: "{sql}"}}
  policies:
    output:
      - {{condition: "type(response) != null_type && response.small == 1", action: filter_fields, fields: [big]}}
      - {{condition: "true", action: filter_rows, keep: "row.small == 1"}}
  tests:
    - name: {test}
      result: {result}
"""

# a Python endpoint returning rows it keeps: one caller's mask must not reach the next caller
SHARED_ROWS_PY = "ROWS = [{'name': 'a', 'secret': 's1'}]\n\n\ndef shared_rows() -> list:\n    return ROWS\n"
SHARED_ROWS = """tool:
  name: shared_rows
  description: Rows a Python module keeps.
  source: {file: ../python/shared_rows.py}
  policies:
    output:
      - {condition: "!('admins' in user.groups)", action: mask_fields, fields: [secret]}
      - {condition: "!('admins' in user.groups)", action: filter_fields, fields: [name]}
  tests:
    - name: masked for a non-admin
      user: {username: bob}
      result: [{secret: "****"}]
    - name: the kept rows are unchanged for the next caller
      user: {username: alice, claims: {groups: [admins]}}
      result: [{name: a, secret: s1}]
"""

SQL_TOOLS_POLICIES = {
    "query": {
        "input": [{"condition": "!('admins' in user.groups)", "action": "deny",
                   "reason": "The query tool is for administrators."}],
        "output": [{"condition": "!('pii' in user.groups)", "action": "mask_fields", "fields": ["email"]}],
    },
    "list_tables": {
        "output": [{"condition": "!('admins' in user.groups)", "action": "filter_rows",
                    "keep": "row.name in ['customers', 'products']"}],
    },
}


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    copy_shop(project)
    (project / "tools" / "customers_by_region.yml").write_text(CUSTOMERS_BY_REGION)
    (project / "tools" / "needs_role.yml").write_text(NEEDS_ROLE)
    (project / "tools" / "region_counts.yml").write_text(REGION_COUNTS)
    (project / "resources" / "customer_card.yml").write_text(CUSTOMER_CARD)
    (project / "python" / "shared_rows.py").write_text(SHARED_ROWS_PY)
    (project / "tools" / "shared_rows.yml").write_text(SHARED_ROWS)
    (project / "tools" / "big_numbers.yml").write_text(EDGE_VALUES.format(
        name="big_numbers", sql="SELECT 170141183460469231731687303715884105727::HUGEINT AS big, 1 AS small",
        test="a value beyond 64 bits reaches the rules", result="{small: 1}"))
    (project / "tools" / "no_row.yml").write_text(EDGE_VALUES.format(
        name="no_row", sql="SELECT 1 AS small WHERE false", test="no answer is nothing to hide", result="null"))
    settings = yaml.safe_load((project / "sqlgate.yml").read_text())
    settings["sql_tools"]["policies"] = SQL_TOOLS_POLICIES
    (project / "sqlgate.yml").write_text(yaml.safe_dump(settings))
    return project


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    _project(tmp)
    project, env, port = auth_project(tmp, {"jwt": {"secret": SECRET, "algorithms": ["HS256"],
                                                    "issuer": "https://issuer.test"}})
    srv = start_server(project, tmp, env=env, port=port, timeout=120)  # builds the database first
    yield srv
    stop_server(srv)


def _as(server, name: str, groups: list[str], **claims) -> dict[str, str]:
    return hs256_bearer(SECRET, server.url, name, extra_claims={"groups": groups, **claims})


def _both(res) -> tuple[dict, dict]:
    """The structured answer and the JSON text the client also gets: policies must shape both."""
    return res.structured_content, json.loads(res.content[0].text)


async def test_two_users_see_what_their_claims_allow(server):
    async with mcp_session(server.url, _as(server, "alice", ["admins"])) as alice:
        res = await alice.call_tool("customers_by_region", {"region": "EU"})
        for answer in _both(res):
            rows = answer["result"]
            assert len(rows) == 6 and {r["account_manager"] for r in rows} == {"alice", "bob", "carol"}
            assert rows[0]["email"] == f"customer{rows[0]['customer_id']}@example.test"
    async with mcp_session(server.url, _as(server, "bob", ["sales"])) as bob:
        res = await bob.call_tool("customers_by_region", {"region": "EU"})
        assert not res.is_error
        for answer in _both(res):
            rows = answer["result"]
            assert [r["customer_id"] for r in rows] == [3, 12]
            assert {r["account_manager"] for r in rows} == {"bob"} and {r["email"] for r in rows} == {"[hidden]"}
        denied = await bob.call_tool("customers_by_region", {"region": "APAC"})
        assert denied.is_error and "denied by policy: APAC data is for the APAC team." in denied.content[0].text


async def test_builtin_tools_follow_sql_tools_policies(server):
    sql = "SELECT customer_id, name, email FROM customers ORDER BY customer_id LIMIT 2"
    async with mcp_session(server.url, _as(server, "bob", ["sales"])) as bob:
        denied = await bob.call_tool("query", {"sql": sql})
        assert denied.is_error and "The query tool is for administrators." in denied.content[0].text
        tables = records((await bob.call_tool("list_tables", {})).structured_content)
        assert sorted(t["name"] for t in tables) == ["customers", "products"]
    async with mcp_session(server.url, _as(server, "alice", ["admins"])) as alice:
        res = await alice.call_tool("query", {"sql": sql})
        for answer in _both(res):
            assert answer["columns"] == ["customer_id", "name", "email"]
            assert answer["rows"] == [[1, "Customer 1", "****"], [2, "Customer 2", "****"]]
        tables = records((await alice.call_tool("list_tables", {})).structured_content)
        assert {"customers", "products", "orders"} <= {t["name"] for t in tables}
    async with mcp_session(server.url, _as(server, "dora", ["admins", "pii"])) as dora:
        rows = (await dora.call_tool("query", {"sql": sql})).structured_content["rows"]
        assert rows[0][2] == "customer1@example.test"


async def test_a_policy_that_cannot_be_evaluated_denies(server):
    note = "s3cr3t-argument-value"
    async with mcp_session(server.url, _as(server, "erin", ["sales"])) as erin:  # no `role` claim
        res = await erin.call_tool("needs_role", {"note": note})
        assert res.is_error
        assert "denied: policy input[0] of tool 'needs_role' could not be evaluated" in res.content[0].text
    async with mcp_session(server.url, _as(server, "frank", ["sales"], role="manager")) as frank:
        res = await frank.call_tool("needs_role", {"note": "hello"})
        assert res.structured_content["result"] == [{"note": "hello"}]
    logs = server.logs()
    assert "WARNING sqlgate.policy: policy input[0] of tool 'needs_role' (tools/needs_role.yml)" in logs
    assert "no such member in mapping: 'role'" in logs
    assert note not in logs and "Traceback" not in logs


def test_bad_cel_stops_start_up_with_file_and_line(tmp_path):
    project = _project(tmp_path)
    (project / "tools" / "needs_role.yml").write_text(NEEDS_ROLE.replace(
        "condition: \"user.role == 'intern'\"", "condition: \"user.role == \""))
    settings = yaml.safe_load((project / "sqlgate.yml").read_text())
    settings["sql_tools"]["policies"]["list_tables"]["output"][0]["keep"] = "row.name in ["
    (project / "sqlgate.yml").write_text(yaml.safe_dump(settings))
    env = isolated_env(tmp_path)
    for command in ("validate", "serve"):
        done = subprocess.run([*SQLGATE, command, "-p", str(project)], capture_output=True, text=True, env=env,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode != 0
        # sqlgate.yml is read first: its problem is reported (with the line of the key)
        assert "sqlgate.yml:" in done.stderr and "invalid CEL expression 'row.name in ['" in done.stderr, done.stderr
    settings["sql_tools"]["policies"]["list_tables"]["output"][0]["keep"] = "row.name != ''"
    (project / "sqlgate.yml").write_text(yaml.safe_dump(settings))
    done = subprocess.run([*SQLGATE, "validate", "-p", str(project)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode != 0
    line = NEEDS_ROLE.splitlines().index("      - condition: \"user.role == 'intern'\"") + 1
    assert f"tools/needs_role.yml:{line}: tool.policies.input[0].condition: invalid CEL expression" in done.stderr

    # a misspelt variable would deny every call: it is a start-up error too, with file and line
    (project / "tools" / "needs_role.yml").write_text(NEEDS_ROLE.replace("user.role == 'intern'",
                                                                         "usr.role == 'intern'"))
    done = subprocess.run([*SQLGATE, "validate", "-p", str(project)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode != 0
    assert (f"tools/needs_role.yml:{line} (tool.policies.input[0].condition): unknown variable 'usr' in "
            "\"usr.role == 'intern'\" (known: args, endpoint, note, user;") in done.stderr, done.stderr
    settings["sql_tools"]["policies"]["list_tables"]["output"][0]["keep"] = "rows.name != ''"
    (project / "sqlgate.yml").write_text(yaml.safe_dump(settings))
    done = subprocess.run([*SQLGATE, "validate", "-p", str(project)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert "list_tables.output[0].keep: unknown variable 'rows'" in done.stderr, done.stderr


def test_sqlgate_test_runs_policy_tests_as_the_given_user(tmp_path):
    project = _project(tmp_path)
    done = subprocess.run([*SQLGATE, "test", "-p", str(project)], capture_output=True, text=True,
                          env=isolated_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {
        "tool customers_by_region": ["an admin sees every row and every e-mail",
                                     "sales see only their customers, e-mail masked",
                                     "APAC refused outside the APAC team"],
        "tool needs_role": ["a user without the claim is denied", "a user with another role passes"],
        "tool region_counts": ["guests match no allow rule", "an analyst meets the output rule",
                               "an admin sees every region"],
        "resource cards": ["the account manager reads it", "someone else is refused"],
        "tool big_numbers": ["a value beyond 64 bits reaches the rules"],
        "tool no_row": ["no answer is nothing to hide"],
        "tool shared_rows": ["masked for a non-admin", "the kept rows are unchanged for the next caller"],
    }
    for endpoint, names in expected.items():
        for name in names:
            assert f"PASS {endpoint} :: {name}" in done.stdout, done.stdout
    assert "policy input[1] of tool 'region_counts': contractor access" in done.stderr
    # a policy test whose expectation is wrong fails
    (project / "tools" / "needs_role.yml").write_text(NEEDS_ROLE.replace("claims: {role: manager}",
                                                                         "claims: {role: intern}"))
    done = subprocess.run([*SQLGATE, "test", "-p", str(project), "needs_role"], capture_output=True, text=True,
                          env=isolated_env(tmp_path), timeout=120)
    assert done.returncode == 1
    assert "FAIL tool needs_role :: a user with another role passes" in done.stdout
    assert "denied by policy: Interns may not." in done.stdout


def test_sqlgate_test_user_context_is_the_caller_of_tests_without_their_own(tmp_path):
    project = _project(tmp_path)
    (project / "tools" / "managers_only.yml").write_text(NEEDS_ROLE.replace("needs_role", "managers_only").replace(
        "      user: {username: carol, claims: {role: manager}}\n", ""))
    command = [*SQLGATE, "test", "-p", str(project), "managers_only"]
    manager = json.dumps({"username": "carol", "claims": {"role": "manager"}})
    done = subprocess.run([*command, "--user-context", manager], capture_output=True, text=True,
                          env=isolated_env(tmp_path), timeout=120)
    assert "PASS tool managers_only :: a user with another role passes" in done.stdout, done.stdout + done.stderr
    assert "PASS tool managers_only :: a user without the claim is denied" in done.stdout, "its own user: wins"
    done = subprocess.run(command, capture_output=True, text=True, env=isolated_env(tmp_path), timeout=120)
    assert done.returncode == 1 and "FAIL tool managers_only :: a user with another role passes" in done.stdout


def test_sqlgate_query_follows_the_query_tool_policies(tmp_path):
    project = _project(tmp_path)
    command = [*SQLGATE, "query", "-p", str(project), "--csv",
               "SELECT name, email FROM customers ORDER BY customer_id LIMIT 2"]
    env = isolated_env(tmp_path)
    denied = subprocess.run([*command, "--user-context", '{"username": "bob"}'], capture_output=True, text=True,
                            env=env, timeout=120)
    assert denied.returncode != 0 and "denied by policy: The query tool is for administrators." in denied.stderr
    admin = json.dumps({"username": "alice", "claims": {"groups": ["admins"]}})
    done = subprocess.run([*command, "--user-context", admin], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["name,email", "Customer 1,****", "Customer 2,****"]


async def test_sql_tools_policies_know_every_builtin_parameter(tmp_path):
    """The start-up check of sql_tools.policies names the built-in tools' parameters: they must match."""
    from sqlgate.config.loader import load_project
    from sqlgate.engine import Limits, open_engine
    from sqlgate.policy import BUILTIN_PARAMETERS
    from sqlgate.sqltools.builtin import builtin_tools

    project = _project(tmp_path)
    loaded = load_project(project, None, env=isolated_env(tmp_path))
    engine = open_engine(loaded)
    try:
        tools = builtin_tools(engine, loaded.settings.sql_tools, lambda: Limits(10, 10_000, 5), lambda: None)
        assert {name for t in tools for name in t.parameters["properties"]} == BUILTIN_PARAMETERS
    finally:
        await engine.close()
