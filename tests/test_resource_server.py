"""Resource-server modes: JWT (JWKS, static PEM, HS256), introspection, remote AS, and both at once."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from joserfc.jws import JWSRegistry

from tests.auth_support import MemoryTokenStorage, call_tool, oauth_client, start_auth_server
from tests.browser import Browser
from tests.conftest import free_port, stop_server
from tests.idp.launcher import OidcProvider
from tests.test_auth_flows import bearer_call, result_of


def whoami(url: str, token: str) -> httpx.Response:
    return bearer_call(url, token)


def username(resp: httpx.Response) -> str:
    assert resp.status_code == 200, (resp.status_code, resp.headers.get("www-authenticate"), resp.text)
    return result_of(resp)["result"]["structuredContent"]["result"]["username"]


def refused(resp: httpx.Response) -> bool:
    return resp.status_code == 401 and 'error="invalid_token"' in resp.headers.get("www-authenticate", "")


@pytest.fixture(scope="module")
def idp_stack(tmp_path_factory):
    """An IdP that mints RFC 8707 JWTs for our resource URL, and sqlgate verifying them by JWKS."""
    tmp = tmp_path_factory.mktemp("jwks")
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with OidcProvider(redirect_uris=["http://127.0.0.1:45990/callback"],
                      resources=[f"{resource}=jwt", "http://other.example/api=jwt", "urn:sqlgate:opaque=opaque"],
                      registration=True) as idp:
        meta = idp.discovery()
        server = start_auth_server(tmp, {"jwt": {"jwks_uri": meta["jwks_uri"], "issuer": idp.issuer},
                                         "scopes": ["openid", "profile", "email"]}, port=port)
        try:
            yield {"idp": idp, "meta": meta, "server": server, "resource": resource, "tmp": tmp}
        finally:
            stop_server(server)


def client_token(stack, resource: str, scope: str = "sql:read") -> str:
    idp = stack["idp"]
    r = httpx.post(stack["meta"]["token_endpoint"], data={"grant_type": "client_credentials", "scope": scope,
                                                          "resource": resource},
                   auth=(idp.client_id, idp.client_secret))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_jwt_from_idp_jwks_is_accepted(idp_stack):
    token = client_token(idp_stack, idp_stack["resource"])
    assert username(whoami(idp_stack["server"].url, token)) == idp_stack["idp"].client_id  # sub of a machine


def test_jwt_for_another_audience_is_refused(idp_stack):
    assert refused(whoami(idp_stack["server"].url, client_token(idp_stack, "http://other.example/api")))


def test_prm_points_at_the_idp(idp_stack):
    prm = httpx.get(f"{idp_stack['server'].base}/.well-known/oauth-protected-resource/mcp").json()
    assert [s.rstrip("/") for s in prm["authorization_servers"]] == [idp_stack["idp"].issuer]
    assert prm["resource"] == idp_stack["resource"]


def _rsa_pair():
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    return key, key.as_pem(private=False).decode()


def _mint(key, alg: str, **claims) -> str:
    now = int(time.time())
    payload = {"iss": "https://issuer.test", "aud": claims.pop("aud"), "sub": "svc-7", "iat": now,
               "exp": now + 300, "preferred_username": "etl-bot", "scope": "sqlgate:access", **claims}
    return jwt.encode({"alg": alg, "kid": "k1"}, payload, key, registry=JWSRegistry(algorithms=[alg]))


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def pem_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pem")
    key, pem = _rsa_pair()
    port = free_port()
    server = start_auth_server(tmp, {"jwt": {"public_key": pem, "issuer": "https://issuer.test",
                                             "algorithms": ["RS256", "PS256"], "leeway_seconds": 5}}, port=port)
    yield {"key": key, "pem": pem, "server": server, "aud": f"http://127.0.0.1:{port}/mcp"}
    stop_server(server)


def test_static_pem_accepts_good_tokens(pem_stack):
    s = pem_stack
    assert username(whoami(s["server"].url, _mint(s["key"], "RS256", aud=s["aud"]))) == "etl-bot"
    assert username(whoami(s["server"].url, _mint(s["key"], "PS256", aud=[s["aud"], "x"]))) == "etl-bot"


@pytest.mark.parametrize("case", ["wrong_audience", "wrong_issuer", "expired", "not_yet_valid", "alg_none",
                                  "hs_with_public_key", "unknown_kid_other_key", "bad_signature", "no_exp"])
def test_static_pem_refuses_bad_tokens(pem_stack, case):
    s = pem_stack
    now = int(time.time())
    if case == "wrong_audience":
        token = _mint(s["key"], "RS256", aud="http://127.0.0.1:1/mcp")
    elif case == "wrong_issuer":
        token = _mint(s["key"], "RS256", aud=s["aud"], iss="https://evil.test")
    elif case == "expired":
        token = _mint(s["key"], "RS256", aud=s["aud"], exp=now - 60)
    elif case == "not_yet_valid":
        token = _mint(s["key"], "RS256", aud=s["aud"], nbf=now + 600)
    elif case == "alg_none":
        import json

        claims = {"iss": "https://issuer.test", "aud": s["aud"], "exp": now + 60}
        token = f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(claims).encode())}."
    elif case == "hs_with_public_key":
        # classic key confusion: HMAC-sign with the public key's PEM as the secret (by hand:
        # joserfc itself refuses to build such a key)
        import hashlib
        import hmac
        import json

        claims = {"iss": "https://issuer.test", "aud": s["aud"], "exp": now + 60, "sub": "x"}
        signing_input = f"{_b64(json.dumps({'alg': 'HS256'}).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = hmac.new(s["pem"].encode(), signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(sig)}"
    elif case == "unknown_kid_other_key":
        other, _ = _rsa_pair()
        token = _mint(other, "RS256", aud=s["aud"])
    elif case == "bad_signature":
        good = _mint(s["key"], "RS256", aud=s["aud"])
        head, body, sig = good.split(".")
        token = f"{head}.{body}.{sig[:-4]}AAAA"
    else:
        token = jwt.encode({"alg": "RS256", "kid": "k1"}, {"iss": "https://issuer.test", "aud": s["aud"],
                                                          "sub": "x"}, s["key"])
    assert refused(whoami(s["server"].url, token))


def test_a_verified_token_still_ends_at_its_expiry(pem_stack):
    """Verified once, the token is remembered — but refused from the second after its `exp` (the
    verifier's 5 s leeway does not stretch a remembered token either)."""
    s = pem_stack
    exp = int(time.time()) + 4
    token = _mint(s["key"], "RS256", aud=s["aud"], exp=exp)
    assert username(whoami(s["server"].url, token)) == "etl-bot"
    assert username(whoami(s["server"].url, token)) == "etl-bot"  # now from the cache
    time.sleep(max(0.0, exp + 1.05 - time.time()))
    assert refused(whoami(s["server"].url, token))


def test_a_remembered_token_with_another_signature_is_not_the_same_token(pem_stack):
    """The cache is keyed by the whole token: a copy of a remembered token with its claims kept and
    its signature changed, or its claims changed and its signature kept, is checked — and refused."""
    import base64
    import json

    s = pem_stack
    good = _mint(s["key"], "RS256", aud=s["aud"])
    assert username(whoami(s["server"].url, good)) == "etl-bot"
    head, body, sig = good.split(".")
    assert refused(whoami(s["server"].url, f"{head}.{body}.{sig[:-4]}AAAA"))
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = _b64(json.dumps({**claims, "preferred_username": "admin"}).encode())
    assert refused(whoami(s["server"].url, f"{head}.{forged}.{sig}"))
    assert username(whoami(s["server"].url, good)) == "etl-bot"


def test_hs256_shared_secret(tmp_path):
    secret = "a-very-long-shared-secret-for-hs256-tests"
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": secret, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"},
                                          "username_claim": "email"}, port=port)
    try:
        aud = f"http://127.0.0.1:{port}/mcp"
        token = _mint(OctKey.import_key(secret.encode()), "HS256", aud=aud, email="robot@example.test")
        assert username(whoami(server.url, token)) == "robot@example.test"
        wrong = _mint(OctKey.import_key(b"another-secret-another-secret-xx"), "HS256", aud=aud)
        assert refused(whoami(server.url, wrong))
    finally:
        stop_server(server)


def test_remote_as_flow_with_the_official_client(idp_stack):
    """The client reads our PRM, registers at the IdP (DCR), logs in there and calls us with the JWT."""
    browser = Browser("bob", "bob-password")
    storage = MemoryTokenStorage()
    auth = oauth_client(idp_stack["server"].url, browser, storage, scope="openid profile email",
                        redirect="http://127.0.0.1:45990/callback")
    res = anyio.run(call_tool, idp_stack["server"].url, auth, "whoami")
    browser.close()
    assert not res.is_error, res.content
    assert res.structured_content["result"]["username"] == "bob"
    assert any(str(p[1]).startswith(idp_stack["idp"].issuer) for p in browser.pages)


def test_introspection_mode(tmp_path):
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with OidcProvider(redirect_uris=["http://127.0.0.1:45991/callback"],
                      resources=[f"{resource}=opaque", "urn:other-api=opaque"]) as idp:
        meta = idp.discovery()
        server = start_auth_server(tmp_path, {
            "introspection": {"url": meta["introspection_endpoint"], "client_id": f"{idp.client_id}-introspector",
                              "client_secret": f"{idp.client_secret}-introspector", "cache_ttl": 30},
            "remote": {"authorization_servers": [idp.issuer], "resource_name": "Shop data"}}, port=port)
        try:
            def opaque(audience: str | None = resource) -> str:
                form = {"grant_type": "client_credentials", "scope": "sql:read"}
                if audience:
                    form["resource"] = audience
                r = httpx.post(meta["token_endpoint"], data=form, auth=(idp.client_id, idp.client_secret))
                token = r.json()["access_token"]
                assert token.count(".") != 2, "an opaque token"
                return token

            active = opaque()
            assert username(whoami(server.url, active)) == idp.client_id
            assert refused(whoami(server.url, "not-a-real-token"))
            revoked = opaque()
            assert username(whoami(server.url, revoked)) == idp.client_id  # cached from here on
            httpx.post(meta["revocation_endpoint"], data={"token": revoked},
                       auth=(idp.client_id, idp.client_secret)).raise_for_status()
            assert username(whoami(server.url, revoked)) == idp.client_id, "cache_ttl is honoured"
            fresh_revoked = opaque()
            httpx.post(meta["revocation_endpoint"], data={"token": fresh_revoked},
                       auth=(idp.client_id, idp.client_secret)).raise_for_status()
            assert refused(whoami(server.url, fresh_revoked)), "revoked (inactive) token"
            prm = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/mcp").json()
            assert prm["resource_name"] == "Shop data"
        finally:
            stop_server(server)


def test_introspection_requires_this_servers_audience_by_default(tmp_path):
    """Active tokens the IdP issued for another API (or for no API) are not ours: 401 (MCP spec)."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with OidcProvider(redirect_uris=["http://127.0.0.1:45992/callback"], extra_clients={"other-app": "other-secret"},
                      resources=[f"{resource}=opaque", "urn:other-api=opaque"]) as idp:
        meta = idp.discovery()
        server = start_auth_server(tmp_path, {
            "introspection": {"url": meta["introspection_endpoint"], "client_id": f"{idp.client_id}-introspector",
                              "client_secret": f"{idp.client_secret}-introspector"},
            "remote": {"authorization_servers": [idp.issuer]}}, port=port)
        try:
            def token(client: tuple[str, str], audience: str | None) -> str:
                form = {"grant_type": "client_credentials", "scope": "sql:read"}
                if audience:
                    form["resource"] = audience
                r = httpx.post(meta["token_endpoint"], data=form, auth=client)
                assert r.status_code == 200, r.text
                return r.json()["access_token"]

            ours, other = (idp.client_id, idp.client_secret), ("other-app", "other-secret")
            for client in (ours, other):
                for audience in ("urn:other-api", None):
                    value = token(client, audience)
                    seen = httpx.post(meta["introspection_endpoint"], data={"token": value},
                                      auth=idp.introspector).json()
                    assert seen["active"] is True, "the IdP itself considers it valid"
                    r = whoami(server.url, value)
                    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
            assert username(whoami(server.url, token(ours, resource))) == idp.client_id
            assert username(whoami(server.url, token(other, resource))) == "other-app"
        finally:
            stop_server(server)


def test_proxy_and_jwt_together(tmp_path):
    """People log in through the OAuth proxy; a machine client presents the IdP's own JWT."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback"], resources=[f"{resource}=jwt"]) as idp:
        meta = idp.discovery()
        server = start_auth_server(tmp_path, {
            "provider": "oidc", "oidc": {"issuer": idp.issuer, "client_id": idp.client_id,
                                         "client_secret": idp.client_secret, "callback_path": "/oidc/callback"},
            "jwt": {"jwks_uri": meta["jwks_uri"], "issuer": idp.issuer}}, port=port)
        try:
            browser = Browser("alice", "alice-password")
            res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, MemoryTokenStorage()), "whoami")
            browser.close()
            assert res.structured_content["result"]["username"] == "alice"
            machine = client_token({"idp": idp, "meta": meta}, resource)
            assert username(whoami(server.url, machine)) == idp.client_id
            assert refused(whoami(server.url, "garbage"))
        finally:
            stop_server(server)


def test_dotted_claim_mapping_grants_scope(tmp_path):
    secret = "claim-mapping-shared-secret-0123456789"
    project_tmp = tmp_path
    port = free_port()
    from tests.auth_support import auth_project

    project, env, _ = auth_project(project_tmp, {
        "jwt": {"secret": secret, "algorithms": ["HS256"], "issuer": "https://iss.test"},
        "authorization": {"claim_mappings": [{"claim": "realm_access.roles", "value": "sql-admins",
                                              "scopes": ["sqlgate:admin"]}]}}, port)
    (project / "tools" / "admin_only.yml").write_text(
        "tool:\n  name: admin_only\n  description: Admins only.\n  scopes: [sqlgate:admin]\n"
        "  source:\n    code: SELECT 1 AS ok\n")
    from tests.conftest import start_server

    server = start_server(project, project_tmp, env=env, port=port)
    try:
        key = OctKey.import_key(secret.encode())

        def tok(roles):
            now = int(time.time())
            return jwt.encode({"alg": "HS256"}, {"iss": "https://iss.test", "aud": f"http://127.0.0.1:{port}/mcp",
                                                 "sub": "u", "exp": now + 60, "realm_access": {"roles": roles}}, key)

        from tests.test_auth_flows import bearer_call

        assert bearer_call(server.url, tok(["sql-admins"]), tool="admin_only").status_code == 200
        denied = bearer_call(server.url, tok(["sql-readers"]), tool="admin_only")
        assert denied.status_code == 403 and 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    finally:
        stop_server(server)


def test_introspection_endpoint_down_is_503_not_401(tmp_path):
    """Resource-server mode: the IdP's introspection endpoint unreachable → 503 + Retry-After (a 401
    would make clients throw a valid token away); cached tokens keep working; recovery without restart."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = OidcProvider(redirect_uris=["http://127.0.0.1:45991/callback"], resources=[f"{resource}=opaque"])
    server = None
    try:
        meta = idp.discovery()
        server = start_auth_server(tmp_path, {
            "introspection": {"url": meta["introspection_endpoint"], "client_id": f"{idp.client_id}-introspector",
                              "client_secret": f"{idp.client_secret}-introspector", "cache_ttl": 300},
            "remote": {"authorization_servers": [idp.issuer]}}, port=port)

        def opaque() -> str:
            r = httpx.post(meta["token_endpoint"], data={"grant_type": "client_credentials", "scope": "sql:read",
                                                          "resource": resource},
                           auth=(idp.client_id, idp.client_secret))
            return r.json()["access_token"]

        cached, unseen = opaque(), opaque()
        assert username(whoami(server.url, cached)) == idp.client_id
        idp.stop()
        down = whoami(server.url, unseen)
        assert down.status_code == 503, down.text
        assert int(down.headers["retry-after"]) >= 1
        assert username(whoami(server.url, cached)) == idp.client_id, "the cache holds"
        idp = OidcProvider(redirect_uris=["http://127.0.0.1:45991/callback"], resources=[f"{resource}=opaque"],
                           extra_args=["--port", str(idp.port)])
        assert refused(whoami(server.url, unseen)), "the restarted IdP no longer knows the old token"
        assert username(whoami(server.url, opaque())) == idp.client_id
    finally:
        if server is not None:
            stop_server(server)
        idp.stop()


def test_jwks_endpoint_down_is_503_not_401(tmp_path):
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    key, _pem = _rsa_pair()
    server = start_auth_server(tmp_path, {"jwt": {"jwks_uri": f"http://127.0.0.1:{dead}/jwks",
                                                  "issuer": "https://issuer.test", "algorithms": ["RS256"]}},
                               port=port)
    try:
        token = _mint(key, "RS256", aud=f"http://127.0.0.1:{port}/mcp")
        down = whoami(server.url, token)
        assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1, down.text
        assert refused(whoami(server.url, "not.a.jwt")), "a malformed token is still a 401"
    finally:
        stop_server(server)
