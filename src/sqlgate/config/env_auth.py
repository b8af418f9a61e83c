"""Auth configured entirely by environment variables (`SQLGATE_AUTH_MODE` + one variable per
setting), for deployments driven by an MCP client's `env` block or a container.

When SQLGATE_AUTH_MODE is set, the `auth` section comes from these variables alone (nothing is
merged from YAML, so what runs is exactly what the environment says). Unknown SQLGATE_AUTH_*
names are errors: a misspelt variable must not silently drop a setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlgate.errors import ConfigError

PREFIX = "SQLGATE_AUTH_"
MODES = ("none", "proxy", "jwt", "introspection", "remote")

# variable suffix -> (section, key); section "" = top level of auth, "transport" = transport section
SETTINGS: dict[str, tuple[str, str]] = {
    "MODE": ("", "mode"),
    "BASE_URL": ("transport", "base_url"),
    "REQUIRED_SCOPES": ("authorization", "required_scopes"),
    "VALID_SCOPES": ("", "scopes"),
    "USERNAME_CLAIM": ("", "username_claim"),
    "CACHE_TTL": ("", "cache_ttl"),
    "TOKEN_CACHE_MAX_ENTRIES": ("token_cache", "max_entries"),
    "REVOCATION_CHECK_SECONDS": ("token_cache", "revocation_check_seconds"),
    "REFRESH_GRACE_SECONDS": ("", "refresh_grace_seconds"),
    "UPSTREAM_REFRESH_MARGIN_SECONDS": ("", "upstream_refresh_margin_seconds"),
    # JWT
    "PUBLIC_KEY": ("jwt", "public_key"),
    "JWKS_URI": ("jwt", "jwks_uri"),
    "SECRET": ("jwt", "secret"),
    "ISSUER": ("jwt", "issuer"),
    "AUDIENCE": ("jwt", "audience"),
    "ALGORITHM": ("jwt", "algorithms"),
    "LEEWAY": ("jwt", "leeway_seconds"),
    # introspection (RFC 7662)
    "INTROSPECTION_URL": ("introspection", "url"),
    "INTROSPECTION_CLIENT_ID": ("introspection", "client_id"),
    "INTROSPECTION_CLIENT_SECRET": ("introspection", "client_secret"),
    "INTROSPECTION_TIMEOUT": ("introspection", "timeout_seconds"),
    "INTROSPECTION_CACHE_TTL": ("introspection", "cache_ttl"),
    "INTROSPECTION_AUDIENCE": ("introspection", "audience"),
    # remote authorization server(s)
    "AUTHORIZATION_SERVERS": ("remote", "authorization_servers"),
    "RESOURCE_NAME": ("remote", "resource_name"),
    "RESOURCE_DOCUMENTATION": ("remote", "resource_documentation"),
    # OAuth proxy to an upstream IdP
    "PROVIDER": ("", "provider"),
    "UPSTREAM_AUTHORIZATION_ENDPOINT": ("upstream", "auth_url"),
    "UPSTREAM_TOKEN_ENDPOINT": ("upstream", "token_url"),
    "UPSTREAM_REVOCATION_ENDPOINT": ("upstream", "revoke_url"),
    "UPSTREAM_USERINFO_ENDPOINT": ("upstream", "userinfo_url"),
    "UPSTREAM_ISSUER": ("upstream", "issuer"),
    "UPSTREAM_CLIENT_ID": ("upstream", "client_id"),
    "UPSTREAM_CLIENT_SECRET": ("upstream", "client_secret"),
    "UPSTREAM_SCOPE": ("upstream", "scope"),
    "REDIRECT_PATH": ("upstream", "callback_path"),
    "FORWARD_PKCE": ("upstream", "forward_pkce"),
    # provider presets (auth/presets/): the provider's own coordinates
    "UPSTREAM_DOMAIN": ("upstream", "domain"),
    "UPSTREAM_REGION": ("upstream", "region"),
    "UPSTREAM_USER_POOL_ID": ("upstream", "user_pool_id"),
    "UPSTREAM_TENANT": ("upstream", "tenant"),
    "UPSTREAM_AUTHORITY_URL": ("upstream", "authority_url"),
    "UPSTREAM_IDENTIFIER_URI": ("upstream", "identifier_uri"),
    "UPSTREAM_AUDIENCE": ("upstream", "audience"),
    "UPSTREAM_PROJECT_ID": ("upstream", "project_id"),
    "UPSTREAM_ENVIRONMENT_URL": ("upstream", "environment_url"),
    "UPSTREAM_JWKS_URL": ("upstream", "jwks_url"),
    "UPSTREAM_API_BASE_URL": ("upstream", "api_base_url"),
    "UPSTREAM_REALM": ("upstream", "realm"),
    "UPSTREAM_SERVER_URL": ("upstream", "server_url"),
    # runtime.http (Python endpoints calling the provider's API as the user)
    "UPSTREAM_API_HOSTS": ("upstream", "api_hosts"),
    "UPSTREAM_API_MAX_RESPONSE_BYTES": ("upstream", "api_max_response_bytes"),
    "TOKEN_ENDPOINT_AUTH_METHOD": ("upstream", "token_endpoint_auth_method"),
    "EXTRA_AUTHORIZE_PARAMS": ("upstream", "extra_authorize_params"),
    "EXTRA_TOKEN_PARAMS": ("upstream", "extra_token_params"),
    "ISSUER_URL": ("", "issuer_url"),
    "SERVICE_DOCUMENTATION_URL": ("", "service_documentation_url"),
    "ALLOWED_CLIENT_REDIRECT_URIS": ("", "allowed_redirect_uris"),
    "STATE_PATH": ("persistence", "path"),
    "PERSISTENCE_TYPE": ("persistence", "type"),
    "PERSISTENCE_DSN": ("persistence", "dsn"),
    "ENCRYPTION_KEY": ("persistence", "encryption_key"),
    # dynamic client registration limits (auth.registration.*)
    "REGISTRATION_MAX_BODY_BYTES": ("registration", "max_body_bytes"),
    "REGISTRATION_MAX_METADATA_BYTES": ("registration", "max_metadata_bytes"),
    "REGISTRATION_MAX_CLIENT_NAME_LENGTH": ("registration", "max_client_name_length"),
    "REGISTRATION_MAX_REDIRECT_URIS": ("registration", "max_redirect_uris"),
    "REGISTRATION_MAX_URI_LENGTH": ("registration", "max_uri_length"),
    "REGISTRATION_RATE_LIMIT": ("registration", "rate_limit"),
    "REGISTRATION_RATE_WINDOW_SECONDS": ("registration", "rate_window_seconds"),
    "REGISTRATION_UNAUTHORIZED_CLIENT_TTL_SECONDS": ("registration", "unauthorized_client_ttl_seconds"),
    "REGISTRATION_IDLE_CLIENT_TTL_SECONDS": ("registration", "idle_client_ttl_seconds"),
    # client ID metadata documents (auth.cimd.*)
    "CIMD_ENABLED": ("cimd", "enabled"),
    "CIMD_MAX_DOCUMENT_BYTES": ("cimd", "max_document_bytes"),
    "CIMD_TIMEOUT_SECONDS": ("cimd", "timeout_seconds"),
    "CIMD_CACHE_TTL_SECONDS": ("cimd", "cache_ttl_seconds"),
    "CIMD_ALLOW_LOOPBACK": ("cimd", "allow_loopback"),
}
_JSON = {"EXTRA_AUTHORIZE_PARAMS", "EXTRA_TOKEN_PARAMS"}
_REQUIRED = {
    "jwt": [("PUBLIC_KEY", "JWKS_URI", "SECRET")],
    "introspection": [("INTROSPECTION_URL",), ("INTROSPECTION_CLIENT_ID",), ("INTROSPECTION_CLIENT_SECRET",),
                      ("AUTHORIZATION_SERVERS",)],
    "remote": [("AUTHORIZATION_SERVERS",), ("PUBLIC_KEY", "JWKS_URI", "SECRET", "INTROSPECTION_URL")],
    "proxy": [("UPSTREAM_CLIENT_ID",), ("UPSTREAM_CLIENT_SECRET",)],
}


def auth_from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(auth section, transport overrides) from SQLGATE_AUTH_*, or None when MODE is not set."""
    present = {k[len(PREFIX):]: v for k, v in env.items() if k.startswith(PREFIX)}
    if "MODE" not in present:
        if present:
            names = ", ".join(PREFIX + k for k in sorted(present))
            raise ConfigError(f"{names} set but SQLGATE_AUTH_MODE is not: set it to one of {', '.join(MODES)}")
        return None
    unknown = sorted(set(present) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown environment variable(s) {', '.join(PREFIX + u for u in unknown)} "
                          f"(see README: environment-variable configuration)")
    mode = present["MODE"].strip().lower()
    if mode not in MODES:
        raise ConfigError(f"SQLGATE_AUTH_MODE={present['MODE']!r} is not one of {', '.join(MODES)}")
    for alternatives in _REQUIRED.get(mode, []):
        if not any(present.get(a) for a in alternatives):
            names = " or ".join(PREFIX + a for a in alternatives)
            raise ConfigError(f"SQLGATE_AUTH_MODE={mode} needs {names}")
    auth: dict[str, Any] = {}
    transport: dict[str, Any] = {}
    upstream: dict[str, Any] = {}
    for suffix, raw in present.items():
        section, key = SETTINGS[suffix]
        if suffix == "MODE":
            continue
        value: Any = raw
        if suffix in _JSON:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{PREFIX}{suffix} is not valid JSON: {exc}") from None
        elif suffix == "REQUIRED_SCOPES":
            value = [s for s in raw.replace(",", " ").split() if s]
        if section == "":
            auth[key] = value
        elif section == "transport":
            transport[key] = value
        elif section == "upstream":
            upstream[key] = value
        else:
            auth.setdefault(section, {})[key] = value
    if mode == "proxy":
        from sqlgate.auth.config import PROVIDER_ALIASES

        provider = auth.get("provider", "oidc").strip().lower()
        provider = PROVIDER_ALIASES.get(provider, provider)
        auth["provider"] = provider
        auth[provider] = upstream
    else:
        if upstream or "provider" in auth:
            raise ConfigError(f"SQLGATE_AUTH_UPSTREAM_*/PROVIDER settings only apply to SQLGATE_AUTH_MODE=proxy "
                              f"(mode is {mode})")
        auth["provider"] = "none"
        if mode == "none":
            auth = {"provider": "none"}
    return auth, transport
