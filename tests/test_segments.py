"""Shopper segments: k-means against a loop oracle, borrowing a group's taste, rebuilt with the signals, reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from search.shopper.personal import Event
from search.shopper.segments import FILENAME, current, kmeans, rebuild


def oracle_assign(x: np.ndarray, centres: np.ndarray) -> list[int]:
    """Nearest centre by cosine, written as loops."""
    out = []
    for row in x:
        best, best_cos = 0, -2.0
        for j, c in enumerate(centres):
            cos = float(sum(a * b for a, b in zip(row, c)) / (np.sqrt(sum(a * a for a in row)) *
                                                              np.sqrt(sum(b * b for b in c))))
            if cos > best_cos:
                best, best_cos = j, cos
        out.append(best)
    return out


def test_kmeans_finds_planted_groups_and_is_a_fixed_point() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3] * 3
    truth = rng.integers(0, 3, 300)
    x = centres[truth] + 0.3 * rng.normal(size=(300, 6))
    c, labels = kmeans(x, 3, seed=1)
    assert c.shape == (3, 6) and np.allclose(np.linalg.norm(c, axis=1), 1.0)
    # the groups are the planted ones (up to naming)
    mapping = {int(t): int(np.bincount(labels[truth == t]).argmax()) for t in range(3)}
    assert len(set(mapping.values())) == 3
    assert np.mean([mapping[int(t)] == int(lab) for t, lab in zip(truth, labels)]) > 0.98
    assert oracle_assign(x, c) == labels.tolist()  # each row sits with its nearest centre
    for j in range(3):  # and each centre is the normalised mean of its rows
        mean = x[labels == j] / np.linalg.norm(x[labels == j], axis=1, keepdims=True)
        np.testing.assert_allclose(c[j], mean.mean(0) / np.linalg.norm(mean.mean(0)), atol=1e-9)
    few, few_labels = kmeans(x[:2], 5)
    assert few.shape[0] == 2 and sorted(few_labels.tolist()) == [0, 1]



def test_thin_profiles_borrow_their_groups_taste(shop_index: Any, tmp_path: Path) -> None:
    from search.query.engine import SearchService
    from search.shopper.segments import borrow

    cfg, store, rows = shop_index
    run = cfg.replace(data={"dir": str(tmp_path)}, segments={"k": 2, "borrow": 0.8, "borrow_saturation": 6.0,
                                                            "min_evidence": 0.5})
    service = SearchService(run, store=store)
    vectors = {h.id: h.vectors["fused"] for h in store.retrieve(run.store.alias, [r["id"] for r in rows],
                                                                 with_vectors=("fused",))}
    red = [r["id"] for r in rows if r["baseColour"] == "Red"]
    blue = [r["id"] for r in rows if r["baseColour"] == "Blue"]
    events = [Event(f"red-{u}", i, "purchase", 1.6e9 + n) for u in range(6) for n, i in enumerate(red)]
    events += [Event(f"blue-{u}", i, "purchase", 1.6e9 + n) for u in range(6) for n, i in enumerate(blue)]
    events.append(Event("newcomer", red[0], "click", 1.6e9 + 100))
    service.profiles.record(events, vectors)
    groups = rebuild(service.profiles, run)
    assert groups is not None and sorted(groups.sizes.tolist()) == [6, 7]  # the newcomer joins the red group
    assert (tmp_path / FILENAME).is_file() and current(run) is not None
    newcomer = service.profiles.get("newcomer")
    regular = service.profiles.get("red-0")
    assert newcomer is not None and regular is not None
    lean_new = borrow(service, newcomer)
    lean_regular = borrow(service, regular)
    red_group = groups.nearest(regular.vector)
    centroid = groups.centroids[red_group]

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    # a click (evidence 1) leans 0.8 x 6 / 7 of the way; a regular (evidence 36+) barely moves
    assert cos(lean_new.vector, centroid) > cos(newcomer.vector, centroid)  # type: ignore[union-attr]
    unit = newcomer.vector / np.linalg.norm(newcomer.vector)
    expected = (1 - 0.8 * 6 / 7) * unit + 0.8 * 6 / 7 * centroid
    np.testing.assert_allclose(lean_new.vector, expected, rtol=1e-5)  # type: ignore[union-attr]
    assert cos(lean_regular.vector, regular.vector) > 0.99  # type: ignore[union-attr]
    assert lean_new.evidence == newcomer.evidence  # type: ignore[union-attr]
    off = SearchService(run.replace(segments={"borrow": 0.0}), store=store)
    assert borrow(off, newcomer) is newcomer


def test_rebuild_signals_rebuilds_segments_and_the_report_splits_by_them(shop_index: Any, tmp_path: Path) -> None:
    from scripts.cli import main
    from web import create_app

    cfg, store, rows = shop_index
    run = cfg.replace(data={"dir": str(tmp_path)}, segments={"k": 2, "min_evidence": 0.5, "rebuild_every": 40},
                      experiments={"name": "seg", "variants": ("a", "b: search.keyword_weight=0.5"),
                                   "min_shoppers": 1, "min_impressions": 1})
    client = create_app(run, store=store, TESTING=True).test_client()
    colours = ("Red", "Blue")
    for u in range(16):
        mine = [r["id"] for r in rows if r["baseColour"] == colours[u % 2]]
        client.post("/api/feedback", json=[{"user_id": f"s{u}", "item_id": i, "event": "purchase"} for i in mine])
    groups = current(run)  # rebuilt by the feedback request that crossed 40 events (16 shoppers x 4 purchases)
    assert groups is not None and int(groups.sizes.sum()) >= 10
    for u in range(16):
        body = client.get("/api/search", query_string={"q": "caps", "k": 3, "user_id": f"s{u}"}).get_json()
        client.post("/api/feedback", json={"user_id": f"s{u}", "item_id": body["results"][0]["id"], "event": "click",
                                           "request_id": body["request_id"], "position": 0})
    report = client.get("/api/experiments/seg").get_json()
    assert len(report["segments"]) == 2
    assert sum(v["impressions"] for seg in report["segments"].values() for v in seg["variants"]) == 16
    (tmp_path / FILENAME).unlink()
    conf = tmp_path / "c.toml"  # the command reads a config file: a minimal one for this data folder
    conf.write_text(f'[data]\ndir = "{tmp_path}"\n[segments]\nk = 2\nmin_evidence = 0.5\n')
    assert main(["--config", str(conf), "rebuild-signals"]) == 0
    stored = current(run)
    assert stored is not None and stored.centroids.shape[0] == 2 and int(stored.sizes.sum()) == 16
