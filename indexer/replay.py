"""Apply logged changes to a collection in log order, and embed items (again, when the models changed since)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from indexer.changelog import Change, ChangeLog
from indexer.embed import Embedder, live_side, load_image_encoder
from indexer.items import ItemError, ItemInput, parse_item
from indexer.reader import Skipped
from search.store.interface import ItemRecord, Store
from vitrina.config import Config
from vitrina.errors import StoreError

log = logging.getLogger(__name__)

# Upserts whose vectors came from other models -> records embedded now, and the items that could not be.
Reembed = Callable[[list[Change]], tuple[list[ItemRecord], list[Skipped]]]


@dataclass
class ReplayStats:
    """What a replay did: changes applied, upserts embedded again, items that could not be, the last seq."""

    applied: int = 0
    reembedded: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    last_seq: int = 0


def embed_items(embedder: Embedder, items: Sequence[ItemInput]) -> tuple[list[ItemRecord], list[Skipped]]:
    """Records for valid items (extra fields added to the payload); Skipped for those whose image is bad."""
    records, skipped = embedder.embed([i.product for i in items])
    extra = {i.id: i.extra for i in items}
    return [dataclasses.replace(r, payload={**r.payload, **extra[r.id]}) if extra.get(r.id) else r
            for r in records], skipped


class Embedders:
    """The encoders for items of a collection (with the image tower when it holds image vectors), each built once:
    shared by a process's item writer and its copy of the live collection (indexer/replica.py). Texts go through
    [live].text_precision's encoder (`live_side`)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store = cfg, store
        self._build = threading.Lock()
        self._built: dict[bool, Embedder] = {}
        self._dims: dict[str, frozenset[str]] = {}

    def vectors(self, collection: str) -> frozenset[str]:
        """The named vectors `collection` holds."""
        if collection not in self._dims:
            self._dims[collection] = frozenset(self.store.collection_info(collection).dims)
        return self._dims[collection]

    def __call__(self, collection: str) -> Embedder:
        with_image = "image" in self.vectors(collection)
        with self._build:
            if with_image not in self._built:
                encoder, why = load_image_encoder(self.cfg) if with_image else (None, "")
                if with_image and encoder is None:
                    log.warning("items written without image vectors: %s", why)
                self._built[with_image] = Embedder(live_side(self.cfg), encoder)
            return self._built[with_image]

    def close(self) -> None:
        for embedder in self._built.values():
            embedder.close()


def replay_log(store: Store, collection: str, changelog: ChangeLog, after: int, until: int,
               embedders: Embedders) -> ReplayStats:
    """Apply the logged entries after < seq <= until to `collection` with this process's models (logged vectors
    are kept when the same models made them, else the items are embedded again). No entry in the range (e.g.
    pruned after a reindex): nothing applied and no model loaded."""
    changes = changelog.read(after=after, until=until)
    first = next(changes, None)
    if first is None:
        return ReplayStats()
    embedder = embedders(collection)
    return apply_changes(store, collection, itertools.chain([first], changes), embedder.stamp,
                         reembedder(embedders.cfg, embedder))


def reembedder(cfg: Config, embedder: Embedder) -> Reembed:
    """Embed logged upserts again from the items as they were given (their images read again)."""

    def run(changes: list[Change]) -> tuple[list[ItemRecord], list[Skipped]]:
        items, bad = [], []
        for c in changes:
            try:
                items.append(parse_item(cfg, c.source, trusted=True))
            except ItemError as e:
                bad.append(Skipped(c.item_id, f"logged item no longer valid: {e.message}"))
        records, skipped = embed_items(embedder, items)
        return records, bad + skipped

    return run


def apply_changes(store: Store, collection: str, changes: Iterable[Change], stamp: str,
                  reembed: Reembed | None = None, group: int = 256) -> ReplayStats:
    """Apply `changes` (in sequence order) to `collection`: consecutive changes of one kind go in one store call,
    so a replay is as fast as bulk writes and still ends in the state the log describes."""
    stats = ReplayStats()
    run: list[Change] = []
    for change in changes:
        if run and (change.op != run[0].op or len(run) >= group):
            _apply(store, collection, run, stamp, reembed, stats)
            run = []
        run.append(change)
    if run:
        _apply(store, collection, run, stamp, reembed, stats)
    return stats


def _apply(store: Store, collection: str, run: list[Change], stamp: str, reembed: Reembed | None,
           stats: ReplayStats) -> None:
    op = run[0].op
    if op == "upsert":
        stale = [c for c in run if c.stamp != stamp or c.record is None]
        again: dict[str, ItemRecord] = {}
        if stale:
            if reembed is None:
                raise StoreError(f"{len(stale)} logged item(s) were embedded with other models",
                                 detail="replay them where the encoders can be loaded (vitrina reindex)")
            records, skipped = reembed(stale)
            again = {r.id: r for r in records}
            stats.reembedded += len(records)
            stats.skipped += skipped
        items = [c.record if c.stamp == stamp and c.record is not None else again.get(c.item_id) for c in run]
        store.upsert(collection, [r for r in items if r is not None])  # the same id twice: the last wins
    elif op == "delete":
        store.delete(collection, [c.item_id for c in run])
    else:
        merged: dict[str, dict] = {}
        for c in run:
            merged.setdefault(c.item_id, {}).update(c.fields)
        store.set_payload(collection, merged)  # items deleted meanwhile are left out
    stats.applied += len(run)
    stats.last_seq = run[-1].seq
