"""Run the test OpenID provider (tests/idp/server.mjs) from tests, and log in through it headlessly.

    with OidcProvider(redirect_uris=["http://127.0.0.1:9999/callback"]) as idp:
        meta = idp.discovery()
        location = login(browser, authorize_url)   # -> "http://127.0.0.1:9999/callback?code=…&state=…&iss=…"
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import weakref
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey

HERE = Path(__file__).resolve().parent
USERS = {"alice": "alice-password", "bob": "bob-password"}
# server.mjs reads these as defaults; a developer's shell must not leak into a test's IdP
SERVER_ENV = ("PORT", "HOST", "CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URIS", "RESOURCES", "ACCESS_TOKEN_TTL",
              "REFRESH_TOKEN_TTL", "CODE_TTL", "USERS_FILE", "AUTO_LOGIN_USER", "USE_GRANTED_RESOURCE",
              "ENABLE_REGISTRATION", "KEYCLOAK_REALM", "SIGNING_KEY_FILE")


_RUNNING: weakref.WeakSet[OidcProvider] = weakref.WeakSet()
# a test run that dies without stop() must not leave node servers behind
atexit.register(lambda: [p.stop() for p in list(_RUNNING)])


def _pinned_version() -> str:
    return json.loads((HERE / "package.json").read_text())["dependencies"]["oidc-provider"]


def _installed() -> bool:
    manifest = HERE / "node_modules" / "oidc-provider" / "package.json"
    return manifest.exists() and json.loads(manifest.read_text())["version"] == _pinned_version()


def ensure_installed(timeout: float = 300) -> None:
    """Skip without node; otherwise `npm ci` once from the lockfile (flock: parallel workers wait)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the OIDC provider tests need Node.js 20+")
    if _installed():
        return
    with open(HERE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():  # another process installed it while we waited
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm is missing: cannot install {HERE}/node_modules (run `npm ci` there)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"npm ci failed in {HERE}:\n{done.stdout}\n{done.stderr}")


class OidcProvider:
    """A running oidc-provider on 127.0.0.1; started by the constructor, stop() or `with` ends it.

    Attributes: issuer, port, base_url, client_id, client_secret, introspector (id, secret), info
    (the READY line). The first static client is (client_id, client_secret); `extra_clients` adds
    more that share the redirect URIs.
    """

    def __init__(self, *, redirect_uris: list[str] | None = None, client_id: str = "sql-mcp",
                 client_secret: str = "sql-mcp-secret", extra_clients: dict[str, str] | None = None,
                 realm: str | None = None, resources: list[str] | None = None, access_token_ttl: int = 600,
                 refresh_token_ttl: int = 86400, code_ttl: int = 60, registration: bool = False,
                 auto_login: str | None = None, use_granted_resource: bool = False,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 start_timeout: float = 20):
        ensure_installed()
        args = ["node", str(HERE / "server.mjs"), "--port", "0", "--client-id", client_id,
                "--client-secret", client_secret, "--access-token-ttl", str(access_token_ttl),
                "--refresh-token-ttl", str(refresh_token_ttl), "--code-ttl", str(code_ttl)]
        for cid, secret in (extra_clients or {}).items():
            args += ["--client-id", cid, "--client-secret", secret]
        for uri in redirect_uris or []:  # none given: REDIRECT_URIS from `env`, else the server default
            args += ["--redirect-uri", uri]
        # a token request without `resource` gets an opaque userinfo token; this placeholder just
        # replaces server.mjs's default resources
        for res in resources or ["urn:sqlgate:unused=opaque"]:
            args += ["--resource", res]
        if realm:
            args += ["--realm", realm]
        if registration:
            args.append("--registration")
        if auto_login:
            args += ["--auto-login", auto_login]
        if use_granted_resource:
            args.append("--use-granted-resource")
        args += extra_args or []
        # a fresh RSA key per IdP, made here: node 20's own RSA keygen sometimes hangs (server.mjs)
        key_fd, key_file = tempfile.mkstemp(prefix="oidc-provider-key-", suffix=".json")  # 0600
        with os.fdopen(key_fd, "w") as f:
            json.dump(RSAKey.generate_key(2048, private=True).as_dict(private=True), f)
        args += ["--signing-key", key_file]
        child_env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV} | (env or {})
        fd, log = tempfile.mkstemp(prefix="oidc-provider-", suffix=".log")
        self.log_path = Path(log)
        # stdout+stderr to a file: no pipe can fill up and stall node, and logs() can show it all
        self.proc = subprocess.Popen(args, stdout=fd, stderr=subprocess.STDOUT, env=child_env,
                                     stdin=subprocess.DEVNULL)
        os.close(fd)
        _RUNNING.add(self)
        try:
            self.info = self._wait_ready(start_timeout)
        finally:
            os.unlink(key_file)  # read at start; no private key left lying around
        self.issuer: str = self.info["issuer"]
        self.port: int = self.info["port"]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client_id, self.client_secret = client_id, client_secret
        self.introspector = (f"{client_id}-introspector", f"{client_secret}-introspector")
        self._discovery: dict | None = None

    def _wait_ready(self, timeout: float) -> dict:
        started = time.monotonic()
        while True:
            exited = self.proc.poll() is not None  # before reading: a READY written just before exit counts
            text = self.logs()
            for line in text.split("\n")[:-1]:  # complete lines only
                if line.startswith("READY "):
                    return json.loads(line[len("READY "):])
            if exited or time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"test IdP did not start within {time.monotonic() - started:.1f} s "
                                   f"(exit {self.proc.returncode}); its output:\n{text}")
            time.sleep(0.02)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def discovery(self) -> dict:
        if self._discovery is None:
            resp = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10, trust_env=False)
            self._discovery = resp.raise_for_status().json()
        return self._discovery

    def login(self, browser: httpx.Client, url: str, username: str = "alice", password: str | None = None) -> str:
        """login() that knows where this IdP ends: the first redirect off its origin is returned."""
        return login(browser, url, username, password, idp_origin=self.base_url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------- headless login
class LoginError(AssertionError):
    """The login did not end in a redirect off the IdP; `.response` is the last page."""

    def __init__(self, message: str, response: httpx.Response | None = None):
        super().__init__(message)
        self.response = response


class _LoginForm(HTMLParser):
    """The first <form> with a password field: its action, method and fields."""

    def __init__(self) -> None:
        super().__init__()
        self.current: dict | None = None
        self.found: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.found is None:
            self.current = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                            "fields": {}, "user": None, "password": None}
        elif tag == "input" and self.current is not None and a.get("name"):
            kind = a.get("type", "text").lower()
            if kind == "password":
                self.current["password"] = a["name"]
            elif kind in ("text", "email") and self.current["user"] is None:
                self.current["user"] = a["name"]
            if kind not in ("submit", "button", "checkbox", "radio"):
                self.current["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form" and self.current is not None:
            if self.current["password"]:
                self.found = self.current
            self.current = None


def origin(url: str | httpx.URL) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


def query_params(url: str) -> dict[str, str]:
    """The query of a redirect (the callback parameters: code, state, iss or error …)."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def login(browser: httpx.Client, url: str, username: str = "alice", password: str | None = None, *,
          idp_origin: str | None = None, max_steps: int = 20) -> str:
    """Follow `url` (an IdP authorization URL, or a redirect chain that leads to one — e.g. an
    OAuth proxy's /authorize), submit the IdP's login form as `username`, and return the redirect
    Location that leaves the IdP (the authorization response to the client), without following it.

    The exit is the first redirect that carries `code` or `error`, or — when idp_origin is known
    (given, or learnt from the page that showed the login form) — the first redirect from the
    IdP to another origin. With an SSO cookie in `browser` no form is shown. A refused password
    or an error page raises LoginError.
    """
    password = USERS.get(username, "") if password is None else password
    resp = browser.get(url)
    submitted = False
    for _ in range(max_steps):
        here = origin(resp.url)
        if resp.is_redirect:
            location = urljoin(str(resp.url), resp.headers["location"])
            params = query_params(location) | dict(parse_qsl(urlsplit(location).fragment))
            if "code" in params or "error" in params or (idp_origin == here and origin(location) != here):
                return location
            resp = browser.get(location)
            continue
        form = _LoginForm()
        form.feed(resp.text)
        if form.found is None or submitted:
            # login() only follows redirects and fills the IdP's login form; pages of the client
            # (e.g. a consent page) must be passed before calling it
            why = "the login was refused" if submitted and form.found else "no login form"
            raise LoginError(f"{why}: HTTP {resp.status_code} at {resp.url}: {resp.text[:300]}", resp)
        idp_origin = idp_origin or here
        fields = dict(form.found["fields"])
        if form.found["user"]:
            fields[form.found["user"]] = username
        fields[form.found["password"]] = password
        target = urljoin(str(resp.url), form.found["action"] or str(resp.url))
        if form.found["method"] == "post":
            resp = browser.post(target, data=fields)
        else:
            resp = browser.get(target, params=fields)
        submitted = True
    raise LoginError(f"no redirect off the IdP after {max_steps} steps (last: {resp.url})", resp)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
