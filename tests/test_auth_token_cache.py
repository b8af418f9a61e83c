"""The per-process cache of verified access tokens and the revocation log that keeps it honest.

The end-to-end behaviour (a revocation at one server refused at once there and within the bound at
another; expiry; family revocation) is in test_auth_replicas.py, test_auth_flows.py and
test_resource_server.py; here are the bounds the cache itself promises, on a real grant store.
"""

from __future__ import annotations

import time

import anyio
import pytest

from sqlgate.auth.revocations import RevocationWatch
from sqlgate.auth.verified import VerifiedTokens, token_key
from tests.grant_backends import open_store


def test_entries_are_bounded_least_recently_used_first():
    cache = VerifiedTokens(max_entries=3)
    now = time.time()
    for name in ("a", "b", "c"):
        assert cache.put(token_key(name), name, now + 60)
    assert cache.get(token_key("a"), now) == "a"  # a is now the most recently used
    cache.put(token_key("d"), "d", now + 60)
    assert len(cache) == 3
    assert cache.get(token_key("b"), now) is None  # the least recently used went
    assert [cache.get(token_key(n), now) for n in ("a", "c", "d")] == ["a", "c", "d"]
    for i in range(100):
        cache.put(token_key(f"t{i}"), i, now + 60, family=f"f{i % 7}")
    assert len(cache) == 3


def test_an_entry_ends_at_its_expiry_to_the_second():
    cache = VerifiedTokens()
    exp = 1_000_000.0
    cache.put(token_key("tok"), "tok", exp)
    assert cache.get(token_key("tok"), exp) == "tok"
    assert cache.get(token_key("tok"), exp + 0.001) is None
    assert len(cache) == 0  # gone, not only hidden


def test_keys_are_hashes_of_the_token():
    key = token_key("secret-token")
    assert len(key) == 32 and b"secret-token" not in key


def test_a_family_is_dropped_whole_and_checks_begun_before_are_not_stored():
    cache = VerifiedTokens()
    now = time.time()
    cache.put(token_key("a1"), "a1", now + 60, family="A")
    cache.put(token_key("a2"), "a2", now + 60, family="A")
    cache.put(token_key("b1"), "b1", now + 60, family="B")
    begun = cache.epoch  # a check of another token of A starts (it reads the store: not revoked)…
    assert cache.drop_family("A") == 2  # …A is revoked meanwhile…
    assert not cache.put(token_key("a3"), "a3", now + 60, family="A", epoch=begun)  # …so it is not kept
    assert cache.get(token_key("a1"), now) is None and cache.get(token_key("a2"), now) is None
    assert cache.get(token_key("b1"), now) == "b1"
    assert cache.put(token_key("a3"), "a3", now + 60, family="A", epoch=cache.epoch)


def test_zero_entries_caches_nothing():
    cache = VerifiedTokens(max_entries=0)
    assert not cache.put(token_key("a"), "a", time.time() + 60)
    assert cache.get(token_key("a"), time.time()) is None


def test_revocations_by_another_process_are_seen_within_the_bound(backend):
    """Two stores on one SQLite file or PostgreSQL database stand for two processes."""
    ours, theirs = open_store(*backend), open_store(*backend)
    cache = VerifiedTokens()
    watch = RevocationWatch(ours, cache, max_staleness=1.0)

    async def scenario() -> None:
        assert await watch.current()  # the first read: where the log stands now
        now = time.time()
        cache.put(token_key("tok"), "tok", now + 60, family="fam", epoch=cache.epoch)
        theirs.revoke_family("fam", now + 600, now)
        assert await watch.current()  # read less than a second ago: the cache may still answer
        assert cache.get(token_key("tok"), time.time()) == "tok"
        await anyio.sleep(1.1)
        assert await watch.current()  # due: the log is read, the family dropped
        assert cache.get(token_key("tok"), time.time()) is None

    try:
        anyio.run(scenario)
    finally:
        ours.close()
        theirs.close()


def test_an_unreadable_store_makes_the_cache_unusable(tmp_path):
    """The store is gone once the bound has run out: the cache is not used (the request then takes
    the full path, which is answered 503), never trusted for longer."""
    from sqlgate.auth.grants.base import StateStoreUnavailable

    store = open_store("sqlite", str(tmp_path / "oauth.db"))
    watch = RevocationWatch(store, VerifiedTokens(), max_staleness=0.2)

    async def scenario() -> None:
        assert await watch.current()
        store.close()  # every read now fails as a closed database does
        with pytest.raises(StateStoreUnavailable):
            store.revocations_since(0, 10)
        await anyio.sleep(0.3)
        assert not await watch.current()

    anyio.run(scenario)
