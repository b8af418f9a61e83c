"""Bounded dynamic client registration (RFC 7591): size and field caps, fragments, a rate limit
shared by every process on the state store, and expiry of clients that never log in or go idle.

Real servers (subprocesses), real SQLite state files, the real OIDC provider for the logins.
"""

from __future__ import annotations

import sqlite3
import time
from functools import partial

import httpx
import pytest

from tests.auth_support import start_auth_server
from tests.conftest import stop_server, together
from tests.grant_backends import postgres_available, postgres_database
from tests.test_auth_flows import drop_stack, login, make_stack
from tests.test_auth_server import GITHUB

LOOPBACK = "http://127.0.0.1:5173/callback"


def register(base: str, **metadata) -> httpx.Response:
    body = {"client_name": "probe", "redirect_uris": [LOOPBACK], "token_endpoint_auth_method": "none",
            **metadata}
    return httpx.post(f"{base}/register", json=body, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dcr")
    srv = start_auth_server(tmp, {**GITHUB, "registration": {"rate_limit": 0, "max_redirect_uris": 5,
                                                              "max_client_name_length": 100}})
    yield srv
    stop_server(srv)


def test_oversize_body_is_413_before_it_is_read(server):
    big = register(server.base, client_name="x" * (8 * 1024 * 1024))
    assert big.status_code == 413, big.text
    assert big.json()["error"] == "invalid_client_metadata" and "65536 bytes" in big.json()["error_description"]
    # the same without Content-Length (chunked): counted as it arrives
    def chunks():
        yield b'{"redirect_uris": ["' + LOOPBACK.encode() + b'"], "client_name": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'
    chunked = httpx.post(f"{server.base}/register", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert register(server.base).status_code == 201, "the server is fine afterwards"


@pytest.mark.parametrize(("metadata", "field"), [
    ({"client_name": "n" * 101}, "client_name"),
    ({"redirect_uris": [f"http://127.0.0.1:{5000 + i}/cb" for i in range(6)]}, "redirect_uris"),
    ({"redirect_uris": ["http://127.0.0.1:5173/" + "p" * 2100]}, "redirect_uris[0]"),
    ({"client_uri": "https://client.example/" + "p" * 2100}, "client_uri"),
    ({"contacts": [f"admin{i}@example.test" for i in range(1000)]}, "client metadata is"),
])
def test_field_caps_are_invalid_client_metadata_naming_the_field(server, metadata, field):
    r = register(server.base, **metadata)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client_metadata"
    assert field in r.json()["error_description"]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5173/callback#frag", "http://localhost:5173/cb#",
                                 "https://claude.ai/api/mcp/auth_callback#x"])
def test_redirect_uri_with_a_fragment_is_refused(server, uri):
    r = register(server.base, redirect_uris=[uri])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_redirect_uri" and "fragment" in r.json()["error_description"]


def test_within_the_caps_registration_works(server):
    uris = [f"http://127.0.0.1:{5000 + i}/cb" for i in range(5)]
    r = register(server.base, client_name="n" * 100, redirect_uris=uris)
    assert r.status_code == 201, r.text
    assert r.json()["client_name"] == "n" * 100


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432"))])
def shared_state(request, tmp_path):
    """`persistence` for two servers sharing one store: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield {"path": str(tmp_path / "oauth.db"), "encryption_key": "k" * 32}
    else:
        with postgres_database() as dsn:
            yield {"type": "postgres", "dsn": dsn, "encryption_key": "k" * 32}


def test_rate_limit_is_shared_by_two_servers_on_one_store(tmp_path, shared_state):
    """Two sqlgate processes on one state store: the limit counts registrations at both."""
    auth = {**GITHUB, "registration": {"rate_limit": 4, "rate_window_seconds": 60}, "persistence": shared_state}
    a, b = together(partial(start_auth_server, tmp_path / "a", auth), partial(start_auth_server, tmp_path / "b", auth))
    try:
        assert [register(s.base).status_code for s in (a, b, a, b)] == [201, 201, 201, 201]
        for s in (a, b):
            r = register(s.base)
            assert r.status_code == 429, r.text
            assert r.json()["error"] == "too_many_requests"
            assert 1 <= int(r.headers["retry-after"]) <= 60
        # refused attempts count too
        assert register(a.base, client_name="x" * 300).status_code == 429
        assert "exceed 4 per 60 s" in a.logs() + b.logs()
    finally:
        stop_server(a)
        stop_server(b)


def _client_rows(db) -> set[str]:
    with sqlite3.connect(db) as con:
        return {k for (k,) in con.execute("SELECT key FROM kv WHERE collection = 'mcp-oauth-proxy-clients'")}


UNAUTHORIZED_TTL = 3  # long enough for the official client's login to finish on a loaded machine
IDLE_TTL = 6  # longer than the wait for UNAUTHORIZED_TTL, a refresh and a cleanup, with margin
CLEANUP_INTERVAL = 1


def test_clients_that_never_log_in_or_go_idle_expire_and_are_removed(tmp_path):
    stack = make_stack("oidc", tmp_path, registration={"unauthorized_client_ttl_seconds": UNAUTHORIZED_TTL,
                                                       "idle_client_ttl_seconds": IDLE_TTL},
                       persistence={"encryption_key": "k" * 32, "cleanup_interval_seconds": CLEANUP_INTERVAL})
    try:
        base, db = stack["server"].base, tmp_path / "oauth.db"
        idle = register(base).json()["client_id"]
        registered = time.monotonic()  # its lifetime started before this
        storage = login(stack, "alice")  # the official client registers and completes a login
        active = storage.client.client_id
        assert {idle, active} <= _client_rows(db)
        time.sleep(max(0.0, registered + UNAUTHORIZED_TTL + 0.5 - time.monotonic()))
        # never authorised: gone at once (and refused at /authorize) ...
        r = httpx.get(f"{base}/authorize", params={"response_type": "code", "client_id": idle, "redirect_uri": LOOPBACK,
                                                   "code_challenge": "x" * 43, "code_challenge_method": "S256"})
        assert r.status_code == 400 and "location" not in r.headers
        # ... while the client that logged in keeps working, and a refresh extends its life
        form = {"grant_type": "refresh_token", "client_id": active, "refresh_token": storage.tokens.refresh_token}
        fresh = httpx.post(f"{base}/token", data=form)
        refreshed = time.monotonic()
        assert fresh.status_code == 200, fresh.text
        # the periodic cleanup deletes the expired row
        deadline = time.monotonic() + CLEANUP_INTERVAL + 5
        while idle in _client_rows(db) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert idle not in _client_rows(db) and active in _client_rows(db)
        time.sleep(max(0.0, refreshed + IDLE_TTL + 0.5 - time.monotonic()))  # unused for longer than its lifetime
        stale = httpx.post(f"{base}/token", data={**form, "refresh_token": fresh.json()["refresh_token"]})
        assert stale.status_code == 401 and stale.json()["error"] == "invalid_client", stale.text
    finally:
        drop_stack(stack)


def test_clients_registered_before_expiry_existed_get_one_at_start(tmp_path):
    """A state file from before registrations had a lifetime (rows without expiry): the next start
    gives them the idle lifetime, so they no longer live forever."""
    auth = {**GITHUB, "persistence": {"path": str(tmp_path / "oauth.db"), "encryption_key": "k" * 32}}
    first = start_auth_server(tmp_path, auth)
    try:
        old = register(first.base).json()["client_id"]
    finally:
        stop_server(first)
    with sqlite3.connect(tmp_path / "oauth.db") as con:  # as an older sqlgate stored it
        con.execute("UPDATE kv SET expires_at = NULL WHERE collection = 'mcp-oauth-proxy-clients'")
    ttl = 6  # counted from the second start (its proxy set-up); long enough for the first /authorize below
    second = start_auth_server(tmp_path, {**auth, "registration": {"idle_client_ttl_seconds": ttl}})
    started = time.monotonic()  # the lifetime was given before the server answered /healthz
    try:
        assert "1 registered client(s) without an expiry now expire" in second.logs()
        params = {"response_type": "code", "client_id": old, "redirect_uri": LOOPBACK,
                  "code_challenge": "x" * 43, "code_challenge_method": "S256"}
        assert httpx.get(f"{second.base}/authorize", params=params).status_code == 302
        time.sleep(max(0.0, started + ttl + 0.5 - time.monotonic()))
        r = httpx.get(f"{second.base}/authorize", params=params)
        assert r.status_code == 400 and "location" not in r.headers
    finally:
        stop_server(second)
