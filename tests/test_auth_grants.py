"""Single use and rotation end to end: the running server, the real OIDC provider (rotating refresh
tokens) and the Google-like fake (non-rotating), tokens from the official mcp client.

- N parallel redemptions of one code: exactly one 200, the rest 400 invalid_grant; the
  duplicates count as replays and revoke what the code issued (RFC 6749 §4.1.2).
- N parallel refreshes of one refresh token: one upstream refresh, and every caller gets the same
  new pair (or a fast, clear 503): the user ends with exactly one working grant.
- The just-rotated refresh token presented again within the grace window gets the same pair; after
  it, or an older one at any time, revokes the whole family (RFC 9700 §4.14.2).
- The provider is asked only when its token is near expiry; otherwise sqlgate's tokens rotate alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import httpx
import pytest

from tests.auth_support import start_auth_server
from tests.conftest import stop_server
from tests.fakes.providers import FakeGoogle
from tests.outage_support import google_auth, google_stack, login_alice
from tests.test_auth_flows import _authorize_by_hand, bearer_call, drop_stack, login, make_stack, result_of

GRACE = 5.0  # refresh_grace_seconds of these servers (long enough for a loaded machine)
ALWAYS_UPSTREAM = 10**6  # upstream_refresh_margin_seconds: every refresh asks the provider


def at_once(n: int, send) -> list[httpx.Response]:
    """send(client) from n threads released together."""
    gate = threading.Barrier(n)
    replies: list = [None] * n

    def run(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            gate.wait()
            replies[i] = send(http)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies


def one_winner(replies: list[httpx.Response]) -> httpx.Response:
    codes = sorted(r.status_code for r in replies)
    assert codes == [200] + [400] * (len(replies) - 1), [(r.status_code, r.text[:120]) for r in replies]
    assert all(r.json()["error"] == "invalid_grant" for r in replies if r.status_code == 400)
    return next(r for r in replies if r.status_code == 200)


def one_pair(replies: list[httpx.Response]) -> dict:
    """Concurrent refreshes of one token: every 200 carries the same pair; any other answer is a
    clear 503 temporarily_unavailable with Retry-After. Returns the pair."""
    pairs = {(r.json()["access_token"], r.json()["refresh_token"]) for r in replies if r.status_code == 200}
    others = [r for r in replies if r.status_code != 200]
    assert len(pairs) == 1, [(r.status_code, r.text[:120]) for r in replies]
    for r in others:
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable" and r.headers["retry-after"], \
            (r.status_code, r.text)
    return next(r.json() for r in replies if r.status_code == 200)


def works(url: str, access_token: str) -> bool:
    r = bearer_call(url, access_token)
    if r.status_code == 401:
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        return False
    assert result_of(r)["result"]["structuredContent"]["result"]["username"] == "alice", r.text
    return True


def refresh(base: str, client_id: str, token: str, http: httpx.Client | None = None) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    return (http or httpx).post(f"{base}/token", data=form)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    built = make_stack("oidc", tmp_path_factory.mktemp("grants"), refresh_grace_seconds=GRACE,
                       upstream_refresh_margin_seconds=ALWAYS_UPSTREAM)
    yield built
    drop_stack(built)


def _code(stack, redirect: str) -> tuple[str, dict]:
    base = stack["server"].base
    client_id = httpx.post(f"{base}/register", json={"redirect_uris": [redirect],
                                                     "token_endpoint_auth_method": "none"}).json()["client_id"]
    code, verifier = _authorize_by_hand(base, client_id, redirect, "sqlgate:access")
    return client_id, {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                       "client_id": client_id, "code_verifier": verifier}


def test_parallel_redemptions_of_one_code_have_one_winner(stack):
    _, form = _code(stack, "http://127.0.0.1:45990/callback")
    winner = one_winner(at_once(10, lambda http: http.post(f"{stack['server'].base}/token", data=form)))
    # the nine duplicates were replays of a spent code: what it issued is revoked
    assert not works(stack["server"].url, winner.json()["access_token"])
    again = refresh(stack["server"].base, form["client_id"], winner.json()["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_replayed_code_revokes_the_grant_it_issued(stack):
    base = stack["server"].base
    client_id, form = _code(stack, "http://127.0.0.1:45991/callback")
    first = httpx.post(f"{base}/token", data=form)
    assert first.status_code == 200, first.text
    assert works(stack["server"].url, first.json()["access_token"])
    replay = httpx.post(f"{base}/token", data=form)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert not works(stack["server"].url, first.json()["access_token"])
    assert refresh(base, client_id, first.json()["refresh_token"]).status_code == 400


def test_parallel_refreshes_against_the_rotating_idp_leave_one_grant(stack):
    storage = login(stack, "alice")
    base, client_id = stack["server"].base, storage.client.client_id
    before = stack["server"].logs().count("(upstream refreshed)")
    fresh = one_pair(at_once(10, lambda http: refresh(base, client_id, storage.tokens.refresh_token, http)))
    assert works(stack["server"].url, fresh["access_token"])
    # one upstream refresh happened: had several gone upstream, the IdP would have revoked the grant
    again = refresh(base, client_id, fresh["refresh_token"])
    assert again.status_code == 200, again.text
    assert works(stack["server"].url, again.json()["access_token"])
    assert stack["server"].logs().count("(upstream refreshed)") - before == 2


def test_replaying_a_rotated_refresh_token_revokes_the_family(stack):
    import time

    storage = login(stack, "alice")
    base, client_id, url = stack["server"].base, storage.client.client_id, stack["server"].url
    old = storage.tokens.refresh_token
    first = refresh(base, client_id, old)
    assert first.status_code == 200, first.text
    # a retry of the same token within the grace window (a lost response): the same pair
    retry = refresh(base, client_id, old)
    assert retry.status_code == 200, retry.text
    assert (retry.json()["access_token"], retry.json()["refresh_token"]) == \
        (first.json()["access_token"], first.json()["refresh_token"])
    second = refresh(base, client_id, first.json()["refresh_token"])
    assert second.status_code == 200, second.text
    newest = second.json()
    assert works(url, newest["access_token"])
    assert refresh(base, client_id, old).status_code == 400  # two generations back: reuse, at once
    assert not works(url, newest["access_token"])
    storage = login(stack, "alice")  # a new grant for the rest of the test
    old = storage.tokens.refresh_token
    first = refresh(base, client_id := storage.client.client_id, old)
    second = refresh(base, client_id, first.json()["refresh_token"])
    assert second.status_code == 200, second.text
    newest = second.json()
    time.sleep(GRACE + 0.5)  # past the grace window of the previous token
    replay = refresh(base, client_id, first.json()["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert not works(url, newest["access_token"])
    assert not works(url, storage.tokens.access_token)  # the first access token was of the same family
    assert refresh(base, client_id, newest["refresh_token"]).status_code == 400


def test_revoking_a_refresh_token_ends_the_family(stack):
    storage = login(stack, "alice")
    base, client_id = stack["server"].base, storage.client.client_id
    assert works(stack["server"].url, storage.tokens.access_token)
    r = httpx.post(f"{base}/revoke", data={"token": storage.tokens.refresh_token, "client_id": client_id,
                                           "token_type_hint": "refresh_token"})
    assert r.status_code == 200, r.text
    assert not works(stack["server"].url, storage.tokens.access_token)
    assert refresh(base, client_id, storage.tokens.refresh_token).status_code == 400


@pytest.fixture(scope="module")
def google_server(tmp_path_factory):
    """(fake, server): every refresh asks the (non-rotating) provider."""
    with google_stack(tmp_path_factory.mktemp("google"), login=False, refresh_grace_seconds=GRACE,
                      upstream_refresh_margin_seconds=ALWAYS_UPSTREAM) as (fake, server, _):
        yield fake, server


@pytest.fixture
def google(google_server):
    """(fake, server, storage): the module's server, alice logged in afresh (a grant of her own);
    what a test changed on the fake is undone after it."""
    fake, server = google_server
    yield fake, server, login_alice(server)
    fake.down, fake.refresh_delay = False, 0.0


def test_failed_upstream_refresh_leaves_the_token_usable(google):
    fake, server, storage = google
    client_id = storage.client.client_id
    fake.down = True
    failed = refresh(server.base, client_id, storage.tokens.refresh_token)
    assert failed.status_code == 503 and failed.headers["retry-after"] == "5", failed.text
    assert failed.json()["error"] == "temporarily_unavailable"
    fake.down = False  # the claim was undone: the same token refreshes once the provider is back
    ok = refresh(server.base, client_id, storage.tokens.refresh_token)
    assert ok.status_code == 200, ok.text
    assert bearer_call(server.url, ok.json()["access_token"]).status_code == 200


def test_parallel_refreshes_against_a_non_rotating_upstream_leave_one_grant(google):
    fake, server, storage = google
    client_id = storage.client.client_id
    before = fake.refreshes()  # the module's other tests' refreshes
    fake.refresh_delay = 1.0  # a slow provider: the others find the claim pending and wait for its pair
    fresh = one_pair(at_once(10, lambda http: refresh(server.base, client_id, storage.tokens.refresh_token, http)))
    assert fake.refreshes() == before + 1  # the claim comes before the upstream call
    ok = bearer_call(server.url, fresh["access_token"])
    assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "alice@example.test"
    again = refresh(server.base, client_id, fresh["refresh_token"])
    assert again.status_code == 200, again.text
    assert fake.refreshes() == before + 2


def test_parallel_refreshes_while_the_provider_fails_all_get_a_clear_503(google):
    fake, server, storage = google
    client_id, token = storage.client.client_id, storage.tokens.refresh_token
    fake.down = True
    replies = at_once(10, lambda http: refresh(server.base, client_id, token, http))
    for r in replies:
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
        assert int(r.headers["retry-after"]) > 0
    fake.down = False  # nothing was spent: the same token refreshes, and the grant works
    ok = refresh(server.base, client_id, token)
    assert ok.status_code == 200, ok.text
    assert bearer_call(server.url, ok.json()["access_token"]).status_code == 200


def test_refresh_with_a_fresh_upstream_token_does_not_ask_the_provider(tmp_path):
    """Google's token lives an hour; with the default margin only sqlgate's tokens rotate, and the
    new access token does not outlive the upstream one."""
    with google_stack(tmp_path) as (fake, server, storage):
        client_id = storage.client.client_id
        first = refresh(server.base, client_id, storage.tokens.refresh_token)
        assert first.status_code == 200, first.text
        second = refresh(server.base, client_id, first.json()["refresh_token"])
        assert second.status_code == 200, second.text
        assert fake.refreshes() == 0
        assert second.json()["expires_in"] <= FakeGoogle.ACCESS_TTL
        ok = bearer_call(server.url, second.json()["access_token"])
        assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "alice@example.test"
        assert "upstream token still fresh: not asked" in server.logs()


def test_kill_9_during_a_slow_upstream_refresh_keeps_the_grant(tmp_path):
    """The server dies while the provider is still working on a refresh it claimed. After a restart,
    the client's retry with its old refresh token (within the grace window) finishes that refresh
    and gets the new pair; that pair is the grant from then on."""
    auth = {"refresh_grace_seconds": 60, "upstream_refresh_margin_seconds": ALWAYS_UPSTREAM,
            "google": {"timeout_seconds": 2}}
    with google_stack(tmp_path, **auth) as (fake, server, storage):
        client_id, old = storage.client.client_id, storage.tokens.refresh_token
        fake.hold_refresh = True
        threading.Thread(target=lambda: _ignore_errors(refresh, server.base, client_id, old), daemon=True).start()
        assert fake.held.wait(10), "the refresh never reached the provider"
        server.proc.send_signal(signal.SIGKILL)  # claimed, provider asked, nothing answered yet
        server.proc.wait(10)
        fake.hold_refresh = False
        fake.release.set()
        restarted = start_auth_server(tmp_path, google_auth(fake, **auth), port=int(server.base.rsplit(":", 1)[1]))
        try:
            with httpx.Client(timeout=30) as http:  # waits until the dead request's claim is stale
                retry = refresh(restarted.base, client_id, old, http)
                assert retry.status_code == 200, retry.text
                pair = retry.json()
                assert fake.refreshes() == 2  # the one lost with the server, the one that finished it
                assert "finishing a refresh whose request ended without finishing it" in restarted.logs()
                ok = bearer_call(restarted.url, pair["access_token"])
                assert result_of(ok)["result"]["structuredContent"]["result"]["username"] == "alice@example.test"
                again = refresh(restarted.base, client_id, old, http)  # still the same pair
                assert again.status_code == 200 and again.json()["refresh_token"] == pair["refresh_token"]
                newer = refresh(restarted.base, client_id, pair["refresh_token"], http)
                assert newer.status_code == 200, newer.text
                assert bearer_call(restarted.url, newer.json()["access_token"]).status_code == 200
        finally:
            stop_server(restarted)


def _ignore_errors(fn, *args) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
        fn(*args)
