"""Two sqlgate servers sharing OAuth state — one SQLite file (two processes on one machine) or one
PostgreSQL database (replicas) — with the same public base URL, as behind a load balancer.

A token issued by one is served by the other, and single use holds across them: parallel code
redemptions and refreshes split between the two servers still have exactly one winner. After a
kill -9 of one, the other serves and refreshes every grant.
"""

from __future__ import annotations

import signal
from contextlib import nullcontext
from functools import partial

import pytest

from tests.auth_support import start_auth_server
from tests.conftest import free_port, stop_server, together
from tests.grant_backends import postgres_available, postgres_database
from tests.idp.launcher import OidcProvider
from tests.test_auth_flows import KEY, login, provider_config
from tests.test_auth_grants import _code, at_once, one_pair, one_winner, refresh, works


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
        auth = {**provider_config("oidc", idp, ports[0]), "persistence": persistence}
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
