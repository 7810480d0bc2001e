"""search/store/payload_cache.py and the edge store reading through it: writes and deletes are seen at once, a read
that raced a write never stores the old payload, the cache stays within its size, callers get their own dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.store.edge import EdgeStore, point_key
from search.store.interface import DenseQuery, ItemRecord, KeywordQuery
from search.store.payload_cache import PayloadCache

DIM = 8


def item(i: int, colour: str = "red") -> ItemRecord:
    v = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return ItemRecord(f"sku-{i}", {"fused": v / np.linalg.norm(v)}, f"{colour} shirt {i}",
                      {"title": f"{colour} shirt {i}", "colour": colour, "tags": ["a", "b"]})


def test_cache_is_bounded_oldest_out_and_hands_out_copies() -> None:
    cache = PayloadCache(3)
    cache.put({k: {"item_id": str(k), "colour": "red"} for k in range(5)}, cache.generation)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == {"item_id": "4", "colour": "red"}
    mine = cache.get(4)
    mine["colour"] = "blue"
    assert cache.get(4)["colour"] == "red"
    assert PayloadCache(0).get(1) is None


def test_a_read_that_raced_a_write_is_not_stored() -> None:
    cache = PayloadCache(10)
    started = cache.generation  # a reader takes the generation, then reads the engine ...
    cache.drop([1])  # ... while a writer changes point 1
    cache.put({1: {"colour": "old"}}, started)
    assert cache.get(1) is None
    cache.put({1: {"colour": "new"}}, cache.generation)
    assert cache.get(1) == {"colour": "new"}


def test_edge_reads_see_writes_and_deletes_through_the_cache(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store", payload_cache=100)
    store.create_collection("c", {"fused": DIM}, ["colour"], ())
    store.upsert("c", [item(i) for i in range(10)])
    q = item(3).vectors["fused"]
    first = store.query("c", DenseQuery(q, "fused"), limit=10)
    assert first[0].id == "sku-3" and first[0].payload["colour"] == "red"
    with store._pool.use("c") as h:
        assert len(h.payloads) == 10
    store.upsert("c", [item(3, "green")])
    assert store.query("c", DenseQuery(q, "fused"), limit=1)[0].payload["colour"] == "green"
    assert store.retrieve("c", ["sku-3"])[0].payload["title"] == "green shirt 3"
    assert [h.id for h in store.query("c", KeywordQuery("green"), limit=5)] == ["sku-3"]
    store.delete("c", ["sku-3"])
    assert store.retrieve("c", ["sku-3", "sku-4"])[0].id == "sku-4"
    assert "sku-3" not in {h.id for h in store.query("c", DenseQuery(q, "fused"), limit=10)}
    hit = store.query("c", DenseQuery(q, "fused"), limit=1)[0]
    hit.payload["tags"] = []  # the caller's own dict
    assert store.retrieve("c", [hit.id])[0].payload["tags"] == ["a", "b"]
    ids_only = store.query("c", DenseQuery(q, "fused"), limit=3, with_payload=False)
    assert all(set(h.payload) == {"item_id"} for h in ids_only)
    with store._pool.use("c") as h:
        assert point_key("sku-4") in h.payloads._items
    store.close()


def test_set_payload_is_seen_through_the_cache(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store", payload_cache=100)
    store.create_collection("c", {"fused": DIM}, ["colour"], ())
    store.upsert("c", [item(i) for i in range(5)])
    assert store.retrieve("c", ["sku-2"])[0].payload["colour"] == "red"  # now cached
    assert store.set_payload("c", {"sku-2": {"colour": "blue", "tags": None}, "sku-9": {"colour": "x"}}) == ["sku-2"]
    payload = store.retrieve("c", ["sku-2"])[0].payload
    assert payload["colour"] == "blue" and "tags" not in payload
    q = item(2).vectors["fused"]
    assert store.query("c", DenseQuery(q, "fused"), limit=1)[0].payload["colour"] == "blue"
    store.close()


class CountingShard:
    """The engine shard of a handle, counting the payload reads that reach it."""

    def __init__(self, shard: object) -> None:
        self.shard, self.retrieved = shard, 0

    def retrieve(self, ids: list, **kw: object) -> object:
        self.retrieved += len(ids)
        return self.shard.retrieve(ids, **kw)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.shard, name)


def test_preload_fills_the_cache_so_searches_read_no_payload_from_the_engine(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store", payload_cache=100)
    store.create_collection("c", {"fused": DIM}, ["colour"], ())
    store.upsert("c", [item(i) for i in range(10)])
    store.close()
    store = EdgeStore(tmp_path / "store", payload_cache=100)  # a fresh process: nothing cached
    assert store.preload("c") == 10
    with store._pool.use("c") as h:
        counting = h.shard = CountingShard(h.shard)
    q = item(3).vectors["fused"]
    assert [h.id for h in store.query("c", DenseQuery(q, "fused"), limit=10)][0] == "sku-3"
    assert store.retrieve("c", ["sku-7"])[0].payload["title"] == "red shirt 7"
    assert counting.retrieved == 0
    store.upsert("c", [item(3, "green")])  # a write after the preload is read anew
    assert store.query("c", DenseQuery(q, "fused"), limit=1)[0].payload["colour"] == "green"
    assert counting.retrieved == 1
    store.close()


def test_preload_stops_at_the_cache_size(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store", payload_cache=4)
    store.create_collection("c", {"fused": DIM}, ["colour"], ())
    store.upsert("c", [item(i) for i in range(10)])
    assert store.preload("c") == 4
    store.close()


def item_colour(item_id: str) -> str:
    return "green" if int(item_id.split("-")[1]) % 2 else "red"


def test_a_batch_reads_each_points_payload_once_and_its_lists_match_single_queries(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "store", payload_cache=100)
    store.create_collection("c", {"fused": DIM}, ["colour"], ())
    store.upsert("c", [item(i, "green" if i % 2 else "red") for i in range(12)])
    store.close()
    store = EdgeStore(tmp_path / "store", payload_cache=100)  # nothing cached: every payload comes from the engine
    with store._pool.use("c") as h:
        counting = h.shard = CountingShard(h.shard)
    q = item(3).vectors["fused"]
    parts = [DenseQuery(q, "fused"), KeywordQuery("green"), DenseQuery(q, "fused", top=4)]
    dense, keyword, near = store.query_batch("c", parts, limit=8)
    assert len(dense) == 8 and len(near) == 4 and [h.id for h in near] == [h.id for h in dense[:4]]
    assert keyword and all(h.payload["colour"] == "green" for h in keyword)
    both = {h.id for h in dense} | {h.id for h in keyword}
    assert counting.retrieved == len(both) < len(dense) + len(keyword) + len(near)
    by_id = {h.id: h for h in dense}
    assert all(h.payload is by_id[h.id].payload for h in near)  # one copy a point, shared by its hits
    dense[0].payload["colour"] = "blue"  # still the caller's own copy: the cache keeps its payload
    single = store.query("c", DenseQuery(q, "fused"), limit=8)
    assert [(h.id, h.score) for h in single] == [(h.id, h.score) for h in dense]
    assert single[0].payload["colour"] == item_colour(single[0].id)
    store.close()
