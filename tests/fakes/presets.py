"""Faithful fakes of Auth0, WorkOS AuthKit, AWS Cognito, Microsoft Entra ID, Descope and Scalekit.

Each is laid out like the real service on one 127.0.0.1 port: its URL paths, its token reply,
its signed RS256 access tokens (JWKS where the provider publishes it) with the provider's own
claim names, its user-info answer, and the quirks the presets rely on:

* Auth0: /authorize, /oauth/token, /userinfo, /oauth/revoke; `audience` makes the access token a
  JWT for that API; a refresh token only with offline_access; a namespaced custom claim
  (`https://sqlgate.example/roles`) in /userinfo, as an Action adds it;
* WorkOS AuthKit: /oauth2/{authorize,token,userinfo,jwks}; `user_01…` ids; role/permissions/org_id
  in the access token;
* Cognito: /oauth2/authorize, /oauth2/token (HTTP Basic only), /oauth2/userInfo (capital I; the
  string "true" for email_verified), /oauth2/revoke; the pool issuer and JWKS under /<pool id>;
  access tokens without `aud` but with client_id, token_use=access, username, cognito:groups;
  refresh tokens do not rotate;
* Entra: /<tenant>/oauth2/v2.0/{authorize,token}, keys at /<tenant>/discovery/v2.0/keys; scopes
  name the resource (api://<client id>/…); v2 access tokens for the app (aud = client id) with
  oid, tid, preferred_username, roles, groups; no user-info for such a token; a refresh must name
  the scopes (AADSTS90014 otherwise);
* Descope: /oauth2/v1/{authorize,token,userinfo,revoke}, keys at /<project>/.well-known/jwks.json,
  issuer <base>/<project>, roles/permissions/tenants in the access token;
* Scalekit: /oauth/authorize, /oauth/token, /userinfo, /keys; `usr_…` ids, roles and oid.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar

from tests.fakes.base import Code, FakeProvider, Reply, Request, Token, User
from tests.fakes.google import signing_key

ROLES = {"alice": ["sql-readers"], "bob": ["sql-readers", "sql-admins"]}


class JwtFake(FakeProvider):
    """A provider whose access tokens are RS256 JWTs (the shared test key) and that has user info."""

    USERINFO_PATH: ClassVar[str | None] = "/userinfo"
    JWKS_PATH: ClassVar[str | None] = None
    REVOKE_PATH: ClassVar[str | None] = None
    ACCESS_TTL = 3600

    def routes(self):
        r = dict(super().routes())
        if self.USERINFO_PATH:
            r[("GET", self.USERINFO_PATH)] = r[("POST", self.USERINFO_PATH)] = self.userinfo
        if self.JWKS_PATH:
            r[("GET", self.JWKS_PATH)] = self.jwks
        if self.REVOKE_PATH:
            r[("POST", self.REVOKE_PATH)] = self.revoke_endpoint
        return r

    # what a subclass describes
    def issuer(self) -> str:
        return self.base_url

    def access_claims(self, user: User, scope: str, params: dict[str, str]) -> dict[str, Any]:
        return {}

    def userinfo_claims(self, user: User) -> dict[str, Any]:
        return {"sub": self.subject(user), "email": user.email, "email_verified": True, "name": user.name,
                "given_name": user.given_name, "family_name": user.family_name}

    def subject(self, user: User) -> str:
        return str(user.id)

    # the machinery
    def new_access_token(self, user: User, scope: str) -> str:
        from joserfc import jwt

        now = int(time.time())
        params = getattr(self, "_params", {})
        claims = {"iss": self.issuer(), "sub": self.subject(user), "iat": now, "exp": now + (self.access_ttl or 3600),
                  "jti": secrets.token_hex(12), **self.access_claims(user, scope, params)}
        key = signing_key()
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    def issue(self, user, scope, grant, params, refresh):
        self._params = params  # new_access_token has no access to the request otherwise
        return super().issue(user, scope, grant, params, refresh)

    def shape(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        if "openid" in token.scope.split():
            body["id_token"] = "eyJ.fake-id-token." + secrets.token_urlsafe(8)  # unused by sqlgate
        return body

    def caller(self, req: Request) -> User | None:
        token = self.lookup(req.bearer())
        return self.users[token.user] if token else None

    def userinfo(self, req: Request) -> Reply:
        user = self.caller(req)
        if user is None:
            return Reply.json({"error": "invalid_token"}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Reply.json(self.userinfo_claims(user))

    def jwks(self, req: Request) -> Reply:
        return Reply.json({"keys": [signing_key().as_dict(private=False)]})

    def revoke_endpoint(self, req: Request) -> Reply:
        self.revoke(req.form.get("token", ""))
        return Reply(200, b"", "text/plain")  # RFC 7009: 200 whatever the token was


class FakeAuth0(JwtFake):
    NAME = "auth0"
    AUTHORIZE_PATH, TOKEN_PATH, REVOKE_PATH = "/authorize", "/oauth/token", "/oauth/revoke"
    ACCESS_TTL = 86400
    NAMESPACE = "https://sqlgate.example/roles"

    def issuer(self):
        return self.base_url + "/"  # Auth0's issuer ends with a slash

    def subject(self, user):
        return f"auth0|64f1c0ffee{user.id}"

    def wants_refresh(self, code: Code) -> bool:
        return "offline_access" in code.scope.split()

    def access_claims(self, user, scope, params):
        userinfo = f"{self.base_url}/userinfo"
        aud = [params["audience"], userinfo] if params.get("audience") else userinfo
        return {"aud": aud, "azp": self.client_id, "scope": scope}

    def userinfo_claims(self, user):
        return {"sub": self.subject(user), "nickname": user.login, "name": user.email, "picture": "https://s.gravatar.com/x.png",
                "updated_at": "2024-05-01T10:00:00.000Z", "email": user.email, "email_verified": True,
                self.NAMESPACE: ROLES[user.login]}


class FakeWorkOS(JwtFake):
    NAME = "workos"
    AUTHORIZE_PATH, TOKEN_PATH, USERINFO_PATH, JWKS_PATH = ("/oauth2/authorize", "/oauth2/token",
                                                            "/oauth2/userinfo", "/oauth2/jwks")
    ACCESS_TTL = 300

    def subject(self, user):
        return f"user_01HXYZ{user.id}ABCDEFGH"

    def access_claims(self, user, scope, params):
        admin = "sql-admins" in ROLES[user.login]
        return {"sid": "session_01H" + secrets.token_hex(6), "org_id": "org_01HSQLGATE",
                "role": "admin" if admin else "member",
                "permissions": ["sql:read"] + (["sql:admin"] if admin else [])}


class FakeCognito(JwtFake):
    NAME = "cognito"
    POOL = "eu-west-1_SqLgAtE01"
    AUTHORIZE_PATH, TOKEN_PATH, USERINFO_PATH, REVOKE_PATH = ("/oauth2/authorize", "/oauth2/token",
                                                              "/oauth2/userInfo", "/oauth2/revoke")
    JWKS_PATH = f"/{POOL}/.well-known/jwks.json"
    ROTATE_REFRESH = False
    TOKEN_ERRORS = {**FakeProvider.TOKEN_ERRORS, "invalid_client": (400, "invalid_client", "invalid_client")}

    def issuer(self):
        return f"{self.base_url}/{self.POOL}"

    def subject(self, user):
        return f"7c2d5f1e-0000-4000-8000-00000000{user.id}"

    def token(self, req: Request) -> Reply:
        if not req.header("Authorization").lower().startswith("basic "):
            return self.token_error(req, "invalid_client")  # a client with a secret must use Basic
        return super().token(req)

    def access_claims(self, user, scope, params):
        return {"cognito:groups": ROLES[user.login], "client_id": self.client_id, "token_use": "access",
                "scope": scope, "auth_time": int(time.time()), "username": user.login,
                "origin_jti": secrets.token_hex(8), "event_id": secrets.token_hex(8)}

    def userinfo_claims(self, user):
        return {"sub": self.subject(user), "email_verified": "true", "email": user.email, "username": user.login,
                "name": user.name}


class FakeEntra(JwtFake):
    NAME = "entra"
    TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    USERINFO_PATH = None
    ACCESS_TTL = 3599
    AUTHORIZE_PATH = f"/{TENANT}/oauth2/v2.0/authorize"
    TOKEN_PATH = f"/{TENANT}/oauth2/v2.0/token"
    JWKS_PATH = f"/{TENANT}/discovery/v2.0/keys"

    def issuer(self):
        return f"{self.base_url}/{self.TENANT}/v2.0"

    def subject(self, user):
        return f"pairwise-sub-{user.id}-{self.client_id}"  # sub differs per app; oid does not

    def api_scopes(self, scope: str) -> list[str]:
        return [s for s in scope.split() if s.startswith("api://")]

    def check_authorize(self, query):
        if not query.get("scope"):
            return "AADSTS900144: The request body must contain the following parameter: 'scope'."
        return None

    def wants_refresh(self, code):
        return "offline_access" in code.scope.split()

    def refresh(self, req):
        if not req.form.get("scope"):
            return "missing_scope"
        return super().refresh(req)

    def token_error(self, req, name):
        if name == "missing_scope":
            return self.token_reply(req, {"error": "invalid_request", "error_codes": [90014], "error_description":
                                          "AADSTS90014: The required field 'scope' is missing."}, 400)
        return super().token_error(req, name)

    def access_claims(self, user, scope, params):
        scp = " ".join(s.rsplit("/", 1)[-1] for s in self.api_scopes(scope))
        return {"aud": self.client_id, "azp": self.client_id, "ver": "2.0", "tid": self.TENANT,
                "oid": f"00000000-0000-0000-0000-00000000{user.id}", "preferred_username": user.email,
                "name": user.name, "scp": scp, "roles": ["Sql.Read"] + (["Sql.Admin"] if user.login == "bob" else []),
                "groups": ["a1b2c3d4-0000-0000-0000-0000000000" + ("02" if user.login == "bob" else "01")]}

    def shape(self, body, token):
        body = super().shape(body, token)
        body["scope"] = " ".join(self.api_scopes(token.scope))  # the access token's resource scopes only
        body["ext_expires_in"] = body.get("expires_in", 3599)
        return body


class FakeDescope(JwtFake):
    NAME = "descope"
    PROJECT = "P2SqLgAtEpRoJeCt01"
    AUTHORIZE_PATH, TOKEN_PATH, USERINFO_PATH, REVOKE_PATH = ("/oauth2/v1/authorize", "/oauth2/v1/token",
                                                              "/oauth2/v1/userinfo", "/oauth2/v1/revoke")
    JWKS_PATH = f"/{PROJECT}/.well-known/jwks.json"

    def issuer(self):
        return f"{self.base_url}/{self.PROJECT}"

    def subject(self, user):
        return f"U2SqLgAtE{user.id}"

    def access_claims(self, user, scope, params):
        return {"aud": [self.PROJECT], "drn": "DS", "roles": ROLES[user.login], "permissions": ["sql.read"],
                "tenants": {"T2Acme": {"roles": ROLES[user.login], "permissions": []}}}


class FakeScalekit(JwtFake):
    NAME = "scalekit"
    AUTHORIZE_PATH, TOKEN_PATH, USERINFO_PATH, JWKS_PATH = "/oauth/authorize", "/oauth/token", "/userinfo", "/keys"
    ACCESS_TTL = 300

    def subject(self, user):
        return f"usr_8a2b{user.id}"

    def access_claims(self, user, scope, params):
        return {"aud": [self.client_id], "client_id": self.client_id, "oid": "org_59615193906282635",
                "roles": ROLES[user.login], "permissions": ["sql:read"], "sid": "ses_" + secrets.token_hex(6)}


PRESET_FAKES = {f.NAME: f for f in (FakeAuth0, FakeWorkOS, FakeCognito, FakeEntra, FakeDescope, FakeScalekit)}
