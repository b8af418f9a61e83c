"""Honest answers: invalid_target for a foreign resource (RFC 8707), readable callback error pages
without the provider's text, revocation that reaches the provider with the provider's own tokens,
and no authorization code or token in any log line, at debug level too.

Real servers, the real OIDC provider and the local provider fakes (tests/fakes), which record
every request they serve.
"""

from __future__ import annotations

import re

import anyio
import httpx
import pytest

from tests.auth_support import MemoryTokenStorage, call_tool, login_to_callback, oauth_client, start_auth_server
from tests.browser import Browser, query_of
from tests.conftest import free_port, stop_server
from tests.fakes.providers import FakeAtlassian, FakeGitHub, FakeGoogle, FakeSalesforce
from tests.idp.launcher import OidcProvider, pkce_pair
from tests.test_auth_flows import _authorize_by_hand, bearer_call, drop_stack, login, make_stack
from tests.test_auth_providers import fake_provider_server, urls

REDIRECT = "http://127.0.0.1:45981/callback"


@pytest.fixture(scope="module")
def oidc(tmp_path_factory):
    stack = make_stack("oidc", tmp_path_factory.mktemp("honest"))
    yield stack
    drop_stack(stack)


def _client(base: str) -> str:
    r = httpx.post(f"{base}/register", json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
    return r.json()["client_id"]


# ---------------------------------------------------------------------- RFC 8707 at /token
def test_token_request_for_another_resource_is_invalid_target(oidc):
    base, url = oidc["server"].base, oidc["server"].url
    client_id = _client(base)
    code, verifier = _authorize_by_hand(base, client_id, REDIRECT, "sqlgate:access")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id,
            "code_verifier": verifier}
    for foreign in ("https://other.example/mcp", f"{base}/other", "http://127.0.0.1:1/mcp"):
        r = httpx.post(f"{base}/token", data={**form, "resource": foreign})
        assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text
    ok = httpx.post(f"{base}/token", data={**form, "resource": url})  # the code was not spent by the refusals
    assert ok.status_code == 200, ok.text
    refresh = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": ok.json()["refresh_token"]}
    r = httpx.post(f"{base}/token", data={**refresh, "resource": "https://other.example/mcp"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text
    r = httpx.post(f"{base}/token", data=refresh)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------- the IdP callback
def _to_callback(server, callback_path: str) -> tuple[Browser, str]:
    return login_to_callback(server, callback_path, REDIRECT)


@pytest.mark.parametrize("fake_class", [FakeGitHub, FakeAtlassian])
def test_wrong_code_at_the_callback_is_a_readable_400_without_the_providers_text(tmp_path, fake_class):
    kind = fake_class.NAME
    with fake_provider_server(fake_class, tmp_path) as (fake, server):
        browser, callback = _to_callback(server, f"/{kind}/callback")
        real_code = query_of(callback)["code"]
        wrong = callback.replace(real_code, "not-the-code")
        r = browser.http.get(wrong)
        assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text
        assert "did not accept this sign-in" in r.text
        provider_text = fake.TOKEN_ERRORS["bad_code"][2]
        assert provider_text not in r.text and "invalid_grant" not in r.text
        # the login can still complete with the provider's real code
        done = browser.http.get(callback)
        assert done.status_code == 302 and done.headers["location"].startswith(REDIRECT)
        assert "exchanging the provider's code failed" in server.logs()
        browser.close()


def test_provider_down_at_the_callback_is_503_with_retry_after(tmp_path):
    port = free_port()
    fake = FakeGitHub("github-client", "github-secret", [f"http://127.0.0.1:{port}/github/callback"]).start()
    server = start_auth_server(tmp_path, {"provider": "github", "github": {
        "client_id": "github-client", "client_secret": "github-secret", **urls("github", fake.base_url)}},
        port=port)
    try:
        browser, callback = _to_callback(server, "/github/callback")
        fake.stop()
        r = browser.http.get(callback)
        assert r.status_code == 503 and r.headers["retry-after"] and "could not be reached" in r.text, r.text
        browser.close()
    finally:
        fake.stop()
        stop_server(server)


# ---------------------------------------------------------------------- upstream revocation
@pytest.mark.parametrize("fake_class", [FakeGoogle, FakeSalesforce])
def test_revoking_a_sqlgate_token_revokes_the_upstream_tokens_with_the_providers_token(tmp_path, fake_class):
    with fake_provider_server(fake_class, tmp_path) as (fake, server):
        storage = MemoryTokenStorage()
        browser = Browser("alice", "alice-password")
        res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "upstream_identity")
        browser.close()
        upstream_access = res.structured_content["result"]["t"]
        upstream_refresh = next(iter(fake.refresh_tokens))
        assert upstream_access in fake.tokens
        r = httpx.post(f"{server.base}/revoke", data={"token": storage.tokens.access_token,
                                                      "client_id": storage.client.client_id})
        assert r.status_code == 200
        revoked = [req.form.get("token") for req in fake.seen if req.path.endswith("/revoke")]
        assert upstream_refresh in revoked, "the provider got its own refresh token"
        assert storage.tokens.access_token not in revoked and storage.tokens.refresh_token not in revoked
        assert upstream_access not in fake.tokens and upstream_refresh not in fake.refresh_tokens
        logs = server.logs()
        assert "revoked the upstream refresh_token of grant" in logs
        assert "Successfully revoked" not in logs and "refused to revoke" not in logs
        assert bearer_call(server.url, storage.tokens.access_token).status_code == 401


def test_revocation_reaches_the_real_idp(oidc):
    idp = oidc["idp"]
    storage = login(oidc, "bob")
    res = anyio.run(call_tool, oidc["server"].url, oauth_client(oidc["server"].url, Browser(), storage),
                    "upstream_identity")
    upstream = res.structured_content["result"]["t"]
    introspect = idp.discovery()["introspection_endpoint"]
    assert httpx.post(introspect, data={"token": upstream}, auth=idp.introspector).json()["active"] is True
    r = httpx.post(f"{oidc['server'].base}/revoke", data={"token": storage.tokens.refresh_token,
                                                          "client_id": storage.client.client_id})
    assert r.status_code == 200
    assert httpx.post(introspect, data={"token": upstream}, auth=idp.introspector).json()["active"] is False
    assert "revoked the upstream refresh_token of grant" in oidc["server"].logs()


# ---------------------------------------------------------------------- logs
def test_no_code_or_token_in_any_log_line_at_debug_level(tmp_path):
    port = free_port()
    with OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback"]) as idp:
        server = start_auth_server(tmp_path, {
            "provider": "oidc", "oidc": {"issuer": idp.issuer, "client_id": idp.client_id,
                                         "client_secret": idp.client_secret, "callback_path": "/oidc/callback"}},
            port=port, extra_env={"SQLGATE_LOG_LEVEL": "debug"})
        try:
            base = server.base
            client_id = _client(base)
            verifier, challenge = pkce_pair()
            browser = Browser("alice", "alice-password")
            url = httpx.URL(f"{base}/authorize", params={
                "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st",
                "scope": "sqlgate:access", "code_challenge": challenge, "code_challenge_method": "S256"})
            code = query_of(browser.run(str(url), REDIRECT))["code"]
            upstream_codes = [query_of(u)["code"] for _, u in browser.pages if "/oidc/callback?" in u]
            browser.close()
            tokens = httpx.post(f"{base}/token", data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id,
                "code_verifier": verifier}).json()
            fresh = httpx.post(f"{base}/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                      "refresh_token": tokens["refresh_token"]}).json()
            # a client that puts its token in the query string (RFC 6750 §2.3, refused here)
            httpx.get(f"{server.url}?access_token={fresh['access_token']}")
            assert bearer_call(server.url, fresh["access_token"]).status_code == 200
            httpx.post(f"{base}/revoke", data={"token": fresh["refresh_token"], "client_id": client_id})
            logs = server.logs()
        finally:
            stop_server(server)
    assert upstream_codes, "the browser passed the IdP callback"
    assert re.search(r"DEBUG", logs) and '"GET /oidc/callback?code=[redacted]' in logs, "debug access log is on"
    secrets_seen = [code, *upstream_codes, tokens["access_token"], tokens["refresh_token"],
                    fresh["access_token"], fresh["refresh_token"]]
    for value in secrets_seen:
        assert value not in logs, f"{value[:10]}… is in the log"
