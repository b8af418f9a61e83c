"""Faithful local fakes of GitHub, Atlassian, Salesforce and Google OAuth (endpoint shapes and
reply quirks as the real services have them), each on one loopback port for all its hosts."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from tests.fakes.base import USERS, FakeProvider, Reply


class FakeGitHub(FakeProvider):
    """github.com + api.github.com: opaque tokens, no OIDC, /user and /user/emails."""

    AUTHORIZE = "/login/oauth/authorize"
    TOKEN = "/login/oauth/access_token"
    TOKEN_PREFIX = "gho_"

    def token_reply(self, headers, form):
        wants_json = "application/json" in (headers.get("Accept") or "")
        if not self.client_ok(headers, form):
            body = {"error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect."}
        else:
            rec, error = self.redeem(form)
            # GitHub quirk: a bad code is HTTP 200 with an error field, not a 400
            body = self.issue(rec["user"], rec["scope"] or "user:email", refresh=False, ttl=None) if rec else {
                "error": error, "error_description": "The code passed is incorrect or expired."}
        if wants_json:
            return Reply(200, body)
        # GitHub quirk: without Accept: application/json the reply is form-encoded
        return Reply(200, urlencode(body), "application/x-www-form-urlencoded; charset=utf-8")

    def api(self, method, path, query, headers, form):
        user = self.bearer_user(headers)
        if path in ("/user", "/user/emails") and user is None:
            return Reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        scopes = {"X-OAuth-Scopes": "user:email"}
        if path == "/user":
            # bob keeps his address private: only /user/emails reveals it
            email = None if user["login"] == "bob" else user["email"]
            return Reply(200, {"login": user["login"], "id": int(user["id"]), "name": user["name"], "email": email,
                               "type": "User"}, headers=scopes)
        if path == "/user/emails":
            return Reply(200, [{"email": f"{user['login']}@users.noreply.github.com", "primary": False,
                                "verified": True, "visibility": None},
                               {"email": user["email"], "primary": True, "verified": True, "visibility": "private"}],
                         headers=scopes)
        return None


class FakeAtlassian(FakeProvider):
    """auth.atlassian.com + api.atlassian.com: JSON token endpoint, rotating refresh tokens, /me."""

    AUTHORIZE = "/authorize"
    TOKEN = "/oauth/token"

    def authorize(self, query, form):
        if form is None and query.get("audience") != "api.atlassian.com":
            return Reply(400, "audience=api.atlassian.com is required", "text/plain")
        return super().authorize(query, form)

    def token_reply(self, headers, form):
        if not self.client_ok(headers, form):
            return Reply(401, {"error": "access_denied", "error_description": "Unauthorized"})
        if form.get("grant_type") == "refresh_token":
            out = self.rotate(form)
            return Reply(200, out) if out else Reply(403, {"error": "unauthorized_client",
                                                           "error_description": "refresh_token is invalid"})
        rec, error = self.redeem(form)
        if rec is None:
            return Reply(403, {"error": "invalid_grant", "error_description": error})
        return Reply(200, self.issue(rec["user"], rec["scope"], refresh="offline_access" in rec["scope"]))

    def api(self, method, path, query, headers, form):
        user = self.bearer_user(headers)
        if path in ("/me", "/oauth/token/accessible-resources") and user is None:
            return Reply(401, {"code": 401, "message": "Unauthorized"})
        if path == "/me":
            return Reply(200, {"account_id": f"5b10ac8d82e05b22cc7d{user['id']}", "email": user["email"],
                               "name": user["name"], "nickname": user["login"], "account_status": "active"})
        if path == "/oauth/token/accessible-resources":
            return Reply(200, [{"id": "1324a887-45db-1bf4-1e99-ef0ff456d421", "url": "https://example.atlassian.net",
                                "name": "example", "scopes": ["read:jira-work"]}])
        return None


class FakeSalesforce(FakeProvider):
    """login.salesforce.com: token reply with instance_url/id/signature and no expires_in."""

    AUTHORIZE = "/services/oauth2/authorize"
    TOKEN = "/services/oauth2/token"
    TOKEN_PREFIX = "00D5e000000abcd!"
    ORG = "00D5e000000ABCDEAA"

    def token_reply(self, headers, form):
        if not self.client_ok(headers, form):
            return Reply(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        if form.get("grant_type") == "refresh_token":
            out = self.rotate(form)
            if out is None:
                return Reply(400, {"error": "invalid_grant", "error_description": "expired access/refresh token"})
            out.pop("refresh_token", None)  # Salesforce keeps the refresh token: it is not rotated
            return Reply(200, self._shape(out))
        rec, _error = self.redeem(form)
        if rec is None:
            return Reply(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        return Reply(200, self._shape(self.issue(rec["user"], rec["scope"], refresh=True)))

    def _shape(self, out):
        user = USERS[self.tokens[out["access_token"]]["user"]]
        out.pop("expires_in", None)  # real quirk: Salesforce sends no expires_in
        return {**out, "instance_url": self.base_url, "id": f"{self.base_url}/id/{self.ORG}/005{user['id']}",
                "issued_at": str(int(time.time() * 1000)), "signature": "c2lnbmF0dXJl"}

    def api(self, method, path, query, headers, form):
        if path == "/services/oauth2/revoke":
            self.revoke(form.get("token", ""))
            return Reply(200, b"", "text/plain")
        user = self.bearer_user(headers)
        if path == "/services/oauth2/userinfo":
            if user is None:
                return Reply(403, b"Bad_OAuth_Token", "text/plain")
            return Reply(200, {"sub": f"{self.base_url}/id/{self.ORG}/005{user['id']}", "user_id": f"005{user['id']}",
                               "organization_id": self.ORG, "preferred_username": f"{user['login']}@example.test",
                               "email": user["email"], "name": user["name"]})
        return None


class FakeGoogle(FakeProvider):
    """accounts.google.com + oauth2.googleapis.com + openidconnect.googleapis.com."""

    AUTHORIZE = "/o/oauth2/v2/auth"
    TOKEN = "/token"
    TOKEN_PREFIX = "ya29."

    def token_reply(self, headers, form):
        if not self.client_ok(headers, form):
            return Reply(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        if form.get("grant_type") == "refresh_token":
            out = self.rotate(form)
            bad = Reply(400, {"error": "invalid_grant", "error_description": "Bad Request"})
            return Reply(200, out) if out else bad
        rec, _error = self.redeem(form)
        if rec is None:
            return Reply(400, {"error": "invalid_grant", "error_description": "Malformed auth code."})
        return Reply(200, self.issue(rec["user"], rec["scope"], refresh=True, ttl=3599))

    def api(self, method, path, query, headers, form):
        if path == "/revoke" and method == "POST":
            self.revoke(form.get("token", "") or query.get("token", ""))
            return Reply(200, {})
        if path == "/v1/userinfo":
            user = self.bearer_user(headers)
            if user is None:
                return Reply(401, {"error": "invalid_request", "error_description": "Invalid Credentials"})
            return Reply(200, {"sub": f"10769150350006150{user['id']}", "email": user["email"], "email_verified": True,
                               "name": user["name"], "given_name": user["name"].split()[0]})
        return None
