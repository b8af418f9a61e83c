"""Revoking a grant's tokens at the upstream provider (RFC 7009), with the provider's own tokens.

OAuthProxy.revoke_token sends the provider the token the client presented — for an access token
that is sqlgate's own JWT, which the provider has never seen: it answers 400 (or 200, as RFC 7009
allows for unknown tokens) and FastMCP logs success either way. Here the grant's *upstream* token
set is revoked instead: its refresh token (RFC 7009 §2.1: that also ends the grant's access
tokens), or its access token when there is none, with `token_type_hint`, authenticated as at the
token endpoint. The log says what
the provider answered; a failure never stops the local revocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx2

log = logging.getLogger("sqlgate.auth.revocation")


@dataclass(frozen=True)
class UpstreamClient:
    endpoint: str
    client_id: str
    client_secret: str | None
    auth_method: str  # client_secret_basic | client_secret_post | none
    timeout: float


async def revoke_upstream(client: UpstreamClient, tokens: list[tuple[str, str]], grant: str) -> bool:
    """Revoke each (token, hint) at the provider; True when every one was accepted (HTTP 200)."""
    accepted = True
    async with httpx2.AsyncClient(timeout=client.timeout) as http:
        for value, hint in tokens:
            data = {"token": value, "token_type_hint": hint}
            auth = None
            if client.auth_method == "client_secret_basic" and client.client_secret is not None:
                auth = (client.client_id, client.client_secret)
            else:
                data["client_id"] = client.client_id
                if client.auth_method == "client_secret_post" and client.client_secret is not None:
                    data["client_secret"] = client.client_secret
            try:
                resp = await http.post(client.endpoint, data=data, auth=auth, headers={"Accept": "application/json"})
            except httpx2.HTTPError as exc:
                log.warning("could not revoke the upstream %s of grant %s at the provider: %s", hint, grant,
                            type(exc).__name__)
                accepted = False
                continue
            if resp.status_code == 200:
                log.info("revoked the upstream %s of grant %s at the provider", hint, grant)
            else:
                log.warning("the provider refused to revoke the upstream %s of grant %s: HTTP %d", hint, grant,
                            resp.status_code)
                accepted = False
    return accepted
