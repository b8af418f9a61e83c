"""WorkOS AuthKit: the AuthKit domain (`your-app.authkit.app` or a custom one), endpoints under /oauth2.

AuthKit supports dynamic client registration, so it can also be the authorization server itself
(remote-AS mode, README); this preset is the proxy, for clients that cannot register or when
sqlgate should hold the user's token. The access token is a JWT (JWKS at /oauth2/jwks) whose
`role`, `permissions` and `org_id` claims are kept for `claim_mappings`; /oauth2/userinfo adds the
e-mail and name. User ids look like `user_01H…`; the username is the e-mail.
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, TokenClaims, first, full_name, site


def _defaults(cfg):
    base = site(cfg.domain)
    return dict(authorize=f"{base}/oauth2/authorize", token=f"{base}/oauth2/token",
                userinfo=f"{base}/oauth2/userinfo", scope="openid profile email offline_access",
                token_auth_method="client_secret_post",
                token_claims=TokenClaims(jwks_url=cfg.jwks_url or f"{base}/oauth2/jwks",
                                         issuers=(cfg.issuer or base,)))


def _identity(info):
    return {"user_id": first(info, "sub"), "username": first(info, "email", "sub"), "email": first(info, "email"),
            "name": full_name(info)}


PRESET = Preset("workos", (("domain",),), _defaults, _identity)
