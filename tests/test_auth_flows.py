"""Full OAuth flows against a real OpenID provider (npm oidc-provider) on 127.0.0.1.

The official mcp client (OAuthClientProvider) discovers sqlgate's metadata, registers (DCR),
runs PKCE, passes sqlgate's consent page and the IdP's login form (headless browser), gets
tokens and calls tools whose SQL sees the IdP user. Then: refresh, revoke, and the negative paths.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import httpx
import pytest

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client, start_auth_server
from tests.browser import Browser
from tests.conftest import free_port, stop_server
from tests.idp.launcher import OidcProvider, pkce_pair

KEY = "test-encryption-key-0123456789abcdef"


def provider_config(kind: str, idp: OidcProvider, port: int) -> dict:
    if kind == "keycloak":
        server_url = idp.issuer.split("/realms/")[0]
        block = {"realm": "sqlgate", "server_url": server_url, "callback_path": "/keycloak/callback"}
    else:
        block = {"issuer": idp.issuer, "callback_path": "/oidc/callback"}
    return {"provider": kind, kind: {"client_id": idp.client_id, "client_secret": idp.client_secret, **block},
            "persistence": {"encryption_key": KEY},
            "authorization": {"required_scopes": ["sqlgate:access"]}}


def make_stack(kind: str, tmp, **auth_overrides) -> dict:
    port = free_port()
    idp = OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/{kind}/callback"],
                       realm="sqlgate" if kind == "keycloak" else None)
    auth = {**provider_config(kind, idp, port), **auth_overrides}
    auth["persistence"] = {**auth["persistence"], "path": str(tmp / "oauth.db")}
    server = start_auth_server(tmp, auth, port=port)
    return {"kind": kind, "idp": idp, "server": server, "tmp": tmp, "auth": auth, "port": port}


def drop_stack(stack: dict) -> None:
    stop_server(stack["server"])
    stack["idp"].stop()


@pytest.fixture(scope="module", params=["oidc", "keycloak"])
def stack(request, tmp_path_factory):
    built = make_stack(request.param, tmp_path_factory.mktemp(request.param))
    yield built
    drop_stack(built)


def login(stack, user="alice", storage=None):
    """Run the whole flow as `user`; returns the token storage (tokens + registered client)."""
    storage = storage or MemoryTokenStorage()
    browser = Browser(user, f"{user}-password")
    auth = oauth_client(stack["server"].url, browser, storage)
    res = anyio.run(call_tool, stack["server"].url, auth, "whoami")
    browser.close()
    assert not res.is_error, res.content
    assert res.structured_content["result"]["username"] == user
    return storage


def bearer_call(url: str, token: str, tool: str = "whoami", session: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    if session:
        headers["Mcp-Session-Id"] = session
    with httpx.Client(timeout=20) as http:
        if session is None:
            init = http.post(url, headers=headers, json={
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}})
            if init.status_code != 200:
                return init
            headers["Mcp-Session-Id"] = init.headers.get("mcp-session-id", "")
            http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                     "params": {"name": tool, "arguments": {}}})


def result_of(resp: httpx.Response) -> dict:
    import json

    text = resp.text
    if "text/event-stream" in resp.headers.get("content-type", ""):
        # the response, not the notifications (log messages, progress) sent before it on the stream
        messages = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
        return next(m for m in messages if "id" in m and ("result" in m or "error" in m))
    return json.loads(text)


def test_full_flow_identity_reaches_sql(stack):
    storage = login(stack, "alice")
    tokens = storage.tokens
    assert tokens.scope == "sqlgate:access" and tokens.refresh_token
    res = anyio.run(call_tool, stack["server"].url, oauth_client(stack["server"].url, Browser(), storage),
                    "query", {"sql": "SELECT get_username() AS u, get_user_email() AS e, get_user_provider() AS p"})
    assert res.structured_content["rows"] == [["alice", "alice@example.test", stack["kind"]]]
    # the upstream token is for the project author's endpoints, never for the model's SQL
    res = anyio.run(call_tool, stack["server"].url, oauth_client(stack["server"].url, Browser(), storage),
                    "query", {"sql": "SELECT get_user_external_token()"})
    assert res.is_error and "only available to SQL written by the project author" in res.content[0].text
    res = anyio.run(call_tool, stack["server"].url, oauth_client(stack["server"].url, Browser(), storage),
                    "upstream_identity")
    assert res.structured_content["result"]["t"]
    logs = stack["server"].logs()
    assert "tool query by alice (id=alice" in logs and "email=alice@example.test" in logs
    assert tokens.access_token not in logs


def test_each_request_runs_as_its_own_token(stack):
    alice = login(stack, "alice").tokens.access_token
    bob = login(stack, "bob").tokens.access_token
    url = stack["server"].url
    first = bearer_call(url, alice)
    assert result_of(first)["result"]["structuredContent"]["result"]["username"] == "alice"
    session = first.request.headers["mcp-session-id"]
    # Bob's token on Alice's session: runs as Bob or is refused — never as Alice
    reused = bearer_call(url, bob, session=session)
    if reused.status_code == 200:
        assert result_of(reused)["result"]["structuredContent"]["result"]["username"] == "bob"
    else:
        assert reused.status_code in (400, 401, 403, 404)


def test_refresh_then_revoke(stack):
    storage = login(stack, "alice")
    base, client_id = stack["server"].base, storage.client.client_id
    r = httpx.post(f"{base}/token", data={"grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
                                          "client_id": client_id})
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert fresh["access_token"] != storage.tokens.access_token and fresh["scope"] == "sqlgate:access"
    # rotation: a new refresh token; the used one, presented again within the grace window (a lost
    # response), gets the same pair — never a second one
    assert fresh["refresh_token"] != storage.tokens.refresh_token
    retried = httpx.post(f"{base}/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                "refresh_token": storage.tokens.refresh_token})
    assert retried.status_code == 200, retried.text
    assert (retried.json()["access_token"], retried.json()["refresh_token"]) == \
        (fresh["access_token"], fresh["refresh_token"])
    ok = bearer_call(stack["server"].url, fresh["access_token"])
    assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "alice"
    # the refresh token belongs to this client only
    other = httpx.post(f"{base}/register", json={"redirect_uris": ["http://127.0.0.1:1234/cb"],
                                                 "token_endpoint_auth_method": "none"}).json()["client_id"]
    refresh = fresh.get("refresh_token") or storage.tokens.refresh_token
    stolen = httpx.post(f"{base}/token", data={"grant_type": "refresh_token", "client_id": other,
                                               "refresh_token": refresh})
    assert stolen.status_code in (400, 401) and stolen.json()["error"] in ("invalid_grant", "invalid_client")
    # revoke (RFC 7009), then the token is dead
    r = httpx.post(f"{base}/revoke", data={"token": fresh["access_token"], "client_id": client_id})
    assert r.status_code == 200, r.text
    dead = bearer_call(stack["server"].url, fresh["access_token"])
    assert dead.status_code == 401 and 'error="invalid_token"' in dead.headers["www-authenticate"]


def test_code_replay_and_wrong_verifier_are_refused(stack):
    """Drive /authorize by hand to hold the code, then misuse it."""
    import secrets

    base = stack["server"].base
    redirect = "http://127.0.0.1:45998/callback"
    client_id = httpx.post(f"{base}/register", json={"redirect_uris": [redirect],
                                                     "token_endpoint_auth_method": "none"}).json()["client_id"]
    code, verifier = _authorize_by_hand(base, client_id, redirect, "sqlgate:access")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": client_id}
    bad = httpx.post(f"{base}/token", data={**form, "code_verifier": secrets.token_urlsafe(48)})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant", bad.text
    good = httpx.post(f"{base}/token", data={**form, "code_verifier": verifier})
    replay = httpx.post(f"{base}/token", data={**form, "code_verifier": verifier})
    # invalid_grant is HTTP 400 (RFC 6749 §5.2); a wrong verifier does not spend the code
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text
    assert good.status_code == 200, good.text


def test_idp_token_is_not_accepted_by_sqlgate(stack):
    """A token the IdP issued (another audience) is not one of ours: 401 invalid_token."""
    idp = stack["idp"]
    meta = idp.discovery()
    token = httpx.post(meta["token_endpoint"], data={"grant_type": "client_credentials", "scope": "openid"},
                       auth=(idp.client_id, idp.client_secret))
    if token.status_code != 200:
        pytest.skip(f"IdP refused client_credentials: {token.text}")
    r = bearer_call(stack["server"].url, token.json()["access_token"])
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_expired_access_token_is_401(tmp_path):
    ttl = 5  # access_token_ttl's minimum
    stack = make_stack("oidc", tmp_path, access_token_ttl=ttl)
    try:
        token = login(stack, "alice").tokens.access_token
        issued = time.monotonic()  # the token was issued before this
        assert bearer_call(stack["server"].url, token).status_code == 200
        time.sleep(max(0.0, issued + ttl + 1 - time.monotonic()))
        r = bearer_call(stack["server"].url, token)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    finally:
        drop_stack(stack)


def test_state_survives_kill_9_and_is_encrypted(tmp_path):
    stack = make_stack("keycloak", tmp_path)
    try:
        _kill_restart_and_reuse(stack)
    finally:
        drop_stack(stack)


def _kill_restart_and_reuse(stack: dict) -> None:
    tokens = login(stack, "bob").tokens
    server = stack["server"]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    db = stack["tmp"] / "oauth.db"
    assert (os.stat(db).st_mode & 0o777) == 0o600
    raw = b"".join(p.read_bytes() for p in stack["tmp"].glob("oauth.db*") if p.is_file())
    for secret in (tokens.access_token, tokens.refresh_token, "bob@example.test", stack["idp"].client_secret):
        assert secret.encode() not in raw, f"{secret[:12]}… stored in plaintext"
    auth = stack["auth"]
    restarted = start_auth_server(stack["tmp"], {**auth, "persistence": {**auth["persistence"],
                                                                         "path": str(db)}}, port=stack["port"])
    stack["server"] = restarted
    r = bearer_call(restarted.url, tokens.access_token)
    assert r.status_code == 200, r.text
    assert result_of(r)["result"]["structuredContent"]["result"]["username"] == "bob"


def _authorize_by_hand(base: str, client_id: str, redirect: str, scope: str,
                       user: str = "alice") -> tuple[str, str]:
    """Run /authorize with PKCE through consent and login; returns (code, code_verifier)."""
    from tests.browser import query_of

    verifier, challenge = pkce_pair()
    browser = Browser(user, f"{user}-password")
    url = httpx.URL(f"{base}/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "st", "scope": scope,
        "code_challenge": challenge, "code_challenge_method": "S256"})
    code = query_of(browser.run(str(url), redirect))["code"]
    browser.close()
    return code, verifier


def _manual_code_flow(base: str, client_id: str, redirect: str, scope: str, user: str = "alice",
                      client_secret: str | None = None) -> httpx.Response:
    """Authorize by hand (PKCE) and exchange the code; returns the token response."""
    code, verifier = _authorize_by_hand(base, client_id, redirect, scope, user)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": client_id,
            "code_verifier": verifier}
    if client_secret is not None:
        form["client_secret"] = client_secret
    return httpx.post(f"{base}/token", data=form)


def test_required_scopes_give_403_insufficient_scope(tmp_path):
    stack = make_stack("oidc", tmp_path, scopes=["sqlgate:access", "sqlgate:admin"],
                       authorization={"required_scopes": ["sqlgate:admin"]})
    try:
        base, redirect = stack["server"].base, "http://127.0.0.1:45997/callback"
        client_id = httpx.post(f"{base}/register", json={
            "redirect_uris": [redirect], "scope": "sqlgate:access sqlgate:admin",
            "token_endpoint_auth_method": "none"}).json()["client_id"]
        narrow = _manual_code_flow(base, client_id, redirect, "sqlgate:access").json()
        assert narrow["scope"] == "sqlgate:access"
        r = bearer_call(stack["server"].url, narrow["access_token"])
        assert r.status_code == 403
        www = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in www and "sqlgate:admin" in www and "resource_metadata=" in www
        wide = _manual_code_flow(base, client_id, redirect, "sqlgate:access sqlgate:admin").json()
        assert set(wide["scope"].split()) == {"sqlgate:access", "sqlgate:admin"}
        ok = bearer_call(stack["server"].url, wide["access_token"])
        assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "alice"
    finally:
        drop_stack(stack)


def test_pre_registered_confidential_client(tmp_path):
    redirect = "https://reports.example.test/oauth/callback"
    stack = make_stack("oidc", tmp_path, clients=[{
        "client_id": "reports-app", "client_secret": "reports-secret", "name": "Reports App",
        "redirect_uris": [redirect]}])
    try:
        base = stack["server"].base
        wrong = _manual_code_flow(base, "reports-app", redirect, "sqlgate:access", client_secret="nope")
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        good = _manual_code_flow(base, "reports-app", redirect, "sqlgate:access", client_secret="reports-secret")
        assert good.status_code == 200, good.text
        r = bearer_call(stack["server"].url, good.json()["access_token"])
        assert result_of(r)["result"]["structuredContent"]["result"]["username"] == "alice"
        # configuration is its source: nothing about it is persisted
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("oauth.db*") if p.is_file())
        assert b"reports-app" not in raw
    finally:
        drop_stack(stack)


def test_token_for_another_audience_is_refused(tmp_path):
    """Two sqlgate servers sharing one key and state: a token minted for A is no good at B (RFC 8707)."""
    stack = make_stack("oidc", tmp_path)
    other = None
    try:
        token = login(stack, "alice").tokens.access_token
        assert bearer_call(stack["server"].url, token).status_code == 200
        other_tmp = tmp_path / "other"
        other_tmp.mkdir()
        other = start_auth_server(other_tmp, stack["auth"])  # same key and state db, another port = resource
        r = bearer_call(other.url, token)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    finally:
        if other is not None:
            stop_server(other)
        drop_stack(stack)
