"""The grant store's atomic operations on both backends (a real SQLite file, a real PostgreSQL).

Races are real: every thread opens its own store (its own connection), and the two-process test
runs two OS processes against the same file or database.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sqlgate.auth.config import PersistenceConfig
from sqlgate.auth.grant_flow import refresh_verdict
from sqlgate.auth.grants.base import RefreshRecord, token_hash
from sqlgate.auth.store import open_state
from sqlgate.errors import ConfigError
from tests.conftest import ROOT
from tests.grant_backends import KEY, open_store, postgres_available, postgres_database


@pytest.fixture
def store(backend):
    s = open_store(*backend)
    yield s
    s.close()


def parallel(n: int, backend, work) -> list:
    """Run work(store, i) in n threads, each with its own store, released together."""
    stores = [open_store(*backend) for _ in range(n)]
    gate = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        gate.wait()
        results[i] = work(stores[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    return results


def issue(store, family="fam1", token="refresh-1", now=None):
    now = now or time.time()
    store.issue_family(family, now + 600, token_hash(token), store.seal({"client_id": "c1", "scopes": ["s"]}), now)


# ---------------------------------------------------------------------- codes
def test_one_of_many_threads_consumes_a_code(store, backend):
    now = time.time()
    store.put_code(token_hash("the-code"), "fam1", store.seal({"code": "the-code", "scopes": ["s"]}), now + 300)
    results = parallel(12, backend, lambda s, i: s.consume_code("the-code", time.time(), time.time() + 600))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert winners[0].family_id == "fam1" and winners[0].record == {"code": "the-code", "scopes": ["s"]}
    # spent: a later presentation finds the family it started, for replay revocation
    assert store.spent_code_family(token_hash("the-code"), time.time()) == "fam1"
    assert store.consume_code("the-code", time.time(), time.time() + 600) is None
    assert store.peek_code(token_hash("the-code"), time.time()) is None


def test_two_processes_never_both_consume_a_code(store, backend):
    n = 300
    now = time.time()
    for i in range(n):
        store.put_code(token_hash(f"code-{i}"), f"fam-{i}", store.seal({"i": i}), now + 300)
    start = time.time() + 4  # both racers are imported and connected by then
    procs = [subprocess.Popen([sys.executable, "-m", "tests.grant_backends", *backend, KEY, str(start), str(n)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    won = [set(out.split()) for out, _ in outputs]
    assert won[0].isdisjoint(won[1]), sorted(won[0] & won[1])[:5]
    assert won[0] | won[1] == {f"code-{i}" for i in range(n)}
    assert won[0] and won[1], "the processes did not actually race"


def test_expired_code_is_not_redeemable(store):
    now = time.time()
    store.put_code(token_hash("old"), "fam1", store.seal({}), now - 1)
    assert store.peek_code(token_hash("old"), now) is None
    assert store.consume_code("old", now, now + 600) is None
    assert store.spent_code_family(token_hash("old"), now) is None  # expiry is not a replay


# ---------------------------------------------------------------------- refresh families
OLD = token_hash("refresh-1")


def test_rotation_is_compare_and_set(store, backend):
    issue(store)
    results = parallel(12, backend, lambda s, i: s.rotate_refresh(
        "fam1", 1, OLD, token_hash(f"refresh-2-{i}"), s.seal({"client_id": "c1", "scopes": ["s"]}),
        time.time() + 600, s.seal({"refresh_token": f"refresh-2-{i}"}), False, time.time()))
    assert sorted(results, key=lambda r: r or 0) == [None] * 11 + [2]
    winner = results.index(2)
    now = time.time()
    assert store.lookup_refresh(f"refresh-2-{winner}", now).is_current
    for i in range(12):  # the losers' tokens were never recorded
        if i != winner:
            assert store.lookup_refresh(f"refresh-2-{i}", now) is None
    old = store.lookup_refresh("refresh-1", now)
    assert (old.generation, old.current_generation, old.is_current) == (1, 2, False)
    # the old token's row holds the winner's pair (sealed), for a retry within the grace window
    assert old.successor == {"refresh_token": f"refresh-2-{winner}"} and old.pending_since is None
    # a second rotation from the stale generation loses too
    assert store.rotate_refresh("fam1", 1, OLD, token_hash("x"), store.seal({}), now + 600, store.seal({}),
                                False, now) is None


def test_undo_rotation_gives_the_old_token_back(store):
    issue(store)
    now = time.time()
    assert store.rotate_refresh("fam1", 1, OLD, token_hash("refresh-2"), store.seal({}), now + 600,
                                store.seal({"refresh_token": "refresh-2"}), True, now) == 2
    assert store.undo_rotation("fam1", 2, token_hash("refresh-2"), OLD)
    old = store.lookup_refresh("refresh-1", now)
    assert old.is_current and old.successor is None and old.pending_since is None
    assert store.lookup_refresh("refresh-2", now) is None
    assert not store.undo_rotation("fam1", 2, token_hash("refresh-2"), OLD)  # only from the generation it won


def test_pending_rotation_is_finished_once_or_taken_over_once(store):
    """A rotation waiting for the provider: its pair is finished by its request — or, once that
    request is gone (a crash), taken over by exactly one retry (compare-and-set on the claim)."""
    issue(store)
    now = time.time()
    assert store.rotate_refresh("fam1", 1, OLD, token_hash("refresh-2"), store.seal({}), now + 600,
                                store.seal({"refresh_token": "refresh-2"}), True, now) == 2
    old = store.lookup_refresh("refresh-1", now)
    assert old.pending_since == now and old.successor == {"refresh_token": "refresh-2"}
    later = now + 30
    assert store.take_over_rotation("fam1", 2, old.pending_since, later)
    assert not store.take_over_rotation("fam1", 2, old.pending_since, later + 1)  # already taken
    assert store.lookup_refresh("refresh-1", later).pending_since == later
    assert store.finish_rotation("fam1", 2, OLD, store.seal({"refresh_token": "refresh-2", "access_token": "a"}))
    old = store.lookup_refresh("refresh-1", later)
    assert old.pending_since is None and old.successor["access_token"] == "a"
    assert not store.finish_rotation("fam1", 1, OLD, store.seal({}))  # a generation it does not hold


def test_revoked_family_cannot_rotate_and_says_so(store):
    issue(store)
    now = time.time()
    assert not store.is_family_revoked("fam1", now)
    store.revoke_family("fam1", now + 600, now)
    assert store.is_family_revoked("fam1", now)
    assert store.rotate_refresh("fam1", 1, OLD, token_hash("refresh-2"), store.seal({}), now + 600,
                                store.seal({}), False, now) is None
    assert store.lookup_refresh("refresh-1", now).revoked


def test_revocation_before_issue_wins(store):
    """A code replayed while its winner is still issuing: the family is born revoked."""
    now = time.time()
    store.revoke_family("fam1", now + 600, now)
    issue(store)
    assert store.is_family_revoked("fam1", now) and store.lookup_refresh("refresh-1", now).revoked


def test_revocation_log_is_read_from_where_a_reader_left_off(store):
    now = time.time()
    start, nothing = store.revocations_since(None, 10)  # a reader starting now: no history
    assert nothing == []
    store.revoke_family("fam1", now + 600, now)
    store.revoke_family("fam2", now + 600, now)
    after, families = store.revocations_since(start, 10)
    assert families == ["fam1", "fam2"] and after > start
    assert store.revocations_since(after, 10) == (after, [])  # nothing new: an empty read
    store.revoke_family("fam3", now + 600, now)
    assert store.revocations_since(after, 10)[1] == ["fam3"]
    # more new entries than the reader takes at once: "forget everything", and where to go on from
    newest, too_many = store.revocations_since(start, 2)
    assert too_many is None and newest == store.revocations_since(None, 10)[0]


def test_revocation_numbers_never_go_back_after_cleanup(store):
    """Cleaning up expired entries must not hand their numbers out again: a reader past them would
    never see the new revocation."""
    now = time.time()
    store.revoke_family("old", now - 1, now - 700)
    seen = store.revocations_since(None, 10)[0]
    assert store.delete_expired(now) >= 1
    store.revoke_family("new", now + 600, now)
    assert store.revocations_since(seen, 10)[1] == ["new"]


def test_concurrent_revocations_are_all_read(backend):
    """Revocations from many connections at once: a reader polling all the while misses none (the
    numbers are handed out in commit order, so reading past a number never skips an earlier one)."""
    reader = open_store(*backend)
    after = reader.revocations_since(None, 1000)[0]
    seen: list[str] = []
    done = threading.Event()

    def poll() -> None:
        nonlocal after
        while True:
            finished = done.is_set()
            after, families = reader.revocations_since(after, 1000)
            seen.extend(families)
            if finished:
                return

    poller = threading.Thread(target=poll)
    poller.start()
    now = time.time()
    parallel(8, backend, lambda s, i: [s.revoke_family(f"f{i}-{j}", now + 600, now) for j in range(10)])
    done.set()
    poller.join(60)
    reader.close()
    assert sorted(seen) == sorted(f"f{i}-{j}" for i in range(8) for j in range(10))


def test_reuse_verdicts():
    def found(generation, current, rotated_ago, revoked=False):
        return RefreshRecord("f", generation, current, revoked, 1000 - rotated_ago, 2000, {})

    assert refresh_verdict(found(3, 3, 50), 1000, 2) == "current"
    assert refresh_verdict(found(2, 3, 0.5), 1000, 2) == "race"  # a concurrent refresh lost
    assert refresh_verdict(found(2, 3, 5), 1000, 2) == "reuse"  # a replay: revoke the family
    assert refresh_verdict(found(1, 3, 0.5), 1000, 2) == "reuse"  # two generations back is never a race
    assert refresh_verdict(found(3, 3, 0, revoked=True), 1000, 2) == "revoked"


# ---------------------------------------------------------------------- at rest, upkeep
def test_records_are_sealed_and_keys_are_hashes(store, backend):
    now = time.time()
    store.put_code(token_hash("code-secret"), "fam1", store.seal({"idp": "upstream-secret"}), now + 300)
    issue(store, token="refresh-secret")
    kind, location = backend
    if kind == "sqlite":
        raw = b"".join(p.read_bytes() for p in Path(location).parent.iterdir())
    else:
        import psycopg

        with psycopg.connect(location) as con:
            raw = repr([con.execute(f"SELECT * FROM sqlgate_oauth_{t}").fetchall()
                        for t in ("codes", "refresh_tokens", "families")]).encode()
    for secret in (b"code-secret", b"upstream-secret", b"refresh-secret"):
        assert secret not in raw


def test_wrong_key_reads_records_as_missing(store, backend):
    issue(store)
    other = open_store(*backend, key="another key")
    assert other.lookup_refresh("refresh-1", time.time()) is None
    other.close()


def test_expired_rows_are_cleaned_up(store):
    now = time.time()
    store.put_code(token_hash("a"), "f", store.seal({}), now - 1)
    store.kv_put("c", "k", "{}", now - 1)
    store.kv_put("c", "keep", "{}", None)
    issue(store, family="gone", token="r-gone", now=now - 700)
    assert store.delete_expired(now) == 4  # the code, the kv row, the family and its refresh token
    assert store.kv_get("c", "keep", now) == "{}"


# ---------------------------------------------------------------------- opening
def test_sqlite_file_and_directory_are_private(tmp_path):
    state = open_state(PersistenceConfig(path=str(tmp_path / "d" / "oauth.db"), encryption_key="k"))
    state.close()
    assert (tmp_path / "d" / "oauth.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700


def test_unopenable_sqlite_path_names_path_and_fix(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    bad = tmp_path / "file" / "oauth.db"
    with pytest.raises(ConfigError) as err:
        open_state(PersistenceConfig(path=str(bad), encryption_key="k"))
    assert str(bad) in err.value.message and "SQLGATE_AUTH_STATE_PATH" in err.value.message


def test_unreachable_postgres_names_dsn_without_password_and_fix():
    dsn = "postgresql://sqlgate:hunter2@127.0.0.1:1/oauth"
    with pytest.raises(ConfigError) as err:
        open_state(PersistenceConfig(type="postgres", dsn=dsn, encryption_key="k"))
    message = err.value.message
    assert "127.0.0.1" in message and "port=1" in message and "hunter2" not in message
    assert "SQLGATE_AUTH_PERSISTENCE_DSN" in message


def test_postgres_needs_dsn_and_shared_key():
    with pytest.raises(ValueError, match="needs dsn and encryption_key"):
        PersistenceConfig(type="postgres")
    with pytest.raises(ValueError, match="only used with type postgres"):
        PersistenceConfig(dsn="postgresql://x@y/z")


@pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432")
async def test_postgres_state_serves_fastmcp_kv_encrypted():
    with postgres_database() as dsn:
        state = open_state(PersistenceConfig(type="postgres", dsn=dsn, encryption_key="shared key"))
        await state.kv.put("client-1", {"token": "gho_supersecret"}, collection="c")
        assert await state.kv.get("client-1", collection="c") == {"token": "gho_supersecret"}
        second = open_state(PersistenceConfig(type="postgres", dsn=dsn, encryption_key="shared key"))
        assert await second.kv.get("client-1", collection="c") == {"token": "gho_supersecret"}  # another replica
        import psycopg

        with psycopg.connect(dsn) as con:
            assert "gho_supersecret" not in repr(con.execute("SELECT * FROM sqlgate_oauth_kv").fetchall())
        state.close()
        second.close()


async def test_memory_state_has_the_same_semantics():
    state = open_state(PersistenceConfig(type="memory"))
    await state.kv.put("client-1", {"name": "x"}, collection="c")
    assert await state.kv.get("client-1", collection="c") == {"name": "x"}
    now = time.time()
    state.grants.put_code(token_hash("c"), "fam", state.grants.seal({"v": 1}), now + 60)
    assert state.grants.consume_code("c", now, now + 60).record == {"v": 1}
    assert state.grants.consume_code("c", now, now + 60) is None
    state.close()


def test_rate_window_counts_every_hit_once_under_concurrency(backend):
    """The registration rate limit's counter: 12 threads, 5 hits each, each its own connection, at one
    bucket → the hits are numbered 1…60 with no gap or duplicate; a new window starts over."""
    now = time.time()
    counts = parallel(12, backend, lambda s, i: [s.count_hit("dcr:203.0.113.7", 60, now)[0] for _ in range(5)])
    assert sorted(c for batch in counts for c in batch) == list(range(1, 61))
    s = open_store(*backend)
    try:
        assert s.count_hit("dcr:198.51.100.1", 60, now) == (1, now), "buckets are independent"
        later = now + 61
        assert s.count_hit("dcr:203.0.113.7", 60, later) == (1, later), "an old window restarts"
        assert s.delete_expired(later + 120) >= 2, "finished windows are cleaned up"
        assert s.count_hit("dcr:203.0.113.7", 60, later + 120) == (1, later + 120)
    finally:
        s.close()


def test_entries_without_expiry_can_be_given_one(store):
    now = time.time()
    store.kv_put("clients", "old", "{}", None)
    store.kv_put("clients", "new", "{}", now + 600)
    store.kv_put("other", "x", "{}", None)
    assert store.kv_expire_unset("clients", now + 5) == 1
    assert store.kv_get("clients", "old", now + 4) == "{}" and store.kv_get("clients", "old", now + 6) is None
    assert store.kv_get("clients", "new", now + 6) == "{}" and store.kv_get("other", "x", now + 6) == "{}"
    assert store.kv_expire_unset("clients", now + 5) == 0


def test_sqlite_file_from_before_the_grace_window_is_upgraded(tmp_path):
    """A state file written before pairs were kept gains the new columns at start; its refresh
    tokens keep working (a replaced one within the grace window is refused, not replayed)."""
    import sqlite3

    from sqlgate.auth.grants.sqlite import _SCHEMA, SqliteGrantStore
    from sqlgate.auth.store import fernet_for

    path = tmp_path / "old.db"
    old_schema = _SCHEMA.replace(",\n    pending_since REAL", "").replace(",\n    successor  TEXT", "")
    assert "successor" not in old_schema and "pending_since" not in old_schema
    with sqlite3.connect(path) as con:
        con.executescript(old_schema)
    store = SqliteGrantStore(path, fernet_for("k"))
    try:
        issue(store)
        found = store.lookup_refresh("refresh-1", time.time())
        assert found.is_current and found.successor is None and found.pending_since is None
    finally:
        store.close()


def test_a_full_sqlite_database_is_an_outage_not_a_bug(tmp_path):
    """SQLite's own "database or disk is full" (the file may not grow: max_page_count) becomes
    StateStoreUnavailable naming the file and the likely causes, and the store keeps working for
    what fits (the failed transaction was rolled back, not left open)."""
    from sqlgate.auth.grants.base import StateStoreUnavailable
    from sqlgate.auth.grants.sqlite import SqliteGrantStore
    from sqlgate.auth.store import fernet_for

    path = tmp_path / "full.db"
    store = SqliteGrantStore(path, fernet_for("k"))
    try:
        pages = store._con.execute("PRAGMA page_count").fetchone()[0]
        store._con.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StateStoreUnavailable) as caught:
            store.kv_put("clients", "big", "x" * 200_000, None)
        assert str(path) in str(caught.value) and "database or disk is full" in str(caught.value)
        assert "is the disk full" in str(caught.value)
        assert not store._con.in_transaction
        assert store.kv_get("clients", "big", time.time()) is None
        store._con.execute("PRAGMA max_page_count = 1073741823")
        store.kv_put("clients", "big", "x" * 200_000, None)  # room again: it works
        assert store.kv_get("clients", "big", time.time())
    finally:
        store.close()
