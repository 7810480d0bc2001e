"""One Store suite run against both backends (edge shard on disk, qdrant-client in memory), congruence
between them, and the edge backend's process, alias-file, persistence and thread behaviour."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from search.store.edge import EdgeStore
from search.store.factory import open_store
from search.store.interface import DenseQuery, Filters, Hit, HybridQuery, ItemRecord, KeywordQuery, Store, point_id
from search.store.qdrant import QdrantStore
from tests.helpers import make_config
from vitrina.config import StoreConfig
from vitrina.errors import BadInput, ConfigError, NotFound, StoreError

DIM = 8
DIMS = {"text": DIM, "image": DIM, "fused": DIM}
FILTERABLE = ("gender", "colour", "article")
COLOURS = ("red", "blue", "black", "white")
ARTICLES = ("shoes", "shirt", "watch", "handbag", "jeans")
N = 40


def _unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_items(n: int = N, seed: int = 0) -> list[ItemRecord]:
    """n items; every 5th has no image vector; keyword documents have distinct lengths (no BM25 ties)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        gender, colour, article = ("men", "women")[i % 2], COLOURS[i % 4], ARTICLES[(i // 4) % 5]
        words = f"{gender} {colour} {article} item{i} " + "plain " * i
        if i == 7:
            words += "suede loafers"
        vectors = {"text": _unit(rng), "fused": _unit(rng)}
        if i % 5 != 4:
            vectors["image"] = _unit(rng)
        payload = {"title": f"{colour} {article} {i}", "gender": gender, "colour": colour, "article": article,
                   "price": float(round(rng.uniform(5, 200), 2)), "rank": np.int64(i)}
        items.append(ItemRecord(id=f"sku-{i:03d}", vectors=vectors, keywords=words, payload=payload))
    return items


ITEMS = make_items()
BY_ID = {it.id: it for it in ITEMS}


def new_store(kind: str, root: Path) -> Store:
    if kind == "edge":
        return EdgeStore(root / "store", timeout_s=0.2)
    if kind == "edge-cached":  # payloads from search/store/payload_cache.py; tiny, so eviction happens too
        return EdgeStore(root / "store", timeout_s=0.2, payload_cache=16)
    return QdrantStore.from_config(StoreConfig(backend="qdrant", path=":memory:"))


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one: every edge shard flush fsyncs, ~0.25 s each on this disk.
    (test_edge_persists_across_reopen stays on the real disk.)"""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vitrina-store-test-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["edge", "edge-cached", "qdrant"])
def store(request: pytest.FixtureRequest, fast_dir: Path) -> Iterator[Store]:
    s = new_store(request.param, fast_dir)
    yield s
    s.close()


def load(s: Store, name: str = "c1", items: list[ItemRecord] = ITEMS) -> str:
    s.create_collection(name, DIMS, FILTERABLE, numeric=("rank",))
    s.upsert(name, items)
    s.finalize(name)
    return name


@pytest.fixture
def loaded(store: Store) -> Store:
    load(store)
    return store


def ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


def brute(using: str, q: np.ndarray, keep: set[str] | None = None) -> list[tuple[str, float]]:
    """The numpy oracle: exact cosine ranking of the items that have vector `using` (and pass `keep`)."""
    rows = [(it.id, float(it.vectors[using] @ q)) for it in ITEMS
            if using in it.vectors and (keep is None or it.id in keep)]
    return sorted(rows, key=lambda r: -r[1])


def matching(f: Filters) -> set[str]:
    out = set()
    for it in ITEMS:
        ok = all(it.payload[k] in vals for k, vals in f.equals.items())
        ok &= all((lo is None or it.payload[k] >= lo) and (hi is None or it.payload[k] <= hi)
                  for k, (lo, hi) in f.ranges.items())
        if ok and it.id not in f.exclude_ids and (not f.only_ids or it.id in f.only_ids):
            out.add(it.id)
    return out


# ---- the shared suite ------------------------------------------------------------------------------

def test_create_list_info_drop(store: Store) -> None:
    store.create_collection("a", DIMS, FILTERABLE, ())
    store.create_collection("b", {"fused": DIM}, (), ())
    assert store.list_collections() == ["a", "b"]
    info = store.collection_info("b")
    assert (info.name, info.points, info.dims) == ("b", 0, {"fused": DIM})
    with pytest.raises(StoreError):
        store.create_collection("a", DIMS, FILTERABLE, ())
    store.drop_collection("a")
    assert store.list_collections() == ["b"]
    with pytest.raises(NotFound):
        store.drop_collection("a")
    with pytest.raises(NotFound):
        store.count("a")


def test_upsert_is_idempotent(store: Store) -> None:
    store.create_collection("c", DIMS, FILTERABLE, ())
    first = ITEMS[0]
    changed = ItemRecord(first.id, first.vectors, first.keywords, {**first.payload, "price": 1.5})
    store.upsert("c", [first])
    store.upsert("c", [first, changed])  # again, and twice in one batch: the last wins
    assert store.count("c") == 1
    hit = store.retrieve("c", [first.id])[0]
    assert hit.id == first.id and hit.payload["price"] == 1.5 and hit.payload["item_id"] == first.id
    assert hit.payload["rank"] == 0 and isinstance(hit.payload["rank"], int)  # numpy scalar stored plainly


def test_upsert_rejects_wrong_vectors(store: Store) -> None:
    store.create_collection("c", {"fused": DIM}, (), ())
    bad = ItemRecord("x", {"fused": np.ones(DIM + 1, np.float32)}, "x", {})
    with pytest.raises(StoreError, match="shape"):
        store.upsert("c", [bad])
    with pytest.raises(StoreError, match="unknown vector"):
        store.upsert("c", [ItemRecord("x", {"text": np.ones(DIM, np.float32)}, "x", {})])
    assert store.count("c") == 0


def test_delete(loaded: Store) -> None:
    assert loaded.delete("c1", [ITEMS[0].id, ITEMS[1].id, "no-such-id", ITEMS[0].id]) == 2
    assert loaded.count("c1") == N - 2
    assert ids(loaded.retrieve("c1", [ITEMS[0].id, ITEMS[2].id])) == [ITEMS[2].id]
    assert loaded.delete("c1", [ITEMS[0].id]) == 0


def test_set_payload_changes_fields_and_keeps_vectors(loaded: Store) -> None:
    a, b = ITEMS[0].id, ITEMS[1].id
    changed = loaded.set_payload("c1", {a: {"price": 9.5, "stock": 3, "colour": None}, b: {"stock": 0},
                                        "no-such-id": {"stock": 1}})
    assert changed == [a, b]
    hit = loaded.retrieve("c1", [a], with_vectors=True)[0]
    assert hit.payload["price"] == 9.5 and hit.payload["stock"] == 3 and "colour" not in hit.payload
    assert hit.payload["title"] == ITEMS[0].payload["title"] and hit.payload["item_id"] == a
    np.testing.assert_allclose(hit.vectors["fused"], ITEMS[0].vectors["fused"], atol=1e-5)
    assert loaded.count("c1", Filters(ranges={"price": (9.5, 9.5)})) == 1  # the numeric index follows
    assert loaded.count("c1") == N  # nothing created for the unknown id
    assert loaded.retrieve("c1", [b])[0].payload["stock"] == 0
    with pytest.raises(StoreError, match="item_id"):
        loaded.set_payload("c1", {a: {"item_id": "other"}})


@pytest.mark.parametrize("f", [
    Filters(equals={"colour": ("red",)}),
    Filters(equals={"colour": ("red", "blue"), "gender": ("women",)}),
    Filters(ranges={"price": (50.0, 120.0)}),
    Filters(ranges={"price": (None, 60.0)}, equals={"article": ("shoes", "watch")}),
    Filters(exclude_ids=("sku-000", "sku-005")),
    Filters(only_ids=("sku-000", "sku-005", "sku-009")),
    Filters(ranges={"rank": (10, 19)}),
])
def test_count_with_filters(loaded: Store, f: Filters) -> None:
    assert loaded.count("c1", f) == len(matching(f)) > 0


def test_retrieve_with_vectors(loaded: Store) -> None:
    wanted = ["sku-004", "sku-001", "missing"]
    hits = loaded.retrieve("c1", wanted, with_vectors=True)
    assert ids(hits) == ["sku-004", "sku-001"]  # request order, unknown ids skipped
    assert set(hits[0].vectors) == {"text", "fused"}  # sku-004 has no image
    assert set(hits[1].vectors) == {"text", "image", "fused"}
    for h in hits:
        for name, v in h.vectors.items():
            np.testing.assert_allclose(v, BY_ID[h.id].vectors[name], atol=1e-5)
    assert loaded.retrieve("c1", ["sku-001"])[0].vectors == {}


def test_reads_return_only_the_named_vectors_asked_for(loaded: Store) -> None:
    hit = loaded.retrieve("c1", ["sku-001"], with_vectors=("fused",))[0]
    assert set(hit.vectors) == {"fused"}
    np.testing.assert_allclose(hit.vectors["fused"], BY_ID["sku-001"].vectors["fused"], atol=1e-5)
    query = DenseQuery(BY_ID["sku-001"].vectors["fused"], "fused")
    top = loaded.query("c1", query, limit=3, with_vectors=("fused", "image"))
    assert top[0].id == "sku-001" and set(top[0].vectors) == {"fused", "image"}
    assert all(set(h.vectors) <= {"fused", "image"} and "fused" in h.vectors for h in top)


@pytest.mark.parametrize("using", ["text", "image", "fused"])
def test_dense_query_per_named_vector(loaded: Store, using: str) -> None:
    q = BY_ID["sku-013"].vectors[using] if using in BY_ID["sku-013"].vectors else None
    assert q is not None
    hits = loaded.query("c1", DenseQuery(q, using), limit=8)
    expected = brute(using, q)[:8]
    assert ids(hits) == [i for i, _ in expected]
    assert hits[0].id == "sku-013" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-4)
    if using == "image":  # items without an image vector are never image hits
        all_hits = loaded.query("c1", DenseQuery(q, using), limit=100)
        assert len(all_hits) == sum("image" in it.vectors for it in ITEMS)


def test_a_batch_part_with_its_own_top_gets_only_those(loaded: Store) -> None:
    q = BY_ID["sku-013"].vectors["text"]
    full, short, words = loaded.query_batch("c1", [DenseQuery(q, "text"), DenseQuery(q, "text", top=3),
                                                   KeywordQuery("shoes")], limit=8)
    assert len(full) == 8 and ids(short) == ids(full)[:3] and [h.score for h in short] == [h.score for h in full[:3]]
    assert ids(words) == ids(loaded.query("c1", KeywordQuery("shoes"), limit=8))  # the others keep the limit
    assert ids(loaded.query("c1", DenseQuery(q, "text", top=20), limit=5)) == ids(full)[:5]  # never past the limit


def test_dense_query_rejects_bad_vector(loaded: Store) -> None:
    with pytest.raises(BadInput):
        loaded.query("c1", DenseQuery(np.ones(DIM + 2, np.float32), "fused"))
    with pytest.raises(BadInput):
        loaded.query("c1", DenseQuery(np.ones(DIM, np.float32), "nope"))


def test_keyword_query_ranks_the_matching_doc_first(loaded: Store) -> None:
    hits = loaded.query("c1", KeywordQuery("Suede loafer"), limit=5)  # stemmed: loafer ~ loafers
    assert ids(hits) == ["sku-007"]
    red = loaded.query("c1", KeywordQuery("red"), limit=100)
    assert {h.id for h in red} == {it.id for it in ITEMS if it.payload["colour"] == "red"}
    scores = [h.score for h in red]
    assert scores == sorted(scores, reverse=True)
    assert red[0].id == "sku-000"  # the shortest red document wins (BM25 length normalisation)
    assert loaded.query("c1", KeywordQuery("the and of"), limit=5) == []  # stopwords only


def test_hybrid_query_is_weighted_rrf(loaded: Store) -> None:
    q = BY_ID["sku-022"].vectors["fused"]
    kw = ids(loaded.query("c1", KeywordQuery("black watch"), limit=20))
    dense = ids(loaded.query("c1", DenseQuery(q, "fused"), limit=20))
    for weights in [(1.0, 1.0), (3.0, 1.0), (1.0, 3.0)]:
        hq = HybridQuery((KeywordQuery("black watch"), DenseQuery(q, "fused")), weights=weights, rrf_k=10,
                         candidates=20)
        hits = loaded.query("c1", hq, limit=10)
        oracle: dict[str, float] = {}
        for ranking, w in zip((kw, dense), weights):
            for r, i in enumerate(ranking):
                oracle[i] = oracle.get(i, 0.0) + 1.0 / ((r + 1) / w + 10 - 1)
        for h in hits:
            assert h.score == pytest.approx(oracle[h.id], rel=1e-4)
        np.testing.assert_allclose([h.score for h in hits], sorted(oracle.values(), reverse=True)[:10], rtol=1e-4)
    with pytest.raises(BadInput):
        loaded.query("c1", HybridQuery((KeywordQuery("x"), DenseQuery(q, "fused")), weights=(1.0,)))
    only_dense = loaded.query("c1", HybridQuery((KeywordQuery("the"), DenseQuery(q, "fused"))), limit=3)
    assert ids(only_dense) == dense[:3]  # a part with no indexable word drops out


@pytest.mark.parametrize("f", [
    Filters(equals={"colour": ("red", "white")}),
    Filters(ranges={"price": (40.0, 150.0)}, equals={"gender": ("men",)}),
    Filters(exclude_ids=("sku-013", "sku-001")),
    Filters(only_ids=("sku-002", "sku-007", "sku-013", "missing"), exclude_ids=("sku-007",)),
])
def test_filters_restrict_every_query_kind(loaded: Store, f: Filters) -> None:
    keep = matching(f)
    q = BY_ID["sku-013"].vectors["fused"]
    dense = loaded.query("c1", DenseQuery(q, "fused"), filters=f, limit=10)
    assert ids(dense) == [i for i, _ in brute("fused", q, keep)[:10]]
    kw = loaded.query("c1", KeywordQuery("red shoes plain"), filters=f, limit=50)
    hy = loaded.query("c1", HybridQuery((KeywordQuery("red shoes"), DenseQuery(q, "fused"))), filters=f, limit=50)
    for hits in (kw, hy):
        assert hits and {h.id for h in hits} <= keep


def test_offset_paging(loaded: Store) -> None:
    q = BY_ID["sku-003"].vectors["text"]
    top = ids(loaded.query("c1", DenseQuery(q, "text"), limit=15))
    pages = [ids(loaded.query("c1", DenseQuery(q, "text"), limit=5, offset=o)) for o in (0, 5, 10)]
    assert sum(pages, []) == top
    hq = HybridQuery((KeywordQuery("blue jeans"), DenseQuery(q, "text")))
    assert ids(loaded.query("c1", hq, limit=4, offset=4)) == ids(loaded.query("c1", hq, limit=8))[4:]


def test_facets(loaded: Store) -> None:
    got = loaded.facets("c1", ["colour", "gender"])
    assert got["colour"] == dict(Counter(it.payload["colour"] for it in ITEMS))
    assert got["gender"] == {"men": N // 2, "women": N // 2}
    f = Filters(equals={"gender": ("men",)}, ranges={"price": (None, 100.0)})
    expected = Counter(BY_ID[i].payload["article"] for i in matching(f))
    got = loaded.facets("c1", ["article"], filters=f)["article"]
    assert got == dict(expected)
    assert list(got.values()) == sorted(got.values(), reverse=True)  # most frequent first
    assert len(loaded.facets("c1", ["article"], limit=2)["article"]) == 2


def test_scroll(loaded: Store) -> None:
    seen = list(loaded.scroll("c1", batch=7))
    assert sorted(ids(seen)) == sorted(BY_ID) and len(seen) == N
    with_vec = list(loaded.scroll("c1", batch=100, with_vectors=True))
    assert all(set(h.vectors) == set(BY_ID[h.id].vectors) for h in with_vec)


def test_alias_swap(store: Store) -> None:
    load(store, "v1", ITEMS[:20])
    load(store, "v2", ITEMS[20:])
    assert store.get_alias("live") is None
    store.set_alias("live", "v1")
    assert store.get_alias("live") == "v1" and store.list_aliases() == {"live": "v1"}
    assert store.count("live") == 20 and store.collection_info("live").name == "v1"
    assert store.retrieve("live", ["sku-001"])[0].id == "sku-001"
    store.set_alias("live", "v2")
    assert store.get_alias("live") == "v2"
    q = BY_ID["sku-001"].vectors["fused"]
    assert {h.id for h in store.query("live", DenseQuery(q, "fused"), limit=50)} == {it.id for it in ITEMS[20:]}
    with pytest.raises(NotFound):
        store.set_alias("live", "nope")
    with pytest.raises(StoreError):
        store.set_alias("v1", "v2")  # a collection's name cannot be an alias
    with pytest.raises(StoreError):
        store.create_collection("live", DIMS, (), ())  # nor an alias's name a collection
    store.drop_collection("v2")  # dropping the target removes its aliases
    assert store.get_alias("live") is None
    store.set_alias("old", "v1")
    assert store.drop_alias("old") is True and store.drop_alias("old") is False
    assert store.list_collections() == ["v1"]


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    edge = open_store(cfg)
    assert isinstance(edge, EdgeStore) and edge.root == tmp_path / "var" / "store"
    assert edge.hnsw_ef == cfg.store.hnsw_ef > 0
    edge.close()
    wider = open_store(cfg.replace(store={"hnsw_ef": 77}))
    assert wider.hnsw_ef == 77
    wider.close()
    qd = open_store(cfg.replace(store={"backend": "qdrant", "path": ":memory:"}))
    assert isinstance(qd, QdrantStore)
    qd.close()


# ---- congruence: same data and queries, same answers ------------------------------------------------

def _congruent(a: list[Hit], b: list[Hit]) -> None:
    """Same scores, and the same ids in the same order, except that equal scores may come in any order
    (and a tie cut by the limit may keep different members)."""
    assert len(a) == len(b)
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=1e-6)
    start = 0
    while start < len(a):
        end = start + 1
        while end < len(a) and abs(a[end].score - a[start].score) <= 1e-6 * max(1.0, abs(a[start].score)):
            end += 1
        if end < len(a):
            assert set(ids(a[start:end])) == set(ids(b[start:end])), (ids(a), ids(b))
        start = end


def test_backends_agree(fast_dir: Path) -> None:
    edge, qd = new_store("edge", fast_dir), new_store("qdrant", fast_dir)
    for s in (edge, qd):  # no deletes here: edge (like a Qdrant server) counts deleted points in BM25's
        load(s)           # IDF until their segment is vacuumed, while local mode recounts at once
    rng = np.random.default_rng(7)
    queries = [DenseQuery(_unit(rng), u) for u in ("text", "image", "fused")]
    queries += [KeywordQuery(t) for t in ("red shoes", "women watch plain", "blue handbag item12")]
    queries += [HybridQuery((KeywordQuery("black jeans"), DenseQuery(_unit(rng), "fused")), weights=(2.0, 1.0)),
                HybridQuery((KeywordQuery("white shirt"), DenseQuery(_unit(rng), "text"),
                             DenseQuery(_unit(rng), "image")), rrf_k=5, candidates=15)]
    filters = [None, Filters(equals={"gender": ("women",)}, ranges={"price": (20.0, 180.0)},
                             exclude_ids=("sku-002",))]
    for q in queries:
        for f in filters:
            for offset in (0, 3):
                _congruent(edge.query("c1", q, filters=f, limit=8, offset=offset),
                           qd.query("c1", q, filters=f, limit=8, offset=offset))
        assert edge.count("c1", f) == qd.count("c1", f)
        assert edge.facets("c1", FILTERABLE, f) == qd.facets("c1", FILTERABLE, f)
    assert [ids(r) for r in edge.query_batch("c1", queries, limit=5)] == \
        [ids(r) for r in qd.query_batch("c1", queries, limit=5)]
    edge.close()
    qd.close()


# ---- edge only: processes, alias files, persistence, threads ----------------------------------------

def test_edge_alias_swap_by_another_instance_is_seen(fast_dir: Path) -> None:
    server, indexer = EdgeStore(fast_dir, timeout_s=0.2), EdgeStore(fast_dir, timeout_s=0.2)
    load(indexer, "v1", ITEMS[:20])
    indexer.set_alias("live", "v1")  # also releases the indexer's handle on v1
    assert server.count("live") == 20  # the server opens v1
    load(indexer, "v2", ITEMS[20:])
    indexer.set_alias("live", "v2")
    assert server.count("live") == 20 and server.retrieve("live", ["sku-025"])[0].id == "sku-025"
    assert server.get_alias("live") == "v2"
    assert server.count("v1") == 20  # a late use of the old target (e.g. resolved just before the swap)
    indexer.drop_collection("v1")  # possible only because the server lets go of v1 after the swap
    assert server.list_collections() == ["v2"]
    server.close()
    indexer.close()

def test_edge_call_on_an_alias_resolved_just_before_its_old_target_was_dropped(fast_dir: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A search resolves the alias, the alias moves and the old collection is dropped, then the search opens the
    shard: it is answered from the new target, not with an error (a worker swapping its copy, indexer/replica.py)."""
    store = EdgeStore(fast_dir, timeout_s=0.2)
    load(store, "v1", ITEMS[:20])
    load(store, "v2", ITEMS[20:30])
    store.set_alias("live", "v1")
    pool, real = store._pool, store._pool.resolve
    stale = iter(["v1"])
    monkeypatch.setattr(pool, "resolve", lambda name: next(stale, None) or real(name))
    store.set_alias("live", "v2")
    store.drop_collection("v1")
    assert store.count("live") == 10
    with pytest.raises(NotFound):  # a collection named outright is not swapped for anything
        store.count("v1")
    store.close()



def test_edge_lock_conflict_names_the_holder(fast_dir: Path) -> None:
    first, second = EdgeStore(fast_dir, timeout_s=0.2), EdgeStore(fast_dir, timeout_s=0.2)
    load(first)
    with pytest.raises(StoreError, match=r"another process \(pid \d+"):
        second.count("c1")
    first.close()
    assert second.count("c1") == N  # free once the holder closes
    second.close()


def test_edge_lock_held_by_another_process(fast_dir: Path) -> None:
    setup = EdgeStore(fast_dir)
    load(setup)
    setup.close()
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from search.store.edge import EdgeStore
        s = EdgeStore(Path({str(fast_dir)!r}))
        s.count("c1")
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        mine = EdgeStore(fast_dir, timeout_s=0.2)
        with pytest.raises(StoreError, match=f"pid {child.pid} "):
            mine.count("c1")
    finally:
        child.communicate("\n", timeout=30)
    assert mine.count("c1") == N
    mine.close()


def test_a_copy_without_write_ahead_log_keeps_what_only_the_log_held(fast_dir: Path) -> None:
    """copy_collection(wal=False), a serving worker's replica: the writes of a writer that died before any flush
    are in the copy, which then has no log (none on disk to map or write) and still keeps what it is given."""
    from search.store.edge_shards import copy_collection

    setup = EdgeStore(fast_dir / "main")
    load(setup)
    setup.close()
    code = textwrap.dedent(f"""
        import os
        import numpy as np
        from pathlib import Path
        from search.store.edge import EdgeStore
        from search.store.interface import ItemRecord
        s = EdgeStore(Path({str(fast_dir / "main")!r}))
        s.delete("c1", ["sku-001"])
        v = np.ones({DIM}, dtype=np.float32) / np.sqrt({DIM})
        s.upsert("c1", [ItemRecord(id="late", vectors={{"text": v, "image": v, "fused": v}}, keywords="late arrival",
                                   payload={{"gender": "Women"}})])
        os._exit(0)  # no flush, no close
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    copy_collection(fast_dir / "main", "c1", fast_dir / "copy", wal=False)
    shard = fast_dir / "copy" / "collections" / "c1" / "shard"
    assert '"wal_enabled": false' in (shard / "edge_config.json").read_text()
    copy = EdgeStore(fast_dir / "copy")
    assert copy.count("c1") == N and [h.id for h in copy.retrieve("c1", ["late", "sku-001"])] == ["late"]
    assert not (shard / "wal").exists()
    copy.upsert("c1", [BY_ID["sku-001"]])
    copy.close()
    again = EdgeStore(fast_dir / "copy")
    assert again.count("c1") == N + 1 and not (shard / "wal").exists()
    again.close()


def test_edge_persists_across_reopen(tmp_path: Path) -> None:
    s = EdgeStore(tmp_path)
    load(s)
    s.set_alias("live", "c1")
    s.delete("c1", ["sku-000"])
    s.close()
    with pytest.raises(StoreError):
        s.count("c1")
    again = EdgeStore(tmp_path)
    assert again.list_collections() == ["c1"] and again.get_alias("live") == "c1"
    assert again.count("live") == N - 1
    q = BY_ID["sku-009"].vectors["text"]
    assert again.query("live", DenseQuery(q, "text"), limit=1)[0].id == "sku-009"
    assert again.query("live", KeywordQuery("suede loafers"), limit=1)[0].id == "sku-007"
    again.close()


def test_edge_search_pool_has_the_configured_threads_and_searches_alike(fast_dir: Path) -> None:
    """[store].search_threads sizes the engine's search pool of each shard a process opens (the threads it names
    edge-search-N, counted in a child process of its own), and only the pool: searches rank the same with 1 thread
    as with the engine's default; 0 gives the default back (its key leaves the shard's engine config)."""
    setup = EdgeStore(fast_dir)
    load(setup)
    setup.close()
    config_file = fast_dir / "collections" / "c1" / "shard" / "edge_config.json"
    code = textwrap.dedent(f"""
        import json, os, sys, time
        import numpy as np
        from pathlib import Path
        from search.store.factory import open_store
        from search.store.interface import DenseQuery, KeywordQuery
        from tests.helpers import make_config
        threads = int(sys.argv[1])
        cfg = make_config(Path({str(fast_dir)!r}), store={{"search_threads": threads}})
        s = open_store(cfg, root=Path({str(fast_dir)!r}))
        v = np.load({str(fast_dir / "q.npy")!r})
        got = [[h.id for h in s.query("c1", DenseQuery(q, "fused"), limit=5)] for q in v]
        got.append([h.id for h in s.query("c1", KeywordQuery("suede loafers"), limit=5)])
        def pool():
            names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
            return sum(n.startswith("edge-search") for n in names)
        deadline = time.monotonic() + 20  # the engine starts its pool's threads in the background
        while pool() < max(threads, 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # none past the configured count either
        print(json.dumps({{"pool": pool(), "ids": got}}))
    """)
    np.save(fast_dir / "q.npy", np.stack([it.vectors["fused"] for it in ITEMS[:8]]))

    def run(threads: int) -> dict:
        out = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    one, three = run(1), run(3)
    assert one["pool"] == 1 and three["pool"] == 3
    assert json.loads(config_file.read_text())["max_search_threads"] == 3
    default = run(0)
    assert "max_search_threads" not in json.loads(config_file.read_text())
    assert default["pool"] >= 1  # the engine's own count (8 on the 2-core development box)
    assert one["ids"] == three["ids"] == default["ids"] and [r[0] for r in one["ids"][:8]] == \
        [it.id for it in ITEMS[:8]]
    with pytest.raises(ConfigError, match="search_threads"):
        StoreConfig(search_threads=-1)


def test_edge_concurrent_queries_from_8_threads(fast_dir: Path) -> None:
    s, other = EdgeStore(fast_dir), EdgeStore(fast_dir)
    load(s, "v1")
    s.set_alias("live", "v1")
    load(other, "v2")
    other.finalize("v2")
    targets = [ITEMS[i % N] for i in range(400)]
    swapped = threading.Event()

    def one(k: int) -> bool:
        if k == 200:  # half way, another instance swaps the alias under the running searches
            other.set_alias("live", "v2")
            swapped.set()
        it = targets[k]
        hits = s.query("live", DenseQuery(it.vectors["fused"], "fused"), limit=3)
        kw = s.query("live", KeywordQuery(f"item{k % N}"), limit=1, filters=Filters(equals={"gender": (
            it.payload["gender"],)}))
        return hits[0].id == it.id and kw[0].id == it.id

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(400)))
    assert all(results) and swapped.is_set()
    assert s.get_alias("live") == "v2" and s.count("live") == N
    s.close()
    other.close()


def test_point_id_is_stable_and_distinct() -> None:
    assert point_id("sku-001") == point_id("sku-001") != point_id("sku-002")


def test_qdrant_local_folder_persists_and_is_single_process(tmp_path: Path) -> None:
    cfg = StoreConfig(backend="qdrant", path=str(tmp_path / "qdrant"))
    s = QdrantStore.from_config(cfg)
    load(s)
    s.set_alias("live", "c1")
    with pytest.raises(StoreError, match="cannot open"):
        QdrantStore.from_config(cfg)  # the folder is locked by `s`
    s.close()
    again = QdrantStore.from_config(cfg)
    assert again.get_alias("live") == "c1" and again.count("live") == N
    assert again.query("live", KeywordQuery("suede loafers"), limit=1)[0].id == "sku-007"
    again.close()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_qdrant_server_unreachable_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITRINA_TEST_QDRANT_KEY", "secret")
    cfg = StoreConfig(backend="qdrant", url="http://127.0.0.1:9", api_key_env="VITRINA_TEST_QDRANT_KEY", timeout_s=1)
    with pytest.warns(UserWarning, match="insecure"):  # the key is sent, so the client warns about http://
        s = QdrantStore.from_config(cfg)
    assert not s.local
    with pytest.raises(StoreError, match="refused"):
        s.count("c1")


def test_bench_store_runs_both_backends(fast_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.cli import main

    argv = ["bench", "store", "--points", "300,400", "--dim", "16", "--queries", "5", "--qdrant-points", "200",
            "--payload-links", "off", "--ef-construct", "32", "--dir", str(fast_dir), "--json", str(fast_dir / "bench.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "edge " in out and "qdrant-local" in out and "run on 200 of 300 points" in out
    assert "edge filtered p95 at 300 points" in out and "edge filtered p95 at 400 points" in out
    assert "ef_construct 32" in out and "payload links off" in out
    assert not list(fast_dir.glob("bench-store-*"))  # the temporary shard is removed
    assert main(["bench", "no-such-bench"]) == 2


@pytest.mark.parametrize("max_kb, max_points", [(0, 0), (8, 0), (0, 128), (8, 100_000), (500, 128)])
def test_edge_bulk_load_builds_segments_of_the_configured_size(fast_dir: Path, max_kb: int, max_points: int) -> None:
    """[store].max_segment_kb / max_segment_points: a bulk load builds each segment as it fills (build_due), so the
    collection ends as several graphs of about that size instead of one (128 points of 16 floats = 8 KB; the
    smaller cap applies); every point stays found, nearest first."""
    from search.store.edge import IndexSettings

    rng = np.random.default_rng(3)
    data = rng.normal(size=(2000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    settings = IndexSettings(max_segment_kb=max_kb, max_segment_points=max_points, full_scan_kb=4)
    assert settings.segment_kb({"fused": 16}) == (8 if max_kb or max_points else 0)
    store = EdgeStore(fast_dir, index=settings)
    store.create_collection("big", {"fused": 16}, filterable=(), numeric=())
    built = 0
    for start in range(0, 2000, 250):  # 250 points x 16 floats = 15.6 KB a batch
        store.upsert("big", [ItemRecord(id=f"p{i}", vectors={"fused": data[i]}, keywords="word", payload={})
                             for i in range(start, start + 250)])
        built += store.build_due("big")
    store.finalize("big")
    capped = bool(max_kb or max_points)
    assert built == (8 if capped else 0)
    assert (store.segments("big") >= 8) if capped else store.segments("big") == 1
    assert store.count("big") == 2000
    for i in (0, 777, 1999):
        hits = store.query("big", DenseQuery(data[i], "fused"), limit=10)
        assert hits[0].id == f"p{i}" and len(hits) == 10
    store.close()


def test_edge_filtered_search_with_acorn_finds_the_exact_filtered_top(fast_dir: Path) -> None:
    """[store].acorn_selectivity: filtered searches go through ACORN on a built graph (no payload links, so the
    filter only prunes the one graph) and still return the exact top 10 of the filtered points."""
    from search.store.edge import IndexSettings

    rng = np.random.default_rng(5)
    data = rng.normal(size=(3000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    kinds = np.array(["a" if i % 3 else "b" for i in range(3000)])
    settings = IndexSettings(full_scan_kb=1, payload_links=False)
    assert EdgeStore(fast_dir / "x", acorn=0.6)._params().acorn.max_selectivity == 0.6
    with pytest.raises(ConfigError, match="acorn"):
        StoreConfig(acorn_selectivity=1.5)
    store = EdgeStore(fast_dir / "s", index=settings, acorn=1.0)
    store.create_collection("c", {"fused": 16}, filterable=("kind",), numeric=())
    store.upsert("c", [ItemRecord(id=f"p{i}", vectors={"fused": data[i]}, keywords="w", payload={"kind": kinds[i]})
                       for i in range(3000)])
    store.finalize("c")
    found = 0
    for q in rng.normal(size=(40, 16)).astype(np.float32):
        q /= np.linalg.norm(q)
        scores = np.where(kinds == "b", data @ q, -np.inf)
        want = {f"p{i}" for i in np.argsort(-scores)[:10]}
        got = {h.id for h in store.query("c", DenseQuery(q, "fused"), Filters(equals={"kind": ("b",)}), limit=10)}
        assert all(h.startswith("p") and int(h[1:]) % 3 == 0 for h in got)  # the filter holds
        found += len(want & got)
    store.close()
    assert found / 400 >= 0.95


def test_edge_int8_quantised_collection_ranks_as_exact_search_does(fast_dir: Path) -> None:
    """[store].quantization = "int8": the built segment (indexed from 1 KB on) keeps quantised vectors beside the
    float32 ones, and searches re-score their candidates in float32: the exact top 10 with exact scores, stored
    vectors unchanged."""
    from search.store.edge import IndexSettings

    rng = np.random.default_rng(5)
    data = rng.normal(size=(3000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store = EdgeStore(fast_dir / "s", index=IndexSettings(full_scan_kb=1, max_segment_kb=1000,
                                                                payload_links=False, quantization="int8"))
    store.create_collection("c", {"fused": 16}, filterable=("kind",), numeric=())
    store.upsert("c", [ItemRecord(id=f"p{i}", vectors={"fused": data[i]}, keywords="w", payload={"kind": "a"})
                       for i in range(3000)])
    store.finalize("c")
    assert list((fast_dir / "s").rglob("vector_storage-fused/quantized.data")), "no quantised vectors were built"
    for _ in range(20):
        q = _unit(rng, 16)
        got = store.query("c", DenseQuery(q, "fused"), limit=10)
        exact = data @ q
        want = np.argsort(-exact)[:10]
        assert ids(got) == [f"p{i}" for i in want]
        np.testing.assert_allclose([h.score for h in got], exact[want], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.retrieve("c", ["p7"], with_vectors=True)[0].vectors["fused"], data[7])
    store.close()


def test_qdrant_server_collections_get_the_quantisation_and_searches_rescore(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server path asks for the same int8 copy and float32 re-scoring ([store].quantization), and the same
    segment cap ([store].max_segment_points)."""
    cfg = StoreConfig(backend="qdrant", path=":memory:", quantization="int8", quantization_oversampling=3.0,
                      max_segment_points=1000, full_scan_kb=2000)
    s = QdrantStore.from_config(cfg)
    made: dict[str, object] = {}
    real = s.client.create_collection
    monkeypatch.setattr(s.client, "create_collection", lambda *a, **kw: (made.update(kw), real(*a, **kw))[1])
    load(s)
    assert made["quantization_config"].scalar.type == "int8"  # type: ignore[attr-defined]
    assert made["optimizers_config"].max_segment_size == 94  # type: ignore[attr-defined]  # 1000 x 24 floats
    assert made["hnsw_config"].full_scan_threshold == 2000  # type: ignore[attr-defined]  # [store].full_scan_kb
    s.local = False  # what a server request would carry
    request = s._request(DenseQuery(_unit(np.random.default_rng(1)), "text"), None, 5, 0, False, DIMS)
    assert request is not None and request.params.quantization.rescore  # type: ignore[union-attr]
    assert request.params.quantization.oversampling == 3.0  # type: ignore[union-attr]
    s.local = True
    s.close()
    for bad in ({"quantization": "int4"}, {"quantization_oversampling": 0.5}):
        with pytest.raises(ConfigError, match="quantization"):
            StoreConfig(**bad)
    with pytest.raises(ConfigError, match="max_segment"):
        StoreConfig(max_segment_points=-1)
