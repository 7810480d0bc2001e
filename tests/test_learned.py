"""Learned rankers in the service: trained from the click log and from replayed purchases, loaded, explained."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from evaluation.ranker_fit import TrainOptions, month_windows, train
from search.online.impressions import features_of
from search.query.features import RECOMMEND_FEATURES, SEARCH_FEATURES
from search.query.learned import load_model
from vitrina.errors import BadInput

KEY = "k-123"



def app_for(cfg: Any, store: Any) -> Any:
    from web import create_app

    return create_app(cfg, store=store, TESTING=True)


def shop_with_red_lovers(cfg: Any, store: Any, rows: list[dict[str, Any]], tmp: Path) -> Any:
    """Shoppers search; each clicks the first red item shown (the blend knows nothing of it): a click log."""
    run = cfg.replace(data={"dir": str(tmp)}, impressions={"features": True})
    client: FlaskClient = app_for(run, store).test_client()
    colour = {r["id"]: r["baseColour"] for r in rows}
    for n in range(60):
        q = ("shoes", "caps", "jeans", "watches", "tshirts", "handbags")[n % 6]
        body = client.get("/api/search", query_string={"q": q, "k": 10, "user_id": f"u{n % 20}"}).get_json()
        red = [i for i, r in enumerate(body["results"]) if colour[r["id"]] == "Red"]
        if red:
            client.post("/api/feedback", json={"user_id": f"u{n % 20}", "item_id": body["results"][red[0]]["id"],
                                               "event": "click", "request_id": body["request_id"],
                                               "position": red[0]})
    client.application.extensions["vitrina_traffic"].close()
    return run


def test_train_from_the_click_log_and_serve_with_contributions(shop_index: Any, tmp_path: Path) -> None:
    cfg, store, rows = shop_index
    run = shop_with_red_lovers(cfg, store, rows, tmp_path)
    logged = [json.loads(line) for f in sorted((tmp_path / "impressions").glob("*.jsonl")) for line in f.open()]
    first = next(r for r in logged if r["kind"] == "impression")
    assert features_of(first).shape == (10, len(SEARCH_FEATURES))  # type: ignore[union-attr]
    path, card = train(run, TrainOptions(source="log", kind="logistic", until="2100-01-01",
                                         out=tmp_path / "ranker.json", valid=0.0))
    assert card["source"] == "log" and card["features"] == list(SEARCH_FEATURES) and card["version"]
    assert json.loads(path.with_suffix(".card.json").read_text())["version"] == card["version"]
    assert card["data"]["groups"] >= 30
    assert card["metrics"]["ndcg@10_train"] > card["metrics"]["ndcg@10_train_blend"]  # it learned the taste
    model = load_model(path, "search")
    assert load_model(path) is model  # loaded once while the file is unchanged
    served = run.replace(ranker={"search_model": str(path)})
    client = app_for(served, store).test_client()
    blend_client = app_for(run.replace(impressions={"features": False}), store).test_client()
    colour = {r["id"]: r["baseColour"] for r in rows}

    def reds_on_top(c: FlaskClient) -> int:
        """Red items among the first 3 of each query the shoppers searched."""
        return sum(colour[x["id"]] == "Red" for q in ("shoes", "caps", "jeans", "watches", "tshirts", "handbags")
                   for x in c.get("/api/search", query_string={"q": q, "k": 3, "user_id": "u1"}).get_json()["results"])

    assert reds_on_top(client) > reds_on_top(blend_client)  # the learned ranker moved red items up
    body = client.get("/api/search", query_string={"q": "shoes", "k": 5, "user_id": "u1"}).get_json()
    top = body["results"][0]["explain"]["ranker"]
    assert top["model"] == model.version and set(top["contributions"]) <= set(SEARCH_FEATURES)
    logged_now = next(r for r in client.application.extensions["vitrina_traffic"].log.read(kinds=("impression",))
                      if r["request_id"] == body["request_id"])
    x = features_of(logged_now)[0]  # type: ignore[index]
    assert model.score(x[None, :])[0] == pytest.approx(top["score"], abs=1e-3)  # the logged row is float32
    total = sum(top["contributions"].values()) + model.logistic.bias  # type: ignore[union-attr]
    assert total == pytest.approx(top["score"], abs=1e-3)  # the contributions add up to the score


def test_purchases_replayed_against_the_engine_train_both_rankers(shop_index: Any, tmp_path: Path) -> None:
    from evaluation.client import InProcessClient

    cfg, store, rows = shop_index
    rng = np.random.default_rng(0)
    by_colour: dict[str, list[str]] = {}
    for r in rows:
        by_colour.setdefault(r["baseColour"], []).append(r["id"])
    lines = []
    for u in range(40):  # each shopper sticks to one colour: history in 2019, the window in early 2020
        mine = by_colour[list(by_colour)[u % len(by_colour)]]
        for day in ("2019-11-03", "2019-12-10", "2020-01-15", "2020-02-20"):
            lines.append({"t_dat": day, "customer_id": f"c{u}", "article_id": str(rng.choice(mine))})
    path = Path(cfg.catalogue.path).parent / "transactions.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["t_dat", "customer_id", "article_id"])
        writer.writeheader()
        writer.writerows(lines)
    run = cfg.replace(data={"dir": str(tmp_path)})
    client = InProcessClient(run, KEY, app=app_for(run, store))
    opts = TrainOptions(until="2020-03-01", months=2, windows=1, query_field="articleType", recommend=True,
                        out=tmp_path / "r.json", valid=0.0)
    out, card = train(run, opts, client=client)
    assert card["windows"] == ["2020-01-01..2020-03-01"] and "negatives" in card
    assert card["data"]["searches_warm"] > 0 and card["data"]["groups"] >= 10
    rec = load_model(card["recommend_model"], "recommend")
    assert rec.features == RECOMMEND_FEATURES and rec.card["data"]["groups"] >= 10
    served = run.replace(ranker={"recommend_model": card["recommend_model"]})
    shop = app_for(served, store).test_client()
    for item in by_colour["Red"][:3]:
        bought = shop.post("/api/feedback", json={"user_id": "c3", "item_id": item, "event": "purchase"})
        assert bought.status_code == 200
    body = shop.get("/api/users/c3/recommendations?k=4").get_json()
    assert body["results"] and all("ranker" in r["explain"] for r in body["results"])
    with pytest.raises(BadInput, match="held-back"):
        train(run, TrainOptions(until="2020-07-01"), client=client)


def test_month_windows() -> None:
    assert month_windows("2020-02-01", 2, 3) == [("2019-08-01", "2019-10-01"), ("2019-10-01", "2019-12-01"),
                                                 ("2019-12-01", "2020-02-01")]


def test_shipped_hm_ranker_loads_and_scores() -> None:
    """configs/hm.toml serves models/ranker_hm.json: LightGBM must be installed and the file must read back."""
    from vitrina.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "hm.toml")
    assert Path(cfg.ranker.search_model) == root / "models" / "ranker_hm.json"
    model = load_model(cfg.ranker.search_model, surface="search")
    assert model.kind == "lambdarank" and model.version == json.loads(
        (root / "models" / "ranker_hm.json").read_text())["version"]
    x = np.zeros((3, len(model.features)))
    x[1, model.features.index("blend")] = 1.0
    x[2, model.features.index("popularity")] = 50.0
    scores, contrib = model.score(x), model.contributions(x)
    assert scores.shape == (3,) and np.isfinite(scores).all() and len(set(scores.round(6))) > 1
    assert contrib.shape == x.shape
