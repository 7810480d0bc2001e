"""The typed vector-store interface every backend implements: item, query and hit types, shared checks."""

from __future__ import annotations

import dataclasses
import functools
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from vitrina.errors import BadInput, StoreError

# Named vectors stored per item. `image` is absent for items whose image could not be embedded
# (or while no trained image tower exists); `keywords` is the sparse BM25 vector.
DENSE_VECTORS = ("text", "image", "fused")
SPARSE_VECTOR = "keywords"
ID_FIELD = "item_id"  # payload key holding the external id, exactly as in the catalogue
# [store].quantization = "int8" on every backend: each dimension mapped linearly over the central 99% of its values,
# the codes kept in memory (searches find candidates with them and re-score in float32)
INT8_QUANTILE = 0.99
PRICE_FIELD = "price"  # always stored and indexed as a number (a float range index), like `numeric` fields
_ID_NAMESPACE = uuid.UUID("5b0c8a1e-0d6f-4d8e-9c43-7a1f1e2f9b11")


def vectors_kb(points: int, dims: Mapping[str, int]) -> float:
    """KB of float32 vectors that `points` points of a collection with these dense vectors hold."""
    return points * sum(dims.values()) * 4 / 1024


def segment_cap_kb(max_kb: int, max_points: int, dims: Mapping[str, int]) -> int:
    """The largest segment, in KB of float32 vectors, of a collection with these dense vectors: the smaller of
    [store].max_segment_kb and max_segment_points points' worth; 0 when neither is set (the engine decides)."""
    caps = [max_kb] if max_kb > 0 else []
    if max_points > 0:
        caps.append(math.ceil(vectors_kb(max_points, dims)))
    return min(caps, default=0)


@functools.lru_cache(maxsize=1 << 16)  # uuid5 (~5 us) was a third of the time a recommendation spent in reads
def point_id(item_id: str) -> str:
    """Stable Qdrant point id (a UUID string) for an external item id: reruns never duplicate."""
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


# `with_vectors` on reads: False (none), True (all named dense vectors), or the names wanted.
WithVectors = bool | Sequence[str]


def vector_names(with_vectors: WithVectors, dims: Sequence[str]) -> list[str] | bool:
    """The named vectors a read should return: all of `dims`, the requested subset of them, or False."""
    if with_vectors is True:
        return list(dims)
    if not with_vectors:
        return False
    return [name for name in with_vectors if name in dims] or False


@dataclass(frozen=True)
class ItemRecord:
    """One item as written to the store."""

    id: str  # external id
    vectors: dict[str, np.ndarray]  # subset of DENSE_VECTORS, each L2-normalised float32
    keywords: str  # text embedded as the sparse BM25 vector
    payload: dict[str, Any]  # attributes; ID_FIELD is added by the store


@dataclass(frozen=True)
class Filters:
    """Exact-match (any of the values) on payload fields, and numeric ranges (inclusive)."""

    equals: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    exclude_ids: tuple[str, ...] = ()  # external ids never to return
    only_ids: tuple[str, ...] = ()  # when given: external ids the results are restricted to

    def __bool__(self) -> bool:
        return bool(self.equals or self.ranges or self.exclude_ids or self.only_ids)


@dataclass(frozen=True)
class Hit:
    """One result: external id, score, payload, and the vectors when asked for."""

    id: str
    score: float
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


_HIT_FIELDS = ("id", "score", "payload", "vectors")
assert tuple(f.name for f in dataclasses.fields(Hit)) == _HIT_FIELDS, "new_hit must set every field of Hit"


def new_hit(id: str, score: float, payload: dict[str, Any], vectors: dict[str, np.ndarray]) -> Hit:
    """Hit(id, score, payload, vectors) without the frozen dataclass's __init__ (four object.__setattr__ calls,
    about 1 us, and a store makes a few hundred hits per search); the same frozen object."""
    hit = object.__new__(Hit)
    fields = hit.__dict__
    fields["id"], fields["score"], fields["payload"], fields["vectors"] = id, score, payload, vectors
    return hit


def best_first(hits: list[Hit]) -> list[Hit]:
    """Query results by score, best first, equal scores in id order: the engine breaks ties by its internal
    layout, which differs between two builds of one index (seen in tests: a keyword query's tied BM25 scores
    came back in another order in each process), so without this the same query could rank differently.
    Lists with no tie (most dense ones) come back as they are."""
    scores = [h.score for h in hits]
    if all(a > b for a, b in zip(scores, scores[1:])):
        return hits
    return sorted(hits, key=lambda h: (-h.score, h.id))


@dataclass(frozen=True)
class DenseQuery:
    """Nearest neighbours of `vector` among the items' named vector `using`."""

    vector: np.ndarray
    using: str  # one of DENSE_VECTORS
    top: int = 0  # in a batch: at most this many of its list (0: the batch's limit), found as broadly as the others


def part_limit(query: Query, limit: int) -> int:
    """How many results a query of a batch asked for `limit` gets: its own `top` where it sets a smaller one."""
    top = query.top if isinstance(query, DenseQuery) else 0
    return min(limit, top) if top > 0 else limit


@dataclass(frozen=True)
class KeywordQuery:
    """BM25 match of `text` against the items' keyword documents."""

    text: str


@dataclass(frozen=True)
class HybridQuery:
    """Several queries fused in the engine by weighted reciprocal rank fusion."""

    parts: tuple[DenseQuery | KeywordQuery, ...]
    weights: tuple[float, ...] = ()  # one per part; empty = equal
    rrf_k: int = 60
    candidates: int = 100  # how many each part fetches before fusion


Query = DenseQuery | KeywordQuery | HybridQuery


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    points: int
    dims: dict[str, int]


def facet_values(hits: Iterable[Any]) -> dict[str, int]:
    """An engine's facet hits (objects with .value and .count) as {value: count}, most first, ties by value."""
    return {str(f.value): int(f.count) for f in sorted(hits, key=lambda f: (-f.count, str(f.value)))}


class QueriesInBatches:
    """For a backend whose engine answers batches: `query` is a batch of one."""

    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        """Several queries with the same filters in one engine call; one result list per query.
        `with_payload=False` returns only ID_FIELD of each payload (ids and scores are all a caller needs)."""
        raise NotImplementedError

    def query(self, collection: str, query: Query, filters: Filters | None = None, limit: int = 10,
              offset: int = 0, with_vectors: WithVectors = False, with_payload: bool = True) -> list[Hit]:
        return self.query_batch(collection, [query], filters, limit, offset, with_vectors, with_payload)[0]


class Store(Protocol):
    """What the indexer, the search service and the tests rely on; both backends behave the same."""

    # collections and aliases
    def create_collection(self, name: str, dims: dict[str, int], filterable: Sequence[str],
                          numeric: Sequence[str]) -> None: ...
    def drop_collection(self, name: str) -> None: ...
    def list_collections(self) -> list[str]: ...
    def collection_info(self, name: str) -> CollectionInfo: ...
    def get_alias(self, alias: str) -> str | None: ...
    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically: a search sees the old or the new, never neither."""
        ...

    # writes (idempotent: the same id overwrites)
    def upsert(self, collection: str, items: Sequence[ItemRecord]) -> None: ...
    def delete(self, collection: str, ids: Sequence[str]) -> int: ...
    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Change payload fields of existing items without touching their vectors: {item id: {key: value}},
        a value of None removes the key. Ids not in the collection are left out; returns the ids changed."""
        ...
    def flush(self, collection: str) -> None: ...

    # reads; `collection` may be an alias
    def count(self, collection: str, filters: Filters | None = None) -> int: ...
    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Hit]: ...
    def query(self, collection: str, query: Query, filters: Filters | None = None, limit: int = 10,
              offset: int = 0, with_vectors: WithVectors = False, with_payload: bool = True) -> list[Hit]:
        """`with_payload=False`: each hit's payload holds only ID_FIELD (cheaper; ids and scores only)."""
        ...
    def facets(self, collection: str, fields: Sequence[str], filters: Filters | None = None,
               limit: int = 20) -> dict[str, dict[str, int]]: ...
    def scroll(self, collection: str, batch: int = 1000, with_vectors: WithVectors = False) -> Iterator[Hit]: ...
    def close(self) -> None: ...

    # added after the first draft
    def finalize(self, collection: str) -> None:
        """Make a bulk-loaded collection fast to search: flush, then build the ANN (HNSW) and payload
        indexes and wait until they are done. The indexer calls it after the last upsert, before
        `set_alias` points searches at the collection. Searching works before it too, just slower."""
        ...
    def build_due(self, collection: str) -> bool:
        """During a bulk load, after an upsert: build what has been loaded since the last build as a segment of
        its own when the backend sizes segments itself (the embedded store with [store].max_segment_kb); True
        when it built. A server's optimizer does this on its own (False)."""
        ...
    def segments(self, collection: str) -> int | None:
        """How many segments (each its own HNSW graph once built) hold the collection; None when unknown."""
        ...
    def preload(self, collection: str) -> int:
        """Before serving: read what searches read from the collection into this process's memory where the backend
        keeps it there (the embedded store's payload cache); how many items that holds (0: nothing to load)."""
        ...
    def list_aliases(self) -> dict[str, str]:
        """Every alias and the collection it points at."""
        ...
    def drop_alias(self, alias: str) -> bool:
        """Remove `alias` (the collection stays); False when there was no such alias."""
        ...
    def query_batch(self, collection: str, queries: Sequence[Query], filters: Filters | None = None,
                    limit: int = 10, offset: int = 0, with_vectors: WithVectors = False,
                    with_payload: bool = True) -> list[list[Hit]]:
        """Like `query` for several queries sharing the filters, in one engine call; one list per query
        (e.g. the parts of a HybridQuery on their own, for a per-part score breakdown)."""
        ...


def check_item(item: ItemRecord, dims: dict[str, int]) -> None:
    """Raise StoreError unless every vector of `item` is a known dense vector of the right, finite size."""
    if not item.id:
        raise StoreError("an item has an empty id")
    for name, vector in item.vectors.items():
        if name not in dims:
            raise StoreError(f"item {item.id!r}: unknown vector {name!r}; the collection has {sorted(dims)}")
        shape = np.shape(vector)
        if shape != (dims[name],):
            raise StoreError(f"item {item.id!r}: vector {name!r} has shape {shape}, expected ({dims[name]},)")
        if not np.all(np.isfinite(vector)):
            raise StoreError(f"item {item.id!r}: vector {name!r} is not finite")


def check_query_vector(query: DenseQuery, dims: dict[str, int]) -> None:
    """Raise BadInput unless the query names a vector the collection has, with the right size."""
    if query.using not in dims:
        raise BadInput(f"the collection has no {query.using!r} vectors; it has {sorted(dims)}")
    if np.shape(query.vector) != (dims[query.using],):
        raise BadInput(f"query vector for {query.using!r} has shape {np.shape(query.vector)}, "
                       f"expected ({dims[query.using]},)")


def plain_payload(item: ItemRecord) -> dict[str, Any]:
    """The payload as stored: JSON-plain values (numpy scalars and arrays converted), with ID_FIELD set."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    payload = {str(k): plain(v) for k, v in item.payload.items()}
    payload[ID_FIELD] = item.id
    return payload


def payload_changes(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A set_payload change split into (keys to set, keys to remove); ID_FIELD can be neither."""
    if ID_FIELD in fields:
        raise StoreError(f"the payload key {ID_FIELD!r} holds the item id and cannot be changed")
    sets = plain_payload(ItemRecord("-", {}, "", {k: v for k, v in fields.items() if v is not None}))
    sets.pop(ID_FIELD)
    return sets, sorted(k for k, v in fields.items() if v is None)
