"""`vitrina evaluate` end to end on a tiny indexed catalogue: in-process and over HTTP, JSON + PNG, sane numbers."""

from __future__ import annotations

import csv
import itertools
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from encoders.train_data import hash_split
from evaluation.client import ApiError, HttpClient, InProcessClient
from evaluation.data import load_catalogue
from evaluation.harness import EvalOptions, run_evaluation, write_report
from evaluation.image import pixel_neighbours, precision_of
from evaluation.personal import naive_rerank
from tests.helpers import index_vectors, make_config, product_rows, write_catalogue
from vitrina.config import Config

N = 48


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _judgements(rows: list[dict[str, Any]], gender: str, colour: str, article: str) -> dict[str, int]:
    out = {}
    for r in rows:
        if r["gender"] == gender and r["articleType"] == article:
            out[r["id"]] = 2 if r["baseColour"] == colour else 1
    return out


def build_shop(folder: Path) -> tuple[Config, list[dict[str, Any]]]:
    """48 products indexed with real MiniLM text vectors, a tiny random image tower, and fused vectors;
    dev queries, graded qrels and purchases written next to the catalogue (where evaluate looks)."""
    from encoders import create_image_encoder, create_text_encoder
    from tests.tiny_models import write_tiny_checkpoint

    rows = product_rows(N)
    for r in rows:
        r["product_type_name"] = r["articleType"]
    catalogue = write_catalogue(folder / "shop", rows)
    cfg = make_config(folder, catalogue)
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    cat = cfg.catalogue
    text = create_text_encoder(cfg).encode([" ".join(str(r[f]) for f in cat.text_fields) for r in rows])
    images = [Image.open(catalogue.parent / r["image"]).convert("RGB") for r in rows]
    image = np.asarray(create_image_encoder(cfg).encode(images), dtype=np.float32)
    index_vectors(cfg, rows, text, image).close()
    # q_exact names one product's title exactly (its id token "12" is unique); the others are attribute queries
    queries = [["q_exact", "Men Red Shoes style 12"], ["q_blue", "women blue watches"],
               ["q_black", "men black tshirts"]]
    qrels = [["q_exact", "1012", 2]]
    qrels += [["q_blue", i, g] for i, g in _judgements(rows, "Women", "Blue", "Watches").items()]
    qrels += [["q_black", i, g] for i, g in _judgements(rows, "Men", "Black", "Tshirts").items()]
    _write_csv(catalogue.parent / "queries_dev.csv", ["query_id", "query"], queries)
    _write_csv(catalogue.parent / "qrels_dev.csv", ["query_id", "product_id", "relevance"], qrels)
    # purchases: u1 and u2 have history before the cutoff, u3 is a cold-start shopper
    tx = [["2020-04-01", "u1", "1000"], ["2020-04-02", "u1", "1012"], ["2020-04-02", "u1", "1012"],
          ["2020-04-05", "u2", "1003"], ["2020-05-03", "u1", "1024"], ["2020-05-04", "u2", "1015"],
          ["2020-05-06", "u3", "1001"], ["2020-06-02", "u1", "1036"]]  # the last is after the end: ignored
    _write_csv(catalogue.parent / "transactions.csv", ["t_dat", "customer_id", "article_id"], tx)
    return cfg, rows


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[dict[str, Any]]]:
    return build_shop(tmp_path_factory.mktemp("evalshop"))


@pytest.fixture
def client(shop: tuple[Config, list[dict[str, Any]]]) -> Iterator[InProcessClient]:
    c = InProcessClient(shop[0])
    yield c
    c.close()


OPTS = dict(image_queries=6, personal_query="product_type_name", chart=True)


def test_in_process_report_is_sane(shop: Any, client: InProcessClient, tmp_path: Path) -> None:
    cfg, rows = shop
    report = run_evaluation(cfg, EvalOptions(**OPTS), client)
    text = report["text"]
    assert text["queries"] == 3
    for name in ("keyword", "text", "image", "vector", "hybrid", "random", "bm25 title", "bm25 fields (reference)"):
        row = text["rows"][name]
        assert "error" not in row, (name, row)
        for metric in ("ndcg@10", "recall@10", "recall@100", "mrr"):
            assert 0.0 <= row[metric] <= 1.0
        assert row["recall@100"] >= row["recall@10"]
    # the exact-title query is answered first by keyword search; attribute queries nearly so
    assert text["rows"]["keyword"]["mrr"] == pytest.approx(1.0)
    assert text["rows"]["keyword"]["ndcg@10"] > 0.8
    assert text["rows"]["bm25 fields (reference)"]["ndcg@10"] > 0.8
    assert text["rows"]["random"]["ndcg@10"] < text["rows"]["keyword"]["ndcg@10"]

    image = report["image"]
    assert image["queries"] == 6
    for row in image["rows"].values():
        assert "error" not in row and 0.0 <= row["p@10"] <= 1.0
    # each (gender, articleType) pair has 6 products in the tiny shop: at most 5 others can match
    assert all(row["p@10"] <= 0.5 + 1e-9 for row in image["rows"].values())

    personal = report["personal"]
    assert personal["test_purchases"] == 3 and personal["history_events"] == 3  # the repeated row counts once
    assert personal["shoppers"] == {"warm": 2, "cold": 1}
    cold = personal["cold"]
    assert cold["base"] == cold["personal"]  # no profile, no popularity prior: the same ranking
    for group in ("warm", "cold", "all"):
        for run in ("base", "personal"):
            assert 0.0 <= personal[group][run]["hr@10"] <= 1.0
    # the evaluation shoppers are forgotten afterwards
    with pytest.raises(ApiError) as e:
        client.get("/api/users/eval.u1/profile")
    assert e.value.status == 404

    from evaluation.harness import TARGETS

    assert [t["target"] for t in report["targets"]] == [t.name for t in TARGETS]
    # the tiny shop has no masterCategory/usage/season columns the shipped natural rules use: skipped
    assert "skipped" in report["natural"]
    natural = [t for t in report["targets"] if t["target"].startswith("natural")]
    assert natural and all(t["status"] == "not measured" for t in natural)
    photo = [t for t in report["targets"] if t["target"].startswith("photos")]
    others = [t for t in report["targets"] if t not in photo and t not in natural]
    assert all(t["status"] in {"met", "missed"} for t in others)
    assert [t["status"] for t in photo] == ["met" if t["value"] >= t["at_least"] else "missed" for t in photo[:3]] \
        + ["not measured"]  # no other shop was given
    written = write_report(report, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "evaluate.json").read_text())["text"]["queries"] == 3
    png = tmp_path / "eval" / "evaluate.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_http_client_gives_the_same_numbers(shop: Any, tmp_path: Path) -> None:
    """The same evaluation over HTTP against a live app on loopback matches the in-process run."""
    from werkzeug.serving import make_server

    cfg, _ = shop
    opts = EvalOptions(sections=("text", "personal"), chart=False, **{k: v for k, v in OPTS.items() if k != "chart"})
    inproc = InProcessClient(cfg)
    try:
        local = run_evaluation(cfg, opts, inproc)
        app = inproc.app
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            http = HttpClient(f"http://127.0.0.1:{server.port}")
            remote = run_evaluation(cfg, opts, http)
            with pytest.raises(ApiError) as e:
                http.get("/api/search", {"q": "x", "k": 0})
            assert e.value.status == 400
        finally:
            server.shutdown()
            thread.join(5)
    finally:
        inproc.close()
    for name, row in local["text"]["rows"].items():
        for metric in ("ndcg@10", "recall@10", "recall@100", "mrr"):
            assert remote["text"]["rows"][name][metric] == pytest.approx(row[metric]), (name, metric)
    for group in ("warm", "cold"):
        assert remote["personal"][group]["base"] == local["personal"][group]["base"]
        assert remote["personal"][group]["personal"] == local["personal"][group]["personal"]


def test_cli_writes_json_and_png(shop: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from scripts import cmd_evaluate

    cfg, _ = shop
    parser = argparse.ArgumentParser()
    cmd_evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--out", str(tmp_path / "out"), "--sections", "text,image",
                              "--modes", "keyword,hybrid", "--image-queries", "3", "--limit", "2"])
    assert args.func(cfg, args) == 0
    printed = capsys.readouterr().out
    assert "keyword" in printed and "targets:" in printed
    report = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert report["text"]["queries"] == 2 and set(report["text"]["rows"]) >= {"keyword", "hybrid", "random"}
    assert report["image"]["queries"] == 2  # --limit caps every section
    assert (tmp_path / "out" / "evaluate.png").stat().st_size > 1000


def test_bad_options_are_refused(shop: Any) -> None:
    import argparse

    from scripts import cmd_evaluate
    from vitrina.errors import BadInput

    with pytest.raises(BadInput):
        run_evaluation(shop[0], EvalOptions(sections=("nope",)))
    parser = argparse.ArgumentParser()
    cmd_evaluate.register(parser.add_subparsers())
    for bad in (["--cutoff", "2020-13-01"], ["--cutoff", "2020-06-01", "--end", "2020-05-01"], ["--limit", "-1"]):
        with pytest.raises(BadInput):
            cmd_evaluate.options_from_args(parser.parse_args(["evaluate", *bad]))


# ---- pure helpers ---------------------------------------------------------------------------------------

def test_precision_leaves_out_the_query_and_matches_fields(catalogue: Path, cfg: Config) -> None:
    cat = load_catalogue(cfg)
    q = "1000"  # Men Red Tshirts; 1012 is Men Red Shoes, 1002 Men Blue Tshirts
    assert precision_of([q, "1002", "1012"], q, cat, ("articleType", "gender"), k=2) == 0.5
    assert precision_of(["1002", "1004"], q, cat, ("articleType", "gender"), k=2) == 1.0


def test_pixel_neighbours_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((30, 12), dtype=np.float32)
    ids = [str(i) for i in range(30)]
    got = pixel_neighbours(ids, pixels, ["3", "7"], 5)
    for q in ("3", "7"):
        d = ((pixels - pixels[int(q)]) ** 2).sum(1)
        d[int(q)] = np.inf
        assert got[q] == [str(j) for j in np.argsort(d)[:5]]


def test_naive_rerank_boosts_past_purchases(catalogue: Path, cfg: Config) -> None:
    cat = load_catalogue(cfg)
    ranked = [str(1000 + i) for i in range(20)]
    # 1019 is Women White Shoes; 1006, 1007 and 1018 are White too (1018 too far down to move up)
    out = naive_rerank(ranked, ["1019"], cat, {"article": 2.0, "baseColour": 0.5})
    assert out[:4] == ["1019", "1006", "1007", "1000"] and sorted(out) == sorted(ranked)
    assert naive_rerank(ranked, [], cat) == ranked  # no history: the order is kept


def test_windows_run_each_window_and_pool(shop: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from scripts import cmd_evaluate

    cfg, _ = shop
    parser = argparse.ArgumentParser()
    cmd_evaluate.register(parser.add_subparsers())
    windows = "2020-04-03:2020-05-05,2020-05-01:2020-06-01"
    args = parser.parse_args(["evaluate", "--out", str(tmp_path / "w"), "--no-chart", "--windows", windows])
    assert args.func(cfg, args) == 0
    assert "pooled" in capsys.readouterr().out
    summary = json.loads((tmp_path / "w" / "windows.json").read_text())
    hits_base = hits_user = 0
    for (cutoff, end), row in zip([("2020-04-03", "2020-05-05"), ("2020-05-01", "2020-06-01")], summary["windows"]):
        alone = json.loads((tmp_path / "w" / f"{cutoff}_{end}" / "evaluate.json").read_text())
        assert alone["options"]["cutoff"] == row["cutoff"] == cutoff and alone["options"]["end"] == end
        assert "text" not in alone and "image" not in alone  # only the sections with purchase windows
        warm = alone["personal"]["warm"]
        assert row["warm_purchases"] == warm["purchases"]
        hits_base += round(warm["base"]["hr@10"] * warm["purchases"])
        hits_user += round(warm["personal"]["hr@10"] * warm["purchases"])
    assert summary["windows"][0]["warm_purchases"] == 1  # u1's 1024; u2 bought nothing before 04-03 (cold)
    assert summary["windows"][1]["warm_purchases"] == 2  # u1's 1024 and u2's 1015
    assert summary["pooled"]["warm_hits_base"] == hits_base and summary["pooled"]["warm_hits_user"] == hits_user


def test_window_pooling_and_parsing() -> None:
    from evaluation.windows import parse_windows, pool
    from vitrina.errors import BadInput

    assert parse_windows(" 2020-01-01:2020-05-01, 2020-02-01:2020-06-01 ,") == [
        ("2020-01-01", "2020-05-01"), ("2020-02-01", "2020-06-01")]
    for bad in ("", "2020-01-01", "2020-05-01:2020-01-01", "2020-01-01:2020-13-01", "a:b"):
        with pytest.raises(BadInput):
            parse_windows(bad)

    def report(n: int, base: float, user: float, blend: float, baseline: float) -> dict[str, Any]:
        return {"options": {"cutoff": "c", "end": "e"},
                "personal": {"warm": {"purchases": n, "base": {"hr@10": base}, "personal": {"hr@10": user}}},
                "recommend": {"all": {"blend": {"map@12": blend}, "buy_again_then_popular": {"map@12": baseline}}}}

    got = pool([report(100, 0.10, 0.15, 0.02, 0.01), report(300, 0.20, 0.20, 0.01, 0.03)])
    assert [w["lift"] for w in got["windows"]] == pytest.approx([0.5, 0.0])
    assert got["pooled"]["warm_hits_base"] == 70 and got["pooled"]["warm_hits_user"] == 75
    assert got["pooled"]["lift"] == pytest.approx(75 / 70 - 1)
    assert got["pooled"]["map_ratio"] == pytest.approx(0.03 / 0.04)
    empty = pool([{"options": {"cutoff": "c", "end": "e"}, "personal": {"skipped": "no transactions"}}])
    assert empty["pooled"] == {"warm_hits_base": 0.0, "warm_hits_user": 0.0, "lift": None, "map_ratio": None}


def test_natural_section_judges_by_rules_and_reports_per_query(shop: Any, client: InProcessClient,
                                                              tmp_path: Path) -> None:
    from evaluation.natural import best_single_margin, format_natural, load_natural, parse_rule
    from vitrina.errors import CatalogueError

    cfg, rows = shop
    path = tmp_path / "natural.csv"
    _write_csv(path, ["query_id", "query", "intent", "must", "prefer", "must_not", "split"], [
        ["n1", "a watch for her", "gender", "articleType=Watches & gender=Women", "baseColour=Blue", "", "tune"],
        ["n2", "tees not red", "negation", "articleType=Tshirts", "", "baseColour=Red", "check"],
        ["n3", "caps or jeans", "synonym", "articleType=Caps|Jeans", "", "", "tune"]])
    queries = load_natural(path)
    by_id = {r["id"]: r for r in rows}
    for q in queries:  # grades against a naive reading of the rules
        for item, row in by_id.items():
            must = all(row[f] in v for f, v in q.must) and not any(row[f] in v for f, v in q.must_not)
            want = 0 if not must else (2 if q.prefer and all(row[f] in v for f, v in q.prefer) else 1)
            assert q.grade(row) == want
    report = run_evaluation(cfg, EvalOptions(sections=("natural",), natural=path, chart=False), client)
    section = report["natural"]
    assert section["queries"] == 3 and set(section["rows"]) == {"keyword", "text", "vector", "hybrid"}
    for row in section["rows"].values():
        assert 0.0 <= row["p@10"] <= 1.0 and set(row["splits"]) == {"tune", "check"}
        assert row["intents"]["all"]["p@10"] == pytest.approx(row["p@10"])
    assert section["per_query"]["n2"]["relevant"] == sum(1 for r in rows if r["articleType"] == "Tshirts"
                                                         and r["baseColour"] != "Red")
    margin = best_single_margin(section, "p@10")
    hybrid = section["rows"]["hybrid"]["p@10"]
    assert margin == pytest.approx(hybrid - max(section["rows"][m]["p@10"] for m in ("text", "vector", "keyword")))
    printed = "\n".join(format_natural(section))
    assert "caps or jeans" in printed and "P@10 per query" in printed
    assert parse_rule("") == () and parse_rule("a=x|y & b=z") == (("a", frozenset({"x", "y"})), ("b", frozenset({"z"})))
    with pytest.raises(CatalogueError):
        parse_rule("articleType")


def test_altered_photos_and_another_shops_photos(shop: Any, client: InProcessClient, tmp_path: Path) -> None:
    from evaluation.alterations import ALTERATIONS

    cfg, rows = shop
    catalogue = load_catalogue(cfg)
    # another shop in H&M's schema whose photos are the first shop's T-shirt and cap photos
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    picks = [r for r in rows if r["articleType"] in {"Tshirts", "Caps"}][:6]
    # no split column: the other shop splits by sha256 of its ids as training does; only its dev photos are asked
    ids = (f"0{n}" for n in itertools.count(100))
    dev_ids = [next(i for i in ids if hash_split(i) == "dev") for _ in picks]
    train_ids = [next(i for i in ids if hash_split(i) == "train") for _ in picks]
    kind = {"Tshirts": "T-shirt", "Caps": "Cap/peaked"}
    lines = []
    for r, *mine in zip(picks, dev_ids, train_ids):
        for i in mine:
            (other / "images" / f"{i}.jpg").write_bytes((Path(cfg.catalogue.path).parent / r["image"]).read_bytes())
            lines.append([i, "x", kind[r["articleType"]], f"images/{i}.jpg"])
    _write_csv(other / "articles.csv", ["article_id", "prod_name", "product_type_name", "image"], lines)
    (other / "shop.toml").write_text('[catalogue]\npath = "articles.csv"\nid = "article_id"\ntitle = "prod_name"\n'
                                     'category = "product_type_name"\nimage = "image"\nsplit = ""\n')
    opts = EvalOptions(**{**OPTS, "sections": ("image",), "image_queries": 4, "robust_queries": 3,
                          "cross_catalogue": other / "shop.toml", "cross_queries": 5})
    report = run_evaluation(cfg, opts, client)
    robust = report["image"]["robustness"]
    assert set(robust["rows"]) == set(ALTERATIONS)
    for row in robust["rows"].values():
        assert row["queries"] == 3 and row["failed"] == 0 and 0.0 <= row["p@10"] <= 0.5 + 1e-9
    cross = report["image"]["cross"]
    assert cross["queries"] == 5 and cross["failed"] == 0
    # the same figure counted by hand: results whose articleType is the one the map gives for the photo's type
    want = {"T-shirt": {"Tshirts", "Lounge Tshirts"}, "Cap/peaked": {"Caps"}}
    by_id = dict(zip(dev_ids, picks))
    assert len(cross["asked"]) == 5 and set(cross["asked"]) <= set(dev_ids)
    hand = []
    for q in sorted(cross["asked"]):
        found = client.post("/api/search", data={"k": 10, "mode": "image"},
                            files={"image": ("p.jpg", (other / "images" / f"{q}.jpg").read_bytes())})["results"]
        kinds = want[kind[by_id[q]["articleType"]]]
        hand.append(sum(catalogue.rows[str(r["id"])]["articleType"] in kinds for r in found) / 10)
    assert cross["p@10"] == pytest.approx(float(np.mean(hand)))
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["photos (issue 16): cross-catalogue P@10"]["value"] == pytest.approx(cross["p@10"])
    assert targets["photos (issue 16): combined alterations P@10"]["value"] == robust["rows"]["combined"]["p@10"]
