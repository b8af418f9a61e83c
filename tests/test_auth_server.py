"""The authorization server's own behaviour: metadata, DCR policy, PKCE, consent, callback, 401s.

These need no working upstream login, so the upstream is a GitHub configuration pointing at a
closed port; the full login flows are in test_auth_flows.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.auth_support import auth_project, start_auth_server
from tests.conftest import stop_server

DEAD = "http://127.0.0.1:9"
GITHUB = {"provider": "github", "github": {"client_id": "gh-app", "client_secret": "gh-secret",
                                           "auth_url": f"{DEAD}/login/oauth/authorize",
                                           "token_url": f"{DEAD}/login/oauth/access_token", "api_base_url": DEAD},
          "allowed_redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
          "authorization": {"required_scopes": ["sqlgate:access"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("as")
    srv = start_auth_server(tmp, GITHUB)
    srv.tmp = tmp
    yield srv
    stop_server(srv)


def register(server, redirect_uris, **extra):
    return httpx.post(f"{server.base}/register", json={"client_name": "probe", "redirect_uris": redirect_uris,
                                                        "grant_types": ["authorization_code", "refresh_token"],
                                                        "response_types": ["code"],
                                                        "token_endpoint_auth_method": "none", **extra})


def test_unauthenticated_call_is_401_with_resource_metadata(server):
    r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401
    www = r.headers["www-authenticate"]
    assert www.startswith("Bearer ")
    assert f'resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"' in www


def test_protected_resource_and_authorization_server_metadata(server):
    prm = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/mcp").json()
    assert prm["resource"] == server.url
    assert prm["scopes_supported"] == ["sqlgate:access"]
    issuer = prm["authorization_servers"][0]
    meta = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        assert meta[key].startswith(server.base), key


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5173/callback", "http://localhost:61234/cb",
                                 "http://[::1]:4000/oauth", "https://claude.ai/api/mcp/auth_callback"])
def test_registration_accepts_loopback_and_allow_listed_https(server, uri):
    r = register(server, [uri])
    assert r.status_code == 201, r.text
    assert r.json()["redirect_uris"] == [uri]


@pytest.mark.parametrize("uri", ["https://evil.example/callback", "http://evil.example/cb",
                                 "https://claude.ai.evil.example/api/mcp/auth_callback",
                                 "javascript:alert(1)", "http://192.168.1.5:8080/cb"])
def test_registration_refuses_other_redirects(server, uri):
    r = register(server, [uri])
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def _authorize(server, client_id, redirect, **params):
    q = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s1",
         "scope": "sqlgate:access", **params}
    return httpx.get(f"{server.base}/authorize", params={k: v for k, v in q.items() if v is not None})


def test_authorize_requires_pkce_and_registered_redirect(server):
    redirect = "http://127.0.0.1:5173/callback"
    client_id = register(server, [redirect]).json()["client_id"]
    r = _authorize(server, client_id, redirect)  # no code_challenge
    assert r.status_code in (302, 400)
    if r.status_code == 302:
        assert "error=invalid_request" in r.headers["location"]
    else:
        assert "code_challenge" in r.text
    r = _authorize(server, client_id, "http://127.0.0.1:5173/other", code_challenge="x" * 43,
                   code_challenge_method="S256")
    assert r.status_code == 400 and "location" not in r.headers
    r = _authorize(server, client_id, redirect, code_challenge="x" * 43, code_challenge_method="plain")
    assert r.status_code in (302, 400)
    assert "consent" not in r.headers.get("location", "")


def test_consent_page_shows_client_and_scopes_and_needs_csrf(server):
    redirect = "http://127.0.0.1:5173/callback"
    client_id = register(server, [redirect], client_name="Reporting Bot").json()["client_id"]
    browser = httpx.Client(follow_redirects=False)
    r = browser.get(f"{server.base}/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s1",
        "scope": "sqlgate:access", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256"})
    assert r.status_code == 302 and "/consent?txn_id=" in r.headers["location"]
    page = browser.get(r.headers["location"] if r.headers["location"].startswith("http")
                       else f"{server.base}{r.headers['location']}")
    assert page.status_code == 200 and "<form" in page.text
    assert "Reporting Bot" in page.text and "sqlgate:access" in page.text
    txn = r.headers["location"].split("txn_id=")[1]
    # approving without the CSRF token is refused, and nothing is sent upstream
    r = browser.post(f"{server.base}/consent", data={"txn_id": txn, "action": "approve"})
    assert r.status_code in (400, 403)
    assert "127.0.0.1:9" not in r.headers.get("location", "")


def test_callback_with_bad_state_is_a_readable_400(server):
    r = httpx.get(f"{server.base}/github/callback", params={"code": "abc", "state": "tampered"})
    assert r.status_code == 400
    assert "text/html" in r.headers["content-type"]
    assert "Internal Server Error" not in r.text


def test_token_in_query_string_is_refused(server):
    r = httpx.post(f"{server.url}?access_token=whatever", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401


def test_garbage_bearer_token_is_invalid_token(server):
    r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Authorization": "Bearer not-a-token", "Accept": "application/json, text/event-stream"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_health_stays_open_and_state_db_is_private(server):
    assert httpx.get(f"{server.base}/healthz").status_code == 200
    db = server.tmp / "oauth.db"
    assert db.exists() and (os.stat(db).st_mode & 0o777) == 0o600
    key = server.tmp / "oauth.db.key"
    assert key.exists() and (os.stat(key).st_mode & 0o777) == 0o600
    assert "generated one into" in server.logs()


# the team's probe (../shared/tools/auth_probe.py), copied verbatim so a clean clone runs it too
PROBE = Path(__file__).parent / "vendor" / "auth_probe.py"
SHARED_PROBE = Path(__file__).parent.parent.parent / "shared" / "tools" / "auth_probe.py"


def test_auth_probe_reports_no_failures(server):
    proc = subprocess.run([sys.executable, str(PROBE), "--url", server.url], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'FAILURE': 0" in proc.stdout


def test_the_probe_copy_is_the_teams_probe():
    if SHARED_PROBE.exists():  # beside the team's tree: the copy must not drift from it
        assert PROBE.read_bytes() == SHARED_PROBE.read_bytes(), "copy ../shared/tools/auth_probe.py again"
    assert "Server-side MCP authorization probe" in PROBE.read_text()


# ------------------------------------------------------------------ configuration errors
def _validate(tmp_path, auth, **env):
    project, base_env, _ = auth_project(tmp_path, auth)
    return subprocess.run([sys.executable, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http"],
                          capture_output=True, text=True, env={**base_env, **env}, timeout=60)


def test_incomplete_provider_config_names_what_is_missing(tmp_path):
    proc = _validate(tmp_path, {"provider": "github", "github": {"client_id": "x"}})
    assert proc.returncode == 2
    assert "GitHub OAuth configuration is incomplete: client_secret missing" in proc.stderr


def test_missing_env_var_is_named(tmp_path):
    proc = _validate(tmp_path, {"provider": "github",
                                "github": {"client_id": "${GITHUB_CLIENT_ID}", "client_secret": "s"}})
    assert proc.returncode == 2 and "Environment variable GITHUB_CLIENT_ID is not set" in proc.stderr


def test_unknown_provider_never_falls_back_to_no_auth(tmp_path):
    proc = _validate(tmp_path, {"provider": "githib"})
    assert proc.returncode == 2 and "auth.provider" in proc.stderr and "githib" in proc.stderr


def test_keycloak_needs_realm_and_server(tmp_path):
    proc = _validate(tmp_path, {"provider": "keycloak", "keycloak": {"client_id": "a", "client_secret": "b"}})
    assert proc.returncode == 2
    assert "Keycloak OAuth configuration is incomplete: realm, server_url missing" in proc.stderr


def test_reverse_proxy_base_url_shapes_every_external_url(tmp_path):
    srv = start_auth_server(tmp_path, GITHUB, transport={"base_url": "https://sql.example.com",
                                                         "scheme": "https", "trust_proxy": True})
    try:
        prm = httpx.get(f"{srv.base}/.well-known/oauth-protected-resource/mcp").json()
        assert prm["resource"] == "https://sql.example.com/mcp"
        assert prm["authorization_servers"][0].rstrip("/") == "https://sql.example.com"
        meta = httpx.get(f"{srv.base}/.well-known/oauth-authorization-server").json()
        assert meta["authorization_endpoint"] == "https://sql.example.com/authorize"
        r = httpx.post(srv.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                       headers={"Accept": "application/json, text/event-stream",
                                "X-Forwarded-Proto": "https", "X-Forwarded-Host": "sql.example.com"})
        assert r.status_code == 401
        assert "https://sql.example.com/.well-known/oauth-protected-resource/mcp" in r.headers["www-authenticate"]
        # the upstream callback the IdP is sent to is the public one
        redirect = "http://127.0.0.1:5173/callback"
        client_id = register(srv, [redirect]).json()["client_id"]
        browser = httpx.Client(follow_redirects=False)
        r = browser.get(f"{srv.base}/authorize", params={
            "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s",
            "scope": "sqlgate:access", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256"})
        consent = r.headers["location"]
        assert consent.startswith("https://sql.example.com/consent?txn_id=")
    finally:
        stop_server(srv)
