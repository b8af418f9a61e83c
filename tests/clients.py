"""MCP clients for tests: the official client's session over streamable HTTP, and HS256 bearer tokens."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from joserfc import jwt
from joserfc.jwk import OctKey
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str] | None = None):
    """An initialized official-client session, sending `headers` with every request."""
    async with create_mcp_http_client(headers=headers) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def hs256_bearer(secret: str, audience: str, name: str, issuer: str = "https://issuer.test",
                 extra_claims: dict | None = None) -> dict[str, str]:
    """An Authorization header with a JWT for user `name`, as sqlgate's jwt mode (HS256) accepts it."""
    claims = {"iss": issuer, "aud": audience, "sub": name, "preferred_username": name,
              "email": f"{name}@example.test", "exp": int(time.time()) + 600, **(extra_claims or {})}
    return {"Authorization": "Bearer " + jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret.encode()))}


def records(answer: dict) -> list[dict]:
    """A tool answer's rows as {column: value} records (every tool answers columns + rows)."""
    return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
