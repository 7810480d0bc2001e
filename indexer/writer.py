"""Item writes on the live index: embed outside the write lock, then log (fsync'd) and apply under it, in log order.

One ItemWriter per process (the service, or `vitrina upsert`/`delete` when no service runs). Under the lock it
first brings the collection behind the alias up to the end of the change log (after a crash, or when a reindex
has just moved the alias), so every write lands after all earlier ones, in whichever collection is live. Each write
is announced to the other processes (ChangeLog.announce). In a worker of `vitrina serve --workers N` on the
embedded store the writer's store is the worker's own copy (indexer/replica.py): the copy applies the entries from
the log, and the collection behind the alias is left to the recovery at the service's start and stop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from indexer.changelog import Change, ChangeLog
from indexer.embed import Embedder
from indexer.items import ItemError, ItemInput, item_id_of, parse_item, parse_patch
from indexer.live import live_collection
from indexer.replay import Embedders, embed_items, replay_log
from indexer.replica import ReplicaStore
from search.store.interface import Hit, ItemRecord, Store, plain_payload
from vitrina.config import Config
from vitrina.errors import StoreError

log = logging.getLogger(__name__)
VECTOR_TOLERANCE = 1e-3  # an item embedded again with the same models may differ by float noise


@dataclass(frozen=True)
class ItemResult:
    """The fate of one item of a write: created, updated, unchanged, deleted or error (with why and the HTTP
    status the item alone would get)."""

    id: str
    status: str
    error: str | None = None
    detail: str | None = None
    code: int = 200

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "error": self.error}
        if self.status == "error":
            out.update(detail=self.detail or "", code=self.code)
        return out


def failed(item_id: str, e: ItemError | Exception, code: int = 400) -> ItemResult:
    message = getattr(e, "message", str(e))
    return ItemResult(item_id, "error", message, getattr(e, "detail", None), getattr(e, "status", code))


def _same(record: ItemRecord, hit: Hit) -> bool:
    if plain_payload(record) != hit.payload or set(record.vectors) != set(hit.vectors):
        return False
    return all(np.max(np.abs(np.asarray(v, np.float32) - hit.vectors[k])) <= VECTOR_TOLERANCE
               for k, v in record.vectors.items())


class ItemWriter:
    """Writes items through the change log into the collection behind [store].alias (thread-safe)."""

    def __init__(self, cfg: Config, store: Store, changelog: ChangeLog | None = None) -> None:
        self.cfg, self.store = cfg, store
        self.log = changelog or ChangeLog.for_config(cfg)
        self._own_log = changelog is None
        # a worker's own copy of the live collection: it applies the log itself (indexer/replica.py)
        self.follower = store.replica if isinstance(store, ReplicaStore) else None
        self.embedders = self.follower.embedders if self.follower is not None else Embedders(cfg, store)
        self._applied: dict[str, int] = {}  # collection -> last seq this process applied to it
        self._durable: dict[str, int] = {}  # collection -> last seq recorded as flushed (the checkpoint)
        self._checkpointing = threading.Lock()
        self._checkpoint_at = time.monotonic()
        self.durable_writes = cfg.store.backend != "edge"  # a Qdrant server persists a write before answering

    # ---- models -------------------------------------------------------------------------------------
    def embedder(self, collection: str) -> Embedder:
        """The encoders for items of `collection` (with the image tower when it holds image vectors)."""
        return self.embedders(collection)

    # ---- the log ------------------------------------------------------------------------------------
    def _catch_up(self) -> str:
        """Under the lock: the live collection, after applying the log entries it may lack."""
        if self.follower is not None:
            return self.follower.follow()
        target = live_collection(self.cfg, self.store)
        recorded = self.log.applied(target)
        top = self.log.max_seq()
        if recorded is None and target not in self._applied:
            log.info("collection %s has no change-log checkpoint: taken as current at seq %d", target, top)
            self.log.set_applied(target, top)
            self._applied[target] = self._durable[target] = top
            return target
        done = max(recorded or 0, self._applied.get(target, 0))
        if top > done:
            stats = replay_log(self.store, target, self.log, done, top, self.embedders)
            log.info("applied %d logged change(s) (seq %d..%d) to %s", stats.applied, done + 1, top, target)
        self._applied[target] = top
        return target

    def _write(self, target: str, changes: list[Change], apply: Callable[[], Any]) -> None:
        """Under the lock: log the changes (fsync'd), apply them to `target`, announce them to other processes."""
        seq = self.log.append(changes)
        if self.follower is not None:
            self.follower.follow(until=seq)  # the worker's copy applies them from the log, in order
        else:
            apply()
            self._applied_through(target, seq)
        self.log.announce(seq)

    def _applied_through(self, collection: str, seq: int) -> None:
        self._applied[collection] = max(seq, self._applied.get(collection, 0))
        if self.durable_writes:
            self.log.set_applied(collection, seq)
            self._durable[collection] = seq

    def checkpoint(self, force: bool = False) -> None:
        """Flush written collections and record how far they have applied the log (at most every [live].flush_s
        unless forced; never blocks writers: another thread's checkpoint in progress is enough)."""
        if self.follower is not None:  # a worker's copy: the log is what is durable
            return
        if not force and time.monotonic() - self._checkpoint_at < self.cfg.live.flush_s:
            return
        if not self._checkpointing.acquire(blocking=force):
            return
        try:
            self._checkpoint_at = time.monotonic()
            live = self.store.get_alias(self.cfg.store.alias)
            for collection, seq in list(self._applied.items()):
                if collection != live:  # a reindex moved the alias on: its replay covered this one's writes
                    self._applied.pop(collection, None)
                    self._durable.pop(collection, None)
                elif seq > self._durable.get(collection, -1):
                    self.store.flush(collection)
                    self.log.set_applied(collection, seq)
                    self._durable[collection] = seq
        finally:
            self._checkpointing.release()

    def warm(self) -> None:
        """Load the encoders a first write needs now (e.g. before serving)."""
        self.embedder(live_collection(self.cfg, self.store))

    def recover(self) -> str:
        """Bring the live collection up to the end of the log now (e.g. at start, after a crash)."""
        with self.log.locked():
            target = self._catch_up()
        self.checkpoint(force=True)
        return target

    # ---- writes -------------------------------------------------------------------------------------
    def upsert(self, items: Sequence[ItemInput]) -> list[ItemResult]:
        """Embed and write items (the same id overwrites); one result per item, in order."""
        first: dict[str, int] = {}
        results: list[ItemResult | None] = [None] * len(items)
        for n, item in enumerate(items):
            if item.id in first:
                results[n] = ItemResult(item.id, "error", "duplicate id in this request",
                                        "send each item once", 400)
            else:
                first[item.id] = n
        todo = [items[n] for n in first.values()]
        if not todo:
            return [r for r in results if r is not None]
        collection = live_collection(self.cfg, self.store)
        embedder = self.embedder(collection)
        records, skipped = embed_items(embedder, todo)
        for s in skipped:
            results[first[s.id]] = ItemResult(s.id, "error", s.reason, "the image must be a readable photo", 422)
        if records:
            source = {i.id: i.source for i in todo}
            with self.log.locked():
                target = self._catch_up()
                if self.embedders.vectors(target) != self.embedders.vectors(collection):
                    raise StoreError("the index was replaced by one with other vectors meanwhile",
                                     detail="send the items again")
                existing = {h.id: h for h in self.store.retrieve(target, [r.id for r in records], with_vectors=True)}
                self._write(target, [Change("upsert", r.id, record=r, source=source[r.id], stamp=embedder.stamp)
                                     for r in records], lambda: self.store.upsert(target, records))
            for r in records:
                hit = existing.get(r.id)
                status = "created" if hit is None else "unchanged" if _same(r, hit) else "updated"
                results[first[r.id]] = ItemResult(r.id, status)
            self.checkpoint()
        return [r for r in results if r is not None]

    def patch(self, changes: Mapping[str, Mapping[str, Any]]) -> list[ItemResult]:
        """Set payload fields of existing items ({id: {key: value or None}}), vectors untouched."""
        results: dict[str, ItemResult] = {}
        with self.log.locked():
            target = self._catch_up()
            existing = {h.id: h for h in self.store.retrieve(target, list(changes))}
            known = {i: dict(f) for i, f in changes.items() if i in existing}
            if known:
                self._write(target, [Change("patch", i, fields=f) for i, f in known.items()],
                            lambda: self.store.set_payload(target, known))
        for item_id, fields in changes.items():
            hit = existing.get(item_id)
            if hit is None:
                results[item_id] = ItemResult(item_id, "error", "unknown item", "no item with this id in the index",
                                              404)
            else:
                same = all(hit.payload.get(k) == v for k, v in fields.items())
                results[item_id] = ItemResult(item_id, "unchanged" if same else "updated")
        self.checkpoint()
        return [results[i] for i in changes]

    def delete(self, ids: Sequence[str]) -> list[ItemResult]:
        """Delete items by id; an id not in the index is an error (404) and changes nothing."""
        wanted = list(dict.fromkeys(ids))
        with self.log.locked():
            target = self._catch_up()
            present = {h.id for h in self.store.retrieve(target, wanted)}
            gone = [i for i in wanted if i in present]
            if gone:
                self._write(target, [Change("delete", i) for i in gone], lambda: self.store.delete(target, gone))
        self.checkpoint()
        return [ItemResult(i, "deleted") if i in present else
                ItemResult(i, "error", "unknown item", "no item with this id in the index", 404) for i in wanted]

    def close(self) -> None:
        """Flush and checkpoint what was written, close the encoders' pools and (when owned) the log."""
        try:
            self.checkpoint(force=True)
        finally:
            if self.follower is None:  # a worker's copy owns the encoders it shares with its writer
                self.embedders.close()
            if self._own_log:
                self.log.close()


def write_items(writer: ItemWriter, records: Sequence[Any], trusted: bool = False,
                rows: Sequence[int] | None = None) -> list[ItemResult]:
    """Check raw items (catalogue schema) and write the valid ones; one result per record, in order."""
    cfg = writer.cfg
    parsed: list[ItemInput] = []
    results: list[ItemResult | None] = []
    for n, record in enumerate(records):
        if isinstance(record, ItemError):  # failed before it could be read (e.g. a line that is not JSON)
            results.append(failed(record.item_id, record))
            continue
        try:
            parsed.append(parse_item(cfg, record, rows[n] if rows else n + 1, trusted))
            results.append(None)
        except ItemError as e:
            results.append(failed(e.item_id or item_id_of(record, cfg), e))
    written = iter(writer.upsert(parsed))
    return [r if r is not None else next(written) for r in results]


def patch_items(writer: ItemWriter, changes: Sequence[Any]) -> list[ItemResult]:
    """Check attribute-only changes ([{"id", field: value, ...}]) and apply the valid ones; results in order."""
    cfg = writer.cfg
    valid: dict[str, dict[str, Any]] = {}
    results: list[ItemResult | str] = []
    for change in changes:
        if isinstance(change, ItemError):
            results.append(failed(change.item_id, change))
            continue
        item_id = item_id_of(change, cfg)
        try:
            if not item_id:
                raise ItemError("", "missing id", "each change needs the item's 'id'")
            if item_id in valid:
                raise ItemError(item_id, "duplicate id in this request", "send each item once")
            valid[item_id] = parse_patch(cfg, item_id, change)
            results.append(item_id)
        except ItemError as e:
            results.append(failed(item_id, e))
    done = {r.id: r for r in writer.patch(valid)} if valid else {}
    return [done[r] if isinstance(r, str) else r for r in results]
