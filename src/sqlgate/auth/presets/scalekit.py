"""Scalekit: the environment URL (`https://your-env.scalekit.com` or a custom domain) serves
/oauth/authorize, /oauth/token and /userinfo; its keys are at /keys and it is the token issuer.

Access tokens carry `roles`, `permissions` and the organization (`oid`), kept for
`claim_mappings`; user ids look like `usr_…`, the username is the e-mail. Scalekit's MCP auth
supports dynamic client registration, so it can also be the authorization server itself
(remote-AS mode, README); this preset is the proxy.
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, TokenClaims, first, full_name, site


def _defaults(cfg):
    base = site(cfg.environment_url)
    return dict(authorize=f"{base}/oauth/authorize", token=f"{base}/oauth/token", userinfo=f"{base}/userinfo",
                scope="openid profile email offline_access", token_auth_method="client_secret_post",
                token_claims=TokenClaims(jwks_url=cfg.jwks_url or f"{base}/keys", issuers=(cfg.issuer or base,)))


def _identity(info):
    return {"user_id": first(info, "sub"), "username": first(info, "email", "preferred_username", "sub"),
            "email": first(info, "email"), "name": full_name(info)}


PRESET = Preset("scalekit", (("environment_url",),), _defaults, _identity)
