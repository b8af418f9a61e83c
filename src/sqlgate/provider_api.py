"""`runtime.http`: Python endpoints calling the identity provider's API as the caller.

    from sqlgate import runtime

    def my_repos(limit: int = 30):
        r = runtime.http.get("https://api.github.com/user/repos", params={"per_page": limit})
        return [{"name": x["full_name"], "private": x["private"]} for x in r.json()]

The caller's external token (the provider's token from the OAuth proxy, what SQL calls
get_user_external_token()) is added as `Authorization: Bearer …`; the endpoint never handles it.
Every request is bounded and checked:

- only to the provider's API hosts (`auth.<provider>.api_hosts`; defaults per provider, and for
  Salesforce the org's `instance_url` from the token reply), https only (plain http only to a
  loopback host listed explicitly, for development); redirects are returned, never followed;
- within the call's deadline (the endpoint's timeout: what is left of it when the request starts);
- reading at most `max_bytes` of the answer (default and ceiling: `api_max_response_bytes`);
- one log line per request (`sqlgate.provider_api`: method, host, path, status, size, time, user) —
  never the token, the query string or headers; an answer that contains the caller's token is
  refused rather than handed to the endpoint, so it cannot reach the client.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

from sqlgate.errors import QueryFailed, QueryTimeout

log = logging.getLogger("sqlgate.provider_api")

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_API_HOSTS: dict[str, tuple[str, ...]] = {
    "github": ("api.github.com",),
    "google": ("www.googleapis.com",),
    "atlassian": ("api.atlassian.com",),
    "salesforce": (),  # the org's instance_url, from the token reply
}
ALLOWED_METHODS = ("GET", "HEAD", "POST")  # POST: query APIs (Jira search, GraphQL) read with it


class ProviderAPIError(QueryFailed):
    """A provider API request that was refused or failed; the message never holds the token."""


@dataclass(frozen=True)
class _ProviderSettings:
    hosts: tuple[str, ...]
    max_bytes: int
    # (scheme, host[:port]) of the provider's token endpoint: the only non-https instance_url trusted
    token_origin: tuple[str, str] = ("", "")


_settings: dict[str, _ProviderSettings] = {}


def configure(auth) -> None:
    """Called when authentication is built: which hosts the provider's token may go to."""
    _settings.clear()
    if auth.provider == "none":
        return
    cfg = auth.provider_config()
    hosts = cfg.api_hosts
    if hosts is None:
        hosts = list(DEFAULT_API_HOSTS.get(auth.provider, ()))
        if auth.provider == "github" and cfg.api_base_url:
            hosts = [urlsplit(cfg.api_base_url).netloc]
    token_origin = ("", "")
    if auth.provider == "salesforce":
        from sqlgate.auth.upstream import resolve_endpoints

        token = urlsplit(resolve_endpoints(auth.provider, cfg).token)
        token_origin = (token.scheme, token.netloc.lower())
    _settings[auth.provider] = _ProviderSettings(tuple(h.lower() for h in hosts), cfg.api_max_response_bytes,
                                                 token_origin)


def instance_host(instance: str, token_origin: tuple[str, str]) -> str | None:
    """The API host the token reply's `instance_url` names, if it may receive the token: https to a
    DNS name (Salesforce's own org hosts), or the token endpoint's own origin (a local or self-hosted
    login). Not an IP literal, `localhost` or userinfo: a forged or tampered reply must not point the
    caller's token at the server's own network."""
    parts = urlsplit(instance)
    netloc = parts.netloc.lower()
    if netloc and (parts.scheme, netloc) == token_origin:
        return netloc
    host = (parts.hostname or "").lower()
    last = host.rsplit(".", 1)[-1]
    if (parts.scheme != "https" or "@" in netloc or "." not in host or host.endswith(".localhost")
            or not re.fullmatch(r"[a-z][a-z0-9-]*", last)):  # numeric/hex forms resolve as IP addresses
        return None
    return netloc


@dataclass
class Response:
    status_code: int
    headers: Mapping[str, str]
    content: bytes = field(repr=False)
    url: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    def raise_for_status(self) -> Response:
        if not self.ok:
            raise ProviderAPIError(f"provider API {urlsplit(self.url).netloc}{urlsplit(self.url).path} "
                                   f"answered HTTP {self.status_code}")
        return self


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ProviderHTTP:
    """The object behind `runtime.http` (stateless: everything comes from the running call)."""

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    async def aget(self, url: str, **kw: Any) -> Response:
        return await self.arequest("GET", url, **kw)

    async def apost(self, url: str, **kw: Any) -> Response:
        return await self.arequest("POST", url, **kw)

    def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, json: Any = None, data: Any = None,
                max_bytes: int | None = None) -> Response:
        plan = self._plan(method, url, headers, max_bytes)
        with httpx2.Client(timeout=plan.remaining(), follow_redirects=False, trust_env=False) as http:
            try:
                with http.stream(plan.method, url, params=params, headers=plan.headers, json=json, data=data) as r:
                    body = bytearray()
                    for chunk in r.iter_bytes():
                        body += chunk
                        plan.check(len(body))
                    return plan.finish(r, bytes(body))
            except httpx2.HTTPError as exc:
                raise plan.failed(exc) from None

    async def arequest(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                       headers: Mapping[str, str] | None = None, json: Any = None, data: Any = None,
                       max_bytes: int | None = None) -> Response:
        plan = self._plan(method, url, headers, max_bytes)
        try:
            with anyio.fail_after(plan.remaining()):
                async with (httpx2.AsyncClient(timeout=plan.remaining(), follow_redirects=False,
                                               trust_env=False) as http,
                            http.stream(plan.method, url, params=params, headers=plan.headers, json=json,
                                        data=data) as r):
                    body = bytearray()
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        plan.check(len(body))
                    return plan.finish(r, bytes(body))
        except TimeoutError:
            raise plan.failed(httpx2.TimeoutException("deadline")) from None
        except httpx2.HTTPError as exc:
            raise plan.failed(exc) from None

    def _plan(self, method: str, url: str, headers: Mapping[str, str] | None, max_bytes: int | None) -> _Plan:
        from sqlgate import runtime

        scope = runtime._current()
        user = scope.call.user
        method = method.upper()
        if method not in ALLOWED_METHODS:
            raise ProviderAPIError(f"runtime.http: method {method} is not allowed ({', '.join(ALLOWED_METHODS)})")
        if not user.external_token:
            raise ProviderAPIError("runtime.http: this call has no provider token (the caller did not sign in "
                                   "through the server's OAuth provider)")
        settings = _settings.get(user.provider)
        if settings is None:
            raise ProviderAPIError(f"runtime.http: provider {user.provider or '-'} is not configured here")
        parts = urlsplit(url)
        host = parts.netloc.lower()
        if "@" in host or parts.scheme not in ("https", "http"):
            raise ProviderAPIError(f"runtime.http: {parts.scheme}://{host} is not an API URL")
        allowed = set(settings.hosts)
        instance = instance_host(str(user.token_info.get("instance_url") or ""), settings.token_origin)
        if instance:
            allowed.add(instance)
        if host not in allowed:
            raise ProviderAPIError(f"runtime.http: host {host} is not one of the {user.provider} API hosts "
                                   f"({', '.join(sorted(allowed)) or 'none configured'}; see auth.{user.provider}"
                                   ".api_hosts)")
        same_as_instance = instance == host and settings.token_origin == (parts.scheme, host)
        if parts.scheme == "http" and not (_loopback(host) and (host in settings.hosts or same_as_instance)):
            raise ProviderAPIError(f"runtime.http: plain http to {host} would expose the token; use https")
        if any(k.lower() in ("authorization", "cookie", "proxy-authorization") for k in (headers or {})):
            raise ProviderAPIError("runtime.http sets Authorization itself; do not pass it")
        cap = settings.max_bytes if max_bytes is None else min(max_bytes, settings.max_bytes)
        deadline = scope.deadline
        out = {"Accept": "application/json", "User-Agent": "sqlgate", **(headers or {}),
               "Authorization": f"Bearer {user.external_token}"}
        return _Plan(method, host, parts.path, out, cap, deadline, user.external_token.encode(), user.username)


@dataclass
class _Plan:
    method: str
    host: str
    path: str
    headers: dict[str, str] = field(repr=False)
    max_bytes: int
    deadline: float
    secret: bytes = field(repr=False)
    username: str
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self._log("deadline", 0)
            raise QueryTimeout(f"runtime.http: no time left for {self.method} {self.host}{self.path} "
                               "(the call's deadline has passed)")
        return left

    def check(self, size: int) -> None:
        if size > self.max_bytes:
            self._log("too large", size)
            raise ProviderAPIError(f"runtime.http: the answer of {self.host}{self.path} is larger than "
                                   f"{self.max_bytes} bytes (pass max_bytes=…, up to api_max_response_bytes)")
        if time.monotonic() > self.deadline:
            self._log("deadline", size)
            raise QueryTimeout(f"runtime.http: {self.host}{self.path} did not answer within the call's deadline")

    def finish(self, r, body: bytes) -> Response:
        echoed = self.secret and (self.secret in body or any(self.secret in value for _, value in r.headers.raw))
        if echoed:
            self._log(f"{r.status_code} refused: echoes the token", len(body))
            raise ProviderAPIError(f"runtime.http: the answer of {self.host}{self.path} contains the caller's "
                                   "token; it is not handed to the endpoint")
        self._log(str(r.status_code), len(body))
        headers = {k: v for k, v in r.headers.items() if k.lower() not in ("set-cookie",)}
        return Response(r.status_code, headers, body, f"{r.url.scheme}://{r.url.netloc.decode()}{r.url.path}")

    def failed(self, exc: Exception) -> Exception:
        if isinstance(exc, httpx2.TimeoutException) or time.monotonic() >= self.deadline:
            self._log("deadline", 0)
            return QueryTimeout(f"runtime.http: {self.host}{self.path} did not answer within the call's deadline")
        self._log(f"failed: {type(exc).__name__}", 0)
        return ProviderAPIError(f"runtime.http: {self.method} {self.host}{self.path} failed ({type(exc).__name__})")

    def _log(self, outcome: str, size: int) -> None:
        log.info("provider API %s %s%s -> %s, %d bytes in %.0f ms (user %s)", self.method, self.host, self.path,
                 outcome, size, (time.monotonic() - self.started) * 1000, self.username or "-")
