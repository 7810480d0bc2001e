"""Query reading on a tiny catalogue with real MiniLM vectors: synonyms, weak readings, exact words, spelling,
negations, the value index kept per collection, and what the API shows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import index_with_minilm, make_config, write_catalogue

# a small shop: a few items of each kind, titles as a catalogue writes them
KINDS = {
    "Sunglasses": ["Fastrack Men Aviator Sunglasses", "Ray-Ban Unisex Wayfarer Sunglasses",
                   "Polaroid Women Cat-eye Sunglasses", "Idee Men Sports Sunglasses"],
    "Tshirts": ["Nike Men Round Neck T-shirt", "Puma Women Printed Tshirt", "Roadster Men Polo Tshirt",
                "Adidas Men Graphic Tshirt"],
    "Perfume and Body Mist": ["Davidoff Cool Water Eau de Toilette for Men", "Calvin Klein Women Eau de Parfum",
                              "Playboy Men Body Mist", "Elizabeth Arden Women Perfume"],
    "Watches": ["Titan Men Analog Watch", "Casio Unisex Digital Watch", "Fossil Women Chronograph Watch",
                "Timex Men Leather Strap Watch"],
    "Heels": ["Catwalk Women Stiletto Heels", "Rocia Women Block Heels", "Carlton London Women Wedge Heels",
              "Inc 5 Women Pumps Heels"],
    "Sweaters": ["United Colors of Benetton Men Wool Sweater", "Vero Moda Women Cardigan Sweater",
                 "Wrangler Men Cable Knit Sweater", "Roadster Women Pullover Sweater"],
    "Belts": ["Tommy Hilfiger Men Leather Belt", "Woodland Men Brown Belt", "Hidesign Women Belt",
              "Lino Perros Men Black Belt"],
    "Jeans": ["Levis Men Slim Fit Jeans", "Wrangler Women Skinny Jeans", "Lee Men Regular Jeans",
              "Pepe Women Bootcut Jeans"],
}
COLOURS = ["Black", "Blue", "Brown", "White"]


def shop_rows() -> list[dict[str, Any]]:
    rows = []
    for kind, titles in KINDS.items():
        for j, title in enumerate(titles):
            i = len(rows)
            gender = "Women" if "Women" in title else "Men"
            colour = COLOURS[j % len(COLOURS)]
            rows.append({"id": str(2000 + i), "title": f"{title} {colour}", "gender": gender, "baseColour": colour,
                         "articleType": kind, "price": f"{10 + 7 * i:.2f}", "image": f"images/{2000 + i}.jpg",
                         "split": "test" if kind == "Jeans" and j == 3 else "train"})
    return rows


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("reading")
    rows = shop_rows()
    # the split is stored as the indexer stores it, so the held-out test item can be left out of the value index
    cfg = make_config(folder, write_catalogue(folder / "shop", rows))
    cfg = cfg.replace(catalogue={"attributes": ("gender", "articleType", "baseColour", "split")})
    store = index_with_minilm(cfg, rows, image_noise=False)
    yield cfg, store, rows
    store.close()


@pytest.fixture(scope="module")
def service(shop: Any) -> Any:
    from search.query.engine import SearchService

    cfg, store, _ = shop
    return SearchService(cfg, store=store)


def search(service: Any, q: str, **kw: Any) -> dict[str, Any]:
    from search.query.request import parse_search

    return service.search(parse_search({"q": [q], **{k: [str(v)] for k, v in kw.items()}}, service.cfg))


def top_value(reading: Any, field: str = "articleType") -> tuple[str, float]:
    values = reading.similar.get(field, {})
    return max(values.items(), key=lambda kv: kv[1]) if values else ("", 0.0)


# ---- the attribute reading ------------------------------------------------------------------------------

@pytest.mark.parametrize("query, kind", [("shades", "Sunglasses"), ("scent for her", "Perfume and Body Mist"),
                                         ("wristwatch", "Watches"), ("stilettos", "Heels"),
                                         ("cologne", "Perfume and Body Mist"), ("denims", "Jeans"),
                                         ("tee", "Tshirts")])
def test_similarity_reading_finds_synonyms(service: Any, query: str, kind: str) -> None:
    reading = service.read_query(query)
    value, conf = top_value(reading)
    assert value == kind, reading.similar
    others = sorted(reading.similar["articleType"].values())[:-1]
    assert conf > 2 * max(others, default=0.0)  # a clear reading: well above the others
    assert not reading.exact.get("articleType")


def test_synonym_reading_moves_the_right_kind_up_and_is_explained(service: Any, shop: Any) -> None:
    kinds = {r["id"]: r["articleType"] for r in shop[2]}
    resp = search(service, "shades", k=4)
    assert [kinds[r["id"]] for r in resp["results"]] == ["Sunglasses"] * 4
    notes = resp["understood"]["readings"]
    similar = [n for n in notes if n["how"] == "similar"]
    assert similar and similar[0]["values"]["articleType"][0] == "Sunglasses" and similar[0]["words"] == "shades"
    assert resp["understood"]["weights"]["vector"] > 0
    # no title holds "shades": the keywords cover none of it and get no weight
    assert resp["understood"]["signals"]["keyword_coverage"] == 0.0 and resp["understood"]["weights"]["keyword"] == 0
    assert all(r["explain"]["attributes"] > 0 for r in resp["results"])


def test_weak_reading_is_ignored(service: Any, shop: Any) -> None:
    from search.query.reading import similar_values

    reader = service.reader()
    s = reader.settings
    values = reader.values.fields["articleType"]
    # a vector near no value (orthogonal to every centroid and name): nothing is read
    rng = np.random.default_rng(0)
    v = rng.normal(size=values.centroids.shape[1]).astype(np.float32)
    basis = np.concatenate([values.centroids, values.names])
    v -= basis.T @ np.linalg.lstsq(basis.T, v, rcond=None)[0]
    v /= np.linalg.norm(v)
    assert similar_values(v, values, s) == {}
    # a vector halfway between two values reads both, each less surely than either alone
    both = values.centroids[0] + values.centroids[1]
    read = similar_values(both / np.linalg.norm(both), values, s)
    alone = similar_values(values.centroids[0], values, s)
    assert max(read.values()) < max(alone.values())
    # words of no kind: the vectors keep the order (the reading only echoes the nearest items)
    plain = search(service, "florp quux", k=5, mode="vector")
    read_query = search(service, "florp quux", k=5)
    assert read_query["results"][0]["id"] == plain["results"][0]["id"]


def test_exact_word_wins_over_similarity(service: Any, shop: Any) -> None:
    rows = {r["id"]: r for r in shop[2]}
    reading = service.read_query("men watches")
    assert reading.exact == {"gender": frozenset({"Men"}), "articleType": frozenset({"Watches"})}
    assert "articleType" not in reading.similar and "articleType" not in reading.open_fields
    resp = search(service, "men watches", k=2)
    assert all((rows[r["id"]]["gender"], rows[r["id"]]["articleType"]) == ("Men", "Watches") for r in resp["results"])
    assert {n["how"] for n in resp["understood"]["readings"]} == {"exact"}
    # words written apart that a value writes as one
    assert service.read_query("t shirts").exact == {"articleType": frozenset({"Tshirts"})}


def test_spelling_from_the_catalogue(service: Any) -> None:
    reading = service.read_query("sunglases for men")
    assert reading.corrections == {"sunglases": "sunglasses"} and reading.text == "sunglasses for men"
    assert reading.exact["articleType"] == frozenset({"Sunglasses"})
    assert service.read_query("shades").corrections == {}  # the encoder knows it: not a typo
    assert service.read_query("jens").corrections == {}  # too short to guess


def test_negation_sends_ruled_out_items_last(service: Any, shop: Any) -> None:
    rows = {r["id"]: r for r in shop[2]}
    resp = search(service, "watches not black", k=40)
    colours = [rows[r["id"]]["baseColour"] for r in resp["results"]]
    watches = [rows[r["id"]]["articleType"] == "Watches" for r in resp["results"]]
    assert watches[:3] == [True] * 3 and "Black" not in colours[:3]
    assert resp["understood"]["text"] == "watches"
    assert {"words": "not black", "how": "exclude", "exclude": {"baseColour": ["Black"]}} \
        in resp["understood"]["readings"]
    flagged = [r for r in resp["results"] if r["explain"].get("excluded")]
    assert all(rows[r["id"]]["baseColour"] == "Black" for r in flagged)
    assert resp["results"].index(flagged[0]) > max(i for i, r in enumerate(resp["results"])
                                                   if not r["explain"].get("excluded"))


def test_price_in_the_query_filters(service: Any, shop: Any) -> None:
    rows = {r["id"]: r for r in shop[2]}
    resp = search(service, "jeans under 200", k=20)
    assert resp["results"] and all(float(rows[r["id"]]["price"]) <= 200 for r in resp["results"])
    assert any(n["how"] == "price" and n["price"] == {"min": None, "max": 200.0}
               for n in resp["understood"]["readings"])
    both = search(service, "jeans under 200", k=20, price_min=220)  # parameters and words intersect
    assert both["results"] == []
    lone = search(service, "under 200", k=3)  # nothing but a price: the text stays to search with
    assert lone["understood"]["text"] == "under 200"


def test_reading_is_cached_and_value_index_built_once(service: Any, shop: Any, monkeypatch: Any) -> None:
    from search.query import value_index

    cfg, store, _ = shop
    first = service.read_query("scent for her")
    assert service.read_query("scent for her") is first
    collection = store.get_alias(cfg.store.alias)
    saved = cfg.data_dir / "understand" / f"{collection}.values.json"
    assert saved.is_file()
    # a fresh service reads the saved index: no scroll of the collection
    from search.query.engine import SearchService

    monkeypatch.setattr(value_index, "build_value_index", lambda *a, **k: pytest.fail("rebuilt"))
    again = SearchService(cfg, store=store)
    assert again.reader().values.fields["articleType"].values == service.reader().values.fields["articleType"].values
    # the held-out (test split) item shaped nothing: Jeans' centroid has 3 items
    fv = again.reader().values.fields["articleType"]
    assert int(fv.counts[fv.values.index("Jeans")]) == 3


def test_a_search_encodes_its_text_once_with_the_query_cache_off(shop: Any) -> None:
    """The similarity reading's vector is the search's text vector: no second run of the encoder for it."""
    from search.query.engine import SearchService

    cfg, store, _ = shop
    uncached = SearchService(cfg.replace(search={"query_cache": 0}), store=store)
    uncached.reader()  # built (its value names encoded) before counting
    encoder = uncached.text_encoder()
    texts: list[str] = []
    real = encoder.encode

    def counted(batch: list[str], *a: Any, **kw: Any) -> Any:
        texts.extend(batch)
        return real(batch, *a, **kw)

    encoder.encode = counted  # type: ignore[method-assign]
    try:
        resp = search(uncached, "scent for her", k=3)
    finally:
        del encoder.encode
    assert [n for n in resp["understood"]["readings"] if n["how"] == "similar"]  # the reading used the vector
    assert texts == ["scent for her"]
    assert resp["results"] == search(SearchService(cfg, store=store), "scent for her", k=3)["results"]


def test_other_modes_are_not_read(service: Any) -> None:
    for mode in ("text", "vector", "keyword"):
        assert "understood" not in search(service, "shades", k=3, mode=mode)


def test_api_shows_the_reading_and_survives_odd_queries(shop: Any) -> None:
    from web import create_app

    cfg, store, _ = shop
    app = create_app(cfg, store=store)
    client = app.test_client()
    for q in ("shades", "not", "under", "without without", "under 1e999", "$$$ 5", "between 9 and", "🙂 tee",
              "x" * 512, "not not black", "under 0", "NOT BLACK watches", "a-", "--", "٣٠ under ٣"):
        r = client.get("/api/search", query_string={"q": q, "k": 3})
        assert r.status_code == 200, (q, r.get_json())
        body = r.get_json()
        assert "understood" in body and isinstance(body["understood"]["readings"], list)
    r = client.get("/api/search", query_string={"q": "x" * 513})
    assert r.status_code == 400


@pytest.mark.parametrize("using", ["fused", "text"])
def test_reading_neighbours_come_from_the_configured_vectors(shop: Any, using: str, monkeypatch: Any) -> None:
    from search.query.engine import SearchService
    from search.store.interface import DenseQuery

    cfg, store, _ = shop
    service = SearchService(cfg.replace(understand={"neighbours_using": using}), store=store)
    asked: list[str] = []
    real_one, real_batch = store.query, store.query_batch

    def spy_one(collection: str, query: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(query, DenseQuery):
            asked.append(query.using)
        return real_one(collection, query, *args, **kw)

    def spy_batch(collection: str, queries: Any, *args: Any, **kw: Any) -> Any:
        asked.extend(q.using for q in queries if isinstance(q, DenseQuery))
        return real_batch(collection, queries, *args, **kw)

    monkeypatch.setattr(store, "query", spy_one)
    monkeypatch.setattr(store, "query_batch", spy_batch)
    resp = search(service, "shades", k=4)
    assert resp["understood"]["readings"]
    assert ("text" in asked) == (using == "text")
    assert "fused" in asked


def test_unknown_neighbour_vectors_are_a_config_error(shop: Any) -> None:
    from search.query.engine import SearchService
    from vitrina.errors import ConfigError

    cfg, store, _ = shop
    service = SearchService(cfg.replace(understand={"neighbours_using": "image"}), store=store)
    with pytest.raises(ConfigError, match="neighbours_using"):
        search(service, "shades", k=4)
