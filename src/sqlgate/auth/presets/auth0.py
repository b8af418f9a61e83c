"""Auth0: a tenant domain (`example.eu.auth0.com` or a custom domain), OIDC endpoints at its root.

Quirks: an access token for *your API* needs the `audience` parameter at /authorize (without it
Auth0 issues an opaque token good only for /userinfo); refresh tokens need `offline_access`;
custom claims added by an Action must be namespaced URLs (`https://example.com/roles`) — they come
back from /userinfo under that name and can be used as is in `claim_mappings`.
Identity: `sub` (`auth0|…`, `google-oauth2|…`) is the user id; the username is the e-mail (a
nickname is the e-mail's local part and not unique).
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, first, full_name, site


def _defaults(cfg):
    base = site(cfg.domain)
    return dict(authorize=f"{base}/authorize", token=f"{base}/oauth/token", userinfo=f"{base}/userinfo",
                revoke=f"{base}/oauth/revoke", scope="openid profile email offline_access",
                token_auth_method="client_secret_post",
                extra_authorize={"audience": cfg.audience} if cfg.audience else {})


def _identity(info):
    return {"user_id": first(info, "sub"), "username": first(info, "email", "sub"), "email": first(info, "email"),
            "name": full_name(info) or first(info, "nickname")}


PRESET = Preset("auth0", (("domain",),), _defaults, _identity)
