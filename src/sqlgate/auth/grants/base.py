"""The grant store: every piece of OAuth state sqlgate issues, behind one small interface.

The operations that decide who wins a race are single SQL statements or single transactions in
the backend, never read-then-write in Python, so they hold across threads, processes and (with
PostgreSQL) machines:

- `consume_code` takes an authorization code away (`DELETE … RETURNING`) and, in the same
  transaction, remembers it as spent with the grant family it started: exactly one redemption
  wins; a later presentation is recognisable as a replay (RFC 6749 §4.1.2).
- A refresh token belongs to a *family* (one grant) with a generation counter. `rotate_refresh`
  is a compare-and-set on that counter (`UPDATE … WHERE generation = expected`), so exactly one
  of N concurrent refreshes of one token moves the family on; rows of older generations stay so
  that their reuse is detected and can revoke the family (RFC 9700 §4.14.2).
- `rotate_refresh` also seals the new token pair onto the row of the token it replaces (its
  *successor*), so a retry of that token within the grace window gets the same pair back — after a
  lost response or a crash — instead of nothing. While the provider is being asked (an upstream
  refresh) the family is *pending*: the pair is finished by `finish_rotation`, or undone.
- `revoke_family` is a marker that outlives the tokens it kills; it may even precede the
  family's first tokens (a code replayed while its winner is still issuing). In the same
  transaction it appends the family to a *revocation log* whose numbers grow in commit order, so
  a process caching verified tokens (auth/revocations.py) learns of every revocation made by any
  process with one cheap read of the entries after the last number it saw
  (`revocations_since`).

Alongside, a plain key-value table holds what FastMCP's OAuthProxy keeps (clients, transactions,
consent CSRF tokens, upstream token sets, JTI mappings), so one backend serves all of it.

Keys are SHA-256 hashes of codes and tokens (a copied database holds no usable code or token);
records are Fernet-encrypted JSON (`seal` / `unseal`).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class StateStoreUnavailable(Exception):
    """The state store could not be read or written (disk full, read-only, database down).

    Answered 503 (outage_http.py); noted for the request first, because some callers (FastMCP's
    token check) swallow exceptions and would otherwise answer 401 for a token that is fine."""

    def __init__(self, location: str, reason: str) -> None:
        from sqlgate.auth.outages import note

        super().__init__(f"OAuth state store {location} unavailable: {reason}")
        self.location, self.reason = location, reason
        note("store", str(self))


@dataclass(frozen=True)
class CodeRecord:
    family_id: str  # the grant family the code starts when redeemed
    record: dict[str, Any]  # decrypted payload (FastMCP's ClientCode)


@dataclass(frozen=True)
class RefreshRecord:
    family_id: str
    generation: int  # the generation this token was issued at
    current_generation: int  # the family's generation now
    revoked: bool
    rotated_at: float  # when the family last moved on (seconds since the epoch)
    expires_at: float
    record: dict[str, Any]  # decrypted payload (client_id, scopes, …)
    successor: dict[str, Any] | None = None  # the pair issued when this token was rotated
    pending_since: float | None = None  # the family's rotation is waiting for the provider since

    @property
    def is_current(self) -> bool:
        return not self.revoked and self.generation == self.current_generation


class GrantStore(ABC):
    """One backend (a file of its own). Methods are blocking; call them off the event loop."""

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet

    # ------------------------------------------------------------------ sealing
    def seal(self, record: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(record, separators=(",", ":")).encode()).decode("ascii")

    def unseal(self, sealed: str) -> dict[str, Any] | None:
        """The record, or None when it was written under another key (reads as missing)."""
        try:
            return json.loads(self._fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, ValueError):
            return None

    # ------------------------------------------------------------------ key-value (FastMCP's state)
    @abstractmethod
    def kv_get(self, collection: str, key: str, now: float) -> str | None:
        """The document unless missing or expired."""

    @abstractmethod
    def kv_put(self, collection: str, key: str, document: str, expires_at: float | None) -> None: ...

    @abstractmethod
    def kv_delete(self, collection: str, key: str) -> bool: ...

    @abstractmethod
    def kv_expire_unset(self, collection: str, expires_at: float) -> int:
        """Give every entry of `collection` stored without an expiry this one; the number changed."""

    # ------------------------------------------------------------------ authorization codes
    @abstractmethod
    def put_code(self, code_hash: str, family_id: str, sealed: str, expires_at: float) -> None: ...

    @abstractmethod
    def peek_code(self, code_hash: str, now: float) -> tuple[str, str] | None:
        """(family_id, sealed) of an unexpired, unspent code, without taking it."""

    @abstractmethod
    def take_code(self, code_hash: str, now: float, spent_until: float) -> tuple[str, str] | None:
        """Atomically delete the code and record it as spent; (family_id, sealed) for the one winner."""

    @abstractmethod
    def spent_code_family(self, code_hash: str, now: float) -> str | None:
        """The family a spent code started (for replay revocation), or None."""

    # ------------------------------------------------------------------ refresh families
    @abstractmethod
    def issue_family(self, family_id: str, expires_at: float,
                     refresh_hash: str | None, sealed: str | None, now: float) -> None:
        """Create the family at generation 1 with its first refresh token (if any).

        A family already marked revoked stays revoked (its tokens are dead on arrival)."""

    @abstractmethod
    def find_refresh(self, refresh_hash: str, now: float) -> tuple | None:
        """(family_id, generation, current_generation, revoked, rotated_at, expires_at, sealed,
        successor_sealed | None, pending_since | None)."""

    @abstractmethod
    def rotate_refresh(self, family_id: str, expected_generation: int, old_hash: str, refresh_hash: str,
                       sealed: str, expires_at: float, successor: str, pending: bool, now: float) -> int | None:
        """Compare-and-set: move the family from `expected_generation` to the next one, record the
        new refresh token and seal `successor` (the pair) onto the old token's row, in one
        transaction; `pending` marks the family as waiting for the provider. The new generation, or
        None if another request won (or the family is revoked)."""

    @abstractmethod
    def finish_rotation(self, family_id: str, generation: int, old_hash: str, successor: str) -> bool:
        """End the pending state of `generation` with the complete pair (one transaction)."""

    @abstractmethod
    def take_over_rotation(self, family_id: str, generation: int, pending_since: float, now: float) -> bool:
        """Compare-and-set on a stale pending rotation (its request died or gave up): the caller
        finishes it. False if someone else took it or it finished."""

    @abstractmethod
    def undo_rotation(self, family_id: str, generation: int, refresh_hash: str, old_hash: str) -> bool:
        """Step back from `generation` (won by this caller) when the refresh could not be
        completed, so the client may retry with the token it holds."""

    @abstractmethod
    def revoke_family(self, family_id: str, until: float, now: float) -> None: ...

    @abstractmethod
    def is_family_revoked(self, family_id: str, now: float) -> bool: ...

    @abstractmethod
    def revocations_since(self, after: int | None, limit: int) -> tuple[int, list[str] | None]:
        """Families revoked after log number `after`: (the newest number read, their ids in order).

        `after=None` asks only for the newest number (a reader starting now). Numbers grow in
        commit order — a reader that sees number n has seen every number below it — and are never
        reused, so nothing is missed. More than `limit` new entries: (the newest number, None),
        meaning "forget every cached token"."""

    # ------------------------------------------------------------------ rate limits
    @abstractmethod
    def count_hit(self, bucket: str, window_seconds: float, now: float) -> tuple[int, float]:
        """Count one hit in `bucket`'s fixed window, atomically (one upsert): (hits in the current
        window including this one, when that window started). A window older than
        `window_seconds` is restarted by the hit. Shared by every process using the store."""

    @abstractmethod
    def acquire_lease(self, bucket: str, lease_id: str, limit: int, expires_at: float, now: float) -> bool:
        """Take one of `limit` concurrent slots of `bucket`, atomically: expired leases of the
        bucket are dropped, the live ones counted and, below the limit, `lease_id` added — in one
        transaction, so N processes never hold more than `limit`. A lease expires on its own (the
        holder was killed), so a crash never keeps a slot forever."""

    @abstractmethod
    def release_lease(self, lease_id: str) -> None:
        """Give a slot back (a lease already expired and dropped is fine)."""

    # ------------------------------------------------------------------ upkeep
    @abstractmethod
    def delete_expired(self, now: float) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the state lives, for logs (a path, or a DSN without its password)."""

    # ------------------------------------------------------------------ typed conveniences
    def consume_code(self, code: str, now: float, spent_until: float) -> CodeRecord | None:
        taken = self.take_code(token_hash(code), now, spent_until)
        if taken is None:
            return None
        record = self.unseal(taken[1])
        return CodeRecord(taken[0], record) if record is not None else None

    def lookup_refresh(self, token: str, now: float) -> RefreshRecord | None:
        found = self.find_refresh(token_hash(token), now)
        if found is None:
            return None
        family_id, generation, current, revoked, rotated_at, expires_at, sealed, successor, pending = found
        record = self.unseal(sealed)
        if record is None:
            return None
        return RefreshRecord(family_id, generation, current, revoked, rotated_at, expires_at, record,
                             self.unseal(successor) if successor else None, pending)
