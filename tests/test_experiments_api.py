"""Experiments through the real Flask app on a real index: request ids, variants, feedback naming them, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from search.online.experiments import Experiments
from search.online.impressions import ImpressionLog

VARIANTS = ("control", "plain: search.attribute_weight=0; search.keyword_weight=0.2")



def make_client(cfg: Any, store: Any, tmp: Path, **experiments: Any) -> FlaskClient:
    from web import create_app

    run = cfg.replace(data={"dir": str(tmp)}, experiments={"name": "e1", "variants": VARIANTS, "min_shoppers": 1,
                                                            "min_impressions": 1, **experiments})
    return create_app(run, store=store, TESTING=True).test_client()


def log_of(client: FlaskClient) -> ImpressionLog:
    traffic = client.application.extensions["vitrina_traffic"]
    assert traffic.log is not None
    traffic.log.sync()
    return traffic.log


def test_responses_carry_request_id_and_the_shoppers_variant(shop_index: Any, tmp_path: Path) -> None:
    from search.query.engine import SearchService
    from search.query.request import parse_search

    cfg, store, _ = shop_index
    client = make_client(cfg, store, tmp_path)
    ex = Experiments(client.application.extensions["vitrina_config"])
    seen = set()
    for n in range(12):
        user = f"shopper-{n}"
        body = client.get("/api/search", query_string={"q": "men black watches", "k": 5, "user_id": user}).get_json()
        assert len(body["request_id"]) == 32 and body["experiment"] == "e1"
        assert body["variant"] == ex.assign(user).name  # type: ignore[union-attr]
        seen.add(body["variant"])
        # the variant's own config ranked it: the same as a service built with that variant's config
        direct = SearchService(ex.configs[body["variant"]], store=store).search(
            parse_search({"q": ["men black watches"], "k": ["5"], "user_id": [user]}, ex.configs[body["variant"]]))
        assert [r["id"] for r in body["results"]] == [r["id"] for r in direct["results"]]
    assert seen == {"control", "plain"}
    anonymous = client.get("/api/search?q=red+shoes").get_json()
    assert anonymous["variant"] is None and anonymous["experiment"] is None and anonymous["request_id"]
    item = anonymous["results"][0]["id"]
    for path in (f"/api/items/{item}/similar?k=3&user_id=shopper-1", f"/api/items/{item}/also-bought?k=3",
                 "/api/users/shopper-1/recommendations?k=3"):
        got = client.get(path)
        assert got.status_code == 200 and got.get_json()["request_id"], path
    records = list(log_of(client).read(kinds=("impression",)))
    assert len(records) == 12 + 1 + 3
    assert {r["surface"] for r in records} == {"search", "similar", "also_bought", "recommendations"}
    first = records[0]
    assert first["user_id"] == "shopper-0" and first["query"] == "men black watches" and len(first["items"]) == 5


def test_feedback_names_its_response_and_the_report_counts_it(shop_index: Any, tmp_path: Path) -> None:
    cfg, store, _ = shop_index
    client = make_client(cfg, store, tmp_path)
    sent: dict[str, list[int]] = {"control": [0, 0], "plain": [0, 0]}  # variant -> [responses, clicked]
    for n in range(30):
        user = f"s{n}"
        body = client.get("/api/search", query_string={"q": "blue jeans", "k": 4, "user_id": user}).get_json()
        sent[body["variant"]][0] += 1
        if n % 3 == 0:
            pos = n % 4
            event = {"user_id": user, "item_id": body["results"][pos]["id"], "event": "click",
                     "request_id": body["request_id"], "position": pos}
            assert client.post("/api/feedback", json=event).status_code == 200
            sent[body["variant"]][1] += 1
    for bad, fragment in (({"request_id": "not an id!"}, "request id"), ({"position": -1}, "position"),
                          ({"position": "3"}, "position")):
        event = {"user_id": "s1", "item_id": body["results"][0]["id"], "event": "click", **bad}
        resp = client.post("/api/feedback", json=event)
        assert resp.status_code == 400 and fragment in json.dumps(resp.get_json()), resp.get_json()
    report = client.get("/api/experiments/e1").get_json()
    assert report["running"] and report["method"] == "ab"
    got = {v["name"]: [v["impressions"], v["clicked"]] for v in report["variants"]}
    assert got == sent
    assert report["feedback"]["by_request_id"] == 10
    assert report["verdict"]["status"] in ("no difference", "winner")
    assert client.get("/api/experiments/nothing-here").status_code == 404
    assert client.get("/api/experiments/bad name!").status_code == 400
    overview = client.get("/api/experiments").get_json()
    assert overview["running"]["name"] == "e1" and {"name": "e1", "impressions": 30} in overview["experiments"]


def test_interleaving_marks_teams_and_credits_clicks(shop_index: Any, tmp_path: Path) -> None:
    cfg, store, _ = shop_index
    client = make_client(cfg, store, tmp_path, method="interleave")
    for n in range(10):
        user = f"i{n}"
        body = client.get("/api/search", query_string={"q": "women red caps", "k": 6, "user_id": user}).get_json()
        assert body["variant"] == "control+plain"
        teams = [r["explain"]["team"] for r in body["results"]]
        assert set(teams) <= {"control", "plain"} and len(body["results"]) == 6
        assert abs(teams.count("control") - teams.count("plain")) <= 1  # team-draft alternates picks
        ids = [r["id"] for r in body["results"]]
        assert len(set(ids)) == 6
        pos = teams.index("plain")
        client.post("/api/feedback", json={"user_id": user, "item_id": ids[pos], "event": "click",
                                           "request_id": body["request_id"], "position": pos})
    record = next(log_of(client).read(kinds=("impression",)))
    assert len(record["teams"]) == 6
    report = client.get("/api/experiments/e1").get_json()
    assert report["method"] == "interleave"
    assert report["interleaving"]["wins"] == {"control": 0, "plain": 10, "tie": 0}
    assert report["interleaving"]["preference"] == -1.0
