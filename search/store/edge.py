"""The embedded backend: one Qdrant Edge shard per collection on local disk, with file aliases and locks.

Layout under `root`:
    collections/<name>/shard/      the EdgeShard (segments, WAL)
    collections/<name>/meta.json   dims, filterable and numeric fields (written last: no meta, no collection)
    collections/<name>/lock        flock'ed by the one process that has the shard open; holds its pid
    aliases/<alias>                the collection name, replaced atomically (write temp + os.replace)

The open shards, their locks and the alias pointers are kept by search/store/edge_shards.py's ShardPool.

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

import functools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import qdrant_edge as qe

from search.store import keywords
from search.store.edge_shards import ShardHandle, ShardPool, check_name
from search.store.interface import (DENSE_VECTORS, ID_FIELD, INT8_QUANTILE, PRICE_FIELD, SPARSE_VECTOR,
                                    CollectionInfo, DenseQuery, Filters, Hit, HybridQuery, ItemRecord, KeywordQuery,
                                    QueriesInBatches, Query, WithVectors, best_first, check_item, check_query_vector,
                                    facet_values, new_hit, part_limit, payload_changes, plain_payload, point_id,
                                    segment_cap_kb, vector_names, vectors_kb)
from vitrina.errors import BadInput, NotFound, StoreError

if TYPE_CHECKING:
    from vitrina.config import StoreConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """How a new collection's indexes are built ([store] hnsw_m, hnsw_ef_construct, full_scan_kb, payload_links,
    max_segment_kb, max_segment_points).

    `payload_links`: the engine also builds HNSW links within each value of every indexed payload field (and
    range blocks of numeric ones) holding more than full_scan_kb of vectors, for filtered search at low
    selectivity. Filters matching fewer vectors than that are searched exactly over the payload index anyway,
    so below a few hundred thousand items the extra links are build time for nothing; the item id field never
    gets them (every value is one item).
    """

    m: int = 16
    ef_construct: int = 100
    full_scan_kb: int = 10_000
    payload_links: bool = True
    max_segment_kb: int = 0  # 0: the engine's default (256 MB of vectors per core)
    max_segment_points: int = 0  # the same cap counted in points (0: none); the smaller of the two applies
    quantization: str = "none"  # "int8": a scalar-quantised copy of the dense vectors ([store].quantization)

    @classmethod
    def of(cls, sc: StoreConfig) -> IndexSettings:
        """The settings [store] names."""
        return cls(m=sc.hnsw_m, ef_construct=sc.hnsw_ef_construct, full_scan_kb=sc.full_scan_kb,
                   payload_links=sc.payload_links, max_segment_kb=sc.max_segment_kb,
                   max_segment_points=sc.max_segment_points, quantization=sc.quantization)

    def hnsw(self) -> qe.HnswIndexConfig:
        return qe.HnswIndexConfig(m=self.m, ef_construct=self.ef_construct, full_scan_threshold=self.full_scan_kb)

    def quantized(self) -> qe.ScalarQuantizationConfig | None:
        """int8 (search.store.interface.INT8_QUANTILE), the codes kept in memory; None for "none"."""
        if self.quantization == "none":
            return None
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=INT8_QUANTILE, always_ram=True)

    def segment_kb(self, dims: Mapping[str, int]) -> int:
        """The largest segment, in KB of vectors, for a collection of these dense vectors (segment_cap_kb)."""
        return segment_cap_kb(self.max_segment_kb, self.max_segment_points, dims)

    def optimizers(self, dims: Mapping[str, int]) -> qe.EdgeOptimizersConfig | None:
        """Segments of at most segment_kb(dims): an HNSW graph costs more per point the larger it grows, so a large
        collection builds faster as several smaller graphs (each searched in turn). The engine never splits a
        segment, so a bulk load builds each one as it fills (EdgeStore.build_due); built segments are indexed
        from full_scan_kb on, and the optimiser merges them only while the merge stays under the limit."""
        limit = self.segment_kb(dims)
        if limit <= 0:
            return None
        return qe.EdgeOptimizersConfig(max_segment_size=limit, indexing_threshold=min(limit, max(1, self.full_scan_kb)))

    def field_index(self, field: str, numeric: bool) -> Any:
        links = {} if self.payload_links and field != ID_FIELD else {"enable_hnsw": False}
        return qe.FloatIndexParams(**links) if numeric else qe.KeywordIndexParams(**links)


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


@functools.lru_cache(maxsize=1 << 16)
def point_key(item_id: str) -> int:
    """The payload cache's key of an item: its point id as an int (what `point.id.int` gives for a result)."""
    return uuid.UUID(point_id(item_id)).int


def _vectors(point: Any, with_vectors: WithVectors) -> dict[str, np.ndarray]:
    if with_vectors and point.vector:
        return {k: _dense(v) for k, v in point.vector.items() if k in DENSE_VECTORS}
    return {}


def _hit(point: Any, score: float, with_vectors: WithVectors) -> Hit:
    payload = dict(point.payload or {})
    item_id = payload[ID_FIELD] if ID_FIELD in payload else point.id  # point.id builds a UUID: only when needed
    return Hit(id=str(item_id), score=float(score), payload=payload, vectors=_vectors(point, with_vectors))


def payloads_of(h: ShardHandle, keys: Sequence[int], ids: Sequence[Any]) -> list[dict[str, Any] | None]:
    """The payloads of points (by cache key; `ids` the same points as the engine takes them), from the shard's
    payload cache, the missing ones read from the shard in one call and cached; None for a point gone since."""
    cache = h.payloads
    generation = cache.generation
    out = cache.get_many(keys)
    missing = [i for i, p in enumerate(out) if p is None]
    if missing:
        records = h.shard.retrieve([ids[i] for i in missing], with_payload=True, with_vector=False)
        read = {r.id.int: dict(r.payload or {}) for r in records}
        cache.put(read, generation)
        for i in missing:
            payload = read.get(keys[i])
            out[i] = None if payload is None else dict(payload)
    return out


def cached_hits(h: ShardHandle, points: Sequence[Any], with_vectors: WithVectors, with_payload: bool = True,
                scored: bool = True) -> list[Hit]:
    """Hits of engine results read without payload: payloads from the shard's cache (search/store/payload_cache.py)."""
    return cached_hit_lists(h, [points], with_vectors, with_payload, scored)[0]


def cached_hit_lists(h: ShardHandle, lists: Sequence[Sequence[Any]], with_vectors: WithVectors,
                     with_payload: bool = True, scored: bool = True) -> list[list[Hit]]:
    """`cached_hits` of each result list of one batch, each point's payload read once however many lists hold it
    (a hybrid search's three lists share a third of their points; hits of one point share its payload copy).
    A search makes a few hundred of these, so the loop is kept tight (new_hit, one `.id` per point)."""
    ids = [[p.id for p in points] for points in lists]  # each `.id` builds a uuid.UUID (about 1 us): once per point
    unique = {i.int: i for row in ids for i in row}
    payloads = dict(zip(unique, payloads_of(h, list(unique), list(unique.values()))))
    out = []
    for points, row in zip(lists, ids):
        hits = []
        for p, pid in zip(points, row):
            payload = payloads[pid.int]
            if payload is None:  # deleted between the query and the payload read
                continue
            item_id = payload.get(ID_FIELD)
            item_id = str(pid) if item_id is None else str(item_id)
            hits.append(new_hit(item_id, float(p.score) if scored else 1.0,
                                payload if with_payload else {ID_FIELD: item_id},
                                _vectors(p, with_vectors) if with_vectors else {}))
        out.append(hits)
    return out


class EdgeStore(QueriesInBatches):
    """Store on Qdrant Edge shards under `root` (see the module docstring for files, processes, threads)."""

    def __init__(self, root: Path, timeout_s: float = 30.0, bm25_avg_len: float = keywords.DEFAULT_AVG_LEN,
                 hnsw_ef: int | None = None, payload_cache: int = 0, index: IndexSettings = IndexSettings(),
                 acorn: float = 0.0, oversampling: float = 2.0, search_threads: int = 0) -> None:
        self.root = Path(root)
        self.bm25_avg_len = bm25_avg_len
        self.hnsw_ef = hnsw_ef  # None = engine default
        self.acorn = acorn  # ACORN for filtered searches keeping at most this share of the points (0: off)
        self.oversampling = oversampling  # quantised collections: candidates re-scored in float32, x the limit
        self._search_params: tuple[tuple[Any, ...], qe.SearchParams] | None = None
        self.index = index
        (self.root / "collections").mkdir(parents=True, exist_ok=True)
        (self.root / "aliases").mkdir(parents=True, exist_ok=True)
        self._pool = ShardPool(self.root, timeout_s, payload_cache, search_threads)

    # ---- collections and aliases ------------------------------------------------------------------
    def create_collection(self, name: str, dims: dict[str, int], filterable: Sequence[str],
                          numeric: Sequence[str]) -> None:
        check_name(name)
        if self._pool.exists(name) or (self.root / "aliases" / name).exists():
            raise StoreError(f"collection or alias {name!r} already exists")
        unknown = set(dims) - set(DENSE_VECTORS)
        if unknown or not dims:
            raise StoreError(f"dims must name some of {DENSE_VECTORS}, got {sorted(dims)}")
        folder = self._pool.dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd = self._pool.take_lock(name)  # a concurrent creator of the same name holds it
        if self._pool.exists(name):
            os.close(fd)
            raise StoreError(f"collection {name!r} already exists")
        shutil.rmtree(folder / "shard", ignore_errors=True)  # a half-created one (no meta.json) from a crash
        numeric_fields = sorted(set(numeric) | {PRICE_FIELD})
        config = qe.EdgeConfig(
            vectors={k: qe.EdgeVectorParams(int(d), qe.Distance.Cosine) for k, d in dims.items()},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=self.index.hnsw(), optimizers=self.index.optimizers(dims),
            quantization_config=self.index.quantized())
        try:
            shard = qe.EdgeShard.create(str(folder / "shard"), config)
            for field in sorted(set(filterable) | {ID_FIELD}):
                shard.update(qe.UpdateOperation.create_field_index(field, self.index.field_index(field, False)))
            for field in numeric_fields:
                shard.update(qe.UpdateOperation.create_field_index(field, self.index.field_index(field, True)))
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
        self._pool.adopt(name, ShardHandle(shard, fd, meta, self._pool.payload_cache))

    def drop_collection(self, name: str) -> None:
        check_name(name)
        if not self._pool.exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        self._pool.retire(name)
        fd = self._pool.take_lock(name)  # nobody else may have it open while it goes
        try:
            for alias, target in self.list_aliases().items():
                if target == name:
                    self.drop_alias(alias)
            (self._pool.dir(name) / "meta.json").unlink()
            shutil.rmtree(self._pool.dir(name), ignore_errors=True)
        finally:
            os.close(fd)

    def segments(self, collection: str) -> int:
        """How many segments the collection's shard holds (each an HNSW graph of its own once built)."""
        with self._pool.use(collection) as h:
            return int(h.shard.info().segments_count)

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in (self.root / "collections").iterdir() if (p / "meta.json").is_file())

    def collection_info(self, name: str) -> CollectionInfo:
        with self._pool.use(name) as h:
            points = h.shard.info().points_count
            return CollectionInfo(name=self.resolve(name), points=points, dims=dict(h.meta["dims"]))

    def get_alias(self, alias: str) -> str | None:
        try:
            return (self.root / "aliases" / check_name(alias, "alias")).read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically: a search sees the old or the new, never neither."""
        check_name(alias, "alias")
        if not self._pool.exists(collection):
            raise NotFound(f"collection {collection!r} does not exist")
        if self._pool.exists(alias):
            raise StoreError(f"{alias!r} is a collection; an alias cannot have its name")
        self._pool.retire(collection)  # let a reader in another process open it (this process reopens lazily)
        path = self.root / "aliases" / alias
        tmp = path.with_name(f".{alias}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(collection)
        os.replace(tmp, path)

    def list_aliases(self) -> dict[str, str]:
        folder = self.root / "aliases"
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    def drop_alias(self, alias: str) -> bool:
        try:
            (self.root / "aliases" / check_name(alias, "alias")).unlink()
            return True
        except FileNotFoundError:
            return False

    # ---- writes -----------------------------------------------------------------------------------
    def upsert(self, collection: str, items: Sequence[ItemRecord]) -> None:
        with self._pool.use(collection) as h:
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
                h.payloads.drop(point_key(i) for i in latest)  # after the write: see PayloadCache
                h.unsealed_kb += vectors_kb(len(points), h.meta["dims"])

    def build_due(self, collection: str) -> bool:
        """During a bulk load with a segment cap ([store].max_segment_kb or max_segment_points): once that much has
        been upserted since the last build, build it now as a segment of its own (its HNSW graph; new points go to
        a fresh segment), so a large collection ends as several graphs of about that size rather than one huge
        one. True when it built."""
        with self._pool.use(collection) as h:
            limit = self.index.segment_kb(h.meta["dims"])
            if limit <= 0 or h.unsealed_kb < limit:
                return False
            h.shard.flush()
            h.shard.optimize()
            h.unsealed_kb = 0.0
            return True

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        pids = list(dict.fromkeys(point_id(i) for i in ids))
        with self._pool.use(collection) as h:
            present = [r.id for r in h.shard.retrieve(pids, with_payload=False, with_vector=False)]
            if present:
                h.shard.update(qe.UpdateOperation.delete_points(present))
                h.payloads.drop(r.int for r in present)
            return len(present)

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
        split = {item_id: payload_changes(fields) for item_id, fields in changes.items()}
        with self._pool.use(collection) as h:
            present = {str(r.id) for r in h.shard.retrieve([point_id(i) for i in split], with_payload=False,
                                                           with_vector=False)}
            changed = [i for i in split if point_id(i) in present]
            for item_id in changed:
                sets, removes = split[item_id]
                if sets:
                    h.shard.update(qe.UpdateOperation.set_payload([point_id(item_id)], sets))
                if removes:
                    h.shard.update(qe.UpdateOperation.delete_payload([point_id(item_id)], removes))
            if changed:
                h.payloads.drop(point_key(i) for i in changed)  # after the write: see PayloadCache
            return changed

    def flush(self, collection: str) -> None:
        with self._pool.use(collection) as h:
            h.shard.flush()

    def finalize(self, collection: str) -> None:
        """Flush, then build HNSW and merge segments (blocks until the optimizers are done)."""
        with self._pool.use(collection) as h:
            h.shard.flush()
            h.shard.optimize()
            h.shard.flush()
            h.unsealed_kb = 0.0  # everything upserted so far is built (see build_due)

    # ---- reads ------------------------------------------------------------------------------------
    def count(self, collection: str, filters: Filters | None = None) -> int:
        with self._pool.use(collection) as h:
            return int(h.shard.count(qe.CountRequest(exact=True, filter=edge_filter(filters))))

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Hit]:
        wanted = list(dict.fromkeys(ids))
        with self._pool.use(collection) as h:
            vectors = vector_names(with_vectors, h.meta["dims"])
            if not vectors:  # payloads only: from the cache when it has them all
                payloads = payloads_of(h, [point_key(i) for i in wanted], [point_id(i) for i in wanted])
                return [new_hit(i, 1.0, p, {}) for i, p in zip(wanted, payloads) if p is not None]
            records = h.shard.retrieve([point_id(i) for i in wanted], with_payload=False, with_vector=vectors)
            found = {hit.id: hit for hit in cached_hits(h, records, with_vectors, scored=False)}
        return [found[i] for i in wanted if i in found]

    def _request(self, query: Query, flt: qe.Filter | None, limit: int, offset: int,
                 with_vectors: list[str] | bool, dims: dict[str, int]) -> qe.QueryRequest | None:
        params = self._params()
        payload = False  # payloads come from the shard's cache (cached_hits)
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

    def _params(self) -> qe.SearchParams | None:
        """The search parameters of every query, built once for the store's current settings."""
        key = (self.hnsw_ef, self.acorn, self.oversampling)
        if self._search_params is None or self._search_params[0] != key:
            settings: dict[str, Any] = {"hnsw_ef": self.hnsw_ef} if self.hnsw_ef else {}
            if self.acorn > 0:
                settings["acorn"] = qe.AcornSearchParams(enable=True, max_selectivity=self.acorn)
            # a collection without quantised vectors ignores this
            settings["quantization"] = qe.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
            self._search_params = (key, qe.SearchParams(**settings))
        return self._search_params[1]

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


    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        if limit <= 0:
            return [[] for _ in queries]
        flt = edge_filter(filters)
        with self._pool.use(collection) as h:
            vectors = vector_names(with_vectors, h.meta["dims"])
            requests = [self._request(q, flt, part_limit(q, limit), max(0, offset), vectors, h.meta["dims"])
                        for q in queries]
            live = [r for r in requests if r is not None]
            results = h.shard.query_batch(qe.QueryBatchRequest(live)) if len(live) > 1 \
                else [h.shard.query(r) for r in live]
            lists = iter(cached_hit_lists(h, results, with_vectors, with_payload))
            return [best_first(next(lists)) if r is not None else [] for r in requests]

    def facets(self, collection: str, fields: Sequence[str], filters: Filters | None = None,
               limit: int = 20) -> dict[str, dict[str, int]]:
        flt = edge_filter(filters)
        out: dict[str, dict[str, int]] = {}
        with self._pool.use(collection) as h:
            for field in fields:
                response = h.shard.facet(qe.FacetRequest(field, limit=limit, exact=True, filter=flt))
                out[field] = facet_values(response.hits)
        return out

    def scroll(self, collection: str, batch: int = 1000, with_vectors: WithVectors = False) -> Iterator[Hit]:
        offset: Any = None
        while True:
            with self._pool.use(collection) as h:
                vectors = vector_names(with_vectors, h.meta["dims"])
                records, offset = h.shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, with_payload=True,
                                                                  with_vector=vectors))
            for r in records:
                yield _hit(r, 0.0, with_vectors)
            if offset is None or not records:
                return

    def preload(self, collection: str, batch: int = 1000) -> int:
        """Read the payloads of the collection's first points (by id) into its shard's payload cache, as many as
        the cache holds (all of the fashion index's 44k, in ~1 s): without it a fresh server's first thousands of
        searches each read some from the engine. Returns how many the cache holds then."""
        offset: Any = None
        with self._pool.use(collection) as h:
            cache = h.payloads
            while len(cache) < cache.capacity:
                generation = cache.generation
                limit = min(batch, cache.capacity - len(cache))
                records, offset = h.shard.scroll(qe.ScrollRequest(offset=offset, limit=limit, with_payload=True,
                                                                  with_vector=False))
                cache.put({r.id.int: dict(r.payload or {}) for r in records}, generation)
                if offset is None or not records:
                    break
            return len(cache)

    def resolve(self, name: str) -> str:
        """The collection behind `name`: an alias's target, or name itself."""
        return self._pool.resolve(name)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
