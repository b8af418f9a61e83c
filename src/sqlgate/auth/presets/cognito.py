"""AWS Cognito user pools: the pool's domain (`<prefix>.auth.<region>.amazoncognito.com` or a custom
domain) serves /oauth2/authorize, /oauth2/token, /oauth2/userInfo (capital I) and /oauth2/revoke;
the pool itself (`cognito-idp.<region>.amazonaws.com/<user_pool_id>`) is the token issuer and JWKS.

Quirks: the region is the user pool id's prefix (`eu-west-1_AbC123`); the token endpoint wants HTTP
Basic client authentication; access tokens carry no `aud` but `client_id` and `token_use=access`,
and hold `username` and `cognito:groups` (the groups are not in /oauth2/userInfo, which adds e-mail
and profile and answers `email_verified` as the string "true"); refresh tokens do not rotate and
only a refresh token can be revoked.
"""

from __future__ import annotations

from sqlgate.auth.presets import Preset, TokenClaims, first, full_name, site


def _defaults(cfg):
    base = site(cfg.domain)
    region = cfg.region or cfg.user_pool_id.split("_", 1)[0]
    pool = cfg.issuer or f"https://cognito-idp.{region}.amazonaws.com/{cfg.user_pool_id}"
    return dict(authorize=f"{base}/oauth2/authorize", token=f"{base}/oauth2/token",
                userinfo=f"{base}/oauth2/userInfo", revoke=f"{base}/oauth2/revoke",
                scope="openid email profile", token_auth_method="client_secret_basic",
                token_claims=TokenClaims(jwks_url=cfg.jwks_url or f"{pool.rstrip('/')}/.well-known/jwks.json",
                                         issuers=(pool.rstrip("/"),), client_id=cfg.client_id, token_use="access"))


def _identity(info):
    return {"user_id": first(info, "sub"), "username": first(info, "username", "cognito:username", "email", "sub"),
            "email": first(info, "email"), "name": full_name(info)}


PRESET = Preset("cognito", (("domain",), ("user_pool_id",)), _defaults, _identity)
