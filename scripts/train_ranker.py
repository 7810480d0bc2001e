"""Fit a learned ranker on training groups: LightGBM lambdarank or a logistic click model, with its metrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from scripts.ranker_data import Groups
from search.learned import Logistic
from search.metrics import ndcg_at_k

log = logging.getLogger(__name__)

LAMBDARANK = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05,
              "num_leaves": 15, "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8,
              "bagging_freq": 1, "lambda_l2": 1.0, "lambdarank_truncation_level": 20, "verbosity": -1,
              "num_threads": 2, "deterministic": True, "seed": 0}
ROUNDS, PATIENCE = 400, 40


def split(groups: Groups, valid: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group indices for training and validation (a random `valid` share of the groups, at least one each)."""
    n = len(groups.y)
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(1, int(round(n * valid))), n - 1) if n > 1 and valid > 0 else 0
    return np.sort(order[cut:]), np.sort(order[:cut])


def _stack(groups: Groups, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    x = np.concatenate([groups.x[i] for i in idx])
    y = np.concatenate([groups.y[i] for i in idx])
    pos = np.concatenate([groups.position[i] for i in idx])
    return x, y, pos, [len(groups.y[i]) for i in idx]


def ndcg(groups: Groups, idx: np.ndarray, scores: list[np.ndarray], k: int = 10) -> float:
    """Mean NDCG@k over these groups of a scoring (one array per group), ties broken by the given order."""
    values = []
    for i, s in zip(idx, scores):
        order = np.argsort(-s, kind="stable")
        ranked = [str(j) for j in order]
        values.append(ndcg_at_k(ranked, {str(j): float(g) for j, g in enumerate(groups.y[i]) if g > 0}, k))
    return float(np.mean(values)) if values else 0.0


def fit_lambdarank(groups: Groups, features: list[str], valid: float = 0.2, position_bias: bool = False,
                   seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """LightGBM lambdarank with early stopping on the validation groups; with `position_bias` (click logs) the
    shown positions go in as LightGBM's position feature (unbiased lambdarank), so the model learns what is
    clicked for itself, not for having been shown first."""
    import lightgbm as lgb

    train, dev = split(groups, valid, seed)
    xt, yt, pt, gt = _stack(groups, train)
    params = {**LAMBDARANK, "seed": seed}
    data = lgb.Dataset(xt, yt, group=gt, feature_name=features, position=pt if position_bias else None,
                       free_raw_data=False)
    sets, callbacks = [data], [lgb.log_evaluation(0)]
    if len(dev):
        xd, yd, pd, gd = _stack(groups, dev)
        sets.append(lgb.Dataset(xd, yd, group=gd, reference=data,
                                position=pd if position_bias else None))
        callbacks.append(lgb.early_stopping(PATIENCE, verbose=False))
    booster = lgb.train(params, data, num_boost_round=ROUNDS, valid_sets=sets[1:] or None, callbacks=callbacks)
    metrics = _metrics(groups, train, dev, lambda x: booster.predict(x, num_iteration=booster.best_iteration or None),
                       features)
    metrics["rounds"] = int(booster.best_iteration or booster.current_iteration())
    gain = booster.feature_importance("gain")
    metrics["importance_gain"] = {f: round(float(g), 2) for f, g in sorted(zip(features, gain), key=lambda t: -t[1])}
    return booster, {"params": params, **metrics}


def fit_logistic(groups: Groups, features: list[str], l2: float = 1.0, valid: float = 0.2, seed: int = 0,
                 iters: int = 50) -> tuple[Logistic, dict[str, Any]]:
    """A logistic click model (P(label > 0 | features)) by Newton steps on the L2-penalised log-likelihood over
    standardised features; every shown row is one example."""
    train, dev = split(groups, valid, seed)
    x, y, _, _ = _stack(groups, train)
    logistic = fit_logistic_rows(x, (y > 0).astype(np.float64), l2, iters)
    metrics = _metrics(groups, train, dev, logistic.score, features)
    return logistic, {"l2": l2, **metrics}


def fit_logistic_rows(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> Logistic:
    """L2-penalised logistic regression (bias unpenalised) on standardised columns, by Newton's method."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return Logistic(w[:-1], float(w[-1]), mean, scale)


def _metrics(groups: Groups, train: np.ndarray, dev: np.ndarray, score: Any, features: list[str]
             ) -> dict[str, Any]:
    """NDCG@10 of the model and of the hand blend (the blend_rr feature's order) on training and validation."""
    out: dict[str, Any] = {"groups": {"train": int(len(train)), "valid": int(len(dev))},
                           "rows": int(sum(len(groups.y[i]) for i in train))}
    blend = features.index("blend_rr") if "blend_rr" in features else None
    for name, idx in (("train", train), ("valid", dev)):
        if not len(idx):
            continue
        out[f"ndcg@10_{name}"] = ndcg(groups, idx, [np.asarray(score(groups.x[i])) for i in idx])
        if blend is not None:
            out[f"ndcg@10_{name}_blend"] = ndcg(groups, idx, [groups.x[i][:, blend] for i in idx])
    return out
