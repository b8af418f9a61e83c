"""The SQLite OAuth state store: private file, encryption at rest, expiry and cleanup, restarts."""

from __future__ import annotations

import os
import time

import pytest

from sqlgate.auth.config import PersistenceConfig
from sqlgate.auth.store import open_state
from sqlgate.errors import ConfigError


async def test_values_are_encrypted_private_and_survive_reopen(tmp_path):
    cfg = PersistenceConfig(path=str(tmp_path / "state" / "oauth.db"))
    state = open_state(cfg)
    await state.kv.put("client-1", {"token": "gho_supersecret", "email": "alice@example.test"}, collection="c")
    state.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.name.startswith("oauth.db"))
    assert b"gho_supersecret" not in raw and b"alice@example.test" not in raw
    for name in ("oauth.db", "oauth.db.key"):
        assert (os.stat(tmp_path / "state" / name).st_mode & 0o777) == 0o600
    assert (os.stat(tmp_path / "state").st_mode & 0o777) == 0o700
    reopened = open_state(cfg)  # same generated key file: still readable
    assert await reopened.kv.get("client-1", collection="c") == {"token": "gho_supersecret",
                                                                  "email": "alice@example.test"}
    reopened.close()


async def test_expired_rows_are_invisible_and_cleaned_up(tmp_path):
    state = open_state(PersistenceConfig(path=str(tmp_path / "oauth.db"), encryption_key="a passphrase"))
    await state.kv.put("short", {"v": 1}, collection="codes", ttl=0.2)
    await state.kv.put("long", {"v": 2}, collection="codes", ttl=600)
    time.sleep(0.3)
    assert await state.kv.get("short", collection="codes") is None
    assert state.cleanup() == 1
    assert await state.kv.get("long", collection="codes") == {"v": 2}
    state.close()


async def test_wrong_key_reads_nothing_instead_of_garbage(tmp_path):
    path = str(tmp_path / "oauth.db")
    first = open_state(PersistenceConfig(path=path, encryption_key="key one"))
    await first.kv.put("k", {"v": 1}, collection="c")
    first.close()
    second = open_state(PersistenceConfig(path=path, encryption_key="key two"))
    assert await second.kv.get("k", collection="c") is None
    second.close()


def test_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "oauth.db.key"
    key.write_text("x")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        open_state(PersistenceConfig(path=str(tmp_path / "oauth.db")))
