"""SearchService: request validation, RRF against a naive oracle, the five modes, explain, paging, similar."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.query.ranking import cosines, rrf
from search.query.request import flatten_json, parse_events, parse_search
from tests.helpers import index_with_minilm, make_config, product_rows, write_catalogue
from vitrina.config import Config
from vitrina.errors import BadInput, NotFound, PayloadTooLarge

ROOT = Path(__file__).resolve().parents[1]


def build_index(folder: Path, n: int = 48, **sections: dict[str, Any]) -> tuple[Config, Any, list[dict[str, Any]]]:
    """A catalogue of n products, indexed into an edge store with real MiniLM text vectors.

    Image vectors stand in for a trained tower's: the text vector plus as much random noise, so the two
    modalities agree roughly, as after fine-tuning; fused = fuse(text, image).
    Returns (cfg, store, rows); the alias points at the collection.
    """
    rows = product_rows(n)
    catalogue = write_catalogue(folder / "shop", rows)
    cfg = make_config(folder, catalogue, **sections)
    store = index_with_minilm(cfg, rows)
    return cfg, store, rows


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg, store, rows = build_index(tmp_path_factory.mktemp("engine"))
    yield cfg, store, rows
    store.close()


@pytest.fixture(scope="module")
def service(indexed: Any) -> Any:
    from search.query.engine import SearchService

    cfg, store, _ = indexed
    return SearchService(cfg, store=store)


def params(**kw: Any) -> dict[str, list[str]]:
    return {k.replace("__", "."): (v if isinstance(v, list) else [str(v)]) for k, v in kw.items()}


# ---- pure parts -----------------------------------------------------------------------------------------

def naive_rrf(rankings: list[list[str]], weights: list[float], k: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for item in set(ranking):
            out[item] = out.get(item, 0.0) + w / (k + ranking.index(item) + 1)
    return out


def test_rrf_matches_naive_oracle() -> None:
    rnd = random.Random(3)
    for _ in range(50):
        pool = [str(i) for i in range(30)]
        rankings = [rnd.sample(pool, rnd.randint(0, 20)) for _ in range(rnd.randint(1, 3))]
        weights = [rnd.uniform(0.1, 3) for _ in rankings]
        k = rnd.randint(0, 100)
        got = rrf(rankings, weights, k)
        want = naive_rrf(rankings, weights, k)
        assert set(got) == set(want)
        assert all(abs(got[i] - want[i]) < 1e-12 for i in want)
        scores = list(got.values())
        assert scores == sorted(scores, reverse=True)


def test_rrf_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError):
        rrf([["a"], ["b"]], [1.0], 60)


def test_facet_counts_match_a_naive_count() -> None:
    from search.query.ranking import facet_counts

    payloads = [{"g": "Men", "c": "Red", "tags": ["a", "b", "a"]}, {"g": "Women", "c": "Red"},
                {"g": "Men", "c": "", "tags": ["b"]}, {"g": "Men"}, {"c": None, "tags": []}]
    got = facet_counts(payloads, ("g", "c", "tags", "absent"))
    assert got == {"g": {"Men": 3, "Women": 1}, "c": {"Red": 2}, "tags": {"b": 2, "a": 1}, "absent": {}}
    assert list(got["g"]) == ["Men", "Women"]  # most frequent first
    assert facet_counts([{"x": str(i % 5)} for i in range(50)], ["x"], limit=2) == {"x": {"0": 10, "1": 10}}


def test_cosines_match_numpy() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=8)
    vs = [rng.normal(size=8) for _ in range(5)] + [None, np.zeros(8)]
    got = cosines(q, vs)
    for v, c in zip(vs[:5], got[:5]):
        assert c == pytest.approx(float(v @ q / np.linalg.norm(v) / np.linalg.norm(q)))
    assert got[5:] == [None, None]
    assert cosines(None, vs) == [None] * len(vs)


def test_parse_search_valid(cfg: Config) -> None:
    req = parse_search(params(q="  red shoes ", k=5, offset=10, mode="vector", filter__gender=["Men", "Women"],
                              price_min=10, price_max="20.5", facets="gender,articleType", user_id="u-1"), cfg)
    assert (req.q, req.k, req.offset, req.mode, req.user_id) == ("red shoes", 5, 10, "vector", "u-1")
    assert req.filters.equals == {"gender": ("Men", "Women")}
    assert req.filters.ranges == {"price": (10.0, 20.5)}
    assert req.facets == ("gender", "articleType")
    assert req.image_weight == cfg.search.image_weight
    assert parse_search(params(q="x"), cfg).mode == cfg.search.default_mode


@pytest.mark.parametrize("bad, fragment", [
    ({"q": ""}, "empty query"), ({"q": "   "}, "empty query"), ({"q": "x" * 513}, "too long"),
    ({"q": "x", "k": "0"}, "'k' out of range"), ({"q": "x", "k": "101"}, "'k' out of range"),
    ({"q": "x", "k": "ten"}, "'k' must be an integer"), ({"q": "x", "offset": "-1"}, "'offset'"),
    ({"q": "x", "offset": "100000"}, "'offset'"), ({"q": "x", "mode": "magic"}, "unknown mode"),
    ({"q": "x", "filter.colour": "Red"}, "unknown filter field"), ({"q": "x", "colour": "Red"}, "unknown parameter"),
    ({"q": "x", "price_min": "cheap"}, "must be a number"), ({"q": "x", "price_min": "nan"}, "finite"),
    ({"q": "x", "price_min": "9", "price_max": "3"}, "empty range"), ({"q": "x", "weight_min": "1"}, "unknown range"),
    ({"q": "x", "image_weight": "1.5"}, "image_weight"), ({"q": "x", "user_id": "a b"}, "shopper id"),
    ({"q": "x", "user_id": "u" * 200}, "shopper id"), ({"q": "x", "facets": "colour"}, "unknown facet"),
    ({"q": ["a", "b"]}, "given 2 times"), ({"q": "x", "image_url": "file:///etc/passwd"}, "http"),
])
def test_parse_search_rejects(cfg: Config, bad: dict[str, Any], fragment: str) -> None:
    raw = {k: (v if isinstance(v, list) else [v]) for k, v in bad.items()}
    with pytest.raises(BadInput) as e:
        parse_search(raw, cfg)
    assert fragment in f"{e.value.message} {e.value.detail}"


def test_parse_search_upload_limits(cfg: Config) -> None:
    with pytest.raises(PayloadTooLarge):
        parse_search({}, cfg, image=b"x" * (cfg.search.max_upload_bytes + 1))
    with pytest.raises(BadInput, match="empty"):
        parse_search({}, cfg, image=b"")
    with pytest.raises(BadInput, match="keyword mode"):
        parse_search(params(mode="keyword"), cfg, image=b"jpeg")
    assert parse_search({}, cfg, image=b"jpeg").has_photo


def test_flatten_json() -> None:
    got = flatten_json({"q": "red", "k": 5, "filters": {"gender": ["Men", "Women"], "baseColour": "Red"}})
    assert got == {"q": ["red"], "k": ["5"], "filter.gender": ["Men", "Women"], "filter.baseColour": ["Red"]}
    for bad in ([1], {"filters": [1]}, {"q": {"a": 1}}, {"k": True}):
        with pytest.raises(BadInput):
            flatten_json(bad)


def test_parse_events() -> None:
    now = 1_700_000_000.0
    one = parse_events({"user_id": "u1", "item_id": "1000", "event": "click"}, now, 10)
    assert one[0].ts == now and one[0].event == "click"
    many = parse_events([{"user_id": "u1", "item_id": 7, "event": "view", "ts": "2023-01-01T00:00:00Z"}], now, 10)
    assert many[0].item_id == "7" and many[0].ts == 1672531200.0
    cases = [([], "no events"), ("x", "must be an object"), ({"user_id": "u", "item_id": "1", "event": "like"},
             "unknown event type"), ([{"user_id": "u", "item_id": "1", "event": "view"}, {"item_id": "1"}], "event 1"),
             ({"user_id": "u", "item_id": "1", "event": "view", "ts": "yesterday"}, "ISO-8601"),
             ({"user_id": "u", "item_id": "1", "event": "view", "extra": 1}, "unknown field"),
             ({"user_id": "u", "item_id": "", "event": "view"}, "item id")]
    for body, fragment in cases:
        with pytest.raises(BadInput) as e:
            parse_events(body, now, 10)
        assert fragment in f"{e.value.message} {e.value.detail}"
    with pytest.raises(PayloadTooLarge):
        parse_events([{"user_id": "u", "item_id": "1", "event": "view"}] * 11, now, 10)


def test_importing_web_does_not_import_torch() -> None:
    code = ("import sys; from web import create_app; from vitrina.config import load_config; "
            "app = create_app(load_config(env={})); c = app.test_client(); c.get('/openapi.json'); "
            "bad = [m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime', 'onnx', 'lightgbm') "
            "if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- against a real index -------------------------------------------------------------------------------

def search(service: Any, **kw: Any) -> dict[str, Any]:
    return service.search(parse_search(params(**kw), service.cfg))


def ids(resp: dict[str, Any]) -> list[str]:
    return [r["id"] for r in resp["results"]]


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text", "keyword"])
def test_text_modes_find_the_right_products(service: Any, indexed: Any, mode: str) -> None:
    rows = {r["id"]: r for r in indexed[2]}
    resp = search(service, q="Women Blue Shoes", k=4, mode=mode)
    assert len(resp["results"]) == 4 and resp["total"] >= 4 and resp["took_ms"] >= 0
    top = rows[resp["results"][0]["id"]]
    assert (top["gender"], top["baseColour"], top["articleType"]) == ("Women", "Blue", "Shoes")
    first = resp["results"][0]
    assert first["title"] == top["title"] and first["attributes"]["articleType"] == "Shoes"
    assert first["image_url"] == f"/api/items/{top['id']}/image"
    assert first["explain"]["final"] == pytest.approx(first["score"], abs=1e-5)
    scores = [r["score"] for r in resp["results"]]
    assert scores == sorted(scores, reverse=True)


def test_image_mode_cross_modal_runs_on_image_vectors(service: Any, indexed: Any) -> None:
    _, store, _ = indexed
    resp = search(service, q="red caps", k=5, mode="image")
    from search.store.interface import DenseQuery

    qvec = service.text_vector("red caps")
    want = [h.id for h in store.query("vitrina", DenseQuery(qvec, "image"), limit=5)]
    assert ids(resp) == want


def test_hybrid_is_rrf_of_keyword_and_vector(indexed: Any) -> None:
    from search.query.engine import SearchService

    cfg, store, _ = indexed
    service = SearchService(cfg.replace(search={"attribute_weight": 0.0, "rrf_k": 7, "keyword_weight": 2.0}),
                            store=store)
    s = service.cfg.search
    n = s.candidates
    kw = ids(search(service, q="Men Green Watches", k=min(n, 100), mode="keyword"))
    vec = ids(search(service, q="Men Green Watches", k=min(n, 100), mode="vector"))
    want = list(naive_rrf([kw, vec], [s.keyword_weight, s.vector_weight], s.rrf_k).items())
    want.sort(key=lambda kv: -kv[1])
    got = search(service, q="Men Green Watches", k=10)
    assert ids(got) == [i for i, _ in want[:10]] or \
        [r["explain"]["rrf"] for r in got["results"]] == pytest.approx([v for _, v in want[:10]], abs=1e-9)
    assert [r["explain"]["rrf"] for r in got["results"]] == pytest.approx([v for _, v in want[:10]], abs=1e-6)
    assert set(ids(got)) <= set(kw) | set(vec)
    e = got["results"][0]["explain"]
    assert {"keyword", "vector", "relevance", "personal", "blend", "final"} <= set(e)
    assert e["personal"] == 0 and e["blend"] == 0


def test_attribute_matcher() -> None:
    from search.query.understand import AttributeMatcher, match_share

    m = AttributeMatcher({"gender": ["Men", "Women"], "baseColour": ["Off White", "White", "Brown"],
                          "articleType": ["Watches", "Sports Shoes", "Shoes"], "subCategory": ["Watches"]})
    assert m.match("men brown watches") == {"gender": {"Men"}, "baseColour": {"Brown"},
                                            "articleType": {"Watches"}, "subCategory": {"Watches"}}
    assert m.match("WOMEN off-white sports shoes") == {"gender": {"Women"}, "baseColour": {"Off White"},
                                                       "articleType": {"Sports Shoes"}}
    assert m.match("a watch for him") == {"articleType": {"Watches"}, "subCategory": {"Watches"}}
    assert m.match("") == {} and m.match("nothing here") == {}
    named = m.match("women brown shoes")
    assert match_share({"gender": "Women", "baseColour": "Brown", "articleType": "Shoes"}, named) == 1.0
    assert match_share({"gender": "Men", "baseColour": "Brown", "articleType": "Shoes"}, named) == pytest.approx(2 / 3)
    assert match_share({"gender": "Men"}, {}) == 0.0


def test_hybrid_attribute_boost(indexed: Any) -> None:
    from search.query.engine import SearchService

    cfg, store, rows = indexed
    rows = {r["id"]: r for r in rows}
    on = SearchService(cfg.replace(search={"attribute_weight": 5.0}), store=store)
    off = SearchService(cfg.replace(search={"attribute_weight": 0.0}), store=store)
    want = [i for i, r in rows.items() if (r["gender"], r["baseColour"], r["articleType"]) == ("Men", "Black", "Shoes")]
    got = search(on, q="men black shoes", k=10)
    assert ids(got)[:len(want)] == want and len(want) >= 1
    shares = [r["explain"]["attributes"] for r in got["results"]]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True)  # the boost dominates the RRF scores
    assert all(shares[i] >= 2 / 3 - 1e-9 for i in range(6))  # then two of the three named values
    plain = search(off, q="men black shoes", k=10)
    assert all(r["explain"]["attributes"] == 0.0 for r in plain["results"])
    assert "attributes" not in search(on, q="men black shoes", k=10, mode="keyword")["results"][0]["explain"]


def test_explain_vector_is_cosine_in_fused_space(service: Any, indexed: Any) -> None:
    _, store, _ = indexed
    resp = search(service, q="Black Jeans", k=5, mode="hybrid")
    qvec = service.text_vector("Black Jeans")
    hits = {h.id: h for h in store.retrieve("vitrina", ids(resp), with_vectors=True)}
    for r in resp["results"]:
        v = hits[r["id"]].vectors["fused"]
        assert r["explain"]["vector"] == pytest.approx(float(v @ qvec / np.linalg.norm(v)), abs=1e-4)


def test_filters_and_facets(service: Any, indexed: Any) -> None:
    rows = {r["id"]: r for r in indexed[2]}
    resp = search(service, q="shoes", k=50, filter__gender="Women", filter__baseColour=["Red", "Blue"],
                  price_max=150, facets="articleType,gender")
    assert resp["results"]
    for r in resp["results"]:
        row = rows[r["id"]]
        assert row["gender"] == "Women" and row["baseColour"] in ("Red", "Blue") and float(row["price"]) <= 150
    want = [r for r in rows.values() if r["gender"] == "Women" and r["baseColour"] in ("Red", "Blue")
            and float(r["price"]) <= 150]
    assert resp["facets"]["gender"] == {"Women": len(want)}
    assert sum(resp["facets"]["articleType"].values()) == len(want)
    kw = search(service, q="watches", k=5, mode="keyword", facets="articleType")  # facets follow the query too
    assert kw["total"] > 5 and kw["facets"]["articleType"] == {"Watches": kw["total"]}


def test_paging_is_consistent(service: Any) -> None:
    whole = ids(search(service, q="style", k=30))
    pages = ids(search(service, q="style", k=10)) + ids(search(service, q="style", k=10, offset=10)) \
        + ids(search(service, q="style", k=10, offset=20))
    assert pages == whole and len(set(whole)) == 30


def test_item_similar_and_not_found(service: Any, indexed: Any) -> None:
    rows = {r["id"]: r for r in indexed[2]}
    item = service.item("1005")
    assert item["id"] == "1005" and item["title"] == rows["1005"]["title"]
    sim = service.similar("1005", 5)
    assert len(sim["results"]) == 5 and "1005" not in ids(sim)
    same = [rows[i]["articleType"] for i in ids(sim)]
    assert same.count(rows["1005"]["articleType"]) >= 3
    with pytest.raises(NotFound):
        service.item("nope")
    with pytest.raises(NotFound):
        service.similar("nope", 5)


def test_photo_query_without_tower_is_503(service: Any) -> None:
    import io

    from PIL import Image

    from vitrina.errors import ModelUnavailable

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 0, 0)).save(buf, "JPEG")
    with pytest.raises(ModelUnavailable):
        service.search(parse_search({}, service.cfg, image=buf.getvalue()))
    assert search(service, q="red", k=3)["results"]  # text search still works


def test_photo_query_with_tiny_tower(indexed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import vitrina.images as images

    from search.query.engine import SearchService
    from tests.helpers import draw_product
    from tests.tiny_models import write_tiny_checkpoint

    cfg, store, _ = indexed
    ckpt = write_tiny_checkpoint(tmp_path / "tower.pt")
    service = SearchService(cfg.replace(image_encoder={"checkpoint": str(ckpt), "arch": "vitrina-test-tiny"}),
                            store=store)
    buf = io.BytesIO()
    draw_product("Red", "Shoes").save(buf, "JPEG")
    for mode in ("image", "vector", "hybrid"):
        resp = service.search(parse_search(params(mode=mode, k=5), service.cfg, image=buf.getvalue()))
        assert len(resp["results"]) == 5
    both = service.search(parse_search(params(q="red shoes", k=5, image_weight=0.3), service.cfg,
                                       image=buf.getvalue()))
    assert len(both["results"]) == 5
    assert all(r["explain"]["keyword"] is None for r in both["results"])  # with a photo: dense list only
    # image_weight 0 means the text alone decides: same ranking as the text query
    text_only = search(service, q="red shoes", k=5, mode="vector")
    w0 = service.search(parse_search(params(q="red shoes", k=5, mode="vector", image_weight=0), service.cfg,
                                     image=buf.getvalue()))
    assert ids(w0) == ids(text_only)
    # an upload is decoded only as large as the tower needs: a 1600 px JPEG at 1/8 scale (200 px >= 2 x 32)
    fits: list[tuple[int, tuple[int, int]]] = []
    real = images.decode_image

    def spy(data: bytes, max_pixels: int, fit: int = 0) -> Any:
        img = real(data, max_pixels, fit)
        fits.append((fit, img.size))
        return img

    monkeypatch.setattr(images, "decode_image", spy)
    big = io.BytesIO()
    draw_product("Red", "Shoes").resize((1600, 1600)).save(big, "JPEG")
    found = service.search(parse_search(params(mode="image", k=5), service.cfg, image=big.getvalue()))
    assert len(found["results"]) == 5
    side = max(service.image_encoder().image_size)
    assert fits == [(2 * side, (200, 200))]


def test_photo_attributes_read_by_the_label_head_move_matching_items_up(indexed: Any, tmp_path: Path) -> None:
    import io

    import torch

    from encoders.image import create_image_encoder
    from search.query.engine import SearchService
    from tests.helpers import draw_product
    from tests.tiny_models import write_tiny_checkpoint

    cfg, store, rows = indexed
    buf = io.BytesIO()
    draw_product("Red", "Shoes").save(buf, "JPEG")
    plain_cfg = cfg.replace(image_encoder={"checkpoint": str(write_tiny_checkpoint(tmp_path / "plain.pt")),
                                           "arch": "vitrina-test-tiny"})
    photo = create_image_encoder(plain_cfg).encode([draw_product("Red", "Shoes")])[0]
    # a head that reads (Watches, Men) from this photo: its prototype is the photo's own vector
    labels = {"fields": ["articleType", "gender"], "classes": [["Watches", "Men"], ["Shoes", "Women"]],
              "prototypes": torch.from_numpy(np.stack([photo, -photo])), "scale": 30.0}
    ckpt = write_tiny_checkpoint(tmp_path / "head.pt", labels=labels)
    head_cfg = cfg.replace(image_encoder={"checkpoint": str(ckpt), "arch": "vitrina-test-tiny"})
    by_id = {r["id"]: r for r in rows}
    for mode in ("image", "vector", "hybrid"):
        req = params(mode=mode, k=5)
        off = SearchService(head_cfg.replace(search={"photo_attribute_weight": 0.0}), store=store)
        plain = off.search(parse_search(req, off.cfg, image=buf.getvalue()))
        on = SearchService(head_cfg, store=store)
        boosted = on.search(parse_search(req, on.cfg, image=buf.getvalue()))
        assert any((by_id[i]["articleType"], by_id[i]["gender"]) != ("Watches", "Men") for i in ids(plain))
        assert all((by_id[i]["articleType"], by_id[i]["gender"]) == ("Watches", "Men") for i in ids(boosted)), \
            [(by_id[i]["articleType"], by_id[i]["gender"], r["explain"]) for i, r in zip(ids(boosted), boosted["results"])]
        assert all(r["explain"]["photo_attributes"] == pytest.approx(1.0, abs=1e-4) for r in boosted["results"])
        assert "photo_attributes" not in plain["results"][0]["explain"]
    text = SearchService(head_cfg, store=store)  # a text query never asks the head
    assert "photo_attributes" not in search(text, q="red shoes", k=3, mode="vector")["results"][0]["explain"]


def test_hybrid_defaults_in_config_are_sane(service: Any) -> None:
    s = service.cfg.search
    # the pool of each fused list is max(candidates, offset + k): a page of max_k still comes whole
    assert s.candidates >= s.default_k and s.rrf_k >= 0 and s.keyword_weight >= 0 and s.vector_weight >= 0
    assert s.default_mode in ("hybrid", "vector", "text", "image", "keyword")


def test_query_cache_and_model_threads(indexed: Any) -> None:
    from search.query.engine import SearchService

    cfg, store, _ = indexed
    service = SearchService(cfg.replace(search={"query_cache": 2, "torch_threads": 1}), store=store)
    assert service.model_cfg.runtime.threads == 1
    a = service.text_vector("red shoes")
    assert service.text_vector("red shoes") is a and not a.flags.writeable
    service.text_vector("blue caps")
    service.text_vector("green bags")
    assert list(service._query_cache) == ["blue caps", "green bags"]
    fresh = service.text_vector("red shoes")
    assert fresh is not a and np.allclose(fresh, a, atol=1e-3)
    assert SearchService(cfg.replace(search={"torch_threads": 0}), store=store).model_cfg.runtime == cfg.runtime


def test_index_size_and_health(service: Any, indexed: Any) -> None:
    assert service.index_size(fresh=True) == len(indexed[2])
    h = service.health()
    assert h["status"] == "ok" and h["index"]["points"] == len(indexed[2])


def test_purchased_items_demoted_when_configured(indexed: Any) -> None:
    from search.query.engine import SearchService
    from search.query.request import FeedbackEvent

    cfg, store, _ = indexed
    keep = SearchService(cfg.replace(personal={"purchased": "keep"}), store=store)
    demote = SearchService(cfg.replace(personal={"purchased": "demote", "demote_factor": 0.1}), store=store)
    top = ids(search(keep, q="Women Red Tshirts", k=3))[0]
    assert keep.record_feedback([FeedbackEvent("buyer-1", top, "purchase", time.time())]) == 1
    kept = search(keep, q="Women Red Tshirts", k=5, user_id="buyer-1")
    assert ids(kept)[0] == top  # buying it made it even more like the shopper's taste
    demoted = search(demote, q="Women Red Tshirts", k=48, user_id="buyer-1")
    assert ids(demoted).index(top) > 0
    row = next(r for r in demoted["results"] if r["id"] == top)
    assert row["explain"]["demotion"] < 0
    with pytest.raises(NotFound):
        keep.record_feedback([FeedbackEvent("buyer-1", "no-such-item", "view", 1.7e9)])
    assert keep.forget("buyer-1") and not keep.forget("buyer-1")


def test_replayed_history_still_personalises(indexed: Any) -> None:
    """Decay runs on the shop's clock (newest logged event), so a replayed 2020 history is not cold start."""
    from search.query.engine import SearchService
    from search.query.request import FeedbackEvent

    cfg, store, _ = indexed
    service = SearchService(cfg, store=store)
    blue = [r["id"] for r in search(service, q="Blue", k=5, mode="keyword")["results"]]
    t2020 = 1_590_000_000.0  # 2020-05-20
    events = [FeedbackEvent("replayed", item, "click", t2020 + i) for i, item in enumerate(blue)]
    assert service.record_feedback(events) == len(blue)
    assert service.profiles.clock() == pytest.approx(t2020 + len(blue) - 1)
    row = search(service, q="Tshirts", k=5, user_id="replayed")["results"][0]
    expected = cfg.personal.blend_max * len(blue) / (len(blue) + cfg.personal.blend_saturation)
    assert row["explain"]["blend"] == pytest.approx(expected, rel=0.01)


def test_personal_candidates_reach_past_the_pool(indexed: Any) -> None:
    """A known shopper's own list (nearest to the user vector among the items the query names) joins the pool."""
    from search.query.engine import SearchService
    from search.query.request import FeedbackEvent

    cfg, store, rows = indexed
    small = cfg.replace(search={"candidates": 2})
    plain = SearchService(small, store=store)
    mine = SearchService(small.replace(personal={"candidates": 4}), store=store)
    base = search(plain, q="Tshirts", k=2)
    base_colours = {r["attributes"]["baseColour"] for r in base["results"]}
    colour = next(c for c in ("Yellow", "Green", "White", "Black", "Blue", "Red") if c not in base_colours)
    shoes = [r["id"] for r in rows if r["articleType"] == "Shoes" and r["baseColour"] == colour]
    now = time.time()
    assert mine.record_feedback([FeedbackEvent("pool-1", i, "purchase", now) for i in shoes]) == len(shoes)
    try:
        assert search(plain, q="Tshirts", k=2, user_id="pool-1")["total"] == 2  # rerank alone: the same 2
        assert search(mine, q="Tshirts", k=2, user_id="pool-1")["total"] > 2
        req = parse_search(params(q="Tshirts", k=2, user_id="pool-1"), mine.cfg)
        hits, explain = mine._retrieve(req, mine.text_vector("Tshirts"), 2, mine.profiles.get("pool-1"))
        added = [(h, e) for h, e in zip(hits, explain) if e.get("personal_rank")]
        assert len(hits) > 2 and added and all(h.payload["articleType"] == "Tshirts" for h, _ in added)
        user = mine.profiles.get("pool-1")  # the list's scores are the user cosines the rerank reuses
        ids_ = [h.id for h in hits]
        known = {h.id: e["_user_cosine"] for h, e in added}
        from search.shopper.lookup import user_cosines

        np.testing.assert_allclose(user_cosines(mine.store, mine.alias, user, ids_, known),
                                   user_cosines(mine.store, mine.alias, user, ids_), rtol=1e-5, atol=1e-6)
        first = min(added, key=lambda he: he[1]["personal_rank"])[0]
        assert first.payload["baseColour"] == colour  # the shopper's colour comes first in their list
        assert search(mine, q="Tshirts", k=2)["total"] == 2  # no shopper: no extra list
        assert search(mine, q="Tshirts", k=2, user_id="nobody")["total"] == 2
    finally:
        mine.forget("pool-1")


def test_affinity_boosts_the_shoppers_values(indexed: Any) -> None:
    """[personal].affinity: candidates sharing a value with the bought items gain weight x share."""
    from search.query.engine import SearchService
    from search.query.request import FeedbackEvent

    cfg, store, rows = indexed
    service = SearchService(cfg.replace(personal={"affinity": ("baseColour=5.0", "item=1.0"), "blend_max": 0.0}),
                            store=store)
    bought = [r["id"] for r in rows if r["articleType"] == "Shoes" and r["baseColour"] == "Green"][:1]
    assert service.record_feedback([FeedbackEvent("aff-1", bought[0], "purchase", time.time())]) == 1
    try:
        top = search(service, q="Tshirts", k=3, user_id="aff-1")["results"]
        assert top[0]["attributes"]["baseColour"] == "Green" and top[0]["attributes"]["articleType"] == "Tshirts"
        e = top[0]["explain"]
        assert e["affinity"] == pytest.approx(5.0 * e["relevance_norm"], rel=1e-4) and e["affinity"] > 0
        shoes = search(service, q="Green Shoes", k=48, user_id="aff-1")["results"]
        again = next(r for r in shoes if r["id"] == bought[0])["explain"]  # its colour and itself (buy again)
        assert again["affinity"] == pytest.approx(6.0 * again["relevance_norm"], rel=1e-4)
        anon = search(service, q="Tshirts", k=3)["results"]
        assert all(r["explain"]["affinity"] == 0.0 for r in anon)
    finally:
        service.forget("aff-1")


def test_photo_boost_against_a_hand_computed_order() -> None:
    from types import SimpleNamespace

    from search.query.understand import photo_boost

    hits = [SimpleNamespace(payload=p) for p in ({"t": "Shoes", "g": "Men"}, {"t": "Watches", "g": "Men"},
                                                 {"t": "Watches", "g": "Women"}, {"t": "Bags"})]
    explain = [{"relevance": r} for r in (0.9, 0.8, 0.7, 0.5)]
    read = {"t": ("Watches", 0.9), "g": ("Men", 0.6)}
    got, parts = photo_boost(hits, [dict(e) for e in explain], read, weight=2.0)
    scale = 2.0 * (0.9 - 0.5)
    want = {0: 0.9 + scale * 0.3, 1: 0.8 + scale * 0.75, 2: 0.7 + scale * 0.45, 3: 0.5}
    order = sorted(want, key=lambda i: -want[i])
    assert [h.payload for h in got] == [hits[i].payload for i in order]
    assert [e["relevance"] for e in parts] == pytest.approx([want[i] for i in order])
    assert parts[0]["photo_attributes"] == pytest.approx(0.75)
    same, _ = photo_boost(hits, [dict(e) for e in explain], {}, weight=2.0)  # nothing read: order kept
    assert same == hits


def test_health_counts_again_only_when_the_alias_moved(service: Any, indexed: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    count = service.store.count
    monkeypatch.setattr(service.store, "count", lambda *a, **k: calls.append(a) or count(*a, **k))
    first = service.health()
    calls.clear()
    assert service.health()["index"]["points"] == first["index"]["points"] == len(indexed[2])
    assert calls == []  # the second /health reads the kept count
    service._counted = "another-collection"  # as if the alias had moved since
    assert service.health()["index"]["points"] == len(indexed[2]) and calls == [(service.alias,)]
