"""The end of a reindex: the writes logged since the catalogue file was written are replayed onto the new
collection, then the last few and the alias move happen under the write lock, so that no acknowledged write
is missing from the collection searches move to.

Order: replay the log from the first entry at or after the catalogue file's modification time (no lock:
writers go on into the live collection and the log), build the ANN index, then take the write lock (writers
wait), replay the entries logged meanwhile, flush, record the collection's checkpoint and move the alias.
A writer that gets the lock next resolves the alias to the new collection and writes there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from indexer.changelog import Change, ChangeLog
from indexer.embed import Embedder, model_stamp
from indexer.reader import Skipped
from indexer.replay import apply_changes, reembedder
from search.store.interface import ItemRecord, Store
from vitrina.config import Config

log = logging.getLogger(__name__)


@dataclass
class HandOver:
    """What the hand-over did: the alias's previous target, changes replayed, items that could not be, seconds."""

    previous: str | None = None
    replayed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    locked_s: float = 0.0
    last_seq: int = 0


class _LazyReembed:
    """Embeds logged items again only when some were embedded with other models (loads the encoders then)."""

    def __init__(self, cfg: Config, image_encoder: Any | None) -> None:
        self.cfg, self.image_encoder = cfg, image_encoder
        self.embedder: Embedder | None = None

    def __call__(self, changes: list[Change]) -> tuple[list[ItemRecord], list[Skipped]]:
        if self.embedder is None:
            self.embedder = Embedder(self.cfg, self.image_encoder)
        return reembedder(self.cfg, self.embedder)(changes)

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()


def hand_over(cfg: Config, store: Store, collection: str, since_ts: float, image_encoder: Any | None) -> HandOver:
    """Replay the changes logged since `since_ts` onto `collection`, finalize it, and point the alias at it."""
    stamp = model_stamp(cfg, image_encoder.name if image_encoder is not None else "")
    reembed = _LazyReembed(cfg, image_encoder)
    out = HandOver()
    with ChangeLog.for_config(cfg) as changelog:
        try:
            start = changelog.seq_before(since_ts)
            bulk = apply_changes(store, collection, changelog.read(after=start), stamp, reembed)
            last = bulk.last_seq or start
            store.finalize(collection)
            with changelog.locked():
                t0 = time.perf_counter()
                tail = apply_changes(store, collection, changelog.read(after=last), stamp, reembed)
                last = tail.last_seq or last
                store.flush(collection)
                changelog.set_applied(collection, last)
                out.previous = store.get_alias(cfg.store.alias)
                store.set_alias(cfg.store.alias, collection)
                out.locked_s = round(time.perf_counter() - t0, 3)
            out.replayed = bulk.applied + tail.applied
            out.skipped = bulk.skipped + tail.skipped
            out.last_seq = last
            log.info("replayed %d logged change(s) since %s onto %s (last seq %d; writers waited %.3f s)",
                     out.replayed, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since_ts)), collection,
                     last, out.locked_s)
            dropped = changelog.prune(since_ts, last, set(store.list_collections()))
            if dropped:
                log.info("change log: dropped %d entries older than the catalogue file", dropped)
        finally:
            reembed.close()
    return out
