"""Provider presets: one file per identity provider, each knowing its real endpoints and quirks.

A preset turns a provider's few settings (a domain, a tenant, a user pool …) into the endpoints
the OAuth proxy uses, says where the caller's identity comes from (the user-info endpoint, the
provider's signed access token, or both) and maps the provider's claims onto sqlgate's identity
(user_id, username, email, name). Every URL a preset derives can be overridden in configuration
(auth_url, token_url, userinfo_url, revoke_url, jwks_url, issuer).

GitHub, Atlassian, Salesforce, Google, Keycloak and generic OIDC predate this package and live in
upstream.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlgate.auth.config import ProviderConfig


@dataclass(frozen=True)
class TokenClaims:
    """Identity claims read from the provider's access token, a JWT checked against its JWKS.

    The token is the one sqlgate itself received from the provider's token endpoint (clients never
    present it), so the checks are about reading it honestly: signature, expiry, issuer.
    """

    jwks_url: str
    issuers: tuple[str, ...]  # "{tid}" stands for the token's own `tid` (Entra multi-tenant)
    audience: tuple[str, ...] | None = None
    client_id: str | None = None  # Cognito names the app in `client_id`, not `aud`
    token_use: str | None = None  # Cognito: "access"


@dataclass(frozen=True)
class Preset:
    name: str
    # settings beyond client_id/client_secret; a tuple names alternatives
    required: tuple[tuple[str, ...], ...]
    # cfg -> authorize, token, userinfo (None: identity from the token alone), revoke, scope,
    # token_auth_method, extra_authorize, token_claims, refresh_scope, api_hosts
    defaults: Callable[[ProviderConfig], dict[str, Any]]
    identity: Callable[[dict[str, Any]], dict[str, str]]
    # fields of the provider's token reply a Python endpoint may read (runtime.user().token_info)
    token_info: tuple[str, ...] = field(default=())

    def missing(self, cfg: ProviderConfig) -> list[str]:
        return [" or ".join(alts) for alts in self.required if not any(getattr(cfg, a) for a in alts)]


def site(value: str) -> str:
    """A domain setting as a base URL: `tenant.eu.auth0.com` -> https://tenant.eu.auth0.com."""
    value = value.strip().rstrip("/")
    return value if value.startswith(("https://", "http://")) else f"https://{value}"


def first(info: dict[str, Any], *names: str) -> str:
    for n in names:
        v = info.get(n)
        if v not in (None, ""):
            return str(v)
    return ""


def full_name(info: dict[str, Any]) -> str:
    return first(info, "name") or " ".join(p for p in (first(info, "given_name"), first(info, "family_name")) if p)


def _load() -> dict[str, Preset]:
    from sqlgate.auth.presets import auth0, cognito, descope, entra, scalekit, workos

    return {m.PRESET.name: m.PRESET for m in (auth0, workos, cognito, entra, descope, scalekit)}


PRESETS: dict[str, Preset] = _load()
