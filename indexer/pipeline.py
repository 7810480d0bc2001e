"""Bulk reindex: catalogue -> encoders -> a new versioned collection, resumable, verified, then swapped in."""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from encoders import tuned_layers_stamp
from indexer.embed import Embedder, StageTimer, load_image_encoder, tower_identity
from indexer.handover import HandOver, hand_over
from indexer.reader import Product, Skipped, read_catalogue
from indexer.state import (ReindexState, RunLock, clear_state, load_state, report_path, save_state,
                           write_json_atomic)
from search.store.factory import open_store
from search.store.interface import ItemRecord, Store
from vitrina.config import Config
from vitrina.errors import StoreError, VitrinaError

log = logging.getLogger(__name__)


@dataclass
class ReindexSummary:
    """What a reindex did; also written as JSON to data_dir/reindex/<alias>.report.json."""

    alias: str
    collection: str
    indexed: int
    skipped: int
    skipped_by_reason: dict[str, int]
    skipped_items: list[dict[str, Any]]
    image_vectors: bool
    image_tower: str  # the checkpoint used, or why there is none
    resumed: bool
    wall_s: float
    items_per_s: float
    written: int = 0  # items encoded and written by this run (the rest came from before a resume)
    stages_s: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    previous: str | None = None
    replayed: int = 0  # changes from the write log (API, `vitrina upsert`) replayed onto the new collection

    def lines(self) -> list[str]:
        out = [f"reindex {self.alias} -> {self.collection}" + (" (resumed)" if self.resumed else ""),
               f"  indexed  {self.indexed:,} items" + ("" if self.image_vectors else " (text only: no image vectors)"),
               f"  skipped  {self.skipped:,}"]
        out += [f"    {n:>6,}  {reason}" for reason, n in sorted(self.skipped_by_reason.items(), key=lambda x: -x[1])]
        for s in self.skipped_items[:10]:
            out.append(f"    id {s['id']!r} (row {s['row']}): {s['reason']}")
        if self.skipped > 10:
            out.append(f"    ... {self.skipped - 10:,} more in the report")
        out.append(f"  wall     {self.wall_s:.1f}s for {self.written:,} items written by this run: "
                   f"{self.items_per_s:.1f} items/s end to end")
        if self.replayed:
            out.append(f"  replayed {self.replayed:,} change(s) written since the catalogue file")
        if self.previous:
            out.append(f"  alias    was {self.previous}")
        if self.dropped:
            out.append(f"  dropped  {', '.join(self.dropped)}")
        return out


def collection_name(alias: str, now: datetime | None = None) -> str:
    """`<alias>-<UTC timestamp>` with milliseconds, e.g. vitrina-20261123T194501123Z (sorts by time)."""
    t = now or datetime.now(timezone.utc)
    return f"{alias}-{t:%Y%m%dT%H%M%S}{t.microsecond // 1000:03d}Z"


def versions_of(store: Store, alias: str) -> list[str]:
    """Collections made by reindexing `alias`, oldest first."""
    pattern = re.compile(rf"^{re.escape(alias)}-\d{{8}}T\d{{9}}Z$")
    return sorted(c for c in store.list_collections() if pattern.match(c))


def fingerprint(cfg: Config, image_tower: str, limit: int = 0) -> dict[str, Any]:
    """What must not change between a killed run and its resume (else the collection would be mixed)."""
    path = Path(cfg.catalogue.path)
    st = path.stat()
    settings = repr((cfg.catalogue, cfg.text_encoder, tuned_layers_stamp(cfg), cfg.fusion, cfg.image_encoder))
    return {"catalogue": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "image_tower": tower_identity(image_tower),
            "limit": limit,
            "settings": hashlib.sha256(settings.encode()).hexdigest()[:16]}


def _batches(items: Iterator[Product | Skipped], start: int, size: int
             ) -> Iterator[tuple[int, list[Product], list[Skipped]]]:
    """(end position, products, skipped rows) per batch of `size` products, after skipping `start` outputs."""
    products: list[Product] = []
    skips: list[Skipped] = []
    position = 0
    for item in items:
        position += 1
        if position <= start:
            continue
        if isinstance(item, Skipped):
            skips.append(item)
        else:
            products.append(item)
        if len(products) >= size:
            yield position, products, skips
            products, skips = [], []
    if products or skips or position <= start:
        yield max(position, start), products, skips


class _Writer(threading.Thread):
    """Upserts encoded batches in order; every `every` batches flushes the store and saves the checkpoint."""

    def __init__(self, cfg: Config, store: Store, state: ReindexState, timer: StageTimer, every: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.cfg, self.store, self.state, self.timer = cfg, store, state, timer
        self.every = max(1, every)
        self.inbox: queue.Queue[tuple[int, list[ItemRecord], list[Skipped]] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.written = 0  # items written by this run

    def run(self) -> None:
        try:
            pending = 0
            while (job := self.inbox.get()) is not None:
                position, records, skips = job
                t0 = time.perf_counter()
                if records:
                    self.store.upsert(self.state.collection, records)
                    self.store.build_due(self.state.collection)  # the embedded store, [store].max_segment_kb
                self.timer.add("write", time.perf_counter() - t0)
                self.state.indexed += len(records)
                self.state.add_skips(skips)
                self.state.position = position
                self.written += len(records)
                pending += 1
                if pending >= self.every:
                    self.checkpoint()
                    pending = 0
            self.checkpoint()
        except BaseException as e:  # handed to the main thread
            self.error = e
            while self.inbox.get() is not None:  # unblock the producer
                pass

    def checkpoint(self) -> None:
        t0 = time.perf_counter()
        self.store.flush(self.state.collection)  # durable first, then record it as done
        save_state(self.cfg, self.state)
        self.timer.add("flush", time.perf_counter() - t0)


def progress_bar(total: int | None, initial: int, enabled: bool, desc: str = "reindex") -> Any:
    """A tqdm bar on stderr (in a log file: a line every 30 s instead of a live bar)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="item", dynamic_ncols=tty, disable=not enabled,
                smoothing=0.1, file=sys.stderr, desc=desc, mininterval=0.5 if tty else 30.0,
                ascii=not tty)


def _count_rows(cfg: Config) -> int:
    return sum(1 for _ in read_catalogue(cfg))


def _start(cfg: Config, store: Store, fresh: bool, fp: dict[str, Any], dims: dict[str, int]
           ) -> tuple[ReindexState, bool]:
    """The checkpoint to continue (resume) or a new collection and checkpoint."""
    state = load_state(cfg)
    if state is not None and fresh:
        if state.collection in store.list_collections() and state.collection != store.get_alias(cfg.store.alias):
            log.info("--fresh: dropping half-built collection %s", state.collection)
            store.drop_collection(state.collection)
        clear_state(cfg)
        state = None
    if state is not None:
        if state.fingerprint != fp:
            raise VitrinaError(
                f"an unfinished reindex into {state.collection} was started with a different catalogue, "
                "settings or image tower: rerun with --fresh to discard it and start over",
                detail=f"then: {state.fingerprint}; now: {fp}")
        if state.collection not in store.list_collections():
            store.create_collection(state.collection, dims, cfg.catalogue.filterable, cfg.catalogue.numeric)
            state.position, state.indexed, state.skipped = 0, 0, []
        state.resumes += 1
        save_state(cfg, state)
        return state, True
    state = ReindexState(alias=cfg.store.alias, collection=collection_name(cfg.store.alias), fingerprint=fp)
    save_state(cfg, state)  # recorded before creating, so a kill right after leaves no orphan unknown to us
    store.create_collection(state.collection, dims, cfg.catalogue.filterable, cfg.catalogue.numeric)
    return state, False


def reindex(cfg: Config, fresh: bool = False, limit: int = 0, progress: bool = True,
            store: Store | None = None) -> ReindexSummary:
    """Build a new collection for [store].alias from the catalogue, then point the alias at it.

    Resumes an unfinished run (see indexer.state) unless `fresh`. Bad rows and images are skipped and
    reported. `limit` > 0 indexes only the first `limit` catalogue rows (benchmarks, smoke tests).
    Searches keep using the old collection until the new one is complete and its count verified.
    """
    t_start = time.perf_counter()
    timer = StageTimer()
    own_store = store is None
    store = store or open_store(cfg)
    try:
        with RunLock(cfg):
            rows = read_catalogue(cfg)  # fails fast on an unreadable file or a missing column
            image_encoder, why = load_image_encoder(cfg)
            tower = image_encoder.name if image_encoder is not None else ""
            if image_encoder is None:
                log.warning("no trained image tower (%s): indexing TEXT ONLY, no image vectors. "
                            "Run `vitrina finetune`, then reindex.", why)
            total = limit or _count_rows(cfg)
            bulk = total > 4 * cfg.indexer.batch_size  # worth a second text-model copy when text only
            with Embedder(cfg, image_encoder, timer, bulk=bulk) as embedder:
                state, resumed = _start(cfg, store, fresh, fingerprint(cfg, tower, limit), embedder.dims)
                summary = _fill(cfg, store, state, embedder, rows, limit, total, progress, timer)
            summary.resumed, summary.image_tower = resumed, tower or why
            summary.image_vectors = image_encoder is not None
            if state.indexed == 0:
                write_json_atomic(report_path(cfg), asdict(summary))
            summary.previous, summary.dropped, handed = _swap(cfg, store, state, timer, image_encoder)
            summary.replayed = handed.replayed
            summary.skipped_items = summary.skipped_items + [{"id": s.id, "reason": s.reason, "row": 0}
                                                             for s in handed.skipped]
            summary.skipped += len(handed.skipped)
            summary.wall_s = round(time.perf_counter() - t_start, 2)
            summary.items_per_s = round(summary.written / max(summary.wall_s, 1e-9), 1)
            summary.stages_s = timer.as_dict()
            write_json_atomic(report_path(cfg), asdict(summary))
            clear_state(cfg)
            return summary
    finally:
        if own_store:
            store.close()


def _fill(cfg: Config, store: Store, state: ReindexState, embedder: Embedder, rows: Iterator[Product | Skipped],
          limit: int, total: int, progress: bool, timer: StageTimer) -> ReindexSummary:
    """Encode and write every row after the checkpoint's position; returns the counts of the whole build."""
    t0 = time.perf_counter()
    if limit > 0:
        rows = (r for i, r in enumerate(rows) if i < limit)
    writer = _Writer(cfg, store, state, timer, cfg.indexer.checkpoint_every)
    bar = progress_bar(total, state.position, progress)
    writer.start()
    try:
        ahead: tuple[int, list[Product], list[Skipped], list[Any]] | None = None
        batches = _batches(rows, state.position, max(1, cfg.indexer.batch_size))
        t_read = time.perf_counter()
        for position, products, skips in batches:
            timer.add("read", time.perf_counter() - t_read)
            current = (position, products, skips, embedder.submit_images(products))
            if ahead is not None:
                _encode_and_send(embedder, writer, ahead, bar)
            ahead = current
            t_read = time.perf_counter()
        if ahead is not None:
            _encode_and_send(embedder, writer, ahead, bar)
    finally:
        if writer.is_alive():
            writer.inbox.put(None)
            writer.join()
        bar.close()
    if writer.error is not None:
        raise writer.error
    if state.phase == "writing":
        state.phase = "finalizing"
        save_state(cfg, state)
    reasons = Counter(_reason_kind(s["reason"]) for s in state.skipped)
    elapsed = time.perf_counter() - t0
    return ReindexSummary(alias=state.alias, collection=state.collection, indexed=state.indexed,
                          skipped=len(state.skipped), skipped_by_reason=dict(reasons), skipped_items=state.skipped,
                          image_vectors=False, image_tower="", resumed=False, wall_s=elapsed,
                          items_per_s=0.0, written=writer.written)


def _encode_and_send(embedder: Embedder, writer: _Writer, job: tuple[int, list[Product], list[Skipped], list[Any]],
                     bar: Any) -> None:
    position, products, skips, futures = job
    if writer.error is not None:
        raise writer.error
    records, bad = embedder.embed(products, futures)
    writer.inbox.put((position, records, skips + bad))
    bar.update(len(products) + len(skips))


def _reason_kind(reason: str) -> str:
    """The reason without the specifics ('bad image: image file not found: /x.jpg' -> 'bad image: image file
    not found')."""
    head, _, rest = reason.partition(": ")
    if not rest:
        return re.sub(r"\s*'.*$", "", reason)
    return f"{head}: {rest.split(':')[0]}"[:80]


def _swap(cfg: Config, store: Store, state: ReindexState, timer: StageTimer, image_encoder: Any | None
          ) -> tuple[str | None, list[str], HandOver]:
    """Verify the new collection's count, replay the writes logged since the catalogue file was written,
    finalize it, point the alias at it (indexer.handover), drop versions beyond `keep`."""
    t0 = time.perf_counter()
    alias = cfg.store.alias
    if store.get_alias(alias) == state.collection:  # a rerun after a kill just after the move: it is live already
        return None, [], HandOver()
    if state.phase != "replaying":
        if state.indexed == 0:
            raise VitrinaError(f"no item of the catalogue could be indexed ({len(state.skipped)} skipped); the "
                               "alias was NOT moved", detail=f"see the reasons in {report_path(cfg)}; fix the "
                               "catalogue and rerun with --fresh")
        store.flush(state.collection)
        count = store.count(state.collection)
        if count != state.indexed:
            raise StoreError(f"collection {state.collection} holds {count:,} items but {state.indexed:,} were "
                             "written; the alias was NOT moved", detail="rerun `vitrina reindex` (it resumes), "
                             "or --fresh")
        state.phase = "replaying"  # from here the count also moves with the replayed writes
        save_state(cfg, state)
    handed = hand_over(cfg, store, state.collection, state.fingerprint["mtime_ns"] / 1e9, image_encoder)
    timer.add("finalize", time.perf_counter() - t0)
    log.info("alias %s -> %s (was %s)", alias, state.collection, handed.previous)
    old = [c for c in versions_of(store, alias) if c != state.collection]
    dropped = []
    for name in old[:max(0, len(old) - max(0, cfg.store.keep))]:
        try:
            store.drop_collection(name)
            dropped.append(name)
        except VitrinaError as e:  # e.g. still open in a server process; the next reindex retries
            log.warning("could not drop old collection %s: %s", name, e.message)
    return handed.previous, dropped, handed
