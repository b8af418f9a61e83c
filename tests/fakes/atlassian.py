"""Fake Atlassian OAuth 2.0 (3LO): auth.atlassian.com + api.atlassian.com on one port.

Quirks kept from the real service:
* /authorize refuses a request without audience=api.atlassian.com (prompt=consent is accepted);
* /oauth/token takes a JSON body (or a form); a refresh token only with the offline_access scope,
  and refresh tokens rotate (the used one is spent);
* access tokens look like JWTs but are opaque to clients (signed by Atlassian, no JWKS for you);
* errors: bad client 401 access_denied, bad code 403 invalid_grant, bad refresh token 403
  unauthorized_client;
* /me (account_id, email, name, nickname, picture …) and /oauth/token/accessible-resources (sites).
"""

from __future__ import annotations

import base64
import json
import secrets
import time

from tests.fakes.base import Code, FakeProvider, Reply, Request, User

SITE = {"id": "1324a887-45db-1bf4-1e99-ef0ff456d421", "url": "https://example-sqlgate.atlassian.net",
        "name": "example-sqlgate", "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png"}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def account_id(user: User) -> str:
    return f"5b10ac8d82e05b22cc7d{user.id}"


class FakeAtlassian(FakeProvider):
    NAME = "atlassian"
    AUTHORIZE_PATH = "/authorize"
    TOKEN_PATH = "/oauth/token"
    REFRESH_TTL = 90 * 86400  # inactivity expiry of rotating refresh tokens
    TOKEN_ERRORS = {
        **FakeProvider.TOKEN_ERRORS,
        "invalid_client": (401, "access_denied", "Unauthorized"),
        "bad_code": (403, "invalid_grant", "Invalid authorization code"),
        "bad_verifier": (403, "invalid_grant", "Invalid code verifier"),
        "redirect_mismatch": (403, "invalid_grant", "Invalid redirect_uri"),
        "bad_refresh": (403, "unauthorized_client", "refresh_token is invalid"),
    }

    def routes(self):
        return {**super().routes(), ("GET", "/me"): self.me,
                ("GET", "/oauth/token/accessible-resources"): self.accessible_resources}

    def match(self, req):
        prefix = f"/ex/jira/{SITE['id']}/rest/api/3/search/jql"
        return self.jira_search if req.method == "GET" and req.path == prefix else None

    def not_found(self, req):
        if req.path.startswith("/ex/jira/"):  # an unknown cloud id
            return Reply.json({"code": 404, "message": "Not Found"}, 404)
        return super().not_found(req)

    def jira_search(self, req: Request) -> Reply:
        """Jira Cloud REST v3 /search/jql through the API gateway (/ex/jira/{cloudid}/…); read:jira-work."""
        token = self.lookup(req.bearer())
        if token is None:
            return Reply.json({"code": 401, "message": "Unauthorized"}, 401)
        if "read:jira-work" not in token.scope.split():
            return Reply.json({"code": 401, "message": "Unauthorized; scope does not match"}, 401)
        n = min(int(req.query.get("maxResults", "50")), 100)
        project = req.query.get("jql", "").split("=")[-1].strip().strip('"') or "SQL"
        issues = [{"id": str(10000 + i), "key": f"{project}-{i + 1}",
                   "self": f"{SITE['url']}/rest/api/3/issue/{10000 + i}",
                   "fields": {"summary": f"Issue {i + 1}", "status": {"name": "To Do" if i % 2 else "Done"}}}
                  for i in range(n)]
        return Reply.json({"issues": issues, "isLast": True})

    def check_authorize(self, query):
        if query.get("audience") != "api.atlassian.com":
            return "The audience parameter must be api.atlassian.com."
        return None

    def wants_refresh(self, code: Code) -> bool:
        return "offline_access" in code.scope.split()

    def new_access_token(self, user: User, scope: str) -> str:
        now = int(time.time())
        claims = {"jti": secrets.token_hex(16), "sub": account_id(user), "aud": "api.atlassian.com",
                  "iss": "https://auth.atlassian.com", "iat": now, "exp": now + (self.access_ttl or 3600),
                  "scope": scope, "client_id": self.client_id}
        sig = base64.urlsafe_b64encode(secrets.token_bytes(256)).rstrip(b"=").decode()
        return f"{_b64({'kid': 'auth.atlassian.io/fake', 'alg': 'RS256'})}.{_b64(claims)}.{sig}"

    def _caller(self, req: Request) -> User | None:
        token = self.lookup(req.bearer())
        return self.users[token.user] if token else None

    def me(self, req: Request) -> Reply:
        user = self._caller(req)
        if user is None:
            return Reply.json({"code": 401, "message": "Unauthorized"}, 401)
        return Reply.json({"account_type": "atlassian", "account_id": account_id(user), "email": user.email,
                           "name": user.name, "nickname": user.login, "account_status": "active",
                           "picture": f"https://avatar-management--avatars.us-west-2.prod.public.atl-paas.net/{user.id}",
                           "zoneinfo": "Europe/Berlin", "locale": "en-US", "email_verified": True,
                           "extended_profile": {"job_title": "Analyst"}})

    def accessible_resources(self, req: Request) -> Reply:
        token = self.lookup(req.bearer())
        if token is None:
            return Reply.json({"code": 401, "message": "Unauthorized"}, 401)
        scopes = [s for s in token.scope.split() if s not in ("offline_access", "read:me")]
        return Reply.json([{**SITE, "scopes": scopes}])
