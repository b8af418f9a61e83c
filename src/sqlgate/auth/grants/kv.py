"""FastMCP's key-value interface (py-key-value `AsyncKeyValue`) on a grant store's kv table.

The OAuthProxy keeps clients, transactions, consent CSRF tokens, upstream token sets and JTI
mappings through this; wrapped in FernetEncryptionWrapper, values are encrypted at rest.
"""

from __future__ import annotations

import time

import anyio
from key_value.aio._utils.managed_entry import ManagedEntry
from key_value.aio.errors import DeserializationError
from key_value.aio.stores.base import BaseStore

from sqlgate.auth.grants.base import GrantStore


class GrantKeyValue(BaseStore):
    def __init__(self, grants: GrantStore) -> None:
        super().__init__(stable_api=True)
        self.grants = grants

    async def _get_managed_entry(self, *, key: str, collection: str) -> ManagedEntry | None:
        document = await anyio.to_thread.run_sync(self.grants.kv_get, collection, key, time.time())
        if document is None:
            return None
        try:
            return self._serialization_adapter.load_json(document)
        except DeserializationError:
            return None

    async def _put_managed_entry(self, *, key: str, collection: str, managed_entry: ManagedEntry) -> None:
        document = self._serialization_adapter.dump_json(entry=managed_entry, key=key, collection=collection)
        expires = managed_entry.expires_at.timestamp() if managed_entry.expires_at else None
        await anyio.to_thread.run_sync(self.grants.kv_put, collection, key, document, expires)

    async def _delete_managed_entry(self, *, key: str, collection: str) -> bool:
        return await anyio.to_thread.run_sync(self.grants.kv_delete, collection, key)
