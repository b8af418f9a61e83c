"""Two replicas behind a plain round-robin load balancer, sharing OAuth state in PostgreSQL.

The configuration is the README's "Deploying several replicas": the same public `base_url` (the load
balancer's), `transport.stateless: true`, `auth.persistence.type: postgres` with one DSN and one
encryption key. The official mcp client logs in through the real OIDC provider and calls tools; every
request — registration, authorization, consent, the IdP's callback, code redemption, tool calls,
refreshes — goes to the next replica. Then one replica is killed with SIGKILL and the other keeps
serving every token that was issued.
"""

from __future__ import annotations

import signal
from functools import partial

import pytest

from tests.auth_support import start_auth_server
from tests.conftest import free_port, stop_server, together
from tests.grant_backends import postgres_available, postgres_database
from tests.idp.launcher import OidcProvider
from tests.round_robin import RoundRobin
from tests.test_auth_flows import KEY, login, provider_config
from tests.test_auth_grants import refresh, works

pytestmark = pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432")


def test_two_replicas_behind_round_robin_share_everything(tmp_path):
    ports = free_port(), free_port()
    with RoundRobin([f"http://127.0.0.1:{p}" for p in ports]) as lb, postgres_database() as dsn:
        idp = OidcProvider(redirect_uris=[f"{lb.base}/oidc/callback"])
        auth = {**provider_config("oidc", idp, lb.port),
                "persistence": {"type": "postgres", "dsn": dsn, "encryption_key": KEY}}
        servers = []
        try:
            for i in range(len(ports)):
                (tmp_path / f"r{i}").mkdir()
            servers = together(*(partial(start_auth_server, tmp_path / f"r{i}", auth, port=port,
                                         transport={"base_url": lb.base, "stateless": True})
                                 for i, port in enumerate(ports)))
            storage = login({"server": lb}, "alice")  # the whole flow, request by request round robin
            oauth_paths = {"/register", "/authorize", "/consent", "/oidc/callback", "/token"}
            served = {}
            for _method, path, backend in lb.log:
                if path in oauth_paths:
                    served.setdefault(path, set()).add(backend)
            assert {"/register", "/authorize", "/oidc/callback", "/token"} <= set(served), served
            assert len(set().union(*served.values())) == 2, "both replicas took part in the login"

            token = storage.tokens.access_token
            for _ in range(6):  # tool calls alternate between the replicas
                assert works(lb.url, token)
            client_id = storage.client.client_id
            fresh = refresh(lb.base, client_id, storage.tokens.refresh_token)
            assert fresh.status_code == 200, fresh.text
            again = refresh(lb.base, client_id, fresh.json()["refresh_token"])
            assert again.status_code == 200, again.text
            token, refresh_token = again.json()["access_token"], again.json()["refresh_token"]
            assert works(lb.url, token) and works(lb.url, token)
            mcp_backends = {b for _m, p, b in lb.log if p == "/mcp"}
            assert len(mcp_backends) == 2

            # SIGKILL one replica mid-run: the other serves every issued token
            servers[0].proc.send_signal(signal.SIGKILL)
            servers[0].proc.wait(10)
            for _ in range(4):
                assert works(lb.url, token)
            last = refresh(lb.base, client_id, refresh_token)
            assert last.status_code == 200, last.text
            assert works(lb.url, last.json()["access_token"])
        finally:
            for s in servers:
                stop_server(s)
            idp.stop()
