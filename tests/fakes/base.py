"""Plumbing shared by the fake OAuth providers: a threaded loopback HTTP server with a login
form, single-use short-lived codes, exact redirect URIs, client secrets and PKCE S256.

Each provider subclass only declares its routes and reply shapes (the quirks real clients trip on).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

USERS = {
    "alice": {"password": "alice-password", "id": "1001", "name": "Alice Analyst", "email": "alice@example.test"},
    "bob": {"password": "bob-password", "id": "1002", "name": "Bob Admin", "email": "bob@example.test"},
}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.content_type.startswith("application/json"):
            return json.dumps(self.body).encode()
        return str(self.body or "").encode()


class FakeProvider:
    """Subclasses set AUTHORIZE/TOKEN paths and implement `token_reply` and `api`."""

    AUTHORIZE = "/authorize"
    TOKEN = "/token"
    TOKEN_PREFIX = "tok_"

    def __init__(self, client_id: str, client_secret: str, redirect_uris: list[str]):
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uris = redirect_uris
        self.codes: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}
        self.refresh: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for assertions
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ OAuth core
    def authorize(self, query: dict[str, str], form: dict[str, str] | None) -> Reply:
        if query.get("client_id") != self.client_id:
            return Reply(400, "unknown client_id", "text/plain")
        if query.get("redirect_uri") not in self.redirect_uris:
            return Reply(400, "redirect_uri mismatch", "text/plain")
        if form is None:
            return Reply(200, self._login_page(query), "text/html")
        user = USERS.get(form.get("username", ""))
        if user is None or not secrets.compare_digest(user["password"], form.get("password", "")):
            return Reply(401, self._login_page(query, "Incorrect username or password."), "text/html")
        code = secrets.token_urlsafe(20)
        with self.lock:
            self.codes[code] = {"user": form["username"], "redirect_uri": query["redirect_uri"],
                                "challenge": query.get("code_challenge"), "scope": query.get("scope", ""),
                                "exp": time.time() + 60}
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
        return Reply(302, b"", "text/plain", {"Location": target})

    def _login_page(self, query: dict[str, str], error: str = "") -> str:
        hidden = "".join(f'<input type="hidden" name="q_{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in query.items())
        err = f'<p role="alert">{html.escape(error)}</p>' if error else ""
        return (f"<!doctype html><title>Sign in</title>{err}<form method=post action='{self.AUTHORIZE}'>"
                f"{hidden}<input name=username><input name=password type=password>"
                "<button type=submit>Sign in</button></form>")

    def client_ok(self, headers, form: dict[str, str]) -> bool:
        cid, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        return cid == self.client_id and secret is not None and secrets.compare_digest(secret, self.client_secret)

    def redeem(self, form: dict[str, str]) -> tuple[dict | None, str]:
        """Check a code grant; (record, "") or (None, error)."""
        with self.lock:
            rec = self.codes.pop(form.get("code", ""), None)  # single use, even when it fails below
        if rec is None or rec["exp"] < time.time():
            return None, "bad_verification_code"
        if form.get("redirect_uri") != rec["redirect_uri"]:
            return None, "redirect_uri_mismatch"
        if rec["challenge"]:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != rec["challenge"]:
                return None, "invalid_grant"
        return rec, ""

    def issue(self, user: str, scope: str, refresh: bool, ttl: int | None = 3600) -> dict[str, Any]:
        token = self.TOKEN_PREFIX + secrets.token_urlsafe(24)
        out: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "scope": scope}
        with self.lock:
            self.tokens[token] = {"user": user, "scope": scope, "exp": time.time() + ttl if ttl else None}
            if refresh:
                rt = "rt_" + secrets.token_urlsafe(24)
                self.refresh[rt] = {"user": user, "scope": scope}
                out["refresh_token"] = rt
        if ttl:
            out["expires_in"] = ttl
        return out

    def rotate(self, form: dict[str, str]) -> dict[str, Any] | None:
        with self.lock:
            rec = self.refresh.pop(form.get("refresh_token", ""), None)
        return None if rec is None else self.issue(rec["user"], rec["scope"], refresh=True)

    def bearer_user(self, headers) -> dict | None:
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        rec = self.tokens.get(token)
        if rec is None or (rec["exp"] and rec["exp"] < time.time()):
            return None
        return {"login": rec["user"], **USERS[rec["user"]]}

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens.pop(token, None)
            self.refresh.pop(token, None)

    # ------------------------------------------------------------------ provider-specific
    def token_reply(self, headers, form: dict[str, str]) -> Reply:
        raise NotImplementedError

    def api(self, method: str, path: str, query: dict[str, str], headers, form: dict[str, str]) -> Reply | None:
        """Routes beyond authorize/token; None = 404."""
        return None

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _dispatch(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                if "json" in (self.headers.get("Content-Type") or ""):
                    form = {k: str(v) for k, v in (json.loads(raw) if raw else {}).items()}
                else:
                    form = {k: v[0] for k, v in parse_qs(raw).items()}
                fake.requests.append((method, url.path))
                if url.path == fake.AUTHORIZE:
                    if method == "POST":
                        q = {k[2:]: v for k, v in form.items() if k.startswith("q_")}
                        reply = fake.authorize(q, form)
                    else:
                        reply = fake.authorize(query, None)
                elif url.path == fake.TOKEN and method == "POST":
                    reply = fake.token_reply(self.headers, form)
                else:
                    reply = fake.api(method, url.path, query, self.headers, form) or Reply(404, {"error": "not found"})
                body = reply.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler
