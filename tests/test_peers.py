"""The test peers themselves: the real OIDC provider (tests/idp) and the provider fakes (tests/fakes).

If these fail, the OAuth tests that run against the peers prove nothing; so each peer's flow is
driven here with plain httpx, including the refusals a real provider makes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import ROOT
from tests.fakes.base import FakeProvider
from tests.fakes.providers import FAKES, FakeGitHub, FakeGoogle, FakeSalesforce
from tests.idp.launcher import LoginError, OidcProvider, login, pkce_pair, query_params

CB = "http://127.0.0.1:9/callback"  # nothing listens: login() stops at the redirect
RES_JWT, RES_OPAQUE = "http://127.0.0.1:9/mcp", "urn:sqlgate:opaque"


def browser() -> httpx.Client:
    return httpx.Client(timeout=10, follow_redirects=False, trust_env=False)


def url_with(base: str, **params: str) -> str:
    return str(httpx.URL(base, params=params))


# ====================================================================== the OIDC provider
@pytest.fixture(scope="module")
def idp():
    with OidcProvider(redirect_uris=[CB], resources=[f"{RES_JWT}=jwt", f"{RES_OPAQUE}=opaque"],
                      extra_clients={"second": "second-secret"}, access_token_ttl=120) as provider:
        yield provider
    assert provider.proc.returncode == 0, "SIGTERM ends the IdP cleanly"


@pytest.fixture(scope="module")
def realm():
    # redirect URIs from the environment (comma-separated), as a deployment script would pass them
    with OidcProvider(realm="sqlgate", registration=True,
                      env={"REDIRECT_URIS": f"{CB},http://127.0.0.1:9/other"}) as provider:
        yield provider


def code_flow(idp: OidcProvider, user: str = "alice", client=None, resource: str | None = None,
              scope: str = "openid profile email offline_access") -> tuple[dict, dict]:
    """Authorize (headless login) and redeem the code; returns (callback params, token reply)."""
    meta, (verifier, challenge) = idp.discovery(), pkce_pair()
    cid, secret = client or (idp.client_id, idp.client_secret)
    params = {"response_type": "code", "client_id": cid, "redirect_uri": CB, "scope": scope, "state": "st-1",
              "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256"}
    if resource:
        params["resource"] = resource
    with browser() as b:
        callback = query_params(login(b, url_with(meta["authorization_endpoint"], **params), user))
    form = {"grant_type": "authorization_code", "code": callback["code"], "redirect_uri": CB,
            "code_verifier": verifier, **({"resource": resource} if resource else {})}
    tokens = httpx.post(meta["token_endpoint"], data=form, auth=(cid, secret)).raise_for_status().json()
    return callback | {"verifier": verifier}, tokens


def token(idp: OidcProvider, form: dict, auth=None) -> httpx.Response:
    return httpx.post(idp.discovery()["token_endpoint"], data=form, auth=auth or (idp.client_id, idp.client_secret))


def test_idp_discovery_and_ready_line(idp):
    meta = idp.discovery()
    assert meta["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    assert "S256" in meta["code_challenge_methods_supported"]
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                "introspection_endpoint", "revocation_endpoint"):
        assert meta[key].startswith(idp.issuer), key
    assert "registration_endpoint" not in meta  # DCR only with registration=True
    assert idp.info["clients"] == ["sql-mcp", "second"] and idp.info["users"] == ["alice", "bob"]
    assert KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json()).keys


def test_idp_code_flow_pkce_userinfo_and_id_token(idp):
    callback, tokens = code_flow(idp)
    assert callback["state"] == "st-1" and callback["iss"] == idp.issuer  # RFC 9207
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys() and tokens["expires_in"] == 120
    meta = idp.discovery()
    info = httpx.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert info["sub"] == "alice"
    assert (info["preferred_username"], info["email"], info["name"]) == ("alice", "alice@example.test", "Alice Analyst")
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims
    assert (claims["iss"], claims["aud"], claims["nonce"], claims["sub"]) == (idp.issuer, "sql-mcp", "n-1", "alice")


def test_idp_userinfo_claims_come_with_plain_openid(idp):
    _, tokens = code_flow(idp, user="bob", scope="openid")
    info = httpx.get(idp.discovery()["userinfo_endpoint"],
                     headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert (info["preferred_username"], info["email"], info["name"]) == ("bob", "bob@example.test", "Bob Admin")
    assert "refresh_token" in tokens, "refresh tokens are issued without offline_access too"


def test_idp_jwt_access_token_for_a_resource(idp):
    _, tokens = code_flow(idp, resource=RES_JWT, scope="openid sql:read")  # resource scopes must be asked for
    keys = KeySet.import_key_set(httpx.get(idp.discovery()["jwks_uri"]).json())
    at = jwt.decode(tokens["access_token"], keys, algorithms=["RS256"])
    assert at.header["typ"] == "at+jwt"
    assert (at.claims["aud"], at.claims["sub"], at.claims["client_id"]) == (RES_JWT, "alice", "sql-mcp")
    assert at.claims["preferred_username"] == "alice" and "sql:read" in at.claims["scope"].split()


def test_idp_refresh_rotates_and_reuse_ends_the_grant(idp):
    _, tokens = code_flow(idp)
    first = tokens["refresh_token"]
    fresh = token(idp, {"grant_type": "refresh_token", "refresh_token": first}).raise_for_status().json()
    assert fresh["refresh_token"] != first and fresh["access_token"] != tokens["access_token"]
    replay = token(idp, {"grant_type": "refresh_token", "refresh_token": first})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # oidc-provider treats the reuse as theft: the newest refresh token is dead as well
    newest = token(idp, {"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]})
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"


def test_idp_introspection_and_revocation(idp):
    _, tokens = code_flow(idp, resource=RES_OPAQUE)
    meta = idp.discovery()
    at = tokens["access_token"]
    assert at.count(".") != 2, "an opaque-format resource gets an opaque token"
    intro = httpx.post(meta["introspection_endpoint"], data={"token": at}, auth=idp.introspector).json()
    assert intro["active"] is True
    assert (intro["sub"], intro["aud"], intro["client_id"]) == ("alice", RES_OPAQUE, "sql-mcp")
    wrong = httpx.post(meta["introspection_endpoint"], data={"token": at}, auth=(idp.introspector[0], "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    revoked = httpx.post(meta["revocation_endpoint"], data={"token": at}, auth=(idp.client_id, idp.client_secret))
    assert revoked.status_code == 200
    after = httpx.post(meta["introspection_endpoint"], data={"token": at}, auth=idp.introspector).json()
    assert after == {"active": False}


def test_idp_refuses_replay_wrong_verifier_secret_and_redirect(idp):
    callback, _ = code_flow(idp)
    form = {"grant_type": "authorization_code", "code": callback["code"], "redirect_uri": CB,
            "code_verifier": callback["verifier"]}
    assert token(idp, form).json()["error"] == "invalid_grant", "a code is single-use"
    meta, (_, challenge) = idp.discovery(), pkce_pair()
    params = {"response_type": "code", "client_id": idp.client_id, "redirect_uri": CB, "scope": "openid",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    with browser() as b:
        code = query_params(login(b, url_with(meta["authorization_endpoint"], **params)))["code"]
        bad = token(idp, {**form, "code": code, "code_verifier": pkce_pair()[0]})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
        evil = b.get(url_with(meta["authorization_endpoint"], **{**params, "redirect_uri": "http://127.0.0.1:9/evil"}))
        assert evil.status_code == 400 and not evil.is_redirect and "redirect_uri" in evil.text
        no_pkce = b.get(url_with(meta["authorization_endpoint"], **{k: v for k, v in params.items()
                                                                     if not k.startswith("code_")}))
        assert query_params(no_pkce.headers["location"])["error"] == "invalid_request"
    cc = {"grant_type": "client_credentials", "resource": RES_JWT}
    assert token(idp, cc, auth=(idp.client_id, "wrong")).status_code == 401
    assert token(idp, cc, auth=("second", "second-secret")).status_code == 200  # the extra client works
    with browser() as b, pytest.raises(LoginError, match="refused") as refused:
        login(b, url_with(meta["authorization_endpoint"], **params), "alice", "wrong-password")
    assert refused.value.response.status_code == 401


def test_idp_sso_cookie_and_login_through_a_proxy_redirect(idp):
    """login() starts at an OAuth proxy's /authorize (a 302 to the IdP) and stops when the IdP
    redirects back; a second login in the same browser is answered from the IdP session."""
    meta, (_, challenge) = idp.discovery(), pkce_pair()
    upstream = url_with(meta["authorization_endpoint"], response_type="code", client_id=idp.client_id,
                        redirect_uri=CB, scope="openid", state="up", code_challenge=challenge,
                        code_challenge_method="S256")
    proxy = httpx.MockTransport(lambda request: httpx.Response(302, headers={"Location": upstream}))
    with httpx.Client(mounts={"http://proxy.test": proxy}, follow_redirects=False, trust_env=False) as b:
        location = idp.login(b, "http://proxy.test/authorize?client_id=mcp-client", "bob")
        assert location.startswith(CB) and query_params(location)["state"] == "up"
        again = login(b, "http://proxy.test/authorize", "nobody", "never-asked")
        assert query_params(again)["code"] != query_params(location)["code"]


def test_idp_keycloak_realm_layout(realm):
    meta = realm.discovery()
    base = f"http://127.0.0.1:{realm.port}/realms/sqlgate"
    assert realm.issuer == meta["issuer"] == base
    oidc = f"{base}/protocol/openid-connect"
    assert (meta["authorization_endpoint"], meta["token_endpoint"], meta["userinfo_endpoint"], meta["jwks_uri"],
            meta["introspection_endpoint"], meta["revocation_endpoint"], meta["end_session_endpoint"]) == (
        f"{oidc}/auth", f"{oidc}/token", f"{oidc}/userinfo", f"{oidc}/certs", f"{oidc}/token/introspect",
        f"{oidc}/revoke", f"{oidc}/logout")
    assert meta["registration_endpoint"] == f"{base}/clients-registrations/openid-connect"
    assert httpx.get(f"http://127.0.0.1:{realm.port}/.well-known/openid-configuration").status_code == 404
    callback, tokens = code_flow(realm)
    assert callback["iss"] == base and "refresh_token" in tokens
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    assert jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims["iss"] == base
    # DCR: a public client registers and is known afterwards
    reg = httpx.post(meta["registration_endpoint"], json={"redirect_uris": [CB], "token_endpoint_auth_method": "none",
                                                          "grant_types": ["authorization_code", "refresh_token"]})
    assert reg.status_code == 201 and reg.json()["client_id"]
    assert realm.info["redirect_uris"] == [CB, "http://127.0.0.1:9/other"]


def test_idp_refuses_wildcard_redirect_uris():
    with pytest.raises(RuntimeError, match="no wildcards"):
        OidcProvider(env={"REDIRECT_URIS": "http://127.0.0.1:9/*"})


# ====================================================================== the provider fakes
SPECS = {  # authorize params a real client sends; user endpoint; (field, value) identifying alice
    "github": ({"scope": "read:user user:email"}, "/user", ("login", "alice")),
    "atlassian": ({"audience": "api.atlassian.com", "prompt": "consent", "scope": "read:me offline_access"},
                  "/me", ("nickname", "alice")),
    "salesforce": ({"scope": "api refresh_token openid"}, "/services/oauth2/userinfo",
                   ("preferred_username", "alice@example.test")),
    "google": ({"scope": "openid email profile", "access_type": "offline", "prompt": "consent"}, "/v1/userinfo",
               ("email", "alice@example.test")),
}
ERRORS = {  # (status, error) for: wrong secret, bad code, wrong verifier — as the real services answer
    "github": [(200, "incorrect_client_credentials"), (200, "bad_verification_code"), (200, "bad_verification_code")],
    "atlassian": [(401, "access_denied"), (403, "invalid_grant"), (403, "invalid_grant")],
    "salesforce": [(400, "invalid_client"), (400, "invalid_grant"), (400, "invalid_grant")],
    "google": [(401, "invalid_client"), (400, "invalid_grant"), (400, "invalid_grant")],
}


@pytest.fixture(params=list(FAKES))
def fake(request):
    with FAKES[request.param](f"{request.param}-id", f"{request.param}-secret", [CB]) as running:
        yield running
    assert not running.errors, running.errors[0]


def authorize_url(fake: FakeProvider, challenge: str | None = None, **extra: str) -> str:
    params = {"response_type": "code", "client_id": fake.client_id, "redirect_uri": CB, "state": "s1",
              **SPECS[fake.NAME][0], **extra}
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return url_with(fake.base_url + fake.AUTHORIZE_PATH, **params)


def get_code(fake: FakeProvider, challenge: str | None = None, user: str = "alice", **extra: str) -> str:
    with browser() as b:
        location = login(b, authorize_url(fake, challenge, **extra), user)
    params = query_params(location)
    assert location.startswith(CB) and params["state"] == "s1", location
    return params["code"]


def redeem(fake: FakeProvider, code: str, verifier: str | None = None, basic: bool = False,
           secret: str | None = None, **extra: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CB, **extra}
    if verifier:
        form["code_verifier"] = verifier
    creds = (fake.client_id, secret or fake.client_secret)
    auth = creds if basic else None
    if not basic:
        form |= {"client_id": creds[0], "client_secret": creds[1]}
    return httpx.post(fake.base_url + fake.TOKEN_PATH, data=form, auth=auth, headers={"Accept": "application/json"})


def user_info(fake: FakeProvider, access_token: str) -> httpx.Response:
    return httpx.get(fake.base_url + SPECS[fake.NAME][1], headers={"Authorization": f"Bearer {access_token}"})


def test_fake_full_flow(fake):
    verifier, challenge = pkce_pair()
    with browser() as b:
        page = b.get(authorize_url(fake, challenge))
        assert page.status_code == 200 and 'name="password"' in page.text  # a real login form
    tokens = redeem(fake, get_code(fake, challenge), verifier, basic=fake.NAME != "github")
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["access_token"] in fake.tokens and body["token_type"].lower() == "bearer"
    field, value = SPECS[fake.NAME][2]
    info = user_info(fake, body["access_token"])
    assert info.status_code == 200 and info.json()[field] == value
    assert user_info(fake, "not-a-token").status_code in (401, 403)


def test_fake_error_quirks(fake):
    expected = ERRORS[fake.NAME]
    verifier, challenge = pkce_pair()
    code = get_code(fake, challenge)
    wrong_secret = redeem(fake, code, verifier, secret="wrong")
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == expected[0]
    assert (bad := redeem(fake, "bogus", verifier)).status_code == expected[1][0]
    assert bad.json()["error"] == expected[1][1]
    wrong_verifier = redeem(fake, get_code(fake, challenge), pkce_pair()[0])
    assert (wrong_verifier.status_code, wrong_verifier.json()["error"]) == expected[2]
    # a code works once; its replay fails and revokes what the first redemption issued
    code = get_code(fake, challenge)
    first = redeem(fake, code, verifier).json()
    assert user_info(fake, first["access_token"]).status_code == 200
    replay = redeem(fake, code, verifier)
    assert (replay.status_code, replay.json()["error"]) == expected[1]
    assert user_info(fake, first["access_token"]).status_code in (401, 403)


def test_fake_login_form_and_redirect_checks(fake):
    with browser() as b:
        with pytest.raises(LoginError, match="refused") as refused:
            login(b, authorize_url(fake), "alice", "wrong-password")
        assert refused.value.response.status_code == 401
        evil = b.get(authorize_url(fake, redirect_uri="http://127.0.0.1:9/evil"))
        assert not (evil.is_redirect and evil.headers["location"].startswith("http://127.0.0.1:9/evil"))
        unknown = b.get(authorize_url(fake, client_id="someone-else"))
        assert unknown.status_code >= 400 and not unknown.is_redirect
        denied = b.get(authorize_url(fake, fake_deny="1"))  # the Cancel link
        assert query_params(denied.headers["location"])["error"] == "access_denied"
    # redirect_uri at the token endpoint must be the one used at /authorize
    code = get_code(fake)
    assert redeem(fake, code, redirect_uri="http://127.0.0.1:9/other").json()["error"] in (
        "redirect_uri_mismatch", "invalid_grant")


def test_fake_auto_login_and_short_lived_codes():
    with FakeGoogle("g", "g-secret", [CB], auto_login="bob", code_ttl=0.2) as google:
        with browser() as b:
            location = b.get(authorize_url(google)).headers["location"]  # no form: straight back
        code = query_params(location)["code"]
        assert query_params(location)["authuser"] == "0" and code.startswith("4/0A")
        time.sleep(0.3)
        assert redeem(google, code).json()["error"] == "invalid_grant", "codes are short-lived"
        body = redeem(google, get_code(google)).json()
        assert user_info(google, body["access_token"]).json()["email"] == "bob@example.test"


def test_github_quirks():
    with FakeGitHub("gh", "gh-secret", [CB]) as gh:
        verifier, challenge = pkce_pair()
        form = {"client_id": "gh", "client_secret": "gh-secret", "code": get_code(gh, challenge, user="bob"),
                "code_verifier": verifier}  # no grant_type, no redirect_uri: GitHub allows both
        reply = httpx.post(gh.base_url + gh.TOKEN_PATH, data=form)
        assert reply.headers["content-type"].startswith("application/x-www-form-urlencoded")
        body = dict(httpx.QueryParams(reply.text))
        at = body["access_token"]
        assert at.startswith("gho_") and "refresh_token" not in body and "expires_in" not in body
        assert body["scope"] == "read:user,user:email"
        user = httpx.get(gh.base_url + "/user", headers={"Authorization": f"token {at}"})
        assert user.json()["login"] == "bob" and user.json()["email"] is None, "bob's address is private"
        assert user.headers["X-OAuth-Scopes"] == "read:user, user:email"
        emails = httpx.get(gh.base_url + "/user/emails", headers={"Authorization": f"Bearer {at}"}).json()
        assert [e["email"] for e in emails if e["primary"] and e["verified"]] == ["bob@example.test"]
        bad = httpx.get(gh.base_url + "/user", headers={"Authorization": "Bearer gho_nope"})
        assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
        no_agent = httpx.get(gh.base_url + "/user", headers={"Authorization": f"Bearer {at}", "User-Agent": ""})
        assert no_agent.status_code == 403
        with browser() as b:  # a wrong redirect_uri goes back to the registered one, with an error
            wrong = b.get(authorize_url(gh, redirect_uri="http://127.0.0.1:9/evil"))
            assert wrong.headers["location"].startswith(CB)
            assert query_params(wrong.headers["location"])["error"] == "redirect_uri_mismatch"
        app = f"{gh.base_url}/applications/gh/token"
        assert httpx.post(app, json={"access_token": at}, auth=("gh", "gh-secret")).json()["user"]["login"] == "bob"
        assert httpx.request("DELETE", app, json={"access_token": at}, auth=("gh", "gh-secret")).status_code == 204
        assert httpx.get(gh.base_url + "/user", headers={"Authorization": f"Bearer {at}"}).status_code == 401


def test_github_expiring_tokens_refresh_and_rotate():
    with FakeGitHub("gh", "gh-secret", [CB], expiring=True) as gh:
        body = redeem(gh, get_code(gh)).json()
        assert body["access_token"].startswith("ghu_") and body["refresh_token"].startswith("ghr_")
        assert body["expires_in"] == 28800 and body["refresh_token_expires_in"] == 15897600
        form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "gh",
                "client_secret": "gh-secret"}
        fresh = httpx.post(gh.base_url + gh.TOKEN_PATH, data=form, headers={"Accept": "application/json"}).json()
        assert fresh["refresh_token"] != body["refresh_token"]
        again = httpx.post(gh.base_url + gh.TOKEN_PATH, data=form, headers={"Accept": "application/json"})
        assert again.status_code == 200 and again.json()["error"] == "bad_refresh_token"


def test_atlassian_quirks():
    with FAKES["atlassian"]("atl", "atl-secret", [CB]) as atl:
        with browser() as b:
            no_audience = b.get(authorize_url(atl, audience="somewhere.else"))
            assert no_audience.status_code == 400 and "audience" in no_audience.text
        verifier, challenge = pkce_pair()
        payload = {"grant_type": "authorization_code", "client_id": "atl", "client_secret": "atl-secret",
                   "code": get_code(atl, challenge), "redirect_uri": CB, "code_verifier": verifier}
        body = httpx.post(atl.base_url + "/oauth/token", json=payload).raise_for_status().json()  # a JSON body
        assert body["expires_in"] == 3600 and body["scope"] == "read:me offline_access"
        assert body["access_token"].count(".") == 2, "JWT-shaped (but opaque to clients)"
        me = user_info(atl, body["access_token"]).json()
        assert me["account_id"].startswith("5b10ac8d") and {"email", "name", "nickname", "picture"} <= me.keys()
        sites = httpx.get(atl.base_url + "/oauth/token/accessible-resources",
                          headers={"Authorization": f"Bearer {body['access_token']}"}).json()
        assert sites and {"id", "url", "name", "scopes"} <= sites[0].keys()
        refresh = {"grant_type": "refresh_token", "client_id": "atl", "client_secret": "atl-secret",
                   "refresh_token": body["refresh_token"]}
        fresh = httpx.post(atl.base_url + "/oauth/token", json=refresh).json()
        assert fresh["refresh_token"] != body["refresh_token"], "refresh tokens rotate"
        spent = httpx.post(atl.base_url + "/oauth/token", json=refresh)
        assert spent.status_code == 403 and spent.json()["error"] == "unauthorized_client"
        online = redeem(atl, get_code(atl, scope="read:me")).json()
        assert "refresh_token" not in online, "a refresh token only with offline_access"


def test_salesforce_quirks():
    with FakeSalesforce("sf", "sf-secret", [CB]) as sf:
        code = get_code(sf)
        assert code.endswith("==")
        body = redeem(sf, code).json()
        assert "expires_in" not in body and body["instance_url"] == sf.base_url and "!" in body["access_token"]
        mac = hmac.new(b"sf-secret", (body["id"] + body["issued_at"]).encode(), hashlib.sha256).digest()
        assert body["signature"] == base64.b64encode(mac).decode()
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        ident = httpx.get(body["id"], headers=bearer).json()
        assert (ident["username"], ident["email"], ident["display_name"]) == (
            "alice@example.test", "alice@example.test", "Alice Analyst")
        ui = user_info(sf, body["access_token"]).json()
        assert ui["user_id"] == ident["user_id"] and ui["organization_id"] == ident["organization_id"]
        assert httpx.get(body["id"].replace(ui["user_id"], "005000000000000AAA"), headers=bearer).status_code == 403
        refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
        fresh = httpx.post(sf.base_url + sf.TOKEN_PATH, data=refresh, auth=("sf", "sf-secret")).json()
        assert "refresh_token" not in fresh and fresh["access_token"] != body["access_token"]
        revoke = f"{sf.base_url}/services/oauth2/revoke"
        assert httpx.post(revoke, data={"token": body["refresh_token"]}).status_code == 200
        assert user_info(sf, fresh["access_token"]).status_code == 403, "revoking the refresh token ends its session"
        assert httpx.post(revoke, data={"token": "nope"}).json()["error"] == "unsupported_token_type"
        no_refresh = redeem(sf, get_code(sf, scope="api openid")).json()
        assert "refresh_token" not in no_refresh


def test_google_quirks():
    with FakeGoogle("g.apps.googleusercontent.com", "g-secret", [CB]) as google:
        with browser() as b:
            assert b.get(authorize_url(google, scope="")).status_code == 400  # scope is required
        body = redeem(google, get_code(google, nonce="n1")).json()
        assert body["expires_in"] == 3599 and body["access_token"].startswith("ya29.")
        assert body["scope"].split() == ["openid", "https://www.googleapis.com/auth/userinfo.email",
                                         "https://www.googleapis.com/auth/userinfo.profile"]
        meta = httpx.get(google.base_url + "/.well-known/openid-configuration").json()
        keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
        claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
        assert (claims["aud"], claims["email"], claims["nonce"]) == (google.client_id, "alice@example.test", "n1")
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        v3 = httpx.get(google.base_url + "/oauth2/v3/userinfo", headers=bearer)
        assert {"sub", "email", "email_verified", "name", "given_name", "picture"} <= v3.json().keys()
        info = httpx.get(google.base_url + "/tokeninfo", params={"access_token": body["access_token"]}).json()
        assert info["aud"] == google.client_id and info["email_verified"] == "true" and info["expires_in"].isdigit()
        refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": google.client_id,
                   "client_secret": "g-secret"}
        fresh = httpx.post(google.base_url + "/token", data=refresh).json()
        assert "refresh_token" not in fresh and "id_token" in fresh, "Google keeps the refresh token"
        assert httpx.post(google.base_url + "/revoke", data={"token": fresh["access_token"]}).json() == {}
        gone = httpx.post(google.base_url + "/token", data=refresh)  # revoking one token ended the grant
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
        bad = httpx.get(google.base_url + "/tokeninfo", params={"access_token": body["access_token"]})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"
        online = redeem(google, get_code(google, access_type="online")).json()
        assert "refresh_token" not in online, "a refresh token only with access_type=offline"


def test_fakes_run_as_a_subprocess():
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes", "github", "--redirect-uri", CB,
                             "--auto-login", "alice"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY "), ready
        info = json.loads(ready[6:])
        reply = httpx.get(info["base_url"] + "/login/oauth/authorize",
                          params={"client_id": info["client_id"], "redirect_uri": CB})
        assert reply.status_code == 302 and "code=" in reply.headers["location"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
