"""The OAuth flow against faithful local fakes of GitHub, Atlassian, Salesforce and Google.

Same path as with the real OIDC provider: official mcp client, DCR, PKCE, consent page, the
provider's login form, token exchange in the provider's own reply format, user info from its
own endpoints — then SQL sees the user, and revocation ends access.
"""

from __future__ import annotations

from contextlib import contextmanager

import anyio
import httpx
import pytest

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client, shared_stacks, start_auth_server
from tests.browser import Browser
from tests.conftest import free_port, stop_server
from tests.fakes.providers import FakeAtlassian, FakeGitHub, FakeGoogle, FakeSalesforce


def urls(kind: str, base: str) -> dict[str, str]:
    if kind == "github":
        return {"auth_url": f"{base}/login/oauth/authorize", "token_url": f"{base}/login/oauth/access_token",
                "api_base_url": base}
    if kind == "atlassian":
        return {"auth_url": f"{base}/authorize", "token_url": f"{base}/oauth/token", "userinfo_url": f"{base}/me"}
    if kind == "salesforce":
        return {"auth_url": f"{base}/services/oauth2/authorize", "token_url": f"{base}/services/oauth2/token",
                "userinfo_url": f"{base}/services/oauth2/userinfo", "revoke_url": f"{base}/services/oauth2/revoke"}
    return {"auth_url": f"{base}/o/oauth2/v2/auth", "token_url": f"{base}/token",
            "userinfo_url": f"{base}/v1/userinfo", "revoke_url": f"{base}/revoke"}


FAKES = {"github": FakeGitHub, "atlassian": FakeAtlassian, "salesforce": FakeSalesforce, "google": FakeGoogle}
EXPECTED = {  # (username, email, user id prefix) for alice as each provider reports her
    "github": ("alice", "alice@example.test", "1001"),
    "atlassian": ("alice", "alice@example.test", "5b10ac8d"),
    "salesforce": ("alice@example.test", "alice@example.test", "0051001"),
    "google": ("alice@example.test", "alice@example.test", "10769"),
}


@contextmanager
def fake_provider_server(fake_class, tmp_path, extra_env: dict[str, str] | None = None, **auth):
    """A faithful fake of `fake_class`'s provider and a sqlgate proxying to it: (fake, server)."""
    kind = fake_class.NAME
    port = free_port()
    with fake_class(f"{kind}-client", f"{kind}-secret", [f"http://127.0.0.1:{port}/{kind}/callback"]) as fake:
        server = start_auth_server(tmp_path, {"provider": kind, kind: {
            "client_id": f"{kind}-client", "client_secret": f"{kind}-secret", **urls(kind, fake.base_url)}, **auth},
            port=port, extra_env=extra_env)
        try:
            yield fake, server
        finally:
            stop_server(server)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """kind -> SharedStack: a fake and a server with default settings per provider, for the module."""
    with shared_stacks(lambda kind: fake_provider_server(FAKES[kind], tmp_path_factory.mktemp(kind))) as get:
        yield get


@pytest.fixture(params=list(FAKES))
def stack(request, defaults):
    shared = defaults(request.param)
    return request.param, shared.fake, shared.server


def flow(server, user: str = "alice"):
    storage = MemoryTokenStorage()
    browser = Browser(user, f"{user}-password")
    res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "upstream_identity")
    browser.close()
    assert not res.is_error, res.content
    row = res.structured_content["result"]
    return storage, [row[k] for k in ("u", "e", "p", "i", "t")]


def test_provider_flow_identity_and_revocation(stack):
    kind, fake, server = stack
    storage, (username, email, provider, user_id, external) = flow(server)
    assert (username, email, provider) == (*EXPECTED[kind][:2], kind)
    assert user_id.startswith(EXPECTED[kind][2])
    assert external in fake.tokens, "get_user_external_token() is the provider's own token"
    assert storage.tokens.scope == "sqlgate:access"
    assert external not in server.logs()
    if kind != "github":  # GitHub OAuth-app tokens do not expire and come without a refresh token
        old = storage.tokens.refresh_token
        form = {"grant_type": "refresh_token", "client_id": storage.client.client_id}
        fresh = httpx.post(f"{server.base}/token", data={**form, "refresh_token": old})
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["refresh_token"] != old, "refresh tokens rotate, also when the provider's do not"
        # the replaced token again, within the grace window: the same pair, not a second one
        again = httpx.post(f"{server.base}/token", data={**form, "refresh_token": old})
        assert again.status_code == 200 and again.json()["refresh_token"] == fresh.json()["refresh_token"]
        assert accepted(server, fresh.json()["access_token"])
        storage.tokens.access_token = fresh.json()["access_token"]
    # revoke our token: access ends, whatever the provider supports
    r = httpx.post(f"{server.base}/revoke", data={"token": storage.tokens.access_token,
                                                   "client_id": storage.client.client_id})
    assert r.status_code == 200
    r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Authorization": f"Bearer {storage.tokens.access_token}",
                            "Accept": "application/json, text/event-stream"})
    assert r.status_code == 401


def accepted(server, token: str) -> bool:
    """Whether the token passes authentication (a session-less ping is refused later, not with 401)."""
    r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"})
    return r.status_code != 401


def test_github_private_email_comes_from_user_emails(defaults):
    github = defaults("github")
    _, (username, email, *_rest) = flow(github.server, "bob")
    assert (username, email) == ("bob", "bob@example.test")
    assert ("GET", "/user/emails") in [(r.method, r.path) for r in github.seen()]


def test_user_info_is_cached_for_cache_ttl(defaults):
    google = defaults("google")  # cache_ttl: 300 (the default)
    fake, server = google.fake, google.server
    storage, _ = flow(server)
    before = fake.requests.count(("GET", "/v1/userinfo"))
    for _ in range(5):
        r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                       headers={"Authorization": f"Bearer {storage.tokens.access_token}",
                                "Accept": "application/json, text/event-stream"})
        assert r.status_code != 401
    assert fake.requests.count(("GET", "/v1/userinfo")) == before


def test_upstream_token_never_in_logs_even_at_debug_level(tmp_path):
    """The seed's promise: the provider's token is available to the project's SQL, and never logged."""
    with fake_provider_server(FakeGitHub, tmp_path, extra_env={"SQLGATE_LOG_LEVEL": "debug"}) as (fake, server):
        storage = MemoryTokenStorage()
        browser = Browser("alice", "alice-password")
        auth = oauth_client(server.url, browser, storage)
        res = anyio.run(call_tool, server.url, auth, "has_upstream_token")
        browser.close()
        assert res.structured_content["result"] is True
        for sql in ["SELECT get_user_external_token()", "SELECT * FROM duckdb_variables()",
                    "SELECT getvariable('sqlgate_ctx')"]:
            res = anyio.run(call_tool, server.url, oauth_client(server.url, Browser(), storage), "query",
                            {"sql": sql})
            assert all(tok not in str(res.content) for tok in fake.tokens)
        logs = server.logs()
    assert "DEBUG" in logs or "debug" in logs.lower(), "the server did not log at debug level"
    assert fake.tokens, "the fake issued no token"
    for token in fake.tokens:
        assert token not in logs, "an upstream token reached the log"
    assert storage.tokens.access_token not in logs
