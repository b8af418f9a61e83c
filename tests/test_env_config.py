"""Every auth mode driven by environment variables alone (no user config file), end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client
from tests.browser import Browser
from tests.conftest import copy_shop, free_port, isolated_env, start_server, stop_server
from tests.idp.launcher import OidcProvider
from tests.test_resource_server import refused, username, whoami


@pytest.fixture(scope="module")
def project(tmp_path_factory):

    root = tmp_path_factory.mktemp("envproj") / "shop"
    copy_shop(root)
    return root


def serve_with_env(project, tmp, port, **env):
    return start_server(project, tmp, env=isolated_env(tmp, **env), port=port)


def test_jwt_mode_from_env(project, tmp_path):
    port = free_port()
    secret = "env-configured-shared-secret-0123456789"
    server = serve_with_env(project, tmp_path, port, SQLGATE_AUTH_MODE="jwt", SQLGATE_AUTH_SECRET=secret,
                            SQLGATE_AUTH_ALGORITHM="HS256", SQLGATE_AUTH_ISSUER="https://iss.test",
                            SQLGATE_AUTH_USERNAME_CLAIM="email")
    try:
        now = int(time.time())
        token = jwt.encode({"alg": "HS256"}, {"iss": "https://iss.test", "aud": f"http://127.0.0.1:{port}/mcp",
                                              "sub": "s", "email": "env@example.test", "exp": now + 60},
                           OctKey.import_key(secret.encode()))
        assert username(whoami(server.url, token)) == "env@example.test"
        assert refused(whoami(server.url, token[:-3] + "abc"))
        prm = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/mcp").json()
        assert prm["authorization_servers"] == ["https://iss.test"]
    finally:
        stop_server(server)


def test_remote_and_introspection_modes_from_env(project, tmp_path):
    with OidcProvider(redirect_uris=["http://127.0.0.1:45980/callback"],
                      resources=["urn:sqlgate:opaque=opaque"]) as idp:
        meta = idp.discovery()
        port = free_port()
        server = serve_with_env(
            project, tmp_path, port, SQLGATE_AUTH_MODE="introspection",
            SQLGATE_AUTH_INTROSPECTION_URL=meta["introspection_endpoint"],
            SQLGATE_AUTH_INTROSPECTION_CLIENT_ID=f"{idp.client_id}-introspector",
            SQLGATE_AUTH_INTROSPECTION_CLIENT_SECRET=f"{idp.client_secret}-introspector",
            SQLGATE_AUTH_INTROSPECTION_TIMEOUT="5", SQLGATE_AUTH_AUTHORIZATION_SERVERS=idp.issuer,
            SQLGATE_AUTH_INTROSPECTION_AUDIENCE="urn:sqlgate:other,urn:sqlgate:opaque",
            SQLGATE_AUTH_RESOURCE_NAME="Shop via env", SQLGATE_AUTH_RESOURCE_DOCUMENTATION="https://docs.example/shop")
        try:
            token = httpx.post(meta["token_endpoint"], data={"grant_type": "client_credentials", "scope": "sql:read",
                                                             "resource": "urn:sqlgate:opaque"},
                               auth=(idp.client_id, idp.client_secret)).json()["access_token"]
            assert username(whoami(server.url, token)) == idp.client_id
            prm = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/mcp").json()
            assert prm["authorization_servers"] == [idp.issuer] and prm["resource_name"] == "Shop via env"
            assert prm["resource_documentation"] == "https://docs.example/shop"
        finally:
            stop_server(server)


def test_proxy_mode_from_env(project, tmp_path):
    port = free_port()
    with OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/auth/callback"]) as idp:
        meta = idp.discovery()
        server = serve_with_env(
            project, tmp_path, port, SQLGATE_AUTH_MODE="proxy",
            SQLGATE_AUTH_UPSTREAM_AUTHORIZATION_ENDPOINT=meta["authorization_endpoint"],
            SQLGATE_AUTH_UPSTREAM_TOKEN_ENDPOINT=meta["token_endpoint"],
            SQLGATE_AUTH_UPSTREAM_REVOCATION_ENDPOINT=meta["revocation_endpoint"],
            SQLGATE_AUTH_UPSTREAM_USERINFO_ENDPOINT=meta["userinfo_endpoint"],
            SQLGATE_AUTH_UPSTREAM_CLIENT_ID=idp.client_id, SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET=idp.client_secret,
            SQLGATE_AUTH_REDIRECT_PATH="/auth/callback", SQLGATE_AUTH_VALID_SCOPES="sqlgate:access",
            SQLGATE_AUTH_ALLOWED_CLIENT_REDIRECT_URIS="https://claude.ai/api/mcp/auth_callback",
            SQLGATE_AUTH_FORWARD_PKCE="true", SQLGATE_AUTH_TOKEN_ENDPOINT_AUTH_METHOD="client_secret_basic",
            SQLGATE_AUTH_EXTRA_AUTHORIZE_PARAMS='{"ui_locales": "en"}',
            SQLGATE_AUTH_SERVICE_DOCUMENTATION_URL="https://docs.example/sqlgate",
            SQLGATE_AUTH_STATE_PATH=str(tmp_path / "oauth.db"), SQLGATE_AUTH_ENCRYPTION_KEY="env-key")
        try:
            browser = Browser("alice", "alice-password")
            res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, MemoryTokenStorage()), "whoami")
            browser.close()
            assert res.structured_content["result"]["username"] == "alice"
            assert any("ui_locales=en" in str(url) for _, url in browser.pages)
            meta_ours = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
            assert meta_ours["service_documentation"] == "https://docs.example/sqlgate"
        finally:
            stop_server(server)


# a proxy configuration that needs no upstream to start (the state store is opened at start-up)
PROXY = {"SQLGATE_AUTH_MODE": "proxy",
         "SQLGATE_AUTH_UPSTREAM_CLIENT_ID": "a", "SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET": "b",
         "SQLGATE_AUTH_UPSTREAM_AUTHORIZATION_ENDPOINT": "http://127.0.0.1:9/authorize",
         "SQLGATE_AUTH_UPSTREAM_TOKEN_ENDPOINT": "http://127.0.0.1:9/token",
         "SQLGATE_AUTH_UPSTREAM_USERINFO_ENDPOINT": "http://127.0.0.1:9/userinfo"}


@pytest.mark.parametrize(("env", "message"), [
    ({"SQLGATE_AUTH_MODE": "jwtt"}, "SQLGATE_AUTH_MODE='jwtt' is not one of"),
    ({"SQLGATE_AUTH_MODE": "jwt"}, "needs SQLGATE_AUTH_PUBLIC_KEY or SQLGATE_AUTH_JWKS_URI or SQLGATE_AUTH_SECRET"),
    ({"SQLGATE_AUTH_MODE": "jwt", "SQLGATE_AUTH_SECRET": "s", "SQLGATE_AUTH_ISUER": "x"},
     "unknown environment variable(s) SQLGATE_AUTH_ISUER"),
    ({"SQLGATE_AUTH_JWKS_URI": "http://x"}, "SQLGATE_AUTH_MODE is not"),
    ({"SQLGATE_AUTH_MODE": "proxy", "SQLGATE_AUTH_UPSTREAM_CLIENT_ID": "a"},
     "needs SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET"),
    ({"SQLGATE_AUTH_MODE": "proxy", "SQLGATE_AUTH_UPSTREAM_CLIENT_ID": "a", "SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET": "b",
      "SQLGATE_AUTH_EXTRA_TOKEN_PARAMS": "{nope"}, "SQLGATE_AUTH_EXTRA_TOKEN_PARAMS is not valid JSON"),
    ({**PROXY, "SQLGATE_AUTH_PERSISTENCE_TYPE": "postgres"},
     "persistence type postgres needs dsn and encryption_key (env: SQLGATE_AUTH_PERSISTENCE_DSN"),
    ({**PROXY, "SQLGATE_AUTH_PERSISTENCE_TYPE": "postgres", "SQLGATE_AUTH_ENCRYPTION_KEY": "k",
      "SQLGATE_AUTH_PERSISTENCE_DSN": "postgresql://sqlgate:pw-not-shown@127.0.0.1:1/oauth"},
     "cannot open the OAuth state database user=sqlgate dbname=oauth host=127.0.0.1 port=1"),
])
def test_env_mistakes_stop_the_server(project, tmp_path, env, message):
    proc = subprocess.run([sys.executable, "-m", "sqlgate", "serve", "-p", str(project), "--transport", "http"],
                          capture_output=True, text=True, env=isolated_env(tmp_path, **env), timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "pw-not-shown" not in proc.stderr


def test_config_show_masks_secrets(project, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sqlgate", "config", "show", "--auth", "-p", str(project)],
                          capture_output=True, text=True, timeout=60, env=isolated_env(
                              tmp_path, SQLGATE_AUTH_MODE="proxy", SQLGATE_AUTH_UPSTREAM_CLIENT_ID="app",
                              SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET="very-secret", SQLGATE_AUTH_UPSTREAM_ISSUER="https://i",
                              SQLGATE_AUTH_BASE_URL="https://sql.example.com"))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["mode"] == "proxy" and shown["base_url"] == "https://sql.example.com"
    assert shown["auth"]["oidc"]["client_secret"] == "***" and "very-secret" not in proc.stdout


def test_remote_mode_from_env_with_idp_jwt(project, tmp_path):
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with OidcProvider(redirect_uris=["http://127.0.0.1:45981/callback"], resources=[f"{resource}=jwt"]) as idp:
        meta = idp.discovery()
        server = serve_with_env(project, tmp_path, port, SQLGATE_AUTH_MODE="remote",
                                SQLGATE_AUTH_AUTHORIZATION_SERVERS=idp.issuer, SQLGATE_AUTH_JWKS_URI=meta["jwks_uri"],
                                SQLGATE_AUTH_ISSUER=idp.issuer, SQLGATE_AUTH_AUDIENCE=resource)
        try:
            token = httpx.post(meta["token_endpoint"], data={"grant_type": "client_credentials", "scope": "sql:read",
                                                             "resource": resource},
                               auth=(idp.client_id, idp.client_secret)).json()["access_token"]
            assert username(whoami(server.url, token)) == idp.client_id
            prm = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/mcp").json()
            assert prm["authorization_servers"] == [idp.issuer]
        finally:
            stop_server(server)


def test_registration_limits_and_cimd_from_env(project, tmp_path):
    port = free_port()
    dead = "http://127.0.0.1:9"
    server = serve_with_env(
        project, tmp_path, port, SQLGATE_AUTH_MODE="proxy", SQLGATE_AUTH_UPSTREAM_CLIENT_ID="app",
        SQLGATE_AUTH_UPSTREAM_CLIENT_SECRET="secret", SQLGATE_AUTH_UPSTREAM_AUTHORIZATION_ENDPOINT=f"{dead}/a",
        SQLGATE_AUTH_UPSTREAM_TOKEN_ENDPOINT=f"{dead}/t", SQLGATE_AUTH_UPSTREAM_USERINFO_ENDPOINT=f"{dead}/u",
        SQLGATE_AUTH_STATE_PATH=str(tmp_path / "oauth.db"), SQLGATE_AUTH_ENCRYPTION_KEY="env-key",
        SQLGATE_AUTH_REGISTRATION_RATE_LIMIT="2", SQLGATE_AUTH_REGISTRATION_RATE_WINDOW_SECONDS="300",
        SQLGATE_AUTH_REGISTRATION_MAX_CLIENT_NAME_LENGTH="10", SQLGATE_AUTH_CIMD_ENABLED="false")
    try:
        def register(name: str) -> httpx.Response:
            body = {"client_name": name, "token_endpoint_auth_method": "none",
                    "redirect_uris": ["http://127.0.0.1:5173/cb"]}
            return httpx.post(f"{server.base}/register", json=body)

        long = register("a-long-client-name")
        assert long.status_code == 400 and "client_name" in long.json()["error_description"]
        assert register("short").status_code == 201
        limited = register("short")
        assert limited.status_code == 429 and 250 <= int(limited.headers["retry-after"]) <= 300
        meta = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
        assert not meta.get("client_id_metadata_document_supported")
    finally:
        stop_server(server)


def test_refresh_timing_settings_from_env():
    from sqlgate.config.env_auth import auth_from_env

    auth, _transport = auth_from_env({"SQLGATE_AUTH_MODE": "jwt", "SQLGATE_AUTH_SECRET": "s" * 32,
                                      "SQLGATE_AUTH_REFRESH_GRACE_SECONDS": "15",
                                      "SQLGATE_AUTH_UPSTREAM_REFRESH_MARGIN_SECONDS": "120"})
    assert auth["refresh_grace_seconds"] == "15" and auth["upstream_refresh_margin_seconds"] == "120"
