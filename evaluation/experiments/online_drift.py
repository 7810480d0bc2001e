"""How far the online click model drifts from a full retrain on the same click log (simulated shoppers).

    python -m evaluation.experiments.online_drift [--seeds 5] [--searches 4000]

Per seed: a simulated shop's click log (search/online/simulator.py, features: a noisy taste signal and pure noise);
the online model (search/online/clicks.py, the shipped [ranker] settings) takes the log's events one by one, as the
service does; a full retrain fits the same skip-above examples at once (L2 logistic regression, Newton's method).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import numpy as np

from evaluation.ranker_fit import fit_logistic_rows
from search.online.clicks import OnlineModel, Shown, examples
from search.online.impressions import IMPRESSION, features_of
from search.online.simulator import SIM_FEATURES, make_shop, simulate, taste_features, taste_ranker
from search.query.learned import Logistic
from vitrina.config import RankerConfig


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank formulation; ties get half credit)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for s in np.unique(scores):  # average ranks of ties
        tie = scores == s
        ranks[tie] = ranks[tie].mean()
    pos = labels > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_seed(seed: int, searches: int, cfg: RankerConfig) -> dict[str, Any]:
    shop = make_shop(seed=seed)
    records = sorted(simulate(shop, {"a": taste_ranker(1.0)}, lambda u: "a", searches, seed=seed,
                              features=taste_features(0.5, seed)), key=lambda r: (r["ts"], r["kind"] != IMPRESSION))
    rows = np.concatenate([features_of(r) for r in records if r["kind"] == IMPRESSION])
    start = Logistic(np.zeros(rows.shape[1]), 0.0, rows.mean(0), rows.std(0))
    online = OnlineModel(start, SIM_FEATURES, cfg, None)
    shown: dict[str, Shown] = {}
    xs, ys = [], []
    for r in records:
        if r["kind"] == IMPRESSION:
            online.remember(r["request_id"], r["user_id"], r["items"], r["offset"], features_of(r))
            shown[r["request_id"]] = Shown(r["user_id"], r["items"], 0, features_of(r), set())
            continue
        online.learn(r["user_id"], r["item_id"], r["event"], r["request_id"], r["position"], now=r["ts"])
        s = shown[r["request_id"]]
        if r["position"] not in s.clicked:
            for row, label in examples(s, r["position"]):
                xs.append(row)
                ys.append(label)
            s.clicked.add(r["position"])
    x, y = np.array(xs), np.array(ys)
    half = len(y) // 2  # the later half also scores both models after they saw only the first half
    batch = fit_logistic_rows(x, y, l2=cfg.online_l2)
    p_online = 1 / (1 + np.exp(-online.score(x)))
    p_batch = 1 / (1 + np.exp(-batch.score(x)))
    w_online = online.weights()[0]
    w_batch = batch.weights * start.scale / batch.scale
    early = OnlineModel(start, SIM_FEATURES, cfg, None)
    for row, label in zip(x[:half], y[:half]):
        early.update(row, label)
    early_batch = fit_logistic_rows(x[:half], y[:half], l2=cfg.online_l2)
    return {"seed": seed, "examples": len(y), "updates": online.updates,
            "weight_cosine": float(w_online @ w_batch / np.linalg.norm(w_online) / np.linalg.norm(w_batch)),
            "mean_abs_dp": float(np.abs(p_online - p_batch).mean()),
            "max_abs_dp": float(np.abs(p_online - p_batch).max()),
            "heldout_auc_online": auc(early.score(x[half:]), y[half:]),
            "heldout_auc_batch": auc(early_batch.score(x[half:]), y[half:])}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--searches", type=int, default=4000)
    args = p.parse_args(argv)
    cfg = RankerConfig(online_shopper_cap=10**6)  # the shipped rate and L2; no simulated shopper hits the cap
    rows = [one_seed(s, args.searches, cfg) for s in range(args.seeds)]
    keys = list(rows[0])
    print("  ".join(f"{k:>18}" for k in keys))
    for r in rows:
        print("  ".join(f"{r[k]:>18.4f}" if isinstance(r[k], float) else f"{r[k]:>18}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
