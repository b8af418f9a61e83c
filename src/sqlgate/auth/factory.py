"""Configuration -> the auth provider FastMCP runs (or None for `provider: none`)."""

from __future__ import annotations

import logging

from sqlgate.auth.config import AuthConfig
from sqlgate.config.models import TransportConfig
from sqlgate.errors import ConfigError

log = logging.getLogger("sqlgate.auth")


def public_base_url(transport: TransportConfig) -> str:
    """The URL clients reach this server at: `base_url`, or scheme://host:port of the bind."""
    if transport.base_url:
        return transport.base_url.rstrip("/")
    host = transport.host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    default_port = 443 if transport.scheme == "https" else 80
    port = "" if transport.port == default_port else f":{transport.port}"
    return f"{transport.scheme}://{host}{port}"


def build_auth(auth: AuthConfig, transport: TransportConfig):
    """The auth provider FastMCP runs, or None when authentication is off.

    - `provider` set: sqlgate is the authorization server (OAuth proxy to that provider); `jwt` /
      `introspection` sections add verifiers next to it (e.g. machine clients with IdP tokens).
    - only `jwt` / `introspection`: sqlgate is a resource server; its protected-resource metadata
      sends clients to `remote.authorization_servers` (default: the JWT issuer).
    """
    from sqlgate import provider_api

    provider_api.configure(auth)  # where runtime.http may send the caller's provider token
    if not auth.enabled:
        return None
    from sqlgate.auth.verifiers import build_verifiers

    base_url = public_base_url(transport)
    resource_url = base_url + transport.path
    verifiers = build_verifiers(auth, resource_url)
    if auth.provider == "none":
        return _resource_server(auth, verifiers, base_url, transport.path)
    proxy = _proxy(auth, base_url)
    if not verifiers:
        return proxy
    from fastmcp.server.auth import MultiAuth

    from sqlgate.auth.outage_http import with_outage_middleware

    multi = MultiAuth(server=proxy, verifiers=verifiers)
    multi.state = proxy.state  # the periodic state cleanup finds it here
    # MultiAuth builds its own middleware; outages must still be answered 503 (outage_http.py)
    multi.get_middleware = lambda: with_outage_middleware(MultiAuth.get_middleware(multi))
    return multi


def _proxy(auth: AuthConfig, base_url: str):
    from sqlgate.auth.proxy import SqlgateOAuthProxy
    from sqlgate.auth.store import open_state
    from sqlgate.auth.upstream import build_verifier

    verifier, endpoints = build_verifier(auth)
    state = open_state(auth.persistence)
    provider = SqlgateOAuthProxy(auth=auth, endpoints=endpoints, verifier=verifier, state=state,
                                 base_url=base_url)
    log.info("OAuth: %s upstream, issuer %s, callback %s%s, state in %s", auth.provider, base_url, base_url,
             endpoints.callback_path, f"{auth.persistence.type} ({state.grants.location})")
    return provider


def _resource_server(auth: AuthConfig, verifiers: list, base_url: str, resource_path: str):
    from fastmcp.server.auth import MultiAuth
    from pydantic import AnyHttpUrl

    servers = list(auth.remote.authorization_servers) if auth.remote else []
    if not servers and auth.jwt is not None and auth.jwt.issuer:
        servers = [auth.jwt.issuer]
    if not servers:
        raise ConfigError("resource-server mode needs auth.remote.authorization_servers (or auth.jwt.issuer) "
                          "so clients can find where to get tokens", where="auth")
    verifier = verifiers[0] if len(verifiers) == 1 else MultiAuth(verifiers=verifiers)
    metadata = {"resource": base_url + resource_path, "scopes_supported": list(auth.scopes)}
    if auth.remote and auth.remote.resource_name:
        metadata["resource_name"] = auth.remote.resource_name
    if auth.remote and auth.remote.resource_documentation:
        metadata["resource_documentation"] = auth.remote.resource_documentation
    provider = ExactIssuerRemoteAuth(
        issuers=servers, metadata=metadata,
        token_verifier=verifier, authorization_servers=[AnyHttpUrl(s) for s in servers], base_url=base_url,
        scopes_supported=list(auth.scopes),
        resource_name=auth.remote.resource_name if auth.remote else None,
        resource_documentation=AnyHttpUrl(auth.remote.resource_documentation)
        if auth.remote and auth.remote.resource_documentation else None,
    )
    provider.required_scopes = list(auth.authorization.required_scopes)
    provider.state = None
    # the IdP's JWKS or introspection endpoint down is an outage (503 + Retry-After), not a bad token
    from sqlgate.auth.outage_http import with_outage_middleware

    plain = provider.get_middleware
    provider.get_middleware = lambda: with_outage_middleware(plain())
    log.info("resource server: tokens via %s, authorization servers %s",
             " + ".join(type(_innermost(v)).__name__ for v in verifiers), ", ".join(servers))
    return provider


def _innermost(verifier):
    while hasattr(verifier, "inner"):
        verifier = verifier.inner
    return verifier


def _exact_issuer_class():
    from fastmcp.server.auth import RemoteAuthProvider
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    class _ExactIssuerRemoteAuth(RemoteAuthProvider):
        """RemoteAuthProvider whose metadata names the authorization servers exactly as configured.

        pydantic's URL type turns `http://idp:8080` into `http://idp:8080/`; clients compare that
        byte for byte with the issuer in the server's own metadata (RFC 8414 §3.3) and give up.
        """

        def __init__(self, *, issuers: list[str], metadata: dict, **kwargs):
            super().__init__(**kwargs)
            self._metadata = {**metadata, "authorization_servers": list(issuers),
                              "bearer_methods_supported": ["header"]}

        def get_routes(self, mcp_path: str | None = None):
            routes = []
            for route in super().get_routes(mcp_path):
                if isinstance(route, Route) and route.path.startswith("/.well-known/oauth-protected-resource"):
                    route = Route(route.path, endpoint=self._serve_metadata, methods=["GET", "OPTIONS"])
                routes.append(route)
            return routes

        async def _serve_metadata(self, request):
            cors = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, OPTIONS"}
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=cors)
            return JSONResponse(self._metadata, headers={"Cache-Control": "public, max-age=3600", **cors})

    return _ExactIssuerRemoteAuth


def ExactIssuerRemoteAuth(**kwargs):
    return _exact_issuer_class()(**kwargs)
