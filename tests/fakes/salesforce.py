"""Fake Salesforce OAuth (login.salesforce.com + the instance) on one port.

Quirks kept from the real service:
* the token reply has instance_url, id (the identity URL), issued_at (ms, a string) and signature
  (base64 HMAC-SHA256 of id+issued_at keyed by the client secret) — and no expires_in: clients
  cannot know when the session ends (here after ACCESS_TTL seconds);
* a refresh token only with the refresh_token (or offline_access) scope; the refresh reply has no
  new refresh token (they do not rotate);
* authorization codes end in `==` (clients must URL-encode them); tokens contain `!`;
* every token error is HTTP 400; a bad token at the APIs is 403 `Bad_OAuth_Token`;
* /services/oauth2/userinfo (OIDC-style), the identity URL /id/{orgId}/{userId} (username,
  display_name …), /services/oauth2/revoke (revoking a refresh token ends its access tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from tests.fakes.base import Code, FakeProvider, Reply, Request, Token, User

ORG = "00D5e000000ABCDEAA"


def user_id(user: User) -> str:
    return f"005{user.id}00000AbCAAE"  # 18-character Salesforce id, key prefix 005 = User


class FakeSalesforce(FakeProvider):
    NAME = "salesforce"
    AUTHORIZE_PATH = "/services/oauth2/authorize"
    TOKEN_PATH = "/services/oauth2/token"
    ACCESS_PREFIX = "00D5e000000ABCD!AQ4AQ"
    REFRESH_PREFIX = "5Aep861"
    ACCESS_TTL = 7200  # the org's session timeout; never sent to the client
    ROTATE_REFRESH = False
    instance_url: str | None = None  # what the token reply names as the org's API host (default: this fake)
    TOKEN_ERRORS = {
        "invalid_client": (400, "invalid_client", "invalid client credentials"),
        "bad_code": (400, "invalid_grant", "authentication failure"),
        "bad_verifier": (400, "invalid_grant", "invalid code verifier"),
        "redirect_mismatch": (400, "redirect_uri_mismatch", "redirect_uri must match configuration"),
        "bad_refresh": (400, "invalid_grant", "expired access/refresh token"),
        "unsupported_grant_type": (400, "unsupported_grant_type", "grant type not supported"),
    }

    def routes(self):
        ui, rv = "/services/oauth2/userinfo", "/services/oauth2/revoke"
        return {**super().routes(), ("GET", ui): self.userinfo, ("POST", ui): self.userinfo,
                ("POST", rv): self.revoke_endpoint, ("GET", rv): self.revoke_endpoint}

    def match(self, req):
        if req.method == "GET" and req.path.startswith("/services/data/v") and req.path.endswith("/query"):
            return self.query
        return self.identity if req.method == "GET" and req.path.startswith("/id/") else None

    ACCOUNTS = [f"Account {i}" for i in range(1, 51)]

    def query(self, req: Request) -> Reply:
        """REST API query (SOQL): only `SELECT Id, Name FROM Account [LIMIT n]` is understood."""
        if self._caller(req.bearer()) is None:
            return Reply.json([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], 401)
        import re

        m = re.fullmatch(r"SELECT Id, Name FROM Account(?: LIMIT (\d+))?", req.query.get("q", "").strip(), re.I)
        if m is None:
            return Reply.json([{"message": "unexpected token", "errorCode": "MALFORMED_QUERY"}], 400)
        names = self.ACCOUNTS[: int(m.group(1))] if m.group(1) else self.ACCOUNTS
        version = req.path.split("/")[3]
        records = [{"attributes": {"type": "Account", "url": f"/services/data/{version}/sobjects/Account/001{i:015d}"},
                    "Id": f"001{i:015d}", "Name": n} for i, n in enumerate(names)]
        return Reply.json({"totalSize": len(records), "done": True, "records": records})

    def identity_url(self, user: User) -> str:
        return f"{self.base_url}/id/{ORG}/{user_id(user)}"

    def new_code(self) -> str:
        return "aPrx" + secrets.token_urlsafe(48) + "=="

    def wants_refresh(self, code: Code) -> bool:
        scopes = code.scope.split()
        return not scopes or "refresh_token" in scopes or "offline_access" in scopes

    def shape(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        body.pop("expires_in", None)
        ident = self.identity_url(self.users[token.user])
        issued_at = str(int(time.time() * 1000))
        mac = hmac.new(self.client_secret.encode(), (ident + issued_at).encode(), hashlib.sha256).digest()
        return {**body, "instance_url": self.instance_url or self.base_url, "id": ident, "issued_at": issued_at,
                "signature": base64.b64encode(mac).decode(), "scope": body["scope"] or "api refresh_token"}

    def _caller(self, value: str) -> User | None:
        token = self.lookup(value)
        return self.users[token.user] if token else None

    def userinfo(self, req: Request) -> Reply:
        user = self._caller(req.bearer())
        if user is None:
            return Reply.text("Bad_OAuth_Token", 403)
        return Reply.json({
            "sub": self.identity_url(user), "user_id": user_id(user), "organization_id": ORG,
            "preferred_username": user.email, "nickname": user.login, "name": user.name, "email": user.email,
            "email_verified": True, "given_name": user.given_name, "family_name": user.family_name,
            "zoneinfo": "Europe/Berlin", "active": True, "user_type": "STANDARD", "language": "en_US",
            "locale": "en_US", "utcOffset": 3600000, "is_salesforce_integration_user": False,
            "photos": {"picture": f"{self.base_url}/profilephoto/005/F",
                       "thumbnail": f"{self.base_url}/profilephoto/005/T"},
            "urls": {"rest": f"{self.base_url}/services/data/v{{version}}/",
                     "profile": f"{self.base_url}/{user_id(user)}"},
        })

    def identity(self, req: Request) -> Reply:
        user = self._caller(req.bearer() or req.query.get("oauth_token", ""))
        if user is None:
            return Reply.text("Bad_OAuth_Token", 403)
        if req.path != f"/id/{ORG}/{user_id(user)}":  # a token only reads its own user's identity
            return Reply.text("Bad_Id", 403)
        return Reply.json({
            "id": self.identity_url(user), "asserted_user": True, "user_id": user_id(user), "organization_id": ORG,
            "username": user.email, "nick_name": user.login, "display_name": user.name, "email": user.email,
            "email_verified": True, "first_name": user.given_name, "last_name": user.family_name,
            "timezone": "Europe/Berlin", "active": True, "user_type": "STANDARD", "language": "en_US",
            "locale": "en_US", "utcOffset": 3600000, "is_app_installed": True,
            "urls": {"userinfo": f"{self.base_url}/services/oauth2/userinfo",
                     "rest": f"{self.base_url}/services/data/v{{version}}/"},
        })

    def revoke_endpoint(self, req: Request) -> Reply:
        if self.revoke(req.form.get("token") or req.query.get("token", "")):
            return Reply(200, b"", "text/plain")
        return Reply.json({"error": "unsupported_token_type", "error_description": "this token type is not supported"},
                          400)
