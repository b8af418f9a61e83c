"""Hostile clients against answers, paging and the HTTP extras, each over real HTTP with the official
mcp client or raw httpx: a row larger than the answer budget must not hand out a cursor that points
at the same row forever, the JSON-RPC id check must not turn a deeply nested body into HTTP 500, and
the query tool's second run (its own total order) stays within the call's one timeout."""

from __future__ import annotations

import httpx
import pytest

from tests.auth_support import start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import copy_shop, free_port, isolated_env, start_server, stop_server

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}


def write_project(root):
    root.mkdir(parents=True)
    (root / "sqlgate.yml").write_text("name: attacks\nengine:\n  path: ':memory:'\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    srv = start_server(write_project(tmp / "project"), tmp,
                       env=isolated_env(tmp, SQLGATE_MAX_BYTES="100000", SQLGATE_QUERY_TIMEOUT="3"))
    yield srv
    stop_server(srv)


async def test_a_row_larger_than_the_answer_is_an_error_not_an_endless_cursor(server):
    """60 kB of quotes cost 180 kB in the message (twice, the text form escaped): no page can hold
    it. Paging must not answer 0 rows with a cursor back to the same row (a client would loop)."""
    async with mcp_session(server.url) as s:
        sql = "SELECT i, repeat('\"', 60000) AS v FROM range(3) t(i) ORDER BY i"
        res = await s.call_tool("query", {"sql": sql})
        assert res.is_error, res.structured_content
        assert "larger than the result limit" in res.content[0].text
        # a small row first: that page ends before the big row, and the next page says why it stops
        sql = "SELECT i, CASE WHEN i = 1 THEN repeat('\"', 60000) ELSE 'small' END AS v FROM range(3) t(i) ORDER BY i"
        first = await s.call_tool("query", {"sql": sql})
        assert not first.is_error
        sc = first.structured_content
        assert sc["rows"] == [[0, "small"]] and sc["truncated"] is True and sc["next_cursor"]
        second = await s.call_tool("query", {"sql": sql, "cursor": sc["next_cursor"]})
        assert second.is_error and "larger than the result limit" in second.content[0].text


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_deeply_nested_body_with_a_bad_id_is_not_a_500(server, depth):
    body = '{"jsonrpc":"2.0","id":1.5,"method":"ping","params":{"x":' + "[" * depth + "]" * depth + "}}"
    r = httpx.post(server.url, content=body, headers=HEADERS, timeout=30)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"]["code"] == -32600 and "nested too deeply" in r.json()["error"]["message"]
    assert "Traceback" not in server.logs()


def test_deeply_nested_body_with_a_good_id_is_not_a_500(server):
    depth = 200_000
    body = '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + "[" * depth + "]" * depth + "}}"
    r = httpx.post(server.url, content=body, headers=HEADERS, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


async def test_the_pagers_own_order_stays_within_the_calls_one_timeout(server):
    """Without ORDER BY, a cut answer is run again sorted by all columns. When that sort cannot
    finish, the client still gets the first rows (no cursor, a hint why) — not a timeout error
    after twice the timeout."""
    sql = "SELECT i, md5(i::VARCHAR) AS h, md5(h) AS h2 FROM range(300000000) t(i)"
    async with mcp_session(server.url) as s:
        res = await s.call_tool("query", {"sql": sql})
    assert not res.is_error, res.content[0].text
    sc = res.structured_content
    assert sc["truncated"] is True and sc["row_count"] > 0 and "next_cursor" not in sc
    assert "add an ORDER BY on a unique key" in sc["hint"] and "timeout" in sc["hint"]


def test_the_id_check_does_not_read_bodies_of_callers_without_a_token(tmp_path):
    """The id check sits in front of the endpoint's bearer check: a caller without a token gets
    401 without its (up to 4 MiB) body being held and parsed; with a token the check applies."""
    secret = "attack-secret-0123456789abcdef0123"
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": secret, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"}}, port=port)
    url = f"http://127.0.0.1:{port}/mcp"
    body = '{"jsonrpc":"2.0","id":1.5,"method":"ping","params":{"x":' + "[" * 5000 + "]" * 5000 + "}}"
    try:
        anonymous = httpx.post(url, content=body, headers=HEADERS, timeout=30)
        signed_in = httpx.post(url, content=body, timeout=30,
                               headers={**HEADERS, **hs256_bearer(secret, url, "alice")})
    finally:
        stop_server(server)
    assert anonymous.status_code == 401, anonymous.text[:200]
    assert signed_in.status_code == 400 and signed_in.json()["error"]["code"] == -32600


def test_a_request_body_over_the_cap_is_413_without_being_held(server):
    """64 MiB (or a chunked body without Content-Length) is refused at the SDK's 4 MiB request limit
    by sqlgate's first check, with a JSON-RPC error; the server keeps serving."""
    padding = " " * (64 * 1024 * 1024)
    big = '{"jsonrpc":"2.0","id":1,"method":"ping"' + padding + "}"
    r = httpx.post(server.url, content=big, headers=HEADERS, timeout=60)
    assert r.status_code == 413 and "larger than 4194304 bytes" in r.json()["error"]["message"]

    def chunks():
        yield b'{"jsonrpc":"2.0","id":1,"method":"ping"'
        for _ in range(80):
            yield b" " * (64 * 1024)
        yield b"}"

    r = httpx.post(server.url, content=chunks(), headers=HEADERS, timeout=60)
    assert r.status_code == 413
    ok = httpx.post(server.url, timeout=10, headers=HEADERS, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert ok.status_code == 200


async def test_a_cursor_neither_shows_the_caller_nor_grows_with_a_long_subject(tmp_path):
    """The cursor is readable base64: it must not carry who the caller is, and a 3000-character
    subject (an IdP's choice) must not push it past the 2048 characters a cursor may have."""
    import base64
    import json

    secret = "attack-secret-0123456789abcdef0123"
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": secret, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"}}, port=port,
                               extra_env={"SQLGATE_MAX_BYTES": "20000"})
    url = f"http://127.0.0.1:{port}/mcp"
    sql = "SELECT i FROM range(5000) t(i) ORDER BY i"
    name = "carol-" + "x" * 3000
    try:
        async with mcp_session(url, hs256_bearer(secret, url, name)) as s:
            first = (await s.call_tool("query", {"sql": sql})).structured_content
            cursor = first["next_cursor"]
            second = await s.call_tool("query", {"sql": sql, "cursor": cursor})
    finally:
        stop_server(server)
    body = base64.urlsafe_b64decode(cursor.split(".")[0] + "==")
    assert b"carol" not in body and len(cursor) < 300, json.loads(body)
    assert not second.is_error, second.content[0].text
    assert second.structured_content["rows"][0] == [first["row_count"]]


SCOPED_RESOURCE = """resource:
  uri: vault://notes/{id}
  description: Notes for note readers only.
  scopes: [notes:read]
  parameters:
    - {name: id, type: integer, description: which}
  return: {type: object}
  source:
    code: SELECT $id AS id, 'the vault secret' AS note
"""
SCOPED_PROMPT = """prompt:
  name: vault_prompt
  description: For note readers only.
  scopes: [notes:read]
  messages: [{prompt: 'the vault prompt secret'}]
"""


def _jwt(secret: str, audience: str, scope: str) -> dict[str, str]:
    import time

    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {"iss": "https://issuer.test", "aud": audience, "sub": "mallory", "preferred_username": "mallory",
              "scope": scope, "exp": int(time.time()) + 600}
    return {"Authorization": "Bearer " + jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret.encode()))}


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory):


    tmp = tmp_path_factory.mktemp("scoped")
    project = tmp / "project"
    copy_shop(project)
    (project / "resources" / "vault.yml").write_text(SCOPED_RESOURCE)
    (project / "prompts" / "vault_prompt.yml").write_text(SCOPED_PROMPT)
    secret = "attack-scopes-secret-0123456789abcdef"
    srv = start_auth_server(tmp, {"jwt": {"secret": secret, "algorithms": ["HS256"], "issuer": "https://issuer.test"}})
    srv.secret = secret
    yield srv
    stop_server(srv)


def _raw_session(url: str, auth: dict[str, str]) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    r = httpx.post(url, json=init, headers={**HEADERS, **auth}, timeout=10)
    h = {**HEADERS, **auth, "Mcp-Session-Id": r.headers["mcp-session-id"]}
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, timeout=10)
    return h


@pytest.mark.parametrize("request_", [
    {"method": "resources/read", "params": {"uri": "vault://notes/1"}},
    {"method": "prompts/get", "params": {"name": "vault_prompt"}},
])
@pytest.mark.parametrize("padding", [3 * 1024 * 1024, 5 * 1024 * 1024])
def test_padding_a_request_does_not_skip_the_scope_check(scoped_server, request_, padding):
    """The scope guard read at most 4 MiB and passed a body it could not parse on unchecked (only
    the SDK's own 4 MiB limit stopped that), and MCP-level checks covered tools only. Padded below
    the limit: 403; above it: 413 from the guard itself — never the resource or prompt."""
    url = scoped_server.url
    h = _raw_session(url, _jwt(scoped_server.secret, url, "sqlgate:access"))
    plain = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, **request_}, headers=h, timeout=10)
    assert plain.status_code == 403
    body = '{"jsonrpc":"2.0","id":3' + " " * padding + "," + __import__("json").dumps(request_)[1:]
    padded = httpx.post(url, content=body, headers=h, timeout=60)
    assert padded.status_code == (403 if padding < 4 * 1024 * 1024 else 413), padded.text[:300]
    assert "vault" not in padded.text and "secret" not in padded.text


def test_a_deeply_nested_request_with_a_token_is_not_a_500(scoped_server):
    url = scoped_server.url
    h = _raw_session(url, _jwt(scoped_server.secret, url, "sqlgate:access"))
    depth = 100_000
    body = '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + "[" * depth + "]" * depth + "}}"
    r = httpx.post(url, content=body, headers=h, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


@pytest.mark.parametrize("uri", [" vault://notes/1", "vault://notes/1 ", "\tvault://notes/1", "VAULT://notes/1",
                                 "vault://notes/1#x", "vault://notes/1?x=1", "vault://notes/%31",
                                 "vault://NOTES/1", "vault:///notes/1", "vault://notes//1"])
def test_a_respelled_resource_uri_does_not_skip_the_scope_check(scoped_server, uri):
    url = scoped_server.url
    h = _raw_session(url, _jwt(scoped_server.secret, url, "sqlgate:access"))
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": uri}},
                   headers=h, timeout=10)
    assert "the vault secret" not in r.text, (r.status_code, r.text[:300])


def _sse_event_size(url: str, sql: str) -> tuple[int, dict]:
    """Call `query` with raw HTTP and measure the answer's SSE event as the client's decoder counts it."""
    import json

    h = _raw_session(url, {})
    r = httpx.post(url, headers=h, timeout=60, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                     "params": {"name": "query", "arguments": {"sql": sql}}})
    event = [e for e in r.text.replace("\r\n", "\n").split("\n\n") if "data:" in e][-1]
    message = json.loads(next(line[5:] for line in event.split("\n") if line.startswith("data:")))
    return sum(len(line.encode("utf-8")) for line in event.split("\n")), message["result"]


@pytest.mark.parametrize("sql", [
    # a control character is 1 byte in the database, `\u0001` (6) in JSON and `\\u0001` (7) in the text
    "SELECT i, repeat(chr(1), 3000) AS c FROM range(1000) t(i) ORDER BY i",
    "SELECT i, repeat(chr(8232) || '\"\\é😀', 700) AS u FROM range(1000) t(i) ORDER BY i",
    # 400 columns with long names: the names and types count too
    "SELECT " + ", ".join(f"i AS \"{'c' * 60}{n}\"" for n in range(400)) + " FROM range(1000) t(i) ORDER BY i",
    "SELECT i, 'NaN'::DOUBLE AS n, 'inf'::DOUBLE AS f, -0.0::DOUBLE AS z FROM range(100000) t(i) ORDER BY i",
])
def test_pathological_values_stay_within_max_bytes_over_http(server, sql):
    size, result = _sse_event_size(server.url, sql)
    assert not result.get("isError"), result
    sc = result["structuredContent"]
    assert sc["truncated"] is True and sc["row_count"] == len(sc["rows"]) > 0 and sc["next_cursor"]
    assert size <= 100_000, size  # the server's limits.max_bytes
