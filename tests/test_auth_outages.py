"""Outages answered honestly: a provider that is down or hangs, a state store that cannot write.

- Provider stopped (the fake's port closed, then opened again with its grants): refresh at /token
  and the login callback answer 503 + Retry-After at once; valid tokens keep working while the
  user-info cache holds and are answered 503 (not 401) after; back up → everything works again,
  without restarting sqlgate.
- Provider hanging (accepts, never answers): every call is cut at the provider's timeout_seconds.
- Read-only state (chattr +i): 503 at /register and /token with one clear log line, no traceback.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import httpx
import pytest

from tests.auth_support import login_to_callback
from tests.browser import Browser
from tests.outage_support import Hanging, google_stack
from tests.test_auth_flows import bearer_call, result_of
from tests.test_auth_grants import ALWAYS_UPSTREAM, refresh

TIMEOUT = 2.0  # the provider's timeout_seconds in these servers
REDIRECT = "http://127.0.0.1:45970/callback"


def to_callback(server) -> tuple[Browser, str]:
    return login_to_callback(server, "/google/callback", REDIRECT)


def unavailable(r: httpx.Response, page: bool = False) -> bool:
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert int(r.headers["retry-after"]) > 0
    if page:
        assert r.headers["content-type"].startswith("text/html") and "try again" in r.text, r.text
    else:
        assert r.json()["error"] == "temporarily_unavailable", r.text
    return True


def whoami(server, token: str) -> httpx.Response:
    return bearer_call(server.url, token)


def test_provider_down_is_503_until_it_is_back(tmp_path):
    cache_ttl = 3  # seconds user info is reused: longer than stopping the fake and the calls below take
    with google_stack(tmp_path, cache_ttl=cache_ttl, upstream_refresh_margin_seconds=ALWAYS_UPSTREAM,
                      google={"timeout_seconds": TIMEOUT}) as (fake, server, storage):
        client_id, tokens = storage.client.client_id, storage.tokens
        browser, callback = to_callback(server)
        assert whoami(server, tokens.access_token).status_code == 200  # user info cached from here
        cached_at = time.monotonic()
        fake.stop()

        # while the cache holds, the valid token keeps working
        assert result_of(whoami(server, tokens.access_token))["result"]["structuredContent"]["result"]["username"] \
            == "alice@example.test"
        started = time.monotonic()
        assert unavailable(refresh(server.base, client_id, tokens.refresh_token))
        assert unavailable(browser.http.get(callback), page=True)
        assert time.monotonic() - started < TIMEOUT  # refused connections: answered at once

        time.sleep(max(0.0, cached_at + cache_ttl + 0.5 - time.monotonic()))  # the cache entry expires
        assert unavailable(whoami(server, tokens.access_token))  # not 401: the client keeps its token

        fake.restart()  # back on the same port, with its grants
        assert whoami(server, tokens.access_token).status_code == 200
        fresh = refresh(server.base, client_id, tokens.refresh_token)  # the failed attempt spent nothing
        assert fresh.status_code == 200, fresh.text
        assert whoami(server, fresh.json()["access_token"]).status_code == 200
        done = browser.http.get(callback)  # the same callback, retried: the login completes
        assert done.status_code == 302 and done.headers["location"].startswith(REDIRECT), done.text
        logs = server.logs()
        assert "answered 503: identity provider unavailable" in logs and "Traceback" not in logs


def test_hanging_provider_is_cut_at_the_timeout(tmp_path):
    with google_stack(tmp_path, cache_ttl=0, upstream_refresh_margin_seconds=ALWAYS_UPSTREAM,
                      google={"timeout_seconds": TIMEOUT}) as (fake, server, storage):
        client_id, tokens = storage.client.client_id, storage.tokens
        browser, callback = to_callback(server)
        fake.hold_paths = {"/token", "/v1/userinfo"}  # received, never answered
        for name, call in (("refresh", lambda: refresh(server.base, client_id, tokens.refresh_token,
                                                       httpx.Client(timeout=30))),
                           ("user info", lambda: whoami(server, tokens.access_token)),
                           ("login callback", lambda: browser.http.get(callback, timeout=30))):
            started = time.monotonic()
            r = call()
            took = time.monotonic() - started
            assert unavailable(r, page=name == "login callback")
            assert TIMEOUT - 0.2 < took < TIMEOUT + 2, f"{name} took {took:.1f} s"
        assert f"no answer within {TIMEOUT:g} s" in server.logs()
        # revocation: the provider's part is cut at the timeout, sqlgate's own part is done
        fake.hold_paths = {"/revoke"}
        started = time.monotonic()
        r = httpx.post(f"{server.base}/revoke", data={"token": tokens.refresh_token, "client_id": client_id,
                                                      "token_type_hint": "refresh_token"}, timeout=30)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < TIMEOUT + 2
        assert ("POST", "/revoke") in fake.requests
        fake.hold_paths = set()
        gone = refresh(server.base, client_id, tokens.refresh_token)
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"


def test_login_against_a_silent_socket_is_cut_at_the_timeout(tmp_path):
    """A token endpoint that accepts the connection and never says a word."""
    silent = Hanging()
    try:
        with google_stack(tmp_path, login=False, google={"timeout_seconds": TIMEOUT,
                                                         "token_url": f"{silent.url}/token"}) as (_, server, _s):
            browser, callback = to_callback(server)
            started = time.monotonic()
            r = browser.http.get(callback, timeout=30)
            assert unavailable(r, page=True)
            assert TIMEOUT - 0.2 < time.monotonic() - started < TIMEOUT + 2
            assert silent.accepted, "the provider was never called"
    finally:
        silent.stop()


@contextlib.contextmanager
def immutable(*paths):
    """chattr +i: not even root may write (the test runs as root, where chmod protects nothing)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
                pytest.skip(f"cannot make {p} immutable here (needs root and a file system with attributes)")
            done.append(p)
        yield
    finally:
        for p in reversed(done):
            subprocess.run(["chattr", "-i", str(p)], check=True)


def test_read_only_state_is_503_with_one_clear_log_line(tmp_path):
    with google_stack(tmp_path) as (_, server, storage):
        state = tmp_path / "oauth.db"
        files = [p for p in tmp_path.glob("oauth.db*") if p.is_file()]
        with immutable(*files):
            r = httpx.post(f"{server.base}/register", json={"redirect_uris": [REDIRECT],
                                                            "token_endpoint_auth_method": "none"})
            assert unavailable(r)
            assert unavailable(refresh(server.base, storage.client.client_id, storage.tokens.refresh_token))
            login = httpx.get(f"{server.base}/authorize", params={
                "response_type": "code", "client_id": storage.client.client_id, "state": "st",
                "redirect_uri": str(storage.client.redirect_uris[0]), "scope": "sqlgate:access",
                "code_challenge": "x" * 43, "code_challenge_method": "S256"})
            assert login.status_code == 302, login.text  # RFC 6749 §4.1.2.1: back to the client, with
            assert "error=temporarily_unavailable" in login.headers["location"]  # an error it can show
            logs = server.logs()
            assert f"OAuth state store {state} unavailable" in logs and "answered 503" in logs
            assert "Traceback" not in logs
        # writable again: the same requests succeed, nothing was lost
        ok = refresh(server.base, storage.client.client_id, storage.tokens.refresh_token)
        assert ok.status_code == 200, ok.text
        assert whoami(server, ok.json()["access_token"]).status_code == 200


def test_read_only_state_directory_at_start_is_a_clear_error(tmp_path):
    """No key file yet and a directory nobody may write to: the start-up error names the path
    and the fix, without a traceback."""
    from tests.auth_support import auth_project
    from tests.conftest import SQLGATE

    state = tmp_path / "state"
    state.mkdir()
    project, env, _ = auth_project(tmp_path, {"provider": "google", "persistence": {"path": str(state / "oauth.db")},
                                              "google": {"client_id": "c", "client_secret": "s"}})
    with immutable(state):
        done = subprocess.run([*SQLGATE, "serve", "-p", str(project), "--transport", "http", "--port", "1"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"cannot open the OAuth state database {state / 'oauth.db'}" in done.stderr + done.stdout
    assert "Make its directory writable" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_real_idp_stopped_then_back_on_the_same_port(tmp_path):
    """The npm oidc-provider: stopped, refresh is 503 at once while valid tokens keep working from
    the cache; started again on the same port (its grants are in memory, so they are gone), a new
    login works without restarting sqlgate."""
    from tests.auth_support import start_auth_server
    from tests.conftest import free_port, stop_server
    from tests.idp.launcher import OidcProvider
    from tests.test_auth_flows import login, provider_config

    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oidc/callback"
    idp = OidcProvider(redirect_uris=[redirect])
    auth = provider_config("oidc", idp, port)
    auth["oidc"]["timeout_seconds"] = TIMEOUT
    auth["persistence"] = {**auth["persistence"], "path": str(tmp_path / "oauth.db")}
    server = start_auth_server(tmp_path, {**auth, "upstream_refresh_margin_seconds": ALWAYS_UPSTREAM}, port=port)
    try:
        stack = {"server": server}
        storage = login(stack, "alice")
        idp.stop()
        started = time.monotonic()
        assert unavailable(refresh(server.base, storage.client.client_id, storage.tokens.refresh_token))
        assert time.monotonic() - started < TIMEOUT
        assert whoami(server, storage.tokens.access_token).status_code == 200  # the user-info cache holds
        idp = OidcProvider(redirect_uris=[redirect], extra_args=["--port", str(idp.port)])
        assert login(stack, "bob").tokens.access_token
    finally:
        stop_server(server)
        idp.stop()


REVOCATION_CHECK_SECONDS = 5  # the default of auth.token_cache.revocation_check_seconds


@pytest.mark.skipif("not __import__('tests.grant_backends', fromlist=['x']).postgres_available()",
                    reason="no PostgreSQL on 127.0.0.1:5432")
def test_postgres_state_down_is_503_then_recovers(tmp_path):
    """The state database refuses connections (this test's own database, closed to connections and
    its sessions ended): 503 + one log line at /register and for tool calls — never 401 — and
    everything works again once it is back, without a restart. A token verified before the outage
    is served from the cache only while revocations were read less than
    `token_cache.revocation_check_seconds` ago; after that, 503 like the rest."""
    import psycopg

    from tests.grant_backends import ADMIN_DSN, postgres_database
    from tests.test_auth_flows import KEY

    persistence = {"type": "postgres", "encryption_key": KEY,
                   "connect_timeout_seconds": 2}  # a request waits this long for the store, then 503
    with postgres_database() as dsn, google_stack(tmp_path, persistence={**persistence, "dsn": dsn}) as (
            _, server, storage):
        name = dsn.rsplit("/", 1)[1]
        assert whoami(server, storage.tokens.access_token).status_code == 200
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            register = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
            assert unavailable(httpx.post(f"{server.base}/register", json=register, timeout=30))
            deadline = time.monotonic() + REVOCATION_CHECK_SECONDS + 15  # + a request that waits for the pool
            while (r := whoami(server, storage.tokens.access_token)).status_code == 200:
                assert time.monotonic() < deadline, "a cached token outlived the revocation-check bound"
                time.sleep(0.5)
            assert unavailable(r)
        finally:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        logs = server.logs()
        assert f"answered 503: OAuth state store user=postgres dbname={name} host=127.0.0.1" in logs
        assert "Traceback" not in logs
        deadline = time.monotonic() + 60
        while (r := httpx.post(f"{server.base}/register", json=register, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, "the state store did not come back"
            time.sleep(1)
        assert r.status_code == 201, r.text
        assert whoami(server, storage.tokens.access_token).status_code == 200
