"""Microsoft Entra ID (Azure AD), v2.0 endpoints: `{authority}/{tenant}/oauth2/v2.0/{authorize,token}`.

Quirks: a token is for one resource, named by its scopes — sqlgate asks for your app's own API
(`api://{client_id}/access_as_user`: "Expose an API" → add a scope; set `accessTokenAcceptedVersion`
to 2 in the app manifest) plus `openid profile email offline_access`. Short scope names are
prefixed with `identifier_uri` (default `api://{client_id}`); full ones (`api://…`, `https://…`)
are sent as written. The access token is then a JWT for your app, verified with the tenant's keys
(`{authority}/{tenant}/discovery/v2.0/keys`), and it is where the identity comes from: Graph's
user-info endpoint would not accept a token for your API. `oid` is the user id (stable across
apps, unlike `sub`), `preferred_username` the username, `roles` (app roles) and `groups` stay
available for `claim_mappings`. The tenant may be a GUID or domain, or `organizations`/`common`
(any work account: the issuer then names the token's own tenant, `tid`). Refreshes name the
scopes again, as Entra requires.
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, TokenClaims, first, full_name, site

OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}


def scopes(requested: str, identifier_uri: str) -> str:
    out = []
    for s in requested.split():
        out.append(s if s in OIDC_SCOPES or "://" in s or s.startswith("api:") else f"{identifier_uri}/{s}")
    return " ".join(out)


def _defaults(cfg):
    authority = site(cfg.authority_url or "login.microsoftonline.com")
    tenant = cfg.tenant
    identifier = (cfg.identifier_uri or f"api://{cfg.client_id}").rstrip("/")
    multi = tenant in ("organizations", "common", "consumers")
    issuer = cfg.issuer or f"{authority}/{'{tid}' if multi else tenant}/v2.0"
    return dict(authorize=f"{authority}/{tenant}/oauth2/v2.0/authorize",
                token=f"{authority}/{tenant}/oauth2/v2.0/token", userinfo=None,
                scope=scopes(cfg.scope or "openid profile email offline_access access_as_user", identifier),
                token_auth_method="client_secret_post", refresh_scope=True,
                token_claims=TokenClaims(jwks_url=cfg.jwks_url or f"{authority}/{tenant}/discovery/v2.0/keys",
                                         issuers=(issuer,), audience=(cfg.client_id, identifier)))


def _identity(info):
    username = first(info, "preferred_username", "upn", "email", "oid")
    email = first(info, "email") or (username if "@" in username else "")
    return {"user_id": first(info, "oid", "sub"), "username": username, "email": email, "name": full_name(info)}


PRESET = Preset("entra", (("tenant",),), _defaults, _identity)
