"""Helpers for OAuth tests: a project whose user config turns auth on, the official client, and
fake-provider stacks that the tests of a module share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import yaml
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.browser import Browser, query_of
from tests.conftest import copy_shop, free_port, isolated_env, start_server

# A project author's endpoint that uses the upstream token (as MXCP's get_user_external_token()
# examples do); the free-form query tool can never reach it. Tests read it to prove which token
# the provider issued; a real endpoint would call the provider's API with it instead.
UPSTREAM_IDENTITY_TOOL = """tool:
  name: upstream_identity
  description: The caller as the identity provider knows them, with the provider's token (test only).
  return: {type: object}
  source:
    code: |
      SELECT get_username() AS u, get_user_email() AS e, get_user_provider() AS p, get_user_id() AS i,
             get_user_external_token() AS t
"""

# uses the token without returning it: the shape of a real endpoint, for the no-token-in-logs tests
HAS_UPSTREAM_TOKEN_TOOL = """tool:
  name: has_upstream_token
  description: Whether the caller's provider token reached the project's SQL (test only).
  return: {type: boolean}
  source:
    code: SELECT length(get_user_external_token()) > 10 AS has_token
"""


def auth_project(tmp: Path, auth: dict[str, Any], port: int | None = None,
                 transport: dict[str, Any] | None = None) -> tuple[Path, dict[str, str], int]:
    """A copy of the example project plus a user config with `auth`; returns (dir, env, port)."""
    project = tmp / "project"
    if not project.exists():
        copy_shop(project)
        (project / "tools" / "upstream_identity.yml").write_text(UPSTREAM_IDENTITY_TOOL)
        (project / "tools" / "has_upstream_token.yml").write_text(HAS_UPSTREAM_TOKEN_TOOL)
    port = port or free_port()
    auth = {"persistence": {"path": str(tmp / "oauth.db")}, **auth}
    if auth.get("provider", "none") != "none":
        # every test client registers from 127.0.0.1, dozens a minute; tests of the limit set their own
        auth["registration"] = {"rate_limit": 1000, **auth.get("registration", {})}
    profile = {"auth": auth, "transport": {"port": port, **(transport or {})}}
    config = tmp / "config.yml"
    config.write_text(yaml.safe_dump({"projects": {"shop": {"profiles": {"default": profile}}}}))
    return project, isolated_env(tmp, SQLGATE_CONFIG=str(config)), port


def start_auth_server(tmp: Path, auth: dict[str, Any], port: int | None = None,
                      extra_env: dict[str, str] | None = None, args: list[str] | None = None, **kw):
    project, env, port = auth_project(tmp, auth, port, **kw)
    return start_server(project, tmp, env={**env, **(extra_env or {})}, port=port, args=args)


class MemoryTokenStorage:
    def __init__(self) -> None:
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client) -> None:
        self.client = client


def oauth_client(url: str, browser: Browser, storage: MemoryTokenStorage | None = None,
                 scope: str | None = "sqlgate:access", redirect: str = "http://127.0.0.1:45999/callback"):
    """The official mcp OAuthClientProvider, driven headlessly by `browser`."""
    result: dict[str, str] = {}

    async def redirect_handler(authorize_url: str) -> None:
        final = await anyio.to_thread.run_sync(browser.run, authorize_url, redirect)
        result.clear()
        result.update(query_of(final))

    async def callback_handler() -> AuthorizationCodeResult:
        if "code" not in result:
            raise AssertionError(f"no code in the redirect: {result}")
        return AuthorizationCodeResult(code=result["code"], state=result.get("state"), iss=result.get("iss"))

    metadata = OAuthClientMetadata(client_name="sqlgate test client", redirect_uris=[redirect],
                                   grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                                   scope=scope, token_endpoint_auth_method="none")
    return OAuthClientProvider(url, metadata, storage or MemoryTokenStorage(), redirect_handler, callback_handler)


async def call_tool(url: str, auth, name: str, args: dict[str, Any] | None = None):
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(name, args or {})


def login_to_callback(server, callback_path: str, redirect_uri: str) -> tuple[Browser, str]:
    """A login (DCR, /authorize, consent, the provider's login form) run up to the provider's
    redirect back to sqlgate's `callback_path`, which is returned, not followed."""
    from tests.idp.launcher import pkce_pair

    client_id = httpx.post(f"{server.base}/register", json={
        "redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none"}).json()["client_id"]
    _, challenge = pkce_pair()
    browser = Browser("alice", "alice-password")
    url = httpx.URL(f"{server.base}/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st",
        "scope": "sqlgate:access", "code_challenge": challenge, "code_challenge_method": "S256"})
    return browser, browser.run(str(url), f"{server.base}{callback_path}")


class SharedStack:
    """A fake provider and a server that several tests of a module share (a server start costs ~2 s
    of CPU), as one test sees them: each test logs in afresh with its own client, and reads the
    server's log and the fake's requests from its own start on."""

    def __init__(self, fake, server):
        self.fake, self.server = fake, server
        self._log_start = len(server.logs())
        self._seen_start = len(fake.seen)

    def logs(self) -> str:
        return self.server.logs()[self._log_start:]

    def seen(self) -> list:
        return self.fake.seen[self._seen_start:]


@contextmanager
def shared_stacks(start: Callable[..., AbstractContextManager]) -> Iterator[Callable[..., SharedStack]]:
    """For a module-scoped fixture: get(*key) starts `start(*key)` (a context manager giving (fake,
    server)) on first use, keeps it until the module is done, and gives each test its SharedStack."""
    with ExitStack() as exits:
        started: dict[tuple, tuple] = {}

        def get(*key) -> SharedStack:
            if key not in started:
                started[key] = exits.enter_context(start(*key))
            return SharedStack(*started[key])

        yield get
