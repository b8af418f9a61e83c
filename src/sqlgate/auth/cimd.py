"""Client ID Metadata Documents (MCP 2025-11-25): a client_id that is the https URL of its metadata.

FastMCP's OAuthProxy has CIMD support (fastmcp/server/auth/cimd.py) and most of it is sound and
reused as is: recognising URL client ids, the synthetic client built from the document, redirect
matching at /authorize against the document's redirect_uris, private_key_jwt assertions, and the
`client_id_metadata_document_supported` metadata. Its fetch is SSRF-safe (https only, DNS
resolved and every address checked — no private, loopback, link-local or reserved address —
then the connection pinned to a checked address, no redirects, size and time limits).

What sqlgate changes, by replacing the fetcher (`CIMDFetcher` subclass) and nothing else:

- Limits are configuration (`auth.cimd.*`): document size, one overall time limit for the whole
  fetch (FastMCP's per-target timeout plus a fixed 30 s overall would let a slow server hold a
  request for half a minute), cache lifetime (the document's own max-age, capped by ours).
- The document must pass the same policy as a dynamic registration (registration.py, and the
  loopback / allow-listed https redirect patterns): a document listing a redirect URI this server
  would refuse at /register is refused as a whole, as is one with a fragment, too many URIs or an
  oversize name. FastMCP only checks the redirect at /authorize against the document.
- New documents count against the registration rate limit of the client's address (a client id
  URL is a registration that skips /register): `/authorize` with a URL client id whose document
  is not cached is counted in the grant store like a /register call, and answered 429 with
  Retry-After over the limit — otherwise anyone could make sqlgate fetch URL after URL.
- `allow_loopback` (development only, off by default): a client id on the loopback interface —
  `http://127.0.0.1:<port>/…`, `http://localhost:<port>/…`, `http://[::1]:<port>/…`, or https
  there — is accepted and fetched directly from the loopback address, since no public https
  certificate exists for a local test server. Every other host still goes through the SSRF-safe
  fetch, so the switch opens exactly the loopback interface and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
from fastmcp.server.auth.cimd import (
    CIMDClientManager,
    CIMDDocument,
    CIMDFetcher,
    CIMDFetchError,
    CIMDValidationError,
)
from fastmcp.server.auth.redirect_validation import validate_redirect_uri
from fastmcp.server.auth.ssrf import SSRFError, SSRFFetchError, ssrf_safe_fetch_response, validate_url
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlgate.auth.config import CIMDConfig, RegistrationConfig
from sqlgate.auth.grants.base import GrantStore
from sqlgate.auth.registration import RegistrationRefused, check_redirect_uris, rate_limited

log = logging.getLogger("sqlgate.auth.cimd")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SqlgateCIMDFetcher(CIMDFetcher):
    def __init__(self, cfg: CIMDConfig, limits: RegistrationConfig, redirect_patterns: list[str]):
        super().__init__(timeout=cfg.timeout_seconds)
        self.cfg, self.limits, self.redirect_patterns = cfg, limits, redirect_patterns
        self.MAX_RESPONSE_SIZE = cfg.max_document_bytes
        self._docs: dict[str, tuple[CIMDDocument, float]] = {}

    # ------------------------------------------------------------------ which client ids
    def _dev_loopback(self, url: str) -> bool:
        parsed = urlparse(url)
        return (self.cfg.allow_loopback and parsed.scheme in ("http", "https") and is_loopback_host(parsed.hostname)
                and parsed.path not in ("", "/"))

    def is_cimd_client_id(self, client_id: str) -> bool:
        if not client_id or len(client_id) > self.limits.max_uri_length:
            return False
        try:
            parsed = urlparse(client_id)
        except ValueError:
            return False
        if parsed.username or parsed.password or parsed.fragment:
            return False
        return super().is_cimd_client_id(client_id) or self._dev_loopback(client_id)

    # ------------------------------------------------------------------ fetching
    async def fetch(self, client_id_url: str) -> CIMDDocument:
        try:
            return await self._fetch(client_id_url)
        except (CIMDFetchError, CIMDValidationError) as exc:
            log.warning("client metadata document %s refused: %s", client_id_url, exc)
            raise

    async def _fetch(self, client_id_url: str) -> CIMDDocument:
        if self.is_cached(client_id_url):
            return self._docs[client_id_url][0]
        started = time.monotonic()
        try:
            with anyio.fail_after(self.cfg.timeout_seconds):
                if self._dev_loopback(client_id_url):
                    body, headers = await self._fetch_loopback(client_id_url)
                else:
                    response = await ssrf_safe_fetch_response(
                        client_id_url, require_path=True, max_size=self.cfg.max_document_bytes,
                        timeout=self.cfg.timeout_seconds, overall_timeout=self.cfg.timeout_seconds)
                    body, headers = response.content, response.headers
        except TimeoutError:
            raise CIMDFetchError(f"fetching the client metadata document took longer than "
                                 f"{self.cfg.timeout_seconds:g} s") from None
        except SSRFError as exc:
            raise CIMDValidationError(str(exc)) from None
        except SSRFFetchError as exc:
            raise CIMDFetchError(str(exc)) from None
        doc = await self._validate(client_id_url, body)
        ttl = self._cache_seconds(headers)
        if ttl > 0:
            self._docs[client_id_url] = (doc, time.monotonic() + ttl)
            while len(self._docs) > self.MAX_CACHE_SIZE:
                del self._docs[next(iter(self._docs))]
        log.info("client metadata document %s accepted (%s, %.0f ms, cached %d s)", client_id_url,
                 doc.client_name or "no name", (time.monotonic() - started) * 1000, ttl)
        return doc

    async def _fetch_loopback(self, url: str) -> tuple[bytes, dict[str, str]]:
        """Development fetch from the loopback interface: no redirects, size-capped as it streams."""
        cap = self.cfg.max_document_bytes
        # verify=False: a local test server has no certificate a CA signed; the address is loopback
        async with (httpx2.AsyncClient(timeout=self.cfg.timeout_seconds, follow_redirects=False,
                                       trust_env=False, verify=False) as http,
                    http.stream("GET", url, headers={"Accept": "application/json"}) as resp):
            if resp.status_code != 200:
                raise CIMDFetchError(f"the client metadata document answered HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise CIMDFetchError(f"the client metadata document is larger than {cap} bytes")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise CIMDFetchError(f"the client metadata document is larger than {cap} bytes")
            return bytes(body), dict(resp.headers)

    def is_cached(self, client_id_url: str) -> bool:
        cached = self._docs.get(client_id_url)
        return cached is not None and time.monotonic() < cached[1]

    def _cache_seconds(self, headers) -> float:
        policy = self._parse_cache_policy(headers, time.time())
        if policy.no_store or policy.must_revalidate:
            return 0
        return min(policy.freshness_lifetime, float(self.cfg.cache_ttl_seconds))

    # ------------------------------------------------------------------ the document
    async def _validate(self, url: str, body: bytes) -> CIMDDocument:
        try:
            data = json.loads(body)
        except ValueError:
            raise CIMDValidationError("the client metadata document is not JSON") from None
        if not isinstance(data, dict):
            raise CIMDValidationError("the client metadata document is not a JSON object")
        try:
            check_redirect_uris(data.get("redirect_uris"), self.limits)
        except RegistrationRefused as refused:
            raise CIMDValidationError(refused.description) from None
        name = data.get("client_name")
        if isinstance(name, str) and len(name) > self.limits.max_client_name_length:
            raise CIMDValidationError(f"client_name is longer than {self.limits.max_client_name_length} characters")
        try:
            doc = CIMDDocument.model_validate(data)
        except ValueError as exc:
            raise CIMDValidationError(f"invalid client metadata document: {exc}") from None
        if str(doc.client_id).rstrip("/") != url.rstrip("/"):
            raise CIMDValidationError(f"the document's client_id {doc.client_id} is not its URL {url}")
        for uri in doc.redirect_uris:  # the policy a dynamic registration meets at /register
            if not validate_redirect_uri(uri, self.redirect_patterns):
                raise CIMDValidationError(f"redirect URI {uri!r} is not allowed by this server")
        if doc.jwks_uri and not self._dev_loopback(str(doc.jwks_uri)):
            try:
                await validate_url(str(doc.jwks_uri))
            except SSRFError as exc:
                raise CIMDValidationError(f"jwks_uri refused: {exc}") from None
        return doc


class SqlgateCIMDManager(CIMDClientManager):
    """FastMCP's manager with sqlgate's fetcher (the manager exposes no other way to supply one)."""

    def __init__(self, fetcher: SqlgateCIMDFetcher, default_scope: str, redirect_patterns: list[str]):
        super().__init__(enable_cimd=True, default_scope=default_scope,
                         allowed_redirect_uri_patterns=redirect_patterns)
        self._fetcher = self.fetcher = fetcher


class CIMDFetchLimit:
    """ASGI wrapper for `/authorize`: a URL client id that needs a fetch counts as a registration."""

    def __init__(self, app: ASGIApp, fetcher: SqlgateCIMDFetcher, grants: GrantStore):
        self.app, self.fetcher, self.grants = app, fetcher, grants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.fetcher.limits
        if scope["type"] == "http" and limits.rate_limit:
            client_id = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("client_id", [""])[0]
            if self.fetcher.is_cimd_client_id(client_id) and not self.fetcher.is_cached(client_id):
                refusal = await rate_limited(self.grants, limits, scope, "client metadata documents")
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def build_manager(cfg: CIMDConfig, limits: RegistrationConfig, redirect_patterns: list[str],
                  default_scope: str) -> SqlgateCIMDManager | None:
    if not cfg.enabled:
        return None
    fetcher = SqlgateCIMDFetcher(cfg, limits, redirect_patterns)
    return SqlgateCIMDManager(fetcher, default_scope, redirect_patterns)

