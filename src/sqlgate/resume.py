"""Resumable SSE streams: a GET with `Last-Event-ID` replays what the client missed.

Without an event store the mcp SDK answers such a GET with nothing at all (HTTP 500). This store
keeps recent events in memory under one byte budget for the whole server (oldest dropped first),
so a client that opens many streams or receives large results cannot grow the server: an event
that has been dropped simply is not replayed. An unknown or dropped event id gets an empty stream
(the SDK's behaviour), which tells the client to carry on without a replay.

FastMCP scopes stream ids per session (SessionScopedEventStore), so one session cannot replay
another's events.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage, JSONRPCResponse
from pydantic import TypeAdapter

from sqlgate.answers import encode_bytes

_message = TypeAdapter(JSONRPCMessage)


def serialize(message: JSONRPCMessage) -> bytes:
    """The message as JSON. A response's `result` is a plain dict of JSON values already (the SDK
    dumped it), so it is encoded directly: pydantic's dump of a union re-walks every value of a
    1,000-row answer (6 % of the server's time on big answers)."""
    if type(message) is JSONRPCResponse and isinstance(message.result, dict):
        return encode_bytes({"jsonrpc": message.jsonrpc, "id": message.id, "result": message.result})
    return _message.dump_json(message, by_alias=True, exclude_none=True)


class BoundedEventStore(EventStore):
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        # event id -> (stream id, serialized message or None for a priming event), oldest first
        self._events: OrderedDict[str, tuple[str, bytes | None]] = OrderedDict()
        self._streams: dict[str, deque[str]] = {}

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = uuid.uuid4().hex
        data = None if message is None else serialize(message)
        size = len(data or b"") + 100  # ids and bookkeeping
        if size > self.max_bytes:
            return event_id  # larger than the whole budget: not kept, so not replayable
        while self.used + size > self.max_bytes and self._events:
            self._drop_oldest()
        self._events[event_id] = (stream_id, data)
        self._streams.setdefault(stream_id, deque()).append(event_id)
        self.used += size
        return event_id

    def _drop_oldest(self) -> None:
        _, (stream_id, data) = self._events.popitem(last=False)
        self.used -= len(data or b"") + 100
        ids = self._streams.get(stream_id)
        if ids:
            ids.popleft()  # events are stored in order, so a stream's oldest is the server's oldest
            if not ids:
                del self._streams[stream_id]

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        entry = self._events.get(last_event_id)
        if entry is None:
            return None
        stream_id = entry[0]
        ids = list(self._streams.get(stream_id, ()))
        for event_id in ids[ids.index(last_event_id) + 1:]:
            stored = self._events.get(event_id)
            if stored is not None and stored[1] is not None:
                await send_callback(EventMessage(_message.validate_json(stored[1]), event_id))
        return stream_id
