"""Payloads of one open edge shard's points kept in memory (bounded), so queries ask the engine for ids and scores
only: reading 100 payloads from a shard costs about as much CPU as the nearest-neighbour search itself."""

from __future__ import annotations

import itertools
import sys
import threading
from typing import Any, Iterable, Mapping

_SHORT = 48  # string values up to this length are interned: attribute values repeat across thousands of items


class PayloadCache:
    """Point key (the UUID's int) -> payload, at most `capacity` of them, the oldest stored dropped first.

    Stored as dicts whose keys and repeated short strings are interned (shared by the items of one catalogue):
    about 0.6 KB per fashion item against 2 KB as the engine hands them out, 27 MB for the 44k. Callers get a
    copy (dict.copy: 0.05 us against 0.6 us to build one from a tuple of values, which took 0.35 KB an item).
    Writes drop what they touch and bump `generation`; a reader that fetched payloads from the engine stores
    them only if no write came in between (`put(..., generation)`), so the cache never holds a stale payload.
    Lookups take no lock (a dict read is atomic); stores and drops do.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self.generation = 0
        self._items: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: int) -> dict[str, Any] | None:
        """A fresh dict of the payload (the caller may change it), None when not cached."""
        entry = self._items.get(key)
        return None if entry is None else entry.copy()

    def get_many(self, keys: Iterable[int]) -> list[dict[str, Any] | None]:
        """`get` of each key (one loop: a search asks for a few hundred)."""
        find = self._items.get
        return [None if (entry := find(k)) is None else entry.copy() for k in keys]

    def put(self, payloads: Mapping[int, Mapping[str, Any]], generation: int) -> None:
        """Store payloads read from the engine while `generation` was current (else nothing: a write came in)."""
        if not self.capacity or not payloads:
            return
        entries = {key: self._compact(p) for key, p in payloads.items()}
        with self._lock:
            if generation != self.generation:
                return
            self._items.update(entries)
            over = len(self._items) - self.capacity
            if over > 0:
                for key in list(itertools.islice(self._items, over)):
                    del self._items[key]

    def drop(self, keys: Iterable[int]) -> None:
        """Forget these points (they are being written or deleted)."""
        with self._lock:
            self.generation += 1
            for key in keys:
                self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._items.clear()

    @staticmethod
    def _compact(payload: Mapping[str, Any]) -> dict[str, Any]:
        return {sys.intern(str(k)): sys.intern(v) if type(v) is str and len(v) <= _SHORT else v
                for k, v in payload.items()}
