"""Two sqlgate servers sharing OAuth state — one SQLite file (two processes on one machine) or one
PostgreSQL database (replicas) — with the same public base URL, as behind a load balancer.

A token issued by one is served by the other, and single use holds across them: parallel code
redemptions and refreshes split between the two servers still have exactly one winner. After a
kill -9 of one, the other serves and refreshes every grant. A token revoked at one — by /revoke, or
with its whole family when a refresh token is reused — is refused there at once and by the other
within `token_cache.revocation_check_seconds`, though the other had it cached.
"""

from __future__ import annotations

import signal
import time
from contextlib import nullcontext
from functools import partial

import httpx
import pytest

from tests.auth_support import start_auth_server
from tests.conftest import free_port, stop_server, together
from tests.grant_backends import postgres_available, postgres_database
from tests.idp.launcher import OidcProvider
from tests.test_auth_flows import KEY, login, provider_config
from tests.test_auth_grants import _code, at_once, one_pair, one_winner, refresh, works

BOUND = 5  # seconds a revocation elsewhere may go unseen (the default)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432"))])
def pair(request, tmp_path):
    ports = free_port(), free_port()
    public = f"http://127.0.0.1:{ports[0]}"
    idp = OidcProvider(redirect_uris=[f"{public}/oidc/callback"])
    servers = []
    with postgres_database() if request.param == "postgres" else nullcontext() as dsn:
        persistence = ({"type": "postgres", "dsn": dsn, "encryption_key": KEY} if dsn else
                       {"path": str(tmp_path / "shared" / "oauth.db"), "encryption_key": KEY})
        auth = {**provider_config("oidc", idp, ports[0]), "persistence": persistence,
                "token_cache": {"revocation_check_seconds": BOUND}}
        try:
            for i in range(len(ports)):
                (tmp_path / f"s{i}").mkdir()
            servers = together(*(partial(start_auth_server, tmp_path / f"s{i}", auth, port=port,
                                         transport={"base_url": public}) for i, port in enumerate(ports)))
            yield servers
        finally:
            for s in servers:
                stop_server(s)
            idp.stop()


def test_two_servers_share_grants_and_single_use(pair):
    a, b = pair
    stack = {"server": a}
    storage = login(stack, "alice")  # the official client, against the first server
    assert works(b.url, storage.tokens.access_token)  # …served by the second

    # one code, redeemed five times at each server at once: one winner
    _, form = _code(stack, "http://127.0.0.1:45980/callback")
    servers = [a, b] * 5
    turn = iter(range(10))
    winner = one_winner(at_once(10, lambda http: http.post(f"{servers[next(turn)].base}/token", data=form)))
    assert winner.json()["access_token"]

    # one refresh token, refreshed four times at each server at once: one pair, a working grant
    client_id = storage.client.client_id
    turn = iter(range(8))
    fresh = one_pair(at_once(8, lambda http: refresh(servers[next(turn)].base, client_id,
                                                     storage.tokens.refresh_token, http)))
    assert works(a.url, fresh["access_token"]) and works(b.url, fresh["access_token"])

    # kill -9 the first: the second keeps serving and refreshing what the first issued
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert works(b.url, fresh["access_token"])
    again = refresh(b.base, client_id, fresh["refresh_token"])
    assert again.status_code == 200, again.text
    assert works(b.url, again.json()["access_token"])


def refused_within_the_bound(server, tokens: list[str], revoked_at: float) -> None:
    pending = list(tokens)
    while pending:
        pending = [t for t in pending if works(server.url, t)]
        assert not pending or time.monotonic() - revoked_at < BOUND + 3, \
            f"still accepted {time.monotonic() - revoked_at:.1f} s after the revocation"
        time.sleep(0.2)


def test_a_revocation_reaches_the_other_server_within_the_bound(pair):
    a, b = pair
    storage = login({"server": a}, "alice")
    token, client_id = storage.tokens.access_token, storage.client.client_id
    assert works(a.url, token)  # verified, and cached, at a
    before_b = time.monotonic()
    assert works(b.url, token)  # b's first request: it reads the revocation log, then caches the token
    r = httpx.post(f"{a.base}/revoke", data={"token": token, "client_id": client_id})
    revoked_at = time.monotonic()
    assert r.status_code == 200, r.text
    assert not works(a.url, token)  # the revoking server: at once, its cache entry is gone
    if time.monotonic() < before_b + BOUND - 1.5:
        # b read the log less than BOUND ago: it still answers from its cache (the documented
        # staleness) — so what refuses the token below is b reading the log, not a fresh check
        assert works(b.url, token)
    refused_within_the_bound(b, [token], revoked_at)


def test_a_reused_refresh_token_ends_the_family_on_both_servers(pair):
    a, b = pair
    storage = login({"server": a}, "alice")
    client_id, first_refresh = storage.client.client_id, storage.tokens.refresh_token
    first = refresh(a.base, client_id, first_refresh)
    assert first.status_code == 200, first.text
    second = refresh(a.base, client_id, first.json()["refresh_token"])
    assert second.status_code == 200, second.text
    family = [storage.tokens.access_token, first.json()["access_token"], second.json()["access_token"]]
    for server in (a, b):
        assert all(works(server.url, t) for t in family)  # all three cached at both
    reuse = refresh(a.base, client_id, first_refresh)  # two generations back: reuse, the family ends
    revoked_at = time.monotonic()
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant", reuse.text
    assert not any(works(a.url, t) for t in family)
    refused_within_the_bound(b, family, revoked_at)
