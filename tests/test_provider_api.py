"""runtime.http: Python endpoints calling the provider's API as the caller, against faithful fakes
of GitHub (repos), Google (Calendar events), Salesforce (SOQL at the org's instance_url) and
Atlassian (accessible resources → cloud id → Jira search).

Each test logs in through the OAuth proxy with the official client and calls an endpoint written
as the README shows it (the fake's base URL in place of the real host): the answer comes from the
provider's API with the user's token, the size cap and the call's deadline end a request with a
clear error, a host outside the provider's API is refused — and the token never reaches the client
(results, errors) or the log.
"""

from __future__ import annotations

from contextlib import contextmanager

import anyio
import pytest

from tests.auth_support import MemoryTokenStorage, auth_project, call_tool, oauth_client, shared_stacks
from tests.browser import Browser
from tests.conftest import free_port, start_server, stop_server
from tests.fakes.providers import FAKES
from tests.test_auth_providers import urls

# the README's examples, with API standing for the real host (https://api.github.com …)
ENDPOINTS = {
    "github": '''
def api_call(n: int, max_bytes: int = 0, url: str = ""):
    r = runtime.http.get(url or f"{API}/user/repos", params={"per_page": n, "sort": "updated"},
                         max_bytes=max_bytes or None).raise_for_status()
    return [repo["full_name"] for repo in r.json()]
''',
    "google": '''
def api_call(n: int, max_bytes: int = 0, url: str = ""):
    r = runtime.http.get(url or f"{API}/calendar/v3/calendars/primary/events",
                         params={"maxResults": n, "singleEvents": "true", "orderBy": "startTime"},
                         max_bytes=max_bytes or None).raise_for_status()
    return [event["summary"] for event in r.json()["items"]]
''',
    "salesforce": '''
def api_call(n: int, max_bytes: int = 0, url: str = ""):
    instance = runtime.user().token_info["instance_url"]  # the org's own host, from the token reply
    r = runtime.http.get(url or f"{instance}/services/data/v61.0/query",
                         params={"q": f"SELECT Id, Name FROM Account LIMIT {n}"},
                         max_bytes=max_bytes or None).raise_for_status()
    return [record["Name"] for record in r.json()["records"]]
''',
    "atlassian": '''
def api_call(n: int, max_bytes: int = 0, url: str = ""):
    sites = runtime.http.get(f"{API}/oauth/token/accessible-resources").raise_for_status().json()
    cloud_id = sites[0]["id"]
    r = runtime.http.get(url or f"{API}/ex/jira/{cloud_id}/rest/api/3/search/jql",
                         params={"jql": "project = SQL", "maxResults": n, "fields": "summary,status"},
                         max_bytes=max_bytes or None).raise_for_status()
    return [issue["key"] for issue in r.json()["issues"]]
''',
}
EXPECTED = {"github": ["alice/repo-0", "alice/repo-1"], "google": ["Meeting 0", "Meeting 1"],
            "salesforce": ["Account 1", "Account 2"], "atlassian": ["SQL-1", "SQL-2"]}
SCOPES = {"google": "openid profile email https://www.googleapis.com/auth/calendar.readonly",
          "atlassian": "read:me read:jira-work offline_access"}
TOOL = """tool:
  name: api_call
  description: The provider's API as the caller (test).
  parameters:
    - {name: n, type: integer, description: how many}
    - {name: max_bytes, type: integer, description: answer cap, default: 0}
    - {name: url, type: string, description: another URL, default: ""}
  limits: {timeout_seconds: 2}
  source:
    file: ../python/provider_api.py
"""


@contextmanager
def api_stack(kind: str, tmp_path, extra_tools: dict[str, tuple[str, str]] | None = None):
    """`extra_tools`: name -> (python source, tool YAML) added to the project."""
    port = free_port()
    with FAKES[kind](f"{kind}-client", f"{kind}-secret", [f"http://127.0.0.1:{port}/{kind}/callback"]) as fake:
        host = fake.base_url.removeprefix("http://")
        block = {"client_id": f"{kind}-client", "client_secret": f"{kind}-secret", **urls(kind, fake.base_url)}
        if kind in SCOPES:
            block["scope"] = SCOPES[kind]
        if kind != "salesforce":  # Salesforce: the org's instance_url is allowed by itself
            block["api_hosts"] = [host]
        project, env, _ = auth_project(tmp_path, {"provider": kind, kind: block}, port)
        (project / "python" / "provider_api.py").write_text(
            f"from sqlgate import runtime\n\nAPI = {fake.base_url!r}\n" + ENDPOINTS[kind])
        (project / "tools" / "api_call.yml").write_text(TOOL)
        for name, (code, yml) in (extra_tools or {}).items():
            (project / "python" / f"{name}.py").write_text(code)
            (project / "tools" / f"{name}.yml").write_text(yml)
        server = start_server(project, tmp_path, env=env, port=port)
        try:
            yield fake, server
        finally:
            stop_server(server)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """kind -> SharedStack: one fake and server per provider for the module, started on first use."""
    def start(kind: str):
        extra = {"leaky": (LEAKY_PY, LEAKY_YML)} if kind == "github" else None
        return api_stack(kind, tmp_path_factory.mktemp(kind), extra)

    with shared_stacks(start) as get:
        yield get


@pytest.fixture
def github(stacks):
    stack = stacks("github")
    yield stack
    stack.fake.api_delay, stack.fake.echo_token_header = 0.0, False  # what a test changed


@pytest.fixture
def salesforce(stacks):
    stack = stacks("salesforce")
    yield stack
    stack.fake.instance_url = None


def _calls(server, calls):
    storage = MemoryTokenStorage()
    browser = Browser("alice", "alice-password")
    out = [anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "api_call", args)
           for args in calls]
    browser.close()
    return out


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_endpoint_calls_provider_api_as_the_user(kind, stacks):
    stack = stacks(kind)
    fake = stack.fake
    ok, too_big, elsewhere = _calls(stack.server, [{"n": 2}, {"n": 100, "max_bytes": 2000},
                                                   {"n": 1, "url": "https://evil.example/steal"}])
    logs = stack.logs()
    assert not ok.is_error, ok.content
    assert ok.structured_content["result"] == EXPECTED[kind]
    api_requests = [r for r in stack.seen() if r.path not in (fake.AUTHORIZE_PATH, fake.TOKEN_PATH)
                    and r.bearer() in fake.tokens]
    assert api_requests, "the API was called with the user's own provider token"
    assert too_big.is_error and "larger than 2000 bytes" in str(too_big.content)
    assert elsewhere.is_error and "host evil.example is not one of" in str(elsewhere.content)
    assert "provider API GET 127.0.0.1" in logs and "-> 200" in logs and "(user alice" in logs
    for token in fake.tokens:
        for res in (ok, too_big, elsewhere):
            assert token not in str(res.content) and token not in str(res.structured_content)
        assert token not in logs


def test_provider_api_request_ends_at_the_call_deadline(github):
    fake = github.fake
    fake.api_delay = 4  # the endpoint's timeout is 2 s
    (slow,) = _calls(github.server, [{"n": 1}])
    logs = github.logs()
    assert slow.is_error and "deadline" in str(slow.content)
    assert "-> deadline" in logs
    assert all(token not in str(slow.content) and token not in logs for token in fake.tokens)


def test_an_answer_echoing_the_token_in_a_header_is_refused(github):
    """A hostile or buggy API repeating the bearer in a response header: the endpoint (and so the
    client) must not get it, as for an answer body that contains it."""
    fake = github.fake
    fake.echo_token_header = True
    (echo,) = _calls(github.server, [{"n": 1}])
    logs = github.logs()
    assert echo.is_error and "contains the caller's token" in str(echo.content)
    assert "refused: echoes the token" in logs
    assert fake.tokens and all(t not in str(echo.content) and t not in logs for t in fake.tokens)


class _Listener:
    """A plain HTTP service elsewhere on this host (what SSRF would reach); records what it receives."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"records": []}')

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("instance", ["LISTENER", "https://127.0.0.1:1", "https://2130706433",
                                      "https://0x7f.1", "https://[::1]", "https://metadata.localhost",
                                      "https://user@example.my.salesforce.com"])
def test_a_hostile_instance_url_does_not_get_the_token(salesforce, instance):
    """Salesforce's token reply names the org's API host (instance_url). One that points at the
    server's own network (another loopback service, an IP literal in any spelling, localhost,
    userinfo) is not an API host: the endpoint's request is refused and nothing is sent there."""
    fake = salesforce.fake
    listener = _Listener()
    try:
        fake.instance_url = listener.url if instance == "LISTENER" else instance  # in this login's token reply
        (res,) = _calls(salesforce.server, [{"n": 1}])
        logs = salesforce.server.logs()  # every test's: no token of any login may be in it
    finally:
        listener.close()
    assert res.is_error, res.content
    assert ("is not one of the salesforce API hosts" in str(res.content)
            or "is not an API URL" in str(res.content)), res.content  # userinfo: refused as a URL already
    assert listener.seen == []
    assert all(t not in str(res.content) and t not in logs for t in fake.tokens)


LEAKY_PY = """from sqlgate import runtime


def leaky(n: int):
    token = runtime.user().external_token
    # what an author's own HTTP client says when a token-in-the-URL API fails
    raise RuntimeError(f"GET https://graph.example/me?access_token={token} failed: 401 ({token[:6]}...)")
"""
LEAKY_YML = """tool:
  name: leaky
  description: Fails with the token in its error (test).
  parameters:
    - {name: n, type: integer, description: unused}
  source:
    file: ../python/leaky.py
"""


def test_an_endpoint_error_never_carries_the_callers_token(github):
    """A Python endpoint whose exception names the upstream token (an HTTP library's error with the
    URL) must not hand it to the client, its log notifications or the server log."""
    fake, server = github.fake, github.server
    storage = MemoryTokenStorage()
    browser = Browser("alice", "alice-password")
    res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "leaky", {"n": 1})
    browser.close()
    logs = server.logs()  # every test's: no token of any login may be in it
    assert res.is_error and "failed: 401" in str(res.content) and "[token]" in str(res.content)
    assert fake.tokens and all(t not in str(res.content) and t not in logs for t in fake.tokens)
