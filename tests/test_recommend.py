"""Recommendations and also-bought end to end: real edge store, real Flask app, feedback through the API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient

from search.shopper.profiles import FILENAME, ProfileStore
from search.shopper.recommend import SOURCES, matches
from search.store.factory import open_store
from search.store.interface import Filters, ItemRecord
from tests.helpers import make_config, product_rows
from vitrina.config import Config

DIM = 32
T0 = "2020-05-01T00:00:00Z"


def clustered_vectors(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """One centre per article type plus a little noise: items of a type are each other's neighbours."""
    rng = np.random.default_rng(seed)
    centres = {a: rng.normal(size=DIM) for a in sorted({r["articleType"] for r in rows})}
    out = {}
    for r in rows:
        v = centres[r["articleType"]] + 0.35 * rng.normal(size=DIM)
        out[r["id"]] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Any, list[dict[str, Any]]]]:
    folder = tmp_path_factory.mktemp("recommend")
    rows = product_rows(48)
    cfg = make_config(folder, None)
    vecs = clustered_vectors(rows)
    store = open_store(cfg)
    store.create_collection("items_v1", {"text": DIM, "fused": DIM}, cfg.catalogue.filterable, ())
    store.upsert("items_v1", [ItemRecord(
        id=r["id"], vectors={"text": vecs[r["id"]], "fused": vecs[r["id"]]}, keywords=r["title"],
        payload={"title": r["title"], "price": float(r["price"]), "gender": r["gender"],
                 "articleType": r["articleType"], "baseColour": r["baseColour"]}) for r in rows])
    store.flush("items_v1")
    store.set_alias(cfg.store.alias, "items_v1")
    yield cfg, store, rows
    store.close()


@pytest.fixture
def app_cfg(indexed: Any, tmp_path: Path) -> Config:
    """The shared index, with profiles (and signals) of this test only."""
    return indexed[0].replace(data={"dir": str(tmp_path / "var")})


@pytest.fixture
def client(indexed: Any, app_cfg: Config) -> FlaskClient:
    from web import create_app

    return create_app(app_cfg, store=indexed[1], TESTING=True).test_client()


@pytest.fixture
def rows(indexed: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in indexed[2]}


def feed(client: FlaskClient, events: list[tuple[str, str, str]], ts: str = T0) -> None:
    body = [{"user_id": u, "item_id": i, "event": e, "ts": ts} for u, i, e in events]
    resp = client.post("/api/feedback", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"accepted": len(events)}


def recs(client: FlaskClient, user: str, **params: Any) -> list[dict[str, Any]]:
    resp = client.get(f"/api/users/{user}/recommendations", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) >= {"results", "total", "took_ms"} and body["total"] == len(body["results"])
    return body["results"]


def also(client: FlaskClient, item: str, **params: Any) -> list[dict[str, Any]]:
    resp = client.get(f"/api/items/{item}/also-bought", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["results"]


def test_matches_filters() -> None:
    payload = {"gender": "Men", "price": 20.0, "tags": ["a", "b"]}
    assert matches(payload, None) and matches(payload, Filters())
    assert matches(payload, Filters(equals={"gender": ("Women", "Men")}, ranges={"price": (10, 20)}))
    assert not matches(payload, Filters(equals={"gender": ("Women",)}))
    assert not matches(payload, Filters(ranges={"price": (None, 19.9)}))
    assert not matches(payload, Filters(ranges={"missing": (0, None)}))
    assert matches(payload, Filters(equals={"tags": ("b",)}))


def test_unknown_shopper_gets_popular_items_narrowed_by_filters(client: FlaskClient, rows: dict) -> None:
    ids = list(rows)
    feed(client, [(f"s{u}", ids[0], "purchase") for u in range(3)] + [(f"s{u}", ids[1], "click") for u in range(3)]
         + [("s9", ids[2], "view")])
    got = recs(client, "nobody", k=3)
    assert [r["id"] for r in got] == ids[:3]
    assert all(r["explain"]["sources"] == ["popular"] for r in got)
    assert got[0]["explain"]["popular"] == pytest.approx(1.0)
    assert set(got[0]) >= {"id", "score", "title", "image_url", "attributes", "explain"}
    women = recs(client, "nobody", **{"filter.gender": "Women", "k": 5})
    assert len(women) == 5 and all(rows[r["id"]]["gender"] == "Women" for r in women)
    popular = [i for i in ids[:3] if rows[i]["gender"] == "Women"]
    assert [r["id"] for r in women][:len(popular)] == popular  # then typical items fill the feed up
    assert all(r["explain"]["sources"] == ["typical"] for r in women[len(popular):])


def test_cold_start_with_no_events_at_all_shows_each_categorys_typical_items(
        client: FlaskClient, indexed: Any, app_cfg: Config, rows: dict) -> None:
    from web import create_app

    store = indexed[1]
    kinds = sorted({r["articleType"] for r in rows.values()})
    got = recs(client, "nobody", k=2 * len(kinds))
    assert len(got) == 2 * len(kinds) and len({r["id"] for r in got}) == len(got)
    assert all(r["explain"]["sources"] == ["typical"] and r["explain"]["final"] == 0.0 for r in got)
    # a round takes one item of each category: the one nearest the centroid of its items' text vectors
    vectors = {h.id: h.vectors["text"] for h in store.scroll(store.get_alias(app_cfg.store.alias), with_vectors=True)}
    nearest = {}
    for kind in kinds:
        members = [i for i in rows if rows[i]["articleType"] == kind]
        centre = np.mean([vectors[i] for i in members], axis=0)
        centre /= np.linalg.norm(centre)
        nearest[kind] = max(members, key=lambda i: float(vectors[i] @ centre))
    first, second = got[:len(kinds)], got[len(kinds):]
    assert {r["id"] for r in first} == set(nearest.values())
    assert sorted(rows[r["id"]]["articleType"] for r in second) == kinds
    women = recs(client, "nobody", k=6, **{"filter.gender": "Women"})
    assert len(women) == 6 and all(rows[r["id"]]["gender"] == "Women" for r in women)
    shoes = recs(client, "nobody", k=3, **{"filter.articleType": "Shoes"})
    assert len(shoes) == 3 and all(rows[r["id"]]["articleType"] == "Shoes" for r in shoes)
    off = create_app(app_cfg.replace(recommend={"fill": False}), store=store, TESTING=True).test_client()
    assert recs(off, "nobody") == []  # nothing from the shoppers' events, and no filling


def test_one_event_gives_more_like_it(client: FlaskClient, rows: dict) -> None:
    item = list(rows)[13]
    feed(client, [("fresh", item, "click")])
    got = recs(client, "fresh", k=5)
    similar = client.get(f"/api/items/{item}/similar", query_string={"k": 5}).get_json()["results"]
    assert [r["id"] for r in got] == [r["id"] for r in similar]  # the nearest items to what was clicked
    assert item not in {r["id"] for r in got}
    assert all("similar" in r["explain"]["sources"] for r in got)
    assert all(rows[r["id"]]["articleType"] == rows[item]["articleType"] for r in got)


def test_new_item_with_no_feedback_is_recommended_on_content(client: FlaskClient, rows: dict) -> None:
    ids = list(rows)
    item = ids[20]
    others = [i for i in ids if rows[i]["articleType"] == rows[item]["articleType"] and i != item]
    feed(client, [("u", item, "purchase")] + [(f"pop{k}", ids[0], "purchase") for k in range(5)])
    got = [r["id"] for r in recs(client, "u", k=6)]
    assert set(others) & set(got[:4])  # never-bought items like the purchase rank above the best-seller
    assert got.index(ids[0]) > 2 if ids[0] in got else True


def test_buy_again_and_exclude_purchased(client: FlaskClient, rows: dict) -> None:
    item = list(rows)[5]
    feed(client, [("buyer", item, "purchase")])
    got = recs(client, "buyer", k=5)
    assert got[0]["id"] == item and "buy_again" in got[0]["explain"]["sources"]
    assert item not in {r["id"] for r in recs(client, "buyer", k=5, exclude_purchased="true")}
    resp = client.get("/api/users/buyer/recommendations", query_string={"exclude_purchased": "maybe"})
    assert resp.status_code == 400


def test_co_bought_with_recent_items(client: FlaskClient, rows: dict, app_cfg: Config) -> None:
    ids = list(rows)
    a, b = ids[0], ids[30]  # different article types: only co-occurrence links them
    assert rows[a]["articleType"] != rows[b]["articleType"]
    feed(client, [(f"pair{u}", x, "purchase") for u in range(3) for x in (a, b)])
    feed(client, [("newbie", a, "purchase")])
    got = recs(client, "newbie", k=5)
    by_id = {r["id"]: r for r in got}
    assert b in by_id and "co_bought" in by_id[b]["explain"]["sources"]
    assert got[0]["id"] == a and "buy_again" in got[0]["explain"]["sources"]
    alone = recs(client, "newbie", k=5, sources="co_bought")
    assert [r["id"] for r in alone] == [b] and alone[0]["explain"]["sources"] == ["co_bought"]
    assert all(set(r["explain"]["sources"]) <= {"similar"} for r in recs(client, "newbie", sources="similar"))
    assert client.get("/api/users/newbie/recommendations", query_string={"sources": "magic"}).status_code == 400
    cfg_weights = {s: getattr(app_cfg.recommend, s) for s in SOURCES}
    for r in got:  # the final score is the weighted sum of the per-source parts
        e = r["explain"]
        assert set(e) >= set(SOURCES) | {"sources", "final"}
        assert e["final"] == pytest.approx(sum(cfg_weights[s] * e[s] for s in SOURCES), abs=1e-5)
        assert r["score"] == pytest.approx(e["final"], abs=1e-6)


def test_also_bought_is_normalised_and_falls_back_to_vectors(client: FlaskClient, rows: dict) -> None:
    ids = list(rows)
    a, x, best = ids[2], ids[40], ids[7]
    feed(client, [(f"all{u}", best, "purchase") for u in range(20)])
    feed(client, [(f"all{u}", y, "purchase") for u in range(3) for y in (a, x)])
    got = also(client, a, k=4)
    assert [r["id"] for r in got[:2]] == [x, best]  # the best-seller does not win just by selling most
    assert got[0]["explain"]["sources"] == ["co_bought"]
    assert all(r["explain"]["sources"] == ["similar"] for r in got[2:]) and len(got) == 4
    scores = [r["score"] for r in got]
    assert scores == sorted(scores, reverse=True)
    lonely = ids[44]
    fallback = also(client, lonely, k=3)
    similar = client.get(f"/api/items/{lonely}/similar", query_string={"k": 3}).get_json()["results"]
    assert [r["id"] for r in fallback] == [r["id"] for r in similar]
    filtered = also(client, a, k=10, **{"filter.gender": rows[best]["gender"]})
    assert all(rows[r["id"]]["gender"] == rows[best]["gender"] for r in filtered)


def test_deleted_shopper_disappears_from_recommendation_signals(client: FlaskClient, rows: dict) -> None:
    ids = list(rows)
    a, b = ids[3], ids[33]
    feed(client, [("only", a, "purchase"), ("only", b, "cart")])
    assert b in [r["id"] for r in also(client, a, k=3)]
    assert also(client, a, k=3)[0]["explain"]["sources"] == ["co_bought"]
    assert client.delete("/api/users/only/profile").get_json()["deleted"] is True
    after = also(client, a, k=3)
    assert all(r["explain"]["sources"] == ["similar"] for r in after)
    assert all(r["explain"]["sources"] == ["typical"] for r in recs(client, "someone-else"))  # popularity forgot
    # them too: only the catalogue's typical items are left


def test_bad_requests_are_4xx(client: FlaskClient, rows: dict) -> None:
    item = list(rows)[0]
    for path, params in [("/api/users/u/recommendations", {"k": 0}), ("/api/users/u/recommendations", {"k": "x"}),
                         ("/api/users/u/recommendations", {"k": 101}), ("/api/users/u/recommendations", {"zz": 1}),
                         ("/api/users/u/recommendations", {"filter.nope": "x"}),
                         ("/api/users/bad%20id/recommendations", {}),
                         (f"/api/items/{item}/also-bought", {"k": -1}),
                         (f"/api/items/{item}/also-bought", {"exclude_purchased": "true"})]:
        resp = client.get(path, query_string=params)
        assert resp.status_code == 400, (path, params, resp.get_json())
        assert set(resp.get_json()) >= {"error", "detail"}
    resp = client.get("/api/items/no-such-item/also-bought")
    assert resp.status_code == 404


def test_openapi_lists_the_endpoints(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "/api/users/{user_id}/recommendations" in paths and "/api/items/{item_id}/also-bought" in paths


def test_rebuild_signals_command_restores_wiped_signals(client: FlaskClient, app_cfg: Config, rows: dict) -> None:
    from scripts.cmd_signals import rebuild_signals

    ids = list(rows)
    feed(client, [(f"r{u}", ids[u % 5], "purchase") for u in range(12)] + [("r0", ids[9], "cart")])
    store = ProfileStore(app_cfg.data_dir / FILENAME, app_cfg.personal)
    before = store.dump_signals()
    conn = store._conn()
    for table in ("popularity", "cooc", "item_buyers"):
        conn.execute(f"DELETE FROM {table}")
    assert rebuild_signals(app_cfg, argparse.Namespace()) == 0
    after = store.dump_signals()
    assert after["cooc"] == before["cooc"] and after["buyers"] == before["buyers"]
    assert {k: pytest.approx(v[0]) for k, v in after["popularity"].items()} == \
        {k: v[0] for k, v in before["popularity"].items()}


def test_rebuild_signals_cli_entry(app_cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.cli import main

    ProfileStore(app_cfg.data_dir / FILENAME, app_cfg.personal).close()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[data]\ndir = "{app_cfg.data_dir}"\n', encoding="utf-8")
    assert main(["--config", str(conf), "rebuild-signals"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"] == 0
    missing = tmp_path / "m.toml"
    missing.write_text(f'[data]\ndir = "{tmp_path / "none"}"\n', encoding="utf-8")
    assert main(["--config", str(missing), "rebuild-signals"]) == 2


def test_eval_baselines_by_hand() -> None:
    from evaluation.data import Purchase
    from evaluation.recommend import buy_again_then_popular, popular_last_days, split, summarise

    ps = [Purchase("2020-03-01", "a", "old"), Purchase("2020-04-10", "a", "x"), Purchase("2020-04-11", "b", "x"),
          Purchase("2020-04-20", "b", "y"), Purchase("2020-04-25", "c", "z"), Purchase("2020-05-03", "a", "y"),
          Purchase("2020-05-04", "d", "x"), Purchase("2020-06-02", "a", "late")]
    history, targets = split(ps, "2020-05-01", "2020-06-01")
    assert len(history) == 5 and targets == {"a": {"y"}, "d": {"x"}}
    popular = popular_last_days(history, "2020-05-01", 30, 12)
    assert popular == ["x", "z", "y"]  # x twice; then z and y once, the most recent first; "old" is too old
    runs = buy_again_then_popular(history, ["a", "d"], popular, 3)
    assert runs == {"a": ["x", "old", "z"], "d": ["x", "z", "y"]}
    got = summarise({"b": runs}, targets, ["a", "d"], 12)["b"]
    assert got["map@12"] == pytest.approx((0 + 1) / 2) and got["hr@12"] == pytest.approx(0.5)


def test_eval_report_runs_through_the_api(indexed: Any, tmp_path: Path) -> None:
    from evaluation.client import InProcessClient
    from evaluation.recommend import run_recommend_report
    from tests.helpers import write_catalogue

    cfg0, store, rows = indexed
    catalogue = write_catalogue(tmp_path / "shop", rows, images=False)
    cfg = cfg0.replace(data={"dir": str(tmp_path / "var")}, catalogue={"path": str(catalogue)})
    ids = [r["id"] for r in rows]
    lines = ["t_dat,customer_id,article_id"]
    for u in range(8):  # everyone buys a pair of related items before the cutoff, the next one after it
        lines += [f"2020-04-{10 + u},c{u},{ids[u]}", f"2020-04-{11 + u},c{u},{ids[u + 24]}"]
        lines.append(f"2020-05-0{1 + u % 9},c{u},{ids[u + 1]}")
    (tmp_path / "shop" / "transactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from web import create_app

    app = create_app(cfg, store=store, TESTING=True)
    client = InProcessClient.__new__(InProcessClient)
    client.app, client.client, client.headers = app, app.test_client(), {}
    report = run_recommend_report(cfg, client, "2020-05-01")
    assert report["history_events"] == 16 and report["shoppers"] == 8 and report["warm_shoppers"] == 8
    for run in ("blend", *SOURCES, "popular_30d", "buy_again_then_popular"):
        assert 0.0 <= report["all"][run]["map@12"] <= 1.0 and 0.0 <= report["all"][run]["hr@12"] <= 1.0
    resp = app.test_client().get("/api/users/evalrec.c0/profile")
    assert resp.status_code == 404  # evaluation shoppers are forgotten afterwards


def test_source_helpers_against_the_formulas() -> None:
    from search.shopper.personal import Event
    from search.shopper.recommend import blend, buy_again_scores, recent_items
    from vitrina.config import PersonalConfig

    pc = PersonalConfig(half_life_days=10)
    day = 86_400.0
    now = 1_600_000_000.0
    history = [Event("u", "a", "purchase", now - 10 * day), Event("u", "a", "cart", now - 20 * day),
               Event("u", "b", "click", now), Event("u", "c", "purchase", now), Event("u", "c", "purchase", now)]
    got = buy_again_scores(history, ("cart", "purchase"), pc.purchase, now, pc)
    assert got["a"] == pytest.approx((pc.purchase * 0.5 + pc.cart * 0.25) / pc.purchase)
    assert got["c"] == 1.0 and "b" not in got  # capped at one fresh purchase; clicks are not purchases
    assert recent_items(history, ("cart", "purchase"), 5) == [("c", now), ("a", now - 10 * day)]
    assert recent_items(history, ("view", "click", "cart", "purchase"), 2) == [("b", now), ("c", now)]
    assert blend({"similar": 0.5, "popular": 1.0}, {"similar": 0.6, "co_bought": 1, "buy_again": 1,
                                                   "popular": 0.1}) == pytest.approx(0.4)


@pytest.mark.parametrize("backend", ["edge", "qdrant"])
def test_store_query_without_payload_keeps_ids_and_scores(tmp_path: Path, backend: str) -> None:
    from search.store.edge import EdgeStore
    from search.store.interface import ID_FIELD, DenseQuery
    from search.store.qdrant import QdrantStore
    from vitrina.config import StoreConfig

    rows = product_rows(12)
    vecs = clustered_vectors(rows)
    store = EdgeStore(tmp_path / "store") if backend == "edge" else \
        QdrantStore.from_config(StoreConfig(backend="qdrant", path=":memory:"))
    try:
        store.create_collection("c", {"fused": DIM}, ("gender",), ())
        store.upsert("c", [ItemRecord(id=r["id"], vectors={"fused": vecs[r["id"]]}, keywords=r["title"],
                                      payload={"title": r["title"], "gender": r["gender"]}) for r in rows])
        store.flush("c")
        query = DenseQuery(vecs[rows[0]["id"]], "fused")
        full = store.query("c", query, limit=5)
        bare = store.query("c", query, limit=5, with_payload=False)
        assert [(h.id, round(h.score, 5)) for h in bare] == [(h.id, round(h.score, 5)) for h in full]
        assert all(h.payload == {ID_FIELD: h.id} for h in bare) and all("title" in h.payload for h in full)
        again = store.query("c", DenseQuery(vecs[rows[5]["id"]], "fused"), limit=8, with_payload=False)
        assert [h.id for h in again] == [h.id for h in store.query("c", DenseQuery(vecs[rows[5]["id"]], "fused"),
                                                                   limit=8)]
        batch = store.query_batch("c", [query, query], Filters(equals={"gender": (rows[1]["gender"],)}), limit=3,
                                  with_payload=False)
        assert all(rows[int(h.id) - 1000]["gender"] == rows[1]["gender"] for hits in batch for h in hits)
    finally:
        store.close()


def test_filters_apply_to_every_source(client: FlaskClient, rows: dict) -> None:
    ids = list(rows)
    men = [i for i in ids if rows[i]["gender"] == "Men"]
    women = [i for i in ids if rows[i]["gender"] == "Women"]
    feed(client, [("mixed", men[0], "purchase"), ("mixed", women[0], "purchase")]
         + [(f"m{u}", x, "purchase") for u in range(3) for x in (men[0], men[5], women[7])])
    everything = recs(client, "mixed", k=20)
    assert {rows[r["id"]]["gender"] for r in everything} == {"Men", "Women"}
    only = recs(client, "mixed", k=20, **{"filter.gender": "Women"})
    assert only and all(rows[r["id"]]["gender"] == "Women" for r in only)
    assert women[0] in {r["id"] for r in only} and men[0] not in {r["id"] for r in only}  # buy-again, filtered
    # an item's parts do not depend on the filters: the women of the full list keep their order, and more follow
    women_first = [r["id"] for r in everything if rows[r["id"]]["gender"] == "Women"]
    assert [r["id"] for r in only if r["id"] in set(women_first)] == women_first and len(only) > len(women_first)


def test_similar_using_must_name_a_dense_vector(indexed: Any, app_cfg: Config) -> None:
    from search.query.engine import SearchService
    from search.shopper.recommend import Recommender
    from vitrina.errors import ConfigError

    service = SearchService(app_cfg.replace(recommend={"similar_using": "text"}), store=indexed[1])
    assert Recommender(service).cfg.recommend.similar_using == "text"
    with pytest.raises(ConfigError, match="similar_using"):
        Recommender(SearchService(app_cfg.replace(recommend={"similar_using": "keywords"}), store=indexed[1]))


def test_ratio_interval_against_a_naive_bootstrap() -> None:
    from evaluation.metrics import average_precision_at_k
    from evaluation.recommend import ratio_interval

    users = [f"u{i}" for i in range(30)]
    targets = {u: {"a"} if i % 3 else {"b"} for i, u in enumerate(users)}
    runs = {"x": {u: ["a", "b"] for u in users}, "y": {u: ["b", "a"] for u in users}}
    low, high = ratio_interval(runs, targets, users, "x", "y", samples=500, seed=3)
    rng = np.random.default_rng(3)
    picks = rng.integers(0, len(users), size=(500, len(users)))
    ratios = []
    for row in picks:  # one resample at a time, AP recomputed from the rankings
        x = sum(average_precision_at_k(runs["x"][users[j]], targets[users[j]], 12) for j in row)
        y = sum(average_precision_at_k(runs["y"][users[j]], targets[users[j]], 12) for j in row)
        ratios.append(x / y)
    assert (low, high) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])))
    assert low < (20 + 5) / (10 + 10) < high  # the ratio on all shoppers lies inside
    assert ratio_interval(runs, targets, [], "x", "y") is None


def test_cold_start_fills_k_past_the_candidate_pool(indexed: Any, tmp_path: Path) -> None:
    from web import create_app

    cfg = indexed[0].replace(data={"dir": str(tmp_path / "var")}, recommend={"pool": 3})
    small = create_app(cfg, store=indexed[1], TESTING=True).test_client()
    ids = [r["id"] for r in indexed[2]]
    feed(small, [(f"p{u}", i, "purchase") for u, i in enumerate(ids[:10])])
    assert len(recs(small, "nobody", k=8)) == 8


def test_similar_leans_toward_the_shoppers_usual_values(indexed: Any, tmp_path: Path, rows: dict) -> None:
    from web import create_app

    ids = list(rows)
    kind = rows[ids[0]]["articleType"]
    bought = [i for i in ids if rows[i]["articleType"] == kind and rows[i]["gender"] == "Women"][:2]

    def similar(w: float) -> list[dict[str, Any]]:
        cfg = indexed[0].replace(data={"dir": str(tmp_path / f"var{w}")}, personal={"affinity": ["gender=1"]},
                                 recommend={"similar_affinity": w})
        client = create_app(cfg, store=indexed[1], TESTING=True).test_client()
        feed(client, [("u", i, "purchase") for i in bought])
        return recs(client, "u", k=10, sources="similar")

    plain, leaned = similar(0.0), similar(3.0)
    women = [rows[r["id"]]["gender"] == "Women" for r in leaned]
    assert not all(rows[r["id"]]["gender"] == "Women" for r in plain[:4])  # near by content alone
    assert all(women[:4])  # the 4 other Women items of the kind the shopper bought come first
    before = {r["id"]: r["explain"]["similar"] for r in plain}
    for r in leaned:  # Women items (affinity 1, the largest) keep their score, the others drop to a quarter
        if r["id"] in before:
            factor = 1.0 if rows[r["id"]]["gender"] == "Women" else 0.25
            assert r["explain"]["similar"] == pytest.approx(before[r["id"]] * factor, rel=1e-5)
