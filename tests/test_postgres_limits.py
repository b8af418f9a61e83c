"""Limits on PostgreSQL: one deadline per call (waiting included), a per-caller share of the pool,
and an outage of a private cluster answered with "database unavailable" within the deadline, with
recovery once the database is back, without restarting sqlgate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from sqlgate.config.loader import load_project
from sqlgate.engine import Limits, open_engine
from sqlgate.engine.postgres_identity import install
from sqlgate.errors import ConfigError, DatabaseUnavailable, QueryTimeout
from tests.conftest import free_port, isolated_env
from tests.test_postgres import IDENTITY_KEY, LIMITS, _as, _engine, active, pg_database, running
from tests.test_postgres import pytestmark as _pg_only

pytestmark = _pg_only
SLOW = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=15)
TWO_SECONDS = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=2)


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        yield info


async def _timed(coro):
    started = time.monotonic()
    try:
        return await coro, time.monotonic() - started
    except Exception as exc:  # the test inspects what was raised
        return exc, time.monotonic() - started


async def test_queued_call_keeps_its_own_deadline(pg):
    engine = _engine(pg, {"SQLGATE_DB_POOL_SIZE": "2"})
    try:
        # two callers take the whole pool for 4 s (endpoint SQL: the query tool refuses pg_sleep)
        hogs = [asyncio.create_task(engine.execute("SELECT pg_sleep(4)", None, _as(n), SLOW)) for n in ("u1", "u2")]
        await running(pg, "pg_sleep(4)", 2)
        result, took = await _timed(engine.run_untrusted("SELECT 1", _as("carol"), TWO_SECONDS))
        assert isinstance(result, QueryTimeout) and "not started within the 2 s" in str(result)
        assert 1.8 < took < 2.6
        # a queued call that gets its turn in time runs with what is left of its deadline
        await asyncio.gather(*hogs)
        hogs = [asyncio.create_task(engine.execute("SELECT pg_sleep(1)", None, _as(n), SLOW)) for n in ("u1", "u2")]
        await running(pg, "pg_sleep(1)", 2)
        result, took = await _timed(engine.execute("SELECT pg_sleep(5)", None, _as("carol"), TWO_SECONDS))
        assert isinstance(result, QueryTimeout) and "ran longer than the 2 s" in str(result)
        assert took < 2.6  # statement_timeout was the time left, not a fresh 2 s
        await asyncio.gather(*hogs)
        result, took = await _timed(engine.run_untrusted("SELECT 1", _as("carol"), TWO_SECONDS))
        assert result.rows == [[1]] and took < 1
    finally:
        await engine.close()


async def test_one_caller_cannot_take_the_whole_pool(pg):
    engine = _engine(pg, {"SQLGATE_DB_POOL_SIZE": "4"})  # per caller: 2
    try:
        greedy = [asyncio.create_task(_timed(engine.execute("SELECT pg_sleep(1.5)", None, _as("alice"), SLOW)))
                  for _ in range(6)]
        await running(pg, "pg_sleep(1.5)", 2)  # alice's share of the pool
        result, took = await _timed(engine.run_untrusted("SELECT 1", _as("bob"), TWO_SECONDS))
        assert result.rows == [[1]] and took < 1.0  # not behind alice's 1.5 s waves
        finished = sorted(t for _, t in await asyncio.gather(*greedy))
        assert finished[-1] > 4  # alice's six ran two at a time: three waves
    finally:
        await engine.close()


class PrivateCluster:
    """A throw-away PostgreSQL (initdb + pg_ctl) on a free port, never the shared one."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="sqlgate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._user = None if os.geteuid() != 0 else "postgres"  # initdb refuses to run as root
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", self._user, "--", *args] if self._user else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    c = PrivateCluster()
    try:
        c.init()
        c.start()
        with psycopg.connect(c.admin, autocommit=True) as admin:
            admin.execute("CREATE ROLE svc LOGIN")
        install(c.admin, IDENTITY_KEY)
        yield c
    finally:
        c.remove()


async def test_outage_answers_database_unavailable_and_recovers(pg, cluster, tmp_path, caplog):
    project = tmp_path / "project"
    shutil.copytree(pg["project"], project)
    yml = (project / "sqlgate.yml").read_text().replace(pg["dsn"], f"postgresql://svc@127.0.0.1:{cluster.port}/postgres")
    (project / "sqlgate.yml").write_text(yml)
    engine = open_engine(load_project(project, env=isolated_env(tmp_path)))
    try:
        assert (await engine.run_untrusted("SELECT 1", _as("alice"), TWO_SECONDS)).rows == [[1]]
        cluster.stop()
        with caplog.at_level(logging.INFO):
            for _ in range(3):  # the broken pooled connection, then no connection at all
                result, took = await _timed(engine.run_untrusted("SELECT 1", _as("alice"), TWO_SECONDS))
                assert isinstance(result, DatabaseUnavailable), result
                assert str(result).startswith("database unavailable") and took < 2.5
            assert "connection failed" in str(result)  # the reason the pool could not connect
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        cluster.start()
        started = time.monotonic()
        while True:  # the pool reconnects on its own
            result, _ = await _timed(engine.run_untrusted("SELECT sqlgate.username() AS u", _as("alice"),
                                                          TWO_SECONDS))
            if not isinstance(result, Exception):
                break
            assert isinstance(result, DatabaseUnavailable) and time.monotonic() - started < 30
            await asyncio.sleep(0.2)
        assert result.rows == [["alice"]]
        print(f"\nrecovered {time.monotonic() - started:.1f} s after the restart")
    finally:
        await engine.close()
    # start-up with the database down: a prompt, readable refusal (not a 30 s hang)
    cluster.stop()
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot connect to PostgreSQL"):
        open_engine(load_project(project, env=isolated_env(tmp_path)))
    assert time.monotonic() - started < 6


async def test_huge_result_is_cut_while_streaming(pg):
    """100 000 rows of 1 MB each would be 100 GB: the stream stops at the byte limit and the statement
    is cancelled, so neither sqlgate's memory nor the call's time follows the result's size."""
    engine = _engine(pg)
    try:
        limits = Limits(max_rows=1000, max_bytes=3_500_000, timeout_seconds=20)
        result, took = await _timed(engine.run_untrusted(
            "SELECT g, repeat('x', 1000000) AS big FROM generate_series(1, 100000) g", _as("alice"), limits))
        # max_bytes is the whole message: a 1 MB row weighs 2 MB there (text + structuredContent)
        assert result.truncated and result.truncated_by == "max_bytes" and len(result.rows) == 1
        assert took < 5
        assert (await engine.run_untrusted("SELECT 1", _as("alice"), LIMITS)).rows == [[1]]  # connection fine
    finally:
        await engine.close()


async def test_abandoned_call_stops_its_statement_on_the_server(pg):
    """A call cancelled mid-statement (the client went away) does not leave its query running on the
    server until statement_timeout (psycopg's row stream cancels it as it is closed; the engine's
    _finish covers the rest) and the engine keeps serving."""
    engine = _engine(pg)
    marker = "abandoned_" + pg["tag"]
    try:
        task = asyncio.create_task(engine.execute(f"SELECT pg_sleep(10) AS {marker}", None, _as("alice"), SLOW))
        await running(pg, f"AS {marker}", 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the statement ends on the server soon after, long before its 10 s
        deadline = time.monotonic() + 5
        while await active(pg, f"AS {marker}"):
            assert time.monotonic() < deadline, "the abandoned statement still runs on the server"
            await asyncio.sleep(0.05)
        assert (await engine.run_untrusted("SELECT 1", _as("alice"), LIMITS)).rows == [[1]]
    finally:
        await engine.close()
