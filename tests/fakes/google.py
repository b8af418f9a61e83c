"""Fake Google OAuth / OpenID Connect: accounts.google.com, oauth2.googleapis.com,
openidconnect.googleapis.com and www.googleapis.com on one port.

Quirks kept from the real service:
* /o/oauth2/v2/auth requires `scope`; the callback also carries scope, authuser and prompt;
* a refresh token only with access_type=offline; refreshing keeps it (no refresh_token in the
  reply); expires_in is 3599; the granted scope comes back expanded to URLs
  (email -> https://www.googleapis.com/auth/userinfo.email);
* with `openid` an RS256 id_token (JWKS at /oauth2/v3/certs, discovery at
  /.well-known/openid-configuration; the issuer is this fake's base URL);
* /v1/userinfo and /oauth2/v3/userinfo answer by scope; /tokeninfo returns numbers and booleans
  as strings; /revoke (POST token=) revokes the whole grant; codes look like 4/0A…, tokens ya29.…
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import time
from typing import Any

from tests.fakes.base import Code, FakeProvider, Reply, Request, Token, User

SCOPE_URLS = {"email": "https://www.googleapis.com/auth/userinfo.email",
              "profile": "https://www.googleapis.com/auth/userinfo.profile"}
SHORT = {url: short for short, url in SCOPE_URLS.items()}
INVALID_TOKEN = {"error": "invalid_token", "error_description": "Invalid Value"}


@functools.cache
def signing_key():
    from joserfc.jwk import RSAKey  # only needed for id_tokens; generated once per test process

    return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})


def google_sub(user: User) -> str:
    return f"10769150350006150{user.id}"


class FakeGoogle(FakeProvider):
    NAME = "google"
    AUTHORIZE_PATH = "/o/oauth2/v2/auth"
    TOKEN_PATH = "/token"
    ACCESS_PREFIX = "ya29.a0A"
    REFRESH_PREFIX = "1//0g"
    ACCESS_TTL = 3599
    ROTATE_REFRESH = False
    TOKEN_ERRORS = {
        "invalid_client": (401, "invalid_client", "Unauthorized"),
        "bad_code": (400, "invalid_grant", "Bad Request"),
        "bad_verifier": (400, "invalid_grant", "Invalid code verifier."),
        "redirect_mismatch": (400, "redirect_uri_mismatch", "Bad Request"),
        "bad_refresh": (400, "invalid_grant", "Token has been expired or revoked."),
        "unsupported_grant_type": (400, "unsupported_grant_type", "Invalid grant_type"),
    }

    def routes(self):
        return {**super().routes(),
                ("GET", "/v1/userinfo"): self.userinfo, ("GET", "/oauth2/v3/userinfo"): self.userinfo,
                ("GET", "/tokeninfo"): self.tokeninfo, ("POST", "/tokeninfo"): self.tokeninfo,
                ("GET", "/oauth2/v3/tokeninfo"): self.tokeninfo, ("POST", "/revoke"): self.revoke_endpoint,
                ("GET", "/oauth2/v3/certs"): self.certs,
                ("GET", "/.well-known/openid-configuration"): self.discovery}

    def match(self, req):
        if req.method == "GET" and req.path.startswith("/calendar/v3/calendars/") and req.path.endswith("/events"):
            return self.calendar_events
        return None

    def calendar_events(self, req: Request) -> Reply:
        """Calendar API v3 events.list: needs a calendar scope, answers Google's error shape."""
        token = self.lookup(req.bearer())
        if token is None:
            return Reply.json({"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                         "status": "UNAUTHENTICATED"}}, 401)
        if not any(s.startswith("https://www.googleapis.com/auth/calendar") for s in token.scope.split()):
            return Reply.json({"error": {"code": 403, "message": "Request had insufficient authentication scopes.",
                                         "status": "PERMISSION_DENIED"}}, 403)
        n = min(int(req.query.get("maxResults", "250")), 2500)
        user = self.users[token.user]
        items = [{"kind": "calendar#event", "id": f"evt{i:04d}", "status": "confirmed", "summary": f"Meeting {i}",
                  "organizer": {"email": user.email, "self": True},
                  "start": {"dateTime": f"2024-06-{i % 28 + 1:02d}T09:00:00+02:00"},
                  "end": {"dateTime": f"2024-06-{i % 28 + 1:02d}T10:00:00+02:00"}} for i in range(n)]
        return Reply.json({"kind": "calendar#events", "summary": user.email, "timeZone": "Europe/Berlin",
                           "items": items})

    # ---------------------------------------------------------------- OAuth quirks
    def check_authorize(self, query):
        return None if query.get("scope") else "Missing required parameter: scope"

    def new_code(self) -> str:
        return "4/0A" + secrets.token_urlsafe(54)

    def callback_params(self, code: Code) -> dict[str, str]:
        prompt = "consent" if "consent" in code.params.get("prompt", "") else "none"
        return {"scope": self.scope_out(code.scope), "authuser": "0", "prompt": prompt}

    def wants_refresh(self, code: Code) -> bool:
        return code.params.get("access_type") == "offline"

    def scope_out(self, scope: str) -> str:
        return " ".join(SCOPE_URLS.get(s, s) for s in scope.split())

    @staticmethod
    def scopes(token: Token) -> set[str]:
        return {SHORT.get(s, s) for s in token.scope.split()}

    def shape(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        if "openid" in self.scopes(token):
            body["id_token"] = self.id_token(token, body["access_token"])
        return body

    def id_token(self, token: Token, access_token: str) -> str:
        from joserfc import jwt

        user, now = self.users[token.user], int(time.time())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims = {"iss": self.base_url, "azp": self.client_id, "aud": self.client_id, "sub": google_sub(user),
                  "at_hash": base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode(), "iat": now, "exp": now + 3599,
                  **self.claims(user, self.scopes(token))}
        if "nonce" in token.params:
            claims["nonce"] = token.params["nonce"]
        key = signing_key()
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    @staticmethod
    def claims(user: User, scopes: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "email" in scopes:
            out.update(email=user.email, email_verified=True)
        if "profile" in scopes:
            out.update(name=user.name, given_name=user.given_name, family_name=user.family_name,
                       picture=f"https://lh3.googleusercontent.com/a/{user.login}=s96-c")
        return out

    # ---------------------------------------------------------------- APIs
    def userinfo(self, req: Request) -> Reply:
        token = self.lookup(req.bearer() or req.query.get("access_token", ""))
        if token is None:
            challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            return Reply.json({"error": "invalid_request", "error_description": "Invalid Credentials"}, 401,
                              {"WWW-Authenticate": challenge})
        user = self.users[token.user]
        return Reply.json({"sub": google_sub(user), **self.claims(user, self.scopes(token))})

    def tokeninfo(self, req: Request) -> Reply:
        params = {**req.query, **req.form}
        if "id_token" in params:
            return self._id_tokeninfo(params["id_token"])
        token = self.lookup(params.get("access_token", ""))
        if token is None:
            return Reply.json(INVALID_TOKEN, 400)
        user = self.users[token.user]
        out = {"azp": self.client_id, "aud": self.client_id, "sub": google_sub(user),
               "scope": self.scope_out(token.scope),
               "exp": str(int(token.exp or 0)), "expires_in": str(max(0, int((token.exp or 0) - time.time()))),
               "access_type": token.params.get("access_type", "online")}
        if "email" in self.scopes(token):
            out.update(email=user.email, email_verified="true")
        return Reply.json(out)

    def _id_tokeninfo(self, value: str) -> Reply:
        from joserfc import jwt
        from joserfc.errors import JoseError

        try:
            claims = jwt.decode(value, signing_key(), algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return Reply.json(INVALID_TOKEN, 400)
        if claims.get("exp", 0) < time.time():
            return Reply.json(INVALID_TOKEN, 400)
        return Reply.json({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in claims.items()}
                          | {"alg": "RS256", "kid": signing_key().kid, "typ": "JWT"})

    def revoke_endpoint(self, req: Request) -> Reply:
        if self.revoke(req.form.get("token") or req.query.get("token", ""), whole_grant=True):
            return Reply.json({})
        return Reply.json({"error": "invalid_token", "error_description": "Token expired or revoked"}, 400)

    def certs(self, req: Request) -> Reply:
        return Reply.json({"keys": [signing_key().as_dict(private=False)]})

    def discovery(self, req: Request) -> Reply:
        b = self.base_url
        return Reply.json({
            "issuer": b, "authorization_endpoint": f"{b}{self.AUTHORIZE_PATH}", "token_endpoint": f"{b}/token",
            "userinfo_endpoint": f"{b}/v1/userinfo", "revocation_endpoint": f"{b}/revoke",
            "jwks_uri": f"{b}/oauth2/v3/certs", "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        })
