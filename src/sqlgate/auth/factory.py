"""Configuration -> the auth provider FastMCP runs (or None for `provider: none`)."""

from __future__ import annotations

import logging

from sqlgate.auth.config import AuthConfig
from sqlgate.config.models import TransportConfig

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
    """The OAuth authorization server for `auth.provider`, ready to hand to FastMCP."""
    if auth.provider == "none":
        return None
    from sqlgate.auth.proxy import SqlgateOAuthProxy
    from sqlgate.auth.store import open_state
    from sqlgate.auth.upstream import build_verifier

    verifier, endpoints = build_verifier(auth)
    state = open_state(auth.persistence)
    base_url = public_base_url(transport)
    provider = SqlgateOAuthProxy(auth=auth, endpoints=endpoints, verifier=verifier, state=state,
                                 base_url=base_url)
    log.info("OAuth: %s upstream, issuer %s, callback %s%s, state in %s", auth.provider, base_url, base_url,
             endpoints.callback_path, auth.persistence.type if state.sqlite is None else state.sqlite.path)
    return provider
