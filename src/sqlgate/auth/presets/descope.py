"""Descope as an OIDC provider: https://api.descope.com/oauth2/v1/{authorize,token,userinfo,revoke}.

The OAuth client id is the Descope Project ID and the secret an Access Key; the project is the
token issuer (`https://api.descope.com/{project_id}`, older tokens: the bare project id) and its
keys are at `/{project_id}/.well-known/jwks.json`. Access tokens carry `roles`, `permissions` and
per-tenant `tenants.{id}.roles` (kept for `claim_mappings`); /userinfo adds e-mail and name.
Descope inbound apps support dynamic client registration, so it can also be the authorization
server itself (remote-AS mode, README). `api_base_url` overrides the API host (EU / custom CNAME).
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, TokenClaims, first, full_name, site


def _defaults(cfg):
    base = site(cfg.api_base_url or "api.descope.com")
    project = cfg.project_id
    return dict(authorize=f"{base}/oauth2/v1/authorize", token=f"{base}/oauth2/v1/token",
                userinfo=f"{base}/oauth2/v1/userinfo", revoke=f"{base}/oauth2/v1/revoke",
                scope="openid profile email", token_auth_method="client_secret_basic",
                token_claims=TokenClaims(jwks_url=cfg.jwks_url or f"{base}/{project}/.well-known/jwks.json",
                                         issuers=(cfg.issuer or f"{base}/{project}", project)))


def _identity(info):
    return {"user_id": first(info, "sub"), "username": first(info, "email", "sub"), "email": first(info, "email"),
            "name": full_name(info)}


PRESET = Preset("descope", (("project_id",),), _defaults, _identity)
