"""Per-process copies of the live collection for `vitrina serve --workers N` on the embedded store: each worker
searches its own copy, which follows the durable change log and is made again when the alias moves.

An embedded shard is open in one process at a time, so N serving processes cannot share the collection behind the
alias. Each worker copies it instead (search/store/edge_shards.copy_collection, under the collection's lock, so no
process writes into it meanwhile) into <data dir>/store/replicas/<pid>/, from the collection's checkpoint in the
change log on, and replays every entry after that. A copy keeps no write-ahead log of its own
(edge_shards.without_wal): it is made anew whenever its process starts, so the log would only cost memory and writes.
Writes go on through the log under its lock (indexer/writer.py): the writing worker applies its entries to its own
copy before it answers and announces their sequence number (ChangeLog.announce, shared memory); before every store
call each worker compares that counter with its copy's (well under a microsecond) and applies what it lacks first, so
a write one worker acknowledged is read by the next request on any other. The log itself is also read every POLL_S,
for writers that announce nothing.

Nobody opens the collection behind the alias while the workers serve: `vitrina serve` brings it up to date from
the log (the writers' usual recovery) before it starts them and after they stop. When `vitrina reindex` moves the
alias, each worker sees it (a stat of the alias file, every 0.1 s), copies the new collection in a background thread
while it goes on serving the old copy, replays the log onto the new one, then switches under the write lock and
drops the old copy. A copy belongs to the process that flocks its `owner` file; `clean_replicas` removes the
copies of processes that are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from indexer.changelog import ChangeLog
from indexer.replay import Embedders, replay_log
from search.store.edge_shards import copy_collection
from search.store.factory import open_store
from search.store.interface import CollectionInfo, Filters, Hit, ItemRecord, Query, WithVectors
from vitrina.config import Config
from vitrina.errors import NotFound, StoreError, VitrinaError
from vitrina.locks import flock_within

log = logging.getLogger(__name__)
POLL_S = 1.0  # the log is read at least this often, whatever the counter says
RETRY_S = 2.0  # a failed copy of a new collection is tried again after this long
ALIAS_CHECK_S = 0.1  # the alias file is looked at (a stat) at most this often


def replicas_dir(cfg: Config) -> Path:
    return cfg.data_dir / "store" / "replicas"


def clean_replicas(cfg: Config, pid: int | None = None) -> list[str]:
    """Remove the copies no live process holds (only the one of `pid` when given); returns their folder names."""
    root = replicas_dir(cfg)
    folders = [root / str(pid)] if pid is not None else sorted(root.iterdir()) if root.is_dir() else []
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        fd = os.open(folder / "owner", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if flock_within(fd, 0):  # its process is gone (a live one holds the flock)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        finally:
            os.close(fd)
    return removed


class Replica:
    """This process's copy of the collection behind [store].alias and the last log entry applied to it."""

    def __init__(self, cfg: Config) -> None:
        if cfg.store.backend != "edge":
            raise StoreError("per-process copies are for the embedded store")
        self.cfg, self.alias = cfg, cfg.store.alias
        self.main = cfg.data_dir / "store"
        self.root = replicas_dir(cfg) / str(os.getpid())
        clean_replicas(cfg, os.getpid())  # left by a process that had this pid before
        self.root.mkdir(parents=True, exist_ok=True)
        self._owner = os.open(self.root / "owner", os.O_RDWR | os.O_CREAT, 0o644)
        if not flock_within(self._owner, cfg.store.timeout_s):
            os.close(self._owner)
            raise StoreError(f"the copy {self.root} is held by another process")
        self.store = open_store(cfg, root=self.root)
        self.log = ChangeLog.for_config(cfg)
        self.embedders = Embedders(cfg, self.store)
        self.collection: str | None = None  # the copy served now (named as the collection it copies)
        self.seq = 0  # the last log entry applied to it
        self.copied_at = 0.0
        self._alias_key: tuple[int, int] | None = None  # the alias file (inode, mtime) when the copy was made
        self._starting = threading.Lock()
        self._apply = threading.Lock()  # one thread applies entries to the served copy at a time
        self._polled = self._alias_checked = 0.0
        self._fresh: threading.Thread | None = None  # copying the collection the alias moved to
        self._retry_at = 0.0

    # ---- per call -----------------------------------------------------------------------------------
    def sync(self) -> None:
        """Before each read: apply the entries other processes announced (or wrote, every POLL_S), and start
        copying the collection behind the alias when it moved. Microseconds when nothing changed."""
        if self.collection is None:
            self.ready()
        announced, now = self.log.announced(), time.monotonic()
        if announced > self.seq:
            self.follow(until=announced)
        elif now - self._polled > POLL_S:
            self.follow()
        if now - self._alias_checked < ALIAS_CHECK_S or self._fresh is not None:
            return
        self._alias_checked = now
        if self._alias_moved() and now >= self._retry_at:
            with self._starting:
                if self._fresh is None:
                    self._fresh = threading.Thread(target=self._refresh, name="replica-refresh", daemon=True)
                    self._fresh.start()

    def ready(self) -> str:
        """The collection this copy serves, copied first when there is none yet."""
        if self.collection is None:
            with self._starting:
                if self.collection is None:
                    self._install(*self._copy())
        assert self.collection is not None
        return self.collection

    def follow(self, until: int | None = None) -> str:
        """Apply the log entries the copy lacks, up to `until` (default: the log's end); returns the collection."""
        self.ready()
        with self._apply:
            if until is None:
                self._polled = time.monotonic()
                until = self.log.max_seq()
            if until > self.seq:
                replay_log(self.store, str(self.collection), self.log, self.seq, until, self.embedders)
                self.seq = until
            return str(self.collection)

    # ---- copies -------------------------------------------------------------------------------------
    def _alias_file(self) -> Path:
        return self.main / "aliases" / self.alias

    def _alias_moved(self) -> bool:
        try:
            st = os.stat(self._alias_file())
        except FileNotFoundError:
            return False  # no alias (yet, or dropped): keep serving what we have
        return (st.st_ino, st.st_mtime_ns) != self._alias_key

    def _copy(self) -> tuple[str, int, tuple[int, int]]:
        """Copy the collection behind the alias here: (its name, the log entry it holds at least, alias key)."""
        try:
            with open(self._alias_file()) as f:
                st = os.fstat(f.fileno())
                target = f.read().strip()
        except FileNotFoundError:
            target = ""
        if not target:
            raise NotFound(f"no index behind alias {self.alias!r} yet", detail="run `vitrina reindex` first")
        key = (st.st_ino, st.st_mtime_ns)
        if target == self.collection:
            return target, self.seq, key
        if target in self.store.list_collections():  # an older copy of it, still here
            self.store.drop_collection(target)
        # The checkpoint is read first: the collection holds at least that much when it is copied after it.
        seq = self.log.applied(target) or 0
        t0 = time.perf_counter()
        copy_collection(self.main, target, self.root, self.cfg.store.timeout_s, wal=False)  # made anew at start
        log.info("copied %s for process %d in %.2f s (log entry %d)", target, os.getpid(), time.perf_counter() - t0,
                 seq)
        return target, seq, key

    def _install(self, target: str, seq: int, key: tuple[int, int]) -> None:
        """Bring the copy of `target` to the log's end, then serve from it (under the write lock: no write of this
        process is half-way, none of another is logged meanwhile)."""
        old = self.collection
        if target != old:
            top = self.log.max_seq()
            if top > seq:  # most of the replay, while the old copy still serves
                replay_log(self.store, target, self.log, seq, top, self.embedders)
                seq = top
            if old is not None:  # a new index: its payloads in memory before it serves (a first copy: warm())
                self.store.preload(target)
        # A first copy needs no lock (no write of this process can be half-way); taking it then could wait on
        # the writer that asked for the copy.
        with self.log.locked() if old is not None else contextlib.nullcontext(), self._apply:
            top = self.log.max_seq()
            if top > seq and target != old:
                replay_log(self.store, target, self.log, seq, top, self.embedders)
            if target != old:
                self.store.set_alias(self.alias, target)
                self.seq, self.copied_at = max(seq, top), time.time()
            self.collection, self._alias_key, self._polled = target, key, time.monotonic()
        if old is not None and old != target:
            log.info("process %d: now serving its copy of %s (log entry %d); dropping its copy of %s",
                     os.getpid(), target, self.seq, old)
            self.store.drop_collection(old)  # once the searches still on it are done
        self.store.count(self.alias)  # open it now rather than in the next search

    def _refresh(self) -> None:
        """Background: copy the collection the alias moved to and switch to it; on failure, retry later."""
        try:
            self._install(*self._copy())
        except (VitrinaError, OSError) as e:
            log.warning("process %d: cannot copy the new collection yet: %s", os.getpid(), e)
            self._retry_at = time.monotonic() + RETRY_S
        except Exception:  # noqa: BLE001 - the old copy goes on serving; tried again later
            log.exception("process %d: copying the new collection failed", os.getpid())
            self._retry_at = time.monotonic() + RETRY_S
        finally:
            self._fresh = None

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "collection": self.collection, "log_seq": self.seq,
                "copied_at": round(self.copied_at, 3), "path": str(self.root)}

    def close(self) -> None:
        """Close the copy and remove it."""
        fresh = self._fresh
        if fresh is not None:
            fresh.join(timeout=60)
        try:
            self.store.close()
            self.embedders.close()
            self.log.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            os.close(self._owner)


def _refused(*_: Any, **__: Any) -> Any:
    raise StoreError("a serving worker's copy changes only from the change log",
                     detail="write items through the service's API (indexer/writer.py)")


class ReplicaStore:
    """The Store of a serving worker: reads from the worker's copy, brought up to date before each call; writes
    only from the change log (ItemWriter sees this store and lets the copy apply its entries)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def _synced(self) -> Any:
        self.replica.sync()
        return self.replica.store

    def get_alias(self, alias: str) -> str | None:
        return self._synced().get_alias(alias)

    def list_aliases(self) -> dict[str, str]:
        return self._synced().list_aliases()

    def list_collections(self) -> list[str]:
        return self._synced().list_collections()

    def collection_info(self, name: str) -> CollectionInfo:
        return self._synced().collection_info(name)

    def resolve(self, name: str) -> str:
        return self._synced().resolve(name)

    def count(self, collection: str, filters: Filters | None = None) -> int:
        return self._synced().count(collection, filters)

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Hit]:
        return self._synced().retrieve(collection, ids, with_vectors)

    def query(self, collection: str, query: Query, filters: Filters | None = None, limit: int = 10,
              offset: int = 0, with_vectors: WithVectors = False, with_payload: bool = True) -> list[Hit]:
        return self._synced().query(collection, query, filters, limit, offset, with_vectors, with_payload)

    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        return self._synced().query_batch(collection, queries, filters, limit, offset, with_vectors, with_payload)

    def facets(self, collection: str, fields: Sequence[str], filters: Filters | None = None,
               limit: int = 20) -> dict[str, dict[str, int]]:
        return self._synced().facets(collection, fields, filters, limit)

    def scroll(self, collection: str, batch: int = 1000, with_vectors: WithVectors = False) -> Iterator[Hit]:
        return self._synced().scroll(collection, batch, with_vectors)

    def preload(self, collection: str) -> int:
        return self._synced().preload(collection)

    def flush(self, collection: str) -> None:
        """Nothing to make durable: the log is, and the copy is made again at the next start."""

    def upsert(self, collection: str, items: Sequence[ItemRecord]) -> None:
        _refused()

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        return _refused()

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return _refused()

    def segments(self, collection: str) -> int | None:
        return self._synced().segments(collection)

    create_collection = drop_collection = set_alias = drop_alias = finalize = build_due = _refused

    def close(self) -> None:
        self.replica.close()
