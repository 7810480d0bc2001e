"""The client backend: a Qdrant server or cluster (`url`), or qdrant-client's local mode (`path`, ":memory:").

Behaves like EdgeStore (same ids, payload, BM25 vectors from search.store.keywords, RRF fusion in the
engine) and uses Qdrant's own aliases, which every client sees at once. Local mode is pure Python,
meant for tests and small catalogues: it ignores payload indexes, searches by brute force, and is
not thread-safe, so calls on a local client are serialised here. A remote client is thread-safe.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from search.store import keywords
from search.store.interface import (DENSE_VECTORS, ID_FIELD, INT8_QUANTILE, PRICE_FIELD, SPARSE_VECTOR,
                                    CollectionInfo, DenseQuery, Filters, Hit, HybridQuery, ItemRecord, KeywordQuery,
                                    QueriesInBatches, Query, WithVectors, best_first, check_item, check_query_vector,
                                    facet_values, part_limit, payload_changes, plain_payload, point_id, segment_cap_kb,
                                    vector_names)
from vitrina.config import StoreConfig
from vitrina.errors import BadInput, NotFound, StoreError, VitrinaError

log = logging.getLogger(__name__)
DIMS_TTL_S = 10.0


def qdrant_filter(filters: Filters | None) -> models.Filter | None:
    """Filters as a Qdrant filter: any-of per field, inclusive ranges, excluded ids (must_not has_id)."""
    if not filters:
        return None
    must: list[Any] = [models.FieldCondition(key=k, match=models.MatchAny(any=[str(v) for v in vals]))
                       for k, vals in filters.equals.items()]
    must += [models.FieldCondition(key=k, range=models.Range(gte=lo, lte=hi))
             for k, (lo, hi) in filters.ranges.items() if lo is not None or hi is not None]
    if filters.only_ids:
        must.append(models.HasIdCondition(has_id=sorted({point_id(i) for i in filters.only_ids})))
    must_not: list[Any] = ([models.HasIdCondition(has_id=sorted({point_id(i) for i in filters.exclude_ids}))]
                           if filters.exclude_ids else [])
    return models.Filter(must=must or None, must_not=must_not or None)


def _hit(point: Any, score: float, with_vectors: WithVectors) -> Hit:
    payload = dict(point.payload or {})
    vectors = {}
    if with_vectors and isinstance(point.vector, dict):
        vectors = {k: np.asarray(v, dtype=np.float32) for k, v in point.vector.items() if k in DENSE_VECTORS}
    return Hit(id=str(payload.get(ID_FIELD, point.id)), score=float(score), payload=payload, vectors=vectors)


class QdrantStore(QueriesInBatches):
    """Store on a QdrantClient; `from_config` picks server, local folder or memory."""

    def __init__(self, client: QdrantClient, local: bool, timeout_s: float = 30.0,
                 bm25_avg_len: float = keywords.DEFAULT_AVG_LEN, hnsw_ef: int | None = None, acorn: float = 0.0,
                 hnsw: tuple[int, int, int] = (16, 100, 10_000), quantization: str = "none", oversampling: float = 2.0,
                 segment_caps: tuple[int, int] = (0, 0)) -> None:
        self.client = client
        self.local = local
        self.timeout_s = timeout_s
        self.bm25_avg_len = bm25_avg_len
        self.hnsw_ef = hnsw_ef
        self.acorn = acorn  # [store].acorn_selectivity (a server applies it; local mode has no HNSW)
        self.hnsw = hnsw  # new collections: [store].hnsw_m, hnsw_ef_construct, full_scan_kb
        self.quantization = quantization  # new collections: [store].quantization
        self.oversampling = oversampling
        self.segment_caps = segment_caps  # new collections: [store].max_segment_kb, max_segment_points
        self._serial = threading.RLock() if local else None
        self._dims_cache: dict[str, tuple[float, dict[str, int]]] = {}

    @classmethod
    def from_config(cls, store_cfg: StoreConfig) -> QdrantStore:
        """`url` (+ API key from $api_key_env) for a server or cluster; else `path`, else in memory."""
        sc = store_cfg
        settings = {"timeout_s": sc.timeout_s, "bm25_avg_len": sc.bm25_avg_len, "hnsw_ef": sc.hnsw_ef or None,
                    "acorn": sc.acorn_selectivity, "hnsw": (sc.hnsw_m, sc.hnsw_ef_construct, sc.full_scan_kb),
                    "quantization": sc.quantization, "oversampling": sc.quantization_oversampling,
                    "segment_caps": (sc.max_segment_kb, sc.max_segment_points)}
        try:
            if sc.url:
                api_key = (os.environ.get(sc.api_key_env) or None) if sc.api_key_env else None
                client = QdrantClient(url=sc.url, api_key=api_key, timeout=max(1, int(sc.timeout_s)))
                return cls(client, local=False, **settings)
            location = sc.path or ":memory:"
            if location == ":memory:":
                if not sc.path:
                    log.warning("qdrant backend without url or path: an in-memory store, lost on exit")
                client = QdrantClient(location=":memory:")
            else:
                client = QdrantClient(path=location)
        except (RuntimeError, ValueError, OSError) as e:  # e.g. the local folder is held by another process
            raise StoreError(f"cannot open the qdrant store: {e}") from e
        return cls(client, local=True, **settings)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Serialise local mode; turn client errors into NotFound / StoreError."""
        with self._serial if self._serial is not None else nullcontext():
            try:
                yield
            except VitrinaError:
                raise
            except UnexpectedResponse as e:
                if e.status_code == 404:
                    raise NotFound(f"{what}: not found") from e
                raise StoreError(f"qdrant {what}: {e}") from e
            except (ResponseHandlingException, RuntimeError, OSError) as e:
                raise StoreError(f"qdrant {what}: {e}") from e
            except ValueError as e:  # local mode: "Collection x not found", bad arguments
                if "not found" in str(e).lower():
                    raise NotFound(f"{what}: {e}") from e
                raise StoreError(f"qdrant {what}: {e}") from e

    def _dims(self, name: str, fresh: bool = False) -> dict[str, int]:
        """Dense vector sizes of collection or alias `name`, cached for DIMS_TTL_S (saves a round trip
        per query; after a swap to a collection of other sizes, the server's own check still applies)."""
        now = time.monotonic()
        cached = self._dims_cache.get(name)
        if cached and not fresh and now - cached[0] < DIMS_TTL_S:
            return cached[1]
        vectors = self.client.get_collection(name).config.params.vectors
        dims = {k: int(v.size) for k, v in (vectors or {}).items()} if isinstance(vectors, dict) else {}
        self._dims_cache[name] = (now, dims)
        return dims

    # ---- collections and aliases ------------------------------------------------------------------
    def create_collection(self, name: str, dims: dict[str, int], filterable: Sequence[str],
                          numeric: Sequence[str]) -> None:
        unknown = set(dims) - set(DENSE_VECTORS)
        if unknown or not dims:
            raise StoreError(f"dims must name some of {DENSE_VECTORS}, got {sorted(dims)}")
        with self._call(f"create {name}"):
            if name in {c.name for c in self.client.get_collections().collections} or name in self.list_aliases():
                raise StoreError(f"collection or alias {name!r} already exists")
            cap = segment_cap_kb(*self.segment_caps, dims)  # the server's optimiser keeps segments under it
            self.client.create_collection(
                name,
                vectors_config={k: models.VectorParams(size=int(d), distance=models.Distance.COSINE)
                                for k, d in dims.items()},
                quantization_config=None if self.quantization == "none" else models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=INT8_QUANTILE,
                                                           always_ram=True)),
                sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                optimizers_config=models.OptimizersConfigDiff(max_segment_size=cap) if cap else None,
                hnsw_config=models.HnswConfigDiff(m=self.hnsw[0], ef_construct=self.hnsw[1],
                                                  full_scan_threshold=self.hnsw[2]))
            schema = [(f, models.PayloadSchemaType.KEYWORD) for f in sorted(set(filterable) | {ID_FIELD})]
            schema += [(f, models.PayloadSchemaType.FLOAT) for f in sorted(set(numeric) | {PRICE_FIELD})]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for field, kind in schema:
                    self.client.create_payload_index(name, field, field_schema=kind, wait=True)

    def drop_collection(self, name: str) -> None:
        with self._call(f"drop {name}"):
            if name not in {c.name for c in self.client.get_collections().collections}:
                raise NotFound(f"collection {name!r} does not exist")
            for alias, target in self.list_aliases().items():
                if target == name:
                    self.drop_alias(alias)
            self.client.delete_collection(name)
            self._dims_cache.clear()

    def list_collections(self) -> list[str]:
        with self._call("list collections"):
            return sorted(c.name for c in self.client.get_collections().collections)

    def collection_info(self, name: str) -> CollectionInfo:
        with self._call(f"info {name}"):
            target = self.get_alias(name) or name
            count = self.client.count(target, exact=True).count
            return CollectionInfo(name=target, points=int(count), dims=self._dims(target, fresh=True))

    def list_aliases(self) -> dict[str, str]:
        with self._call("list aliases"):
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def get_alias(self, alias: str) -> str | None:
        return self.list_aliases().get(alias)

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically: a search sees the old or the new, never neither."""
        with self._call(f"alias {alias} -> {collection}"):
            names = {c.name for c in self.client.get_collections().collections}
            if collection not in names:
                raise NotFound(f"collection {collection!r} does not exist")
            if alias in names:
                raise StoreError(f"{alias!r} is a collection; an alias cannot have its name")
            ops: list[Any] = []
            if alias in self.list_aliases():
                ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
            ops.append(models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
            self.client.update_collection_aliases(ops)
            self._dims_cache.pop(alias, None)

    def drop_alias(self, alias: str) -> bool:
        with self._call(f"drop alias {alias}"):
            if alias not in self.list_aliases():
                return False
            self.client.update_collection_aliases(
                [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))])
            return True

    # ---- writes -----------------------------------------------------------------------------------
    def upsert(self, collection: str, items: Sequence[ItemRecord]) -> None:
        with self._call(f"upsert {collection}"):
            dims = self._dims(collection)
            points = []
            for item in {item.id: item for item in items}.values():  # the same id twice: the last wins
                check_item(item, dims)
                vectors: dict[str, Any] = {k: np.asarray(v, dtype=np.float32).tolist()
                                           for k, v in item.vectors.items()}
                sparse = keywords.document_vector(item.keywords, self.bm25_avg_len)
                if sparse:
                    vectors[SPARSE_VECTOR] = models.SparseVector(indices=list(sparse.indices),
                                                                 values=list(sparse.values))
                points.append(models.PointStruct(id=point_id(item.id), vector=vectors, payload=plain_payload(item)))
            if points:
                self.client.upsert(collection, points=points, wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        pids = list(dict.fromkeys(point_id(i) for i in ids))
        with self._call(f"delete from {collection}"):
            present = [r.id for r in self.client.retrieve(collection, pids, with_payload=False, with_vectors=False)]
            if present:
                self.client.delete(collection, points_selector=models.PointIdsList(points=present), wait=True)
            return len(present)

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
        split = {item_id: payload_changes(fields) for item_id, fields in changes.items()}
        with self._call(f"set payload in {collection}"):
            present = {str(r.id) for r in self.client.retrieve(collection, [point_id(i) for i in split],
                                                                with_payload=False, with_vectors=False)}
            changed = [i for i in split if point_id(i) in present]
            ops: list[Any] = []
            for item_id in changed:
                sets, removes = split[item_id]
                if sets:
                    ops.append(models.SetPayloadOperation(set_payload=models.SetPayload(
                        payload=sets, points=[point_id(item_id)])))
                if removes:
                    ops.append(models.DeletePayloadOperation(delete_payload=models.DeletePayload(
                        keys=removes, points=[point_id(item_id)])))
            if ops:
                self.client.batch_update_points(collection, ops, wait=True)
            return changed

    def flush(self, collection: str) -> None:
        """Nothing to do: a server persists every acknowledged write, local mode writes through."""
        with self._call(f"flush {collection}"):
            self.client.get_collection(collection)  # still raises NotFound for an unknown name

    def build_due(self, collection: str) -> bool:
        return False  # the server's optimizer sizes and builds its segments

    def segments(self, collection: str) -> int | None:
        with self._call(f"info {collection}"):
            return self.client.get_collection(collection).segments_count

    def finalize(self, collection: str) -> None:
        """Wait (up to timeout_s) until the server's optimizers have indexed the collection (status green)."""
        with self._call(f"finalize {collection}"):
            deadline = time.monotonic() + self.timeout_s
            while self.client.get_collection(collection).status != models.CollectionStatus.GREEN:
                if self.local or time.monotonic() > deadline:
                    log.warning("collection %s still optimizing after %.0f s", collection, self.timeout_s)
                    return
                time.sleep(0.5)

    # ---- reads ------------------------------------------------------------------------------------
    def count(self, collection: str, filters: Filters | None = None) -> int:
        with self._call(f"count {collection}"):
            return int(self.client.count(collection, count_filter=qdrant_filter(filters), exact=True).count)

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Hit]:
        wanted = list(dict.fromkeys(ids))
        with self._call(f"retrieve from {collection}"):
            records = self.client.retrieve(collection, [point_id(i) for i in wanted], with_payload=True,
                                           with_vectors=vector_names(with_vectors, self._dims(collection)))
        found = {hit.id: hit for hit in (_hit(r, 1.0, with_vectors) for r in records)}
        return [found[i] for i in wanted if i in found]

    @staticmethod
    def _part(part: DenseQuery | KeywordQuery, dims: dict[str, int]) -> tuple[Any, str] | None:
        if isinstance(part, DenseQuery):
            check_query_vector(part, dims)
            return np.asarray(part.vector, dtype=np.float32).tolist(), part.using
        if isinstance(part, KeywordQuery):
            sparse = keywords.query_vector(part.text)
            if not sparse:
                return None
            return models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)), SPARSE_VECTOR
        raise BadInput(f"not a query: {type(part).__name__}")

    def _request(self, query: Query, flt: models.Filter | None, limit: int, offset: int, vectors: Any,
                 dims: dict[str, int], with_payload: bool = True) -> models.QueryRequest | None:
        params = None
        if not self.local:  # local mode searches exactly
            acorn = models.AcornSearchParams(enable=True, max_selectivity=self.acorn) if self.acorn > 0 else None
            rescore = models.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
            params = models.SearchParams(hnsw_ef=self.hnsw_ef, acorn=acorn, quantization=rescore)
        common = dict(limit=limit, offset=offset, filter=flt, with_payload=True if with_payload else [ID_FIELD],
                      with_vector=vectors)
        if isinstance(query, HybridQuery):
            if query.weights and len(query.weights) != len(query.parts):
                raise BadInput(f"HybridQuery has {len(query.parts)} parts but {len(query.weights)} weights")
            pairs = [(self._part(p, dims), w) for p, w in
                     zip(query.parts, query.weights or (1.0,) * len(query.parts))]
            pairs = [(s, w) for s, w in pairs if s is not None]
            if not pairs:
                return None
            prefetch = [models.Prefetch(query=s[0], using=s[1], limit=query.candidates, filter=flt, params=params)
                        for s, _ in pairs]
            rrf = models.RrfQuery(rrf=models.Rrf(k=query.rrf_k, weights=[float(w) for _, w in pairs]))
            return models.QueryRequest(query=rrf, prefetch=prefetch, **common)
        scoring = self._part(query, dims)
        if scoring is None:
            return None
        return models.QueryRequest(query=scoring[0], using=scoring[1], params=params, **common)


    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        if limit <= 0:
            return [[] for _ in queries]
        flt = qdrant_filter(filters)
        with self._call(f"query {collection}"):
            dims = self._dims(collection)
            vectors: Any = vector_names(with_vectors, dims)
            requests = [self._request(q, flt, part_limit(q, limit), max(0, offset), vectors, dims, with_payload)
                        for q in queries]
            live = [r for r in requests if r is not None]
            responses = iter(self.client.query_batch_points(collection, requests=live) if live else [])
            return [best_first([_hit(p, p.score, with_vectors) for p in next(responses).points])
                    if r is not None else [] for r in requests]

    def facets(self, collection: str, fields: Sequence[str], filters: Filters | None = None,
               limit: int = 20) -> dict[str, dict[str, int]]:
        flt = qdrant_filter(filters)
        out: dict[str, dict[str, int]] = {}
        with self._call(f"facets {collection}"):
            for field in fields:
                response = self.client.facet(collection, field, facet_filter=flt, limit=limit, exact=True)
                out[field] = facet_values(response.hits)
        return out

    def scroll(self, collection: str, batch: int = 1000, with_vectors: WithVectors = False) -> Iterator[Hit]:
        offset: Any = None
        while True:
            with self._call(f"scroll {collection}"):
                records, offset = self.client.scroll(collection, limit=batch, offset=offset, with_payload=True,
                                                     with_vectors=with_vectors)
            for r in records:
                yield _hit(r, 0.0, with_vectors)
            if offset is None or not records:
                return

    def preload(self, collection: str) -> int:
        """Nothing to load: the server reads payloads itself."""
        return 0

    def close(self) -> None:
        with self._call("close"):
            self.client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
