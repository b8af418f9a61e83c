"""Plumbing shared by the fake OAuth providers.

A threaded loopback HTTP server per fake, a headless login form, single-use short-lived
authorization codes, exact redirect URIs, client secrets (HTTP Basic or body), PKCE, access and
refresh tokens grouped into grants (so revoking or replaying a code can end a whole grant).

A provider subclass declares its paths, its reply shapes and its error quirks; everything else
is here. Users are alice/alice-password and bob/bob-password (bob's e-mail is private on GitHub).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit


@dataclass(frozen=True)
class User:
    login: str
    password: str
    id: int
    name: str
    email: str
    email_public: bool = True  # GitHub: a private address shows only in /user/emails

    @property
    def given_name(self) -> str:
        return self.name.split()[0]

    @property
    def family_name(self) -> str:
        return self.name.split()[-1]


USERS: dict[str, User] = {u.login: u for u in (
    User("alice", "alice-password", 1001, "Alice Analyst", "alice@example.test"),
    User("bob", "bob-password", 1002, "Bob Admin", "bob@example.test", email_public=False),
)}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    form: dict[str, str]  # urlencoded or JSON body

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""

    def bearer(self) -> str:
        scheme, _, token = self.header("Authorization").partition(" ")
        return token.strip() if scheme.lower() in ("bearer", "token") else ""  # GitHub also takes "token X"

    def client_auth(self) -> tuple[str | None, str | None]:
        """(client_id, client_secret) from HTTP Basic (RFC 6749 2.3.1) or the body; Basic wins."""
        scheme, _, blob = self.header("Authorization").partition(" ")
        if scheme.lower() == "basic":
            try:
                cid, _, secret = base64.b64decode(blob).decode().partition(":")
            except ValueError:
                return None, None
            return unquote(cid), unquote(secret)
        return self.form.get("client_id"), self.form.get("client_secret")


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, body, headers=headers or {})

    @classmethod
    def html(cls, body: str, status: int = 200) -> Reply:
        return cls(status, body, "text/html; charset=utf-8")

    @classmethod
    def text(cls, body: str, status: int = 200) -> Reply:
        return cls(status, body, "text/plain; charset=utf-8")

    @classmethod
    def redirect(cls, url: str) -> Reply:
        return cls(302, b"", "text/plain", {"Location": url})

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.content_type.startswith("application/json"):
            return json.dumps(self.body).encode()
        return str(self.body if self.body is not None else "").encode()


@dataclass
class Code:
    user: str
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str
    exp: float
    grant: str
    params: dict[str, str]  # the whole authorization request (nonce, access_type, audience …)


@dataclass
class Token:
    user: str
    scope: str
    grant: str
    exp: float | None
    params: dict[str, str]

    def alive(self) -> bool:
        return self.exp is None or self.exp > time.time()


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def add_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def same(a: str | None, b: str) -> bool:
    return a is not None and secrets.compare_digest(a.encode(), b.encode())


Handler = Callable[[Request], Reply]


class FakeProvider:
    """One fake provider on one 127.0.0.1 port; use as a context manager (or start()/stop())."""

    NAME: ClassVar[str] = "fake"
    AUTHORIZE_PATH: ClassVar[str] = "/authorize"
    TOKEN_PATH: ClassVar[str] = "/token"
    ACCESS_PREFIX: ClassVar[str] = "at_"
    REFRESH_PREFIX: ClassVar[str] = "rt_"
    ACCESS_TTL: ClassVar[int | None] = 3600  # None: tokens never expire and no expires_in is sent
    REFRESH_TTL: ClassVar[int | None] = None
    ROTATE_REFRESH: ClassVar[bool] = True  # False: the refresh reply carries no new refresh_token
    RESPONSE_TYPE_REQUIRED: ClassVar[bool] = True
    DEFAULT_GRANT: ClassVar[str | None] = None  # grant_type assumed when the token request has none
    TOKEN_REDIRECT_URI_OPTIONAL: ClassVar[bool] = False  # True: the token request may omit redirect_uri
    # internal error name -> (HTTP status, error, error_description); providers override entries
    TOKEN_ERRORS: ClassVar[dict[str, tuple[int, str, str]]] = {
        "invalid_client": (401, "invalid_client", "Client authentication failed."),
        "bad_code": (400, "invalid_grant", "The authorization code is invalid or expired."),
        "bad_verifier": (400, "invalid_grant", "PKCE verification failed."),
        "redirect_mismatch": (400, "invalid_grant", "redirect_uri does not match the authorization request."),
        "bad_refresh": (400, "invalid_grant", "The refresh token is invalid or expired."),
        "unsupported_grant_type": (400, "unsupported_grant_type", "Unsupported grant_type."),
    }

    def __init__(self, client_id: str | None = None, client_secret: str | None = None,
                 redirect_uris: list[str] | tuple[str, ...] = (), *, port: int = 0, auto_login: str | None = None,
                 code_ttl: float = 60, access_ttl: int | None = None, users: dict[str, User] | None = None):
        """Bind 127.0.0.1:`port` (0: a free one) now; serve from start()/`with`.

        auto_login: answer every login form as this user (no form shown). code_ttl: seconds a code
        lives. access_ttl: None = the provider's usual lifetime, 0 = tokens never expire.
        Client id/secret default to "<name>-client"/"<name>-secret".
        """
        self.client_id = client_id or f"{self.NAME}-client"
        self.client_secret = client_secret or f"{self.NAME}-secret"
        self.redirect_uris = list(redirect_uris)
        self.users = users or USERS
        if auto_login is not None and auto_login not in self.users:
            raise ValueError(f"auto_login: unknown user {auto_login!r}")
        self.auto_login = auto_login
        self.code_ttl = code_ttl
        self.access_ttl = self.ACCESS_TTL if access_ttl is None else (access_ttl or None)  # 0: never expire
        self.codes: dict[str, Code] = {}
        self.spent_codes: dict[str, str] = {}  # code -> grant, to revoke that grant on replay
        self.tokens: dict[str, Token] = {}  # live access tokens
        self.refresh_tokens: dict[str, Token] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) as served, for assertions
        self.seen: list[Request] = []  # the same, in full
        self.errors: list[str] = []  # tracebacks of handler crashes (a test should see none)
        self.lock = threading.RLock()
        self._routes = self.routes()
        self._server = _Server(("127.0.0.1", port), self._handler_class())
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeProvider:
        if self._thread is None:
            # a short poll interval: stop() (shutdown) waits for one poll, 0.5 s by default
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=f"fake-{self.NAME}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ hooks for providers
    def routes(self) -> dict[tuple[str, str], Handler]:
        return {("GET", self.AUTHORIZE_PATH): self.authorize, ("POST", self.AUTHORIZE_PATH): self.authorize,
                ("POST", self.TOKEN_PATH): self.token}

    def match(self, req: Request) -> Handler | None:
        """Routes with variable paths (beyond the exact ones in routes())."""
        return None

    def not_found(self, req: Request) -> Reply:
        return Reply.json({"error": "not_found"}, 404)

    def check_authorize(self, query: dict[str, str]) -> str | None:
        """Provider-specific required authorization parameters; a message refuses the request."""
        return None

    def callback_params(self, code: Code) -> dict[str, str]:
        return {}

    def new_code(self) -> str:
        return secrets.token_urlsafe(24)

    def new_access_token(self, user: User, scope: str) -> str:
        return self.ACCESS_PREFIX + secrets.token_urlsafe(32)

    def wants_refresh(self, code: Code) -> bool:
        return True

    def scope_out(self, scope: str) -> str:
        return scope

    def shape(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """Last touch on a successful token reply (extra fields, removed fields)."""
        return body

    def token_reply(self, req: Request, body: dict[str, Any], status: int = 200) -> Reply:
        return Reply.json(body, status, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def token_error(self, req: Request, name: str) -> Reply:
        status, error, description = self.TOKEN_ERRORS[name]
        return self.token_reply(req, {"error": error, "error_description": description}, status)

    # ------------------------------------------------------------------ authorization endpoint
    def authorize(self, req: Request) -> Reply:
        form = req.form if req.method == "POST" else None
        q = {k[2:]: v for k, v in form.items() if k.startswith("q_")} if form is not None else req.query
        if q.get("client_id") != self.client_id:
            return self.authorize_page_error(q, "invalid_client", "The OAuth client was not found.", 400)
        redirect_uri = q.get("redirect_uri") or self.default_redirect_uri()
        if redirect_uri not in self.redirect_uris:
            return self.bad_redirect(q)
        problem = self.check_authorize(q)
        if problem:
            return self.authorize_page_error(q, "invalid_request", problem, 400)
        state = {"state": q["state"]} if "state" in q else {}
        if self.RESPONSE_TYPE_REQUIRED and q.get("response_type") != "code":
            return Reply.redirect(add_query(redirect_uri, {"error": "unsupported_response_type", **state}))
        method = q.get("code_challenge_method") or "plain"  # RFC 7636: no method means plain
        if q.get("code_challenge") and method not in ("S256", "plain"):
            return Reply.redirect(add_query(redirect_uri, {"error": "invalid_request", **state,
                                                           "error_description": "unsupported code_challenge_method"}))
        if q.get("fake_deny"):  # the Cancel link on the login page
            return Reply.redirect(add_query(redirect_uri, {"error": "access_denied", **state,
                                                           "error_description": "The user denied access."}))
        user = self.auto_login
        if form is not None:
            user = form.get("username", "")
            account = self.users.get(user)
            if account is None or not same(form.get("password"), account.password):
                return Reply.html(self.login_page(q, "Incorrect username or password."), 401)
        if user is None:
            return Reply.html(self.login_page(q))
        code = Code(user=user, redirect_uri=redirect_uri, scope=q.get("scope", ""),
                    challenge=q.get("code_challenge") or None, method=method, exp=time.time() + self.code_ttl,
                    grant=secrets.token_hex(8), params=dict(q))
        value = self.new_code()
        with self.lock:
            self.codes[value] = code
        return Reply.redirect(add_query(redirect_uri, {"code": value, **state, **self.callback_params(code)}))

    def default_redirect_uri(self) -> str | None:
        return None  # redirect_uri is required (GitHub overrides: it falls back to the registered one)

    def bad_redirect(self, query: dict[str, str]) -> Reply:
        # never redirect to an unregistered URI: show an error page instead
        return self.authorize_page_error(query, "redirect_uri_mismatch", "redirect_uri is not registered.", 400)

    def authorize_page_error(self, query: dict[str, str], error: str, description: str, status: int) -> Reply:
        return Reply.html(f"<!doctype html><title>Error</title><h1>Error {status}: {html.escape(error)}</h1>"
                          f"<p id=error>{html.escape(description)}</p>", status)

    def login_page(self, query: dict[str, str], error: str = "") -> str:
        hidden = "".join(f'<input type="hidden" name="q_{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in query.items())
        err = f'<p id="error" role="alert">{html.escape(error)}</p>' if error else ""
        cancel = html.escape(add_query(self.AUTHORIZE_PATH, {**query, "fake_deny": "1"}))
        return (f"<!doctype html><html><head><title>Sign in to {self.NAME}</title></head><body>"
                f"<h1>Sign in to {self.NAME} (fake)</h1>{err}"
                f'<form id="login" method="post" action="{self.AUTHORIZE_PATH}">{hidden}'
                '<label>Username <input name="username" autocomplete="username"></label>'
                '<label>Password <input name="password" type="password"></label>'
                f'<button type="submit">Sign in</button></form><a href="{cancel}">Cancel</a></body></html>')

    # ------------------------------------------------------------------ token endpoint
    def token(self, req: Request) -> Reply:
        cid, secret = req.client_auth()
        if cid != self.client_id or not same(secret, self.client_secret):
            return self.token_error(req, "invalid_client")
        grant_type = req.form.get("grant_type") or self.DEFAULT_GRANT
        if grant_type == "authorization_code":
            result = self.redeem(req)
        elif grant_type == "refresh_token":
            result = self.refresh(req)
        else:
            result = "unsupported_grant_type"
        return self.token_error(req, result) if isinstance(result, str) else self.token_reply(req, result)

    def redeem(self, req: Request) -> dict[str, Any] | str:
        value = req.form.get("code", "")
        with self.lock:
            code = self.codes.pop(value, None)  # single use, whatever happens next
            if code is None:
                if value in self.spent_codes:  # RFC 6749 4.1.2: a replayed code revokes its tokens
                    self.revoke_grant(self.spent_codes[value])
                return "bad_code"
            self.spent_codes[value] = code.grant
        if code.exp < time.time():
            return "bad_code"
        given = req.form.get("redirect_uri")
        required = "redirect_uri" in code.params and not self.TOKEN_REDIRECT_URI_OPTIONAL
        if (given is not None or required) and given != code.redirect_uri:
            return "redirect_mismatch"
        if code.challenge:
            verifier = req.form.get("code_verifier", "")
            expected = s256(verifier) if code.method == "S256" else verifier
            if not verifier or not same(expected, code.challenge):
                return "bad_verifier"
        return self.issue(code.user, code.scope, code.grant, code.params, refresh=self.wants_refresh(code))

    def refresh(self, req: Request) -> dict[str, Any] | str:
        value = req.form.get("refresh_token", "")
        with self.lock:
            rec = self.refresh_tokens.get(value)
            if rec is None or not rec.alive():
                return "bad_refresh"
            if self.ROTATE_REFRESH:
                del self.refresh_tokens[value]
        return self.issue(rec.user, rec.scope, rec.grant, rec.params, refresh=self.ROTATE_REFRESH)

    def issue(self, user: str, scope: str, grant: str, params: dict[str, str], refresh: bool) -> dict[str, Any]:
        now = time.time()
        access = self.new_access_token(self.users[user], scope)
        token = Token(user, scope, grant, now + self.access_ttl if self.access_ttl else None, params)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "scope": self.scope_out(scope)}
        if self.access_ttl:
            body["expires_in"] = self.access_ttl
        with self.lock:
            self.tokens[access] = token
            if refresh:
                value = self.REFRESH_PREFIX + secrets.token_urlsafe(40)
                exp = now + self.REFRESH_TTL if self.REFRESH_TTL else None
                self.refresh_tokens[value] = Token(user, scope, grant, exp, params)
                body["refresh_token"] = value
        return self.shape(body, token)

    # ------------------------------------------------------------------ tokens at the APIs
    def lookup(self, value: str) -> Token | None:
        token = self.tokens.get(value) if value else None
        return token if token is not None and token.alive() else None

    def revoke(self, value: str, whole_grant: bool = False) -> bool:
        """Forget an access or refresh token; revoking a refresh token (or whole_grant) ends its grant."""
        with self.lock:
            access = self.tokens.pop(value, None)
            refresh = self.refresh_tokens.pop(value, None)
            found = access or refresh
            if found is not None and (refresh is not None or whole_grant):
                self.revoke_grant(found.grant)
        return found is not None

    def revoke_grant(self, grant: str) -> None:
        with self.lock:
            for store in (self.tokens, self.refresh_tokens):
                for value in [v for v, t in store.items() if t.grant == grant]:
                    del store[value]

    # ------------------------------------------------------------------ HTTP
    def dispatch(self, req: Request) -> Reply:
        handler = self._routes.get((req.method, req.path)) or self.match(req)
        return handler(req) if handler else self.not_found(req)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # idle keep-alive connections end eventually

            def log_message(self, *args):
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if "json" in (self.headers.get("Content-Type") or "") and raw.strip():
                    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in json.loads(raw).items()}
                else:
                    form = dict(parse_qsl(raw, keep_blank_values=True))
                req = Request(self.command, url.path, dict(parse_qsl(url.query, keep_blank_values=True)),
                              self.headers, form)
                fake.requests.append((req.method, req.path))
                fake.seen.append(req)
                try:
                    reply = fake.dispatch(req)
                except Exception:
                    fake.errors.append(traceback.format_exc())
                    reply = Reply.text("internal error in the fake (see .errors)", 500)
                body = reply.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        return _Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a client's idle keep-alive connection must not hold up stop()

    # A stopped provider is gone: its open keep-alive connections end too, as a crashed or unreachable
    # host's would. Otherwise a client that pools connections (sqlgate's upstream calls do) keeps
    # talking to a "stopped" provider through a connection accepted before stop().
    def process_request(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        super().server_close()
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def __init__(self, *args, **kwargs):
        self._open: set = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)
