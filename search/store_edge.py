"""The embedded backend: one Qdrant Edge shard per collection on local disk, with file aliases and locks.

Layout under `root`:
    collections/<name>/shard/      the EdgeShard (segments, WAL)
    collections/<name>/meta.json   dims, filterable and numeric fields (written last: no meta, no collection)
    collections/<name>/lock        flock'ed by the one process that has the shard open; holds its pid
    aliases/<alias>                the collection name, replaced atomically (write temp + os.replace)

Processes. A shard is open in at most one process at a time (EdgeShard itself refuses a second
opener). The lock file turns that into a StoreError that names the holder. A shard is opened
lazily on first use and held until `close()`, `drop_collection`, or an alias swap moves readers on.
`set_alias` releases this process's handle on the new target, so a long-running server in another
process can open it: the usual flow is indexer fills `c2`, `finalize(c2)`, `set_alias(alias, c2)`,
and the server's next search through the alias stats the pointer file (one syscall), sees a new
inode, opens `c2` and closes `c1` once in-flight searches on it are done.

Threads. EdgeShard releases the GIL and is safe to query from many threads at once, also while
another thread writes (checked by tests/test_store.py with 8 threads). The store therefore does not
serialise searches; it only guards its own maps and reference-counts handles so that a shard is never
closed under a running search.

Scores. BM25's IDF counts deleted (and overwritten) points until their segment is vacuumed, as a Qdrant
server does; qdrant-client's local mode recounts at once, so keyword scores of the two backends differ
slightly after deletes (the ranking rarely does).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import qdrant_edge as qe

from search import keywords
from search.store import (DENSE_VECTORS, ID_FIELD, PRICE_FIELD, SPARSE_VECTOR, CollectionInfo, DenseQuery,
                          Filters, Hit, HybridQuery, ItemRecord, KeywordQuery, Query, check_item, check_query_vector,
                          WithVectors, plain_payload, point_id, vector_names)
from vitrina.errors import BadInput, NotFound, StoreError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HNSW = dict(m=16, ef_construct=100, full_scan_threshold=10_000)


def _check_name(name: str, what: str = "collection") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadInput(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.'")
    return name


def edge_filter(filters: Filters | None) -> qe.Filter | None:
    """Filters as an engine filter: any-of per field, inclusive ranges, only/excluded ids (has_id)."""
    if not filters:
        return None
    must: list[Any] = [qe.FieldCondition(k, match=qe.MatchAny([str(v) for v in vals]))
                       for k, vals in filters.equals.items()]
    must += [qe.FieldCondition(k, range=qe.RangeFloat(gte=lo, lte=hi))
             for k, (lo, hi) in filters.ranges.items() if lo is not None or hi is not None]
    if filters.only_ids:
        must.append(qe.HasIdCondition({point_id(i) for i in filters.only_ids}))
    must_not = [qe.HasIdCondition({point_id(i) for i in filters.exclude_ids})] if filters.exclude_ids else None
    return qe.Filter(must=must or None, must_not=must_not)


def _dense(vector: Any) -> np.ndarray:
    return np.asarray(vector, dtype=np.float32)


def _hit(point: Any, score: float, with_vectors: WithVectors) -> Hit:
    payload = dict(point.payload or {})
    vectors = {}
    if with_vectors and point.vector:
        vectors = {k: _dense(v) for k, v in point.vector.items() if k in DENSE_VECTORS}
    item_id = payload[ID_FIELD] if ID_FIELD in payload else point.id  # point.id builds a UUID: only when needed
    return Hit(id=str(item_id), score=float(score), payload=payload, vectors=vectors)


class _Handle:
    """An open shard, its lock file, and how many calls are using it right now."""

    def __init__(self, shard: qe.EdgeShard, lock_fd: int, meta: dict[str, Any]) -> None:
        self.shard, self.lock_fd, self.meta = shard, lock_fd, meta
        self.users = 0
        self.retired = False  # no longer in the store's map: close when the last user is done
        self.closed = False

    def close(self) -> None:
        try:
            self.shard.flush()
            self.shard.close()
        finally:
            os.close(self.lock_fd)  # releases the flock


class EdgeStore:
    """Store on Qdrant Edge shards under `root` (see the module docstring for files, processes, threads)."""

    def __init__(self, root: Path, timeout_s: float = 30.0, bm25_avg_len: float = keywords.DEFAULT_AVG_LEN,
                 hnsw_ef: int | None = None) -> None:
        self.root = Path(root)
        self.timeout_s = timeout_s  # longest wait for a shard lock held by another process
        self.bm25_avg_len = bm25_avg_len
        self.hnsw_ef = hnsw_ef  # None = engine default
        (self.root / "collections").mkdir(parents=True, exist_ok=True)
        (self.root / "aliases").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._handles: dict[str, _Handle] = {}
        self._openers: dict[str, threading.Lock] = {}
        self._moved_from: set[str] = set()  # collections an alias of this process moved away from
        self._aliases: dict[str, tuple[tuple[int, int], str]] = {}  # alias -> (stat key, target)
        self._closed = False

    # ---- paths, locks, handles -------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / "collections" / name

    def _exists(self, name: str) -> bool:
        return (self._dir(name) / "meta.json").is_file()

    def _take_lock(self, name: str) -> int:
        """flock the collection's lock file (waiting up to timeout_s); StoreError names the holder."""
        path = self._dir(name) / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, self.timeout_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise StoreError(
                        f"collection {name!r} is open in another process ({holder}); an edge shard can be "
                        "open in one process at a time",
                        detail="stop that process (e.g. `vitrina serve`), write through its HTTP API, "
                               "or use the qdrant backend for several writers") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:200]}".encode(), 0)
        return fd

    def _open(self, name: str) -> _Handle:
        if not self._exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        fd = self._take_lock(name)
        try:
            meta = json.loads((self._dir(name) / "meta.json").read_text())
            shard = qe.EdgeShard.load(str(self._dir(name) / "shard"))
        except Exception as e:
            os.close(fd)
            raise StoreError(f"cannot open collection {name!r}: {e}") from e
        return _Handle(shard, fd, meta)

    def resolve(self, name: str) -> str:
        """The collection behind `name`: an alias's target (re-read when its pointer file changed), or name."""
        path = self.root / "aliases" / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            with self._lock:
                old = self._aliases.pop(name, None)
            if old:
                self._moved_away(old[1])
            return name
        key = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            cached = self._aliases.get(name)
            if cached and cached[0] == key:
                return cached[1]
        target = path.read_text().strip()
        with self._lock:
            old = self._aliases.get(name)
            self._aliases[name] = (key, target)
            self._moved_from.discard(target)
        if old and old[1] != target:
            log.info("alias %r moved %s -> %s: releasing the old shard", name, old[1], target)
            self._moved_away(old[1])
        return target

    def _moved_away(self, name: str) -> None:
        """An alias stopped pointing at `name`: close it once idle, and after each later use, until an
        alias points at it again (so a search that resolved the alias just before the swap cannot
        leave the old shard open in this process, where it would block the indexer from dropping it)."""
        with self._lock:
            if name in {t for _, t in self._aliases.values()}:
                return
            self._moved_from.add(name)
        self._retire(name)

    def _acquire(self, target: str) -> _Handle:
        """Count a user on the open handle of `target`, opening it first (outside the store lock)."""
        with self._lock:
            handle = self._handles.get(target)
            if handle is not None:
                handle.users += 1
                return handle
            opener = self._openers.setdefault(target, threading.Lock())
        with opener:  # one opener per collection; others wait for it rather than fight over the flock
            with self._lock:
                handle = self._handles.get(target)
                if handle is not None:
                    handle.users += 1
                    return handle
            handle = self._open(target)
            with self._lock:
                self._handles[target] = handle
                handle.users += 1
                return handle

    def _release(self, target: str, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            idle = handle.users == 0
            if idle and target in self._moved_from and self._handles.get(target) is handle:
                del self._handles[target]
                handle.retired = True
            closing = idle and handle.retired and not handle.closed
            handle.closed = handle.closed or closing
        if closing:
            handle.close()

    @contextmanager
    def _use(self, name: str) -> Iterator[_Handle]:
        """The open handle of collection or alias `name` for the duration of one call."""
        if self._closed:
            raise StoreError("the store is closed")
        target = self.resolve(_check_name(name))
        handle = self._acquire(target)
        try:
            yield handle
        except (StoreError, NotFound, BadInput):
            raise
        except Exception as e:  # engine errors arrive as plain Exception
            raise StoreError(f"edge store: {target}: {e}") from e
        finally:
            self._release(target, handle)

    def _retire(self, name: str) -> None:
        """Close this process's handle on `name` now, or when the last running call on it ends."""
        with self._lock:
            handle = self._handles.pop(name, None)
            if handle is None:
                return
            handle.retired = True
            closing = handle.users == 0 and not handle.closed
            handle.closed = handle.closed or closing
        if closing:
            handle.close()

    # ---- collections and aliases ------------------------------------------------------------------
    def create_collection(self, name: str, dims: dict[str, int], filterable: Sequence[str],
                          numeric: Sequence[str]) -> None:
        _check_name(name)
        if self._exists(name) or (self.root / "aliases" / name).exists():
            raise StoreError(f"collection or alias {name!r} already exists")
        unknown = set(dims) - set(DENSE_VECTORS)
        if unknown or not dims:
            raise StoreError(f"dims must name some of {DENSE_VECTORS}, got {sorted(dims)}")
        folder = self._dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd = self._take_lock(name)  # a concurrent creator of the same name holds it
        if self._exists(name):
            os.close(fd)
            raise StoreError(f"collection {name!r} already exists")
        shutil.rmtree(folder / "shard", ignore_errors=True)  # a half-created one (no meta.json) from a crash
        numeric_fields = sorted(set(numeric) | {PRICE_FIELD})
        config = qe.EdgeConfig(
            vectors={k: qe.EdgeVectorParams(int(d), qe.Distance.Cosine) for k, d in dims.items()},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=qe.HnswIndexConfig(**_HNSW))
        try:
            shard = qe.EdgeShard.create(str(folder / "shard"), config)
            for field in sorted(set(filterable) | {ID_FIELD}):
                shard.update(qe.UpdateOperation.create_field_index(field, qe.KeywordIndexParams()))
            for field in numeric_fields:
                shard.update(qe.UpdateOperation.create_field_index(field, qe.FloatIndexParams()))
            shard.flush()
        except Exception as e:
            shutil.rmtree(folder / "shard", ignore_errors=True)
            os.close(fd)
            raise StoreError(f"cannot create collection {name!r}: {e}") from e
        meta = {"dims": {k: int(d) for k, d in dims.items()}, "filterable": sorted(set(filterable)),
                "numeric": numeric_fields, "created": time.time()}
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "meta.json")
        with self._lock:
            self._handles[name] = _Handle(shard, fd, meta)

    def drop_collection(self, name: str) -> None:
        _check_name(name)
        if not self._exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        self._retire(name)
        fd = self._take_lock(name)  # nobody else may have it open while it goes
        try:
            for alias, target in self.list_aliases().items():
                if target == name:
                    self.drop_alias(alias)
            (self._dir(name) / "meta.json").unlink()
            shutil.rmtree(self._dir(name), ignore_errors=True)
        finally:
            os.close(fd)

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in (self.root / "collections").iterdir() if (p / "meta.json").is_file())

    def collection_info(self, name: str) -> CollectionInfo:
        with self._use(name) as h:
            points = h.shard.info().points_count
            return CollectionInfo(name=self.resolve(name), points=points, dims=dict(h.meta["dims"]))

    def get_alias(self, alias: str) -> str | None:
        try:
            return (self.root / "aliases" / _check_name(alias, "alias")).read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically: a search sees the old or the new, never neither."""
        _check_name(alias, "alias")
        if not self._exists(collection):
            raise NotFound(f"collection {collection!r} does not exist")
        if self._exists(alias):
            raise StoreError(f"{alias!r} is a collection; an alias cannot have its name")
        self._retire(collection)  # let a reader in another process open it (this process reopens lazily)
        path = self.root / "aliases" / alias
        tmp = path.with_name(f".{alias}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(collection)
        os.replace(tmp, path)

    def list_aliases(self) -> dict[str, str]:
        folder = self.root / "aliases"
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    def drop_alias(self, alias: str) -> bool:
        try:
            (self.root / "aliases" / _check_name(alias, "alias")).unlink()
            return True
        except FileNotFoundError:
            return False

    # ---- writes -----------------------------------------------------------------------------------
    def upsert(self, collection: str, items: Sequence[ItemRecord]) -> None:
        with self._use(collection) as h:
            latest = {item.id: item for item in items}  # the same id twice in a batch: the last wins
            points = []
            for item in latest.values():
                check_item(item, h.meta["dims"])
                vectors: dict[str, Any] = {k: _dense(v).tolist() for k, v in item.vectors.items()}
                sparse = keywords.document_vector(item.keywords, self.bm25_avg_len)
                if sparse:
                    vectors[SPARSE_VECTOR] = qe.SparseVector(list(sparse.indices), list(sparse.values))
                points.append(qe.Point(point_id(item.id), vectors, plain_payload(item)))
            if points:
                h.shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        pids = list(dict.fromkeys(point_id(i) for i in ids))
        with self._use(collection) as h:
            present = [r.id for r in h.shard.retrieve(pids, with_payload=False, with_vector=False)]
            if present:
                h.shard.update(qe.UpdateOperation.delete_points(present))
            return len(present)

    def flush(self, collection: str) -> None:
        with self._use(collection) as h:
            h.shard.flush()

    def finalize(self, collection: str) -> None:
        """Flush, then build HNSW and merge segments (blocks until the optimizers are done)."""
        with self._use(collection) as h:
            h.shard.flush()
            h.shard.optimize()
            h.shard.flush()

    # ---- reads ------------------------------------------------------------------------------------
    def count(self, collection: str, filters: Filters | None = None) -> int:
        with self._use(collection) as h:
            return int(h.shard.count(qe.CountRequest(exact=True, filter=edge_filter(filters))))

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Hit]:
        wanted = list(dict.fromkeys(ids))
        with self._use(collection) as h:
            vectors = vector_names(with_vectors, h.meta["dims"])
            records = h.shard.retrieve([point_id(i) for i in wanted], with_payload=True, with_vector=vectors)
        found = {hit.id: hit for hit in (_hit(r, 1.0, with_vectors) for r in records)}
        return [found[i] for i in wanted if i in found]

    def _request(self, query: Query, flt: qe.Filter | None, limit: int, offset: int,
                 with_vectors: list[str] | bool, dims: dict[str, int], with_payload: bool = True
                 ) -> qe.QueryRequest | None:
        params = qe.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None
        payload: Any = True if with_payload else [ID_FIELD]
        if isinstance(query, HybridQuery):
            if query.weights and len(query.weights) != len(query.parts):
                raise BadInput(f"HybridQuery has {len(query.parts)} parts but {len(query.weights)} weights")
            pairs = [(self._scoring(p, dims), w) for p, w in
                     zip(query.parts, query.weights or (1.0,) * len(query.parts))]
            pairs = [(s, w) for s, w in pairs if s is not None]  # a keyword part with no indexable word
            if not pairs:
                return None
            prefetches = [qe.Prefetch(limit=query.candidates, query=s, filter=flt, params=params) for s, _ in pairs]
            fusion = qe.Fusion.Rrf(k=query.rrf_k, weights=[float(w) for _, w in pairs])
            return qe.QueryRequest(limit=limit, offset=offset, query=fusion, prefetches=prefetches, filter=flt,
                                   with_payload=payload, with_vector=with_vectors)
        scoring = self._scoring(query, dims)
        if scoring is None:
            return None
        return qe.QueryRequest(limit=limit, offset=offset, query=scoring, filter=flt, params=params,
                               with_payload=payload, with_vector=with_vectors)

    @staticmethod
    def _scoring(part: DenseQuery | KeywordQuery, dims: dict[str, int]) -> qe.Query | None:
        if isinstance(part, DenseQuery):
            check_query_vector(part, dims)
            return qe.Query.Nearest(_dense(part.vector).tolist(), using=part.using)
        if isinstance(part, KeywordQuery):
            sparse = keywords.query_vector(part.text)
            if not sparse:
                return None
            return qe.Query.Nearest(qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE_VECTOR)
        raise BadInput(f"not a query: {type(part).__name__}")

    def query(self, collection: str, query: Query, filters: Filters | None = None, limit: int = 10,
              offset: int = 0, with_vectors: WithVectors = False, with_payload: bool = True) -> list[Hit]:
        return self.query_batch(collection, [query], filters, limit, offset, with_vectors, with_payload)[0]

    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        """Several queries with the same filters in one engine call; one result list per query.
        `with_payload=False` returns only ID_FIELD of each payload (ids and scores are all a caller needs)."""
        if limit <= 0:
            return [[] for _ in queries]
        flt = edge_filter(filters)
        with self._use(collection) as h:
            vectors = vector_names(with_vectors, h.meta["dims"])
            requests = [self._request(q, flt, limit, max(0, offset), vectors, h.meta["dims"], with_payload)
                        for q in queries]
            live = [r for r in requests if r is not None]
            results = iter(h.shard.query_batch(qe.QueryBatchRequest(live)) if len(live) > 1
                           else [h.shard.query(r) for r in live])
            return [[_hit(p, p.score, with_vectors) for p in next(results)] if r is not None else []
                    for r in requests]

    def facets(self, collection: str, fields: Sequence[str], filters: Filters | None = None,
               limit: int = 20) -> dict[str, dict[str, int]]:
        flt = edge_filter(filters)
        out: dict[str, dict[str, int]] = {}
        with self._use(collection) as h:
            for field in fields:
                response = h.shard.facet(qe.FacetRequest(field, limit=limit, exact=True, filter=flt))
                hits = sorted(response.hits, key=lambda f: (-f.count, str(f.value)))
                out[field] = {str(f.value): int(f.count) for f in hits}
        return out

    def scroll(self, collection: str, batch: int = 1000, with_vectors: WithVectors = False) -> Iterator[Hit]:
        offset: Any = None
        while True:
            with self._use(collection) as h:
                vectors = vector_names(with_vectors, h.meta["dims"])
                records, offset = h.shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, with_payload=True,
                                                                  with_vector=vectors))
            for r in records:
                yield _hit(r, 0.0, with_vectors)
            if offset is None or not records:
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for name in list(self._handles):
                self._retire(name)

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
