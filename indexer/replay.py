"""Apply logged changes to a collection in log order, and embed items (again, when the models changed since)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from indexer.changelog import Change
from indexer.embed import Embedder
from indexer.items import ItemError, ItemInput, parse_item
from indexer.reader import Skipped
from search.store.interface import ItemRecord, Store
from vitrina.config import Config
from vitrina.errors import StoreError

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
