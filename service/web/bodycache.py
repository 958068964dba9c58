"""Bodies encoded once for every coalesced request that shares their collection."""

from __future__ import annotations

from collections import deque

from service.core import Answer
from service.web import formats


class BodyCache:
    """Encodes each collection's body once, however many requests share it.

    Coalesced requests receive the very same Answer object; the cache holds
    the last few by identity (a collection is never mutated once made). It is
    bounded by bytes, not only by count: an entry keeps its collection's rows
    alive, so a large answer is never kept, and the small ones it is for (a
    coalesced group shares one body) stay within ``MAX_BYTES`` in all.
    """

    SIZE = 8
    #: Largest body kept. Coalescing pays off for the many small, identical
    #: answers of a busy service; a large answer is encoded once per request.
    MAX_BODY = 64 * 1024
    #: Bodies kept in all (their rows take a few times as much again).
    MAX_BYTES = 256 * 1024

    def __init__(self) -> None:
        self._entries: deque[tuple[Answer, bytes]] = deque()
        self._bytes = 0

    def rows_json(self, collection: Answer) -> bytes:
        """The bare-list body of ``collection``."""
        for cached, body in self._entries:
            if cached is collection:
                return body
        body = formats.rows_json(collection.rows)
        if len(body) <= self.MAX_BODY:
            self._entries.append((collection, body))
            self._bytes += len(body)
            while len(self._entries) > self.SIZE or self._bytes > self.MAX_BYTES:
                self._bytes -= len(self._entries.popleft()[1])
        return body

    @property
    def held_bytes(self) -> int:
        """Bytes of the bodies kept now."""
        return self._bytes
