"""Access tokens this process has already verified, so a client's next call skips the work.

- Keyed by the SHA-256 of the token: the token itself is never a key (nor in anything a log or a
  heap dump would show by name), and a key is 32 bytes whatever the token's size.
- An entry lives until `until` (the token's expiry, or earlier: whatever bounds how long the
  verification stays true) and is checked against the clock on every use; the HTTP layer checks
  the token's `exp` on every request besides.
- Bounded: least recently used entries go first once `max_entries` are held.
- Invalidation: entries may name a grant family; `drop_family` removes every entry of it, and
  bumps `epoch`. A verification that started before an invalidation must not be stored after it
  (it may have read the store before the revocation): `put(..., epoch=...)` with the epoch read
  when the verification began is refused if anything was invalidated since.

Used from the event loop only (no locking).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

DEFAULT_MAX_ENTRIES = 4096


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Entry(NamedTuple):
    value: Any  # an AccessToken, shared by every request that presents the token: never mutate it
    until: float  # seconds since the epoch
    family: str | None


class VerifiedTokens:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._families: dict[str, set[bytes]] = {}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now > entry.until:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def get(self, key: bytes, now: float) -> Any:
        entry = self.lookup(key, now)
        return None if entry is None else entry.value

    def put(self, key: bytes, value: Any, until: float, *, family: str | None = None,
            epoch: int | None = None) -> bool:
        """Store a verified token; False when refused (caching off, an invalidation since `epoch`)."""
        if self.max_entries <= 0 or (epoch is not None and epoch != self.epoch):
            return False
        if key in self._entries:
            self._remove(key)
        while len(self._entries) >= self.max_entries:
            self._remove(next(iter(self._entries)))
        self._entries[key] = Entry(value, until, family)
        if family is not None:
            self._families.setdefault(family, set()).add(key)
        return True

    def drop_family(self, family: str) -> int:
        """Forget every token of a grant family; the number forgotten."""
        self.epoch += 1
        keys = self._families.pop(family, set())
        for key in keys:
            self._entries.pop(key, None)
        return len(keys)

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._families.clear()

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        if entry.family is not None:
            keys = self._families.get(entry.family)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._families[entry.family]
