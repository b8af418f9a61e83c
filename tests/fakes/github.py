"""Fake GitHub OAuth app (github.com + api.github.com on one port).

Quirks kept from the real service:
* the token endpoint answers form-urlencoded unless `Accept: application/json`, and every error
  is HTTP 200 with an `error` field (bad_verification_code, incorrect_client_credentials …);
* no OIDC: opaque gho_ tokens that never expire, no refresh token — unless `expiring=True`
  (GitHub App user tokens: ghu_ for 8 h, rotating ghr_ refresh tokens);
* grant_type and redirect_uri may be omitted; a wrong redirect_uri at /authorize is sent back to
  the registered callback with error=redirect_uri_mismatch; scopes are comma-separated;
* /user hides a private e-mail (bob's): only /user/emails shows it, and only with user:email;
  the API sends X-OAuth-Scopes, answers 401 {"message": "Bad credentials"} and wants a User-Agent;
* token check/revoke at /applications/{client_id}/token (HTTP Basic with the app's credentials).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tests.fakes.base import Code, FakeProvider, Reply, Request, Token, add_query, same

DOCS = "https://docs.github.com/rest"


class FakeGitHub(FakeProvider):
    NAME = "github"
    AUTHORIZE_PATH = "/login/oauth/authorize"
    TOKEN_PATH = "/login/oauth/access_token"
    ACCESS_PREFIX = "gho_"
    ACCESS_TTL = None
    RESPONSE_TYPE_REQUIRED = False
    DEFAULT_GRANT = "authorization_code"
    TOKEN_REDIRECT_URI_OPTIONAL = True
    TOKEN_ERRORS = {
        "invalid_client": (200, "incorrect_client_credentials",
                           "The client_id and/or client_secret passed are incorrect."),
        "bad_code": (200, "bad_verification_code", "The code passed is incorrect or expired."),
        "bad_verifier": (200, "bad_verification_code", "The code_verifier does not match the code_challenge."),
        "redirect_mismatch": (200, "redirect_uri_mismatch",
                              "The redirect_uri MUST match the registered callback URL for this application."),
        "bad_refresh": (200, "bad_refresh_token", "The refresh token passed is incorrect or expired."),
        "unsupported_grant_type": (200, "unsupported_grant_type", "The grant type is not supported."),
    }

    def __init__(self, *args, expiring: bool = False, **kw):
        self.expiring = expiring
        if expiring:  # GitHub App user-to-server tokens
            kw.setdefault("access_ttl", 28800)
            self.ACCESS_PREFIX, self.REFRESH_PREFIX, self.REFRESH_TTL = "ghu_", "ghr_", 15897600
        super().__init__(*args, **kw)

    def routes(self):
        app = f"/applications/{self.client_id}/token"
        return {**super().routes(), ("GET", "/user"): self.user, ("GET", "/user/emails"): self.emails,
                ("GET", "/user/repos"): self.repos,
                ("POST", app): self.check_token, ("DELETE", app): self.delete_token}

    def not_found(self, req):
        return Reply.json({"message": "Not Found", "documentation_url": DOCS, "status": "404"}, 404)

    # ---------------------------------------------------------------- OAuth quirks
    def default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def bad_redirect(self, query):
        if not self.redirect_uris:
            return super().bad_redirect(query)
        state = {"state": query["state"]} if "state" in query else {}
        return Reply.redirect(add_query(self.redirect_uris[0], {
            "error": "redirect_uri_mismatch", "error_description":
            "The redirect_uri MUST match the registered callback URL for this application.", **state}))

    def wants_refresh(self, code: Code) -> bool:
        return self.expiring

    def scope_out(self, scope: str) -> str:
        return ",".join(scope.replace(",", " ").split())

    def shape(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        body["token_type"] = "bearer"
        if "refresh_token" in body:
            body["refresh_token_expires_in"] = self.REFRESH_TTL
        return body

    def token_reply(self, req, body, status=200):
        if "application/json" in req.header("Accept"):
            return Reply.json(body, status)
        return Reply(status, urlencode(body), "application/x-www-form-urlencoded; charset=utf-8")

    def token_error(self, req, name):
        status, error, description = self.TOKEN_ERRORS[name]
        slug = error.replace("_", "-")
        return self.token_reply(req, {"error": error, "error_description": description, "error_uri":
                                      f"https://docs.github.com/apps/troubleshooting-oauth-errors#{slug}"}, status)

    # ---------------------------------------------------------------- REST API
    def _api_user(self, req: Request) -> tuple[Token | None, Reply | None]:
        if not req.header("User-Agent"):
            return None, Reply.text("Request forbidden by administrative rules. "
                                    "Please make sure your request has a User-Agent header.", 403)
        token = self.lookup(req.bearer())
        if token is None:
            return None, Reply.json({"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}, 401)
        return token, None

    def _scope_headers(self, token: Token) -> dict[str, str]:
        return {"X-OAuth-Scopes": ", ".join(self.scope_out(token.scope).split(",")) if token.scope else "",
                "X-Accepted-OAuth-Scopes": ""}

    def user(self, req: Request) -> Reply:
        token, refused = self._api_user(req)
        if refused:
            return refused
        u = self.users[token.user]
        return Reply.json({"login": u.login, "id": u.id, "node_id": f"U_kgDO{u.id}", "type": "User",
                           "site_admin": False, "name": u.name, "email": u.email if u.email_public else None,
                           "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4",
                           "html_url": f"https://github.com/{u.login}"}, headers=self._scope_headers(token))

    api_delay: float = 0.0  # seconds /user/repos waits before answering (deadline tests)
    echo_token_header: bool = False  # a hostile/buggy API: /user/repos repeats the bearer in a header

    def repos(self, req: Request) -> Reply:
        """GET /user/repos: the caller's repositories, `per_page` (max 100) at a time."""
        token, refused = self._api_user(req)
        if refused:
            return refused
        if self.api_delay:
            import time

            time.sleep(self.api_delay)
        u = self.users[token.user]
        per_page = min(int(req.query.get("per_page", "30")), 100)
        repos = [{"id": 7000 + i, "name": f"repo-{i}", "full_name": f"{u.login}/repo-{i}", "private": i % 2 == 0,
                  "owner": {"login": u.login, "id": u.id}, "html_url": f"https://github.com/{u.login}/repo-{i}",
                  "description": "x" * 200, "updated_at": f"2024-05-{i % 28 + 1:02d}T10:00:00Z"}
                 for i in range(per_page)]
        headers = self._scope_headers(token)
        if self.echo_token_header:
            headers = {**headers, "X-Debug-Auth": req.bearer() or ""}
        return Reply.json(repos, headers=headers)

    def emails(self, req: Request) -> Reply:
        token, refused = self._api_user(req)
        if refused:
            return refused
        scopes = self.scope_out(token.scope).split(",")
        if "user:email" not in scopes and "user" not in scopes:
            return Reply.json({"message": "Not Found", "documentation_url": DOCS, "status": "404"}, 404,
                              self._scope_headers(token))
        u = self.users[token.user]
        return Reply.json([
            {"email": u.email, "primary": True, "verified": True,
             "visibility": "public" if u.email_public else "private"},
            {"email": f"{u.id}+{u.login}@users.noreply.github.com", "primary": False, "verified": True,
             "visibility": None},
        ], headers=self._scope_headers(token))

    def _app_ok(self, req: Request) -> bool:
        cid, secret = req.client_auth()
        return req.header("Authorization").lower().startswith("basic ") and cid == self.client_id and same(
            secret, self.client_secret)

    def check_token(self, req: Request) -> Reply:
        token = self.lookup(req.form.get("access_token", "")) if self._app_ok(req) else None
        if token is None:
            return self.not_found(req)
        u = self.users[token.user]
        return Reply.json({"token": req.form["access_token"], "scopes": self.scope_out(token.scope).split(","),
                           "app": {"client_id": self.client_id}, "user": {"login": u.login, "id": u.id}})

    def delete_token(self, req: Request) -> Reply:
        if not self._app_ok(req) or not self.revoke(req.form.get("access_token", "")):
            return self.not_found(req)
        return Reply(204, b"", "text/plain")
