"""Fit a learned ranker: training groups -> LightGBM lambdarank or a logistic click model -> model file and card."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import ndcg_at_k
from evaluation.ranker_data import Groups
from search.query.learned import Logistic
from vitrina.config import Config
from vitrina.errors import BadInput

log = logging.getLogger(__name__)

LAMBDARANK = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05,
              "num_leaves": 15, "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8,
              "bagging_freq": 1, "lambda_l2": 1.0, "lambdarank_truncation_level": 20, "verbosity": -1,
              "num_threads": 2, "deterministic": True, "seed": 0}
ROUNDS, PATIENCE = 400, 40


def split(groups: Groups, valid: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group indices for training and validation. Groups replayed from several windows: the latest window validates
    (a random split would let the model learn which articles sell in a window from one half of its searches and
    meet them again in the other). Otherwise a random `valid` share of the groups, at least one each; none when
    valid = 0."""
    n = len(groups.y)
    windows = sorted({s.rsplit(":", 1)[0] for s in groups.source if s.count(":") == 2})
    if valid > 0 and len(windows) > 1:
        last = np.array([s.rsplit(":", 1)[0] == windows[-1] for s in groups.source])
        return np.flatnonzero(~last), np.flatnonzero(last)
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(1, int(round(n * valid))), n - 1) if n > 1 and valid > 0 else 0
    return np.sort(order[cut:]), np.sort(order[:cut])


def _stack(groups: Groups, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    x = np.concatenate([groups.x[i] for i in idx])
    y = np.concatenate([groups.y[i] for i in idx])
    pos = np.concatenate([groups.position[i] for i in idx])
    return x, y, pos, [len(groups.y[i]) for i in idx]


def hit_rate(groups: Groups, idx: np.ndarray, scores: list[np.ndarray], k: int = 10) -> float:
    """Share of these groups with a positive among the k best of a scoring (ties broken by the given order)."""
    hits = [float(np.any(groups.y[i][np.argsort(-s, kind="stable")[:k]] > 0)) for i, s in zip(idx, scores)]
    return float(np.mean(hits)) if hits else 0.0


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
        model_scores = [np.asarray(score(groups.x[i])) for i in idx]
        out[f"ndcg@10_{name}"] = ndcg(groups, idx, model_scores)
        out[f"hr@10_{name}"] = hit_rate(groups, idx, model_scores)
        if blend is not None:
            blend_scores = [groups.x[i][:, blend] for i in idx]
            out[f"ndcg@10_{name}_blend"] = ndcg(groups, idx, blend_scores)
            out[f"hr@10_{name}_blend"] = hit_rate(groups, idx, blend_scores)
    return out


HELD_BACK = "2020-06-01"  # purchases from this day on are held back for evaluation (the data set's own split)
NEGATIVES = ("the other candidates of the hand-tuned blend's top-N for the same search (what the engine would "
             "have shown the shopper then), labelled 0")


@dataclass(frozen=True)
class TrainOptions:
    source: str = "purchases"  # purchases (replayed against the engine) | log (logged impressions and feedback)
    kind: str = "lambdarank"  # lambdarank | logistic
    until: str = HELD_BACK  # nothing on or after this day is read (labels, history or log records)
    months: int = 2  # purchases: length of each training window
    windows: int = 3  # purchases: how many windows back from `until`
    query_field: str = "product_type_name"
    candidates: int = 0  # 0: [ranker].candidates
    valid: float = 0.2
    out: Path | None = None
    seed: int = 0
    recommend: bool = False  # purchases: also train the recommendations ranker (<out>.recommend.json)


def month_windows(until: str, months: int, count: int) -> list[tuple[str, str]]:
    """`count` windows of `months` months each, the last one ending at `until`, oldest first."""
    end = datetime.strptime(until, "%Y-%m-%d")
    out = []
    for _ in range(count):
        m = end.month - months
        start = end.replace(year=end.year + (m - 1) // 12, month=(m - 1) % 12 + 1)
        out.append((start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")))
        end = start
    return out[::-1]


def train(cfg: Config, opts: TrainOptions, client: Any = None) -> tuple[Path, dict[str, Any]]:
    """Build the groups, fit, write the model and its card; returns (path, card)."""
    from evaluation.client import InProcessClient, api_key_for
    from evaluation.data import load_catalogue, load_purchases
    from evaluation.ranker_data import from_log, replay_purchases
    from search.query.features import SEARCH_FEATURES
    from search.query.learned import save_model

    if opts.source == "purchases" and opts.until > HELD_BACK:
        raise BadInput(f"--until {opts.until} reaches into the held-back period", f"at most {HELD_BACK}")
    start = time.perf_counter()
    candidates = opts.candidates or cfg.ranker.candidates
    card: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "config": cfg.source, "source": opts.source, "until": opts.until,
                            "candidates": candidates, "command": " ".join(["vitrina"] + sys.argv[1:])}
    if opts.source == "purchases":
        windows = month_windows(opts.until, opts.months, opts.windows)
        path = Path(cfg.catalogue.path).parent / "transactions.csv"
        own = client is None
        client = client or InProcessClient(cfg, api_key_for(cfg))
        rec_groups = Groups() if opts.recommend else None
        try:
            groups = replay_purchases(client, load_catalogue(cfg), load_purchases(path), windows,
                                      opts.query_field, candidates, recommend=rec_groups)
        finally:
            if own:
                client.close()
        card.update(windows=[f"{a}..{b}" for a, b in windows], transactions=str(path), query_field=opts.query_field,
                    queries=f"the bought article's {opts.query_field}, searched as the shopper (as the personal "
                            "evaluation does)", negatives=NEGATIVES, labels="1 for the bought article(s)")
    elif opts.source == "log":
        from search.online.impressions import open_log

        until = datetime.strptime(opts.until, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
        groups = from_log(open_log(cfg.data_dir).read(until=until), until=until, groups=Groups())
        card.update(labels="click 1, cart 2, purchase 3 (the deepest per shown item)",
                    negatives="shown items nobody acted on, in responses with some feedback",
                    position_bias="shown positions given to LightGBM's unbiased lambdarank")
    else:
        raise BadInput(f"unknown --source {opts.source!r}", "purchases or log")
    if len(groups.y) < 10:
        raise BadInput(f"only {len(groups.y)} training groups", "need at least 10 searches with a positive")
    features = list(SEARCH_FEATURES)
    card["data"] = {**dict(groups.stats), "groups": len(groups.y), "rows": int(sum(len(y) for y in groups.y))}
    if opts.kind == "lambdarank":
        booster, metrics = fit_lambdarank(groups, features, opts.valid, opts.source == "log", opts.seed)
        logistic = None
    elif opts.kind == "logistic":
        booster = None
        logistic, metrics = fit_logistic(groups, features, cfg.ranker.online_l2, opts.valid, opts.seed)
    else:
        raise BadInput(f"unknown --kind {opts.kind!r}", "lambdarank or logistic")
    out = opts.out or cfg.data_dir / "models" / f"ranker-{opts.kind}-{opts.until}.json"
    if opts.source == "purchases" and rec_groups is not None:
        card["recommend_model"] = str(_recommend_model(rec_groups, card, opts, out))
    card.update(metrics=metrics, seconds=round(time.perf_counter() - start, 1))
    model = save_model(out, opts.kind, "search", features, card, booster=booster, logistic=logistic)
    return out, model.card


def _recommend_model(groups: Any, card: dict[str, Any], opts: TrainOptions, out: Path) -> Path:
    """The recommendations ranker from the same replay (lambdarank over RECOMMEND_FEATURES): <out>.recommend.json."""
    from search.query.features import RECOMMEND_FEATURES
    from search.query.learned import save_model

    if len(groups.y) < 10:
        raise BadInput(f"only {len(groups.y)} recommendation groups", "need at least 10 shoppers with a positive")
    booster, metrics = fit_lambdarank(groups, list(RECOMMEND_FEATURES), opts.valid, False, opts.seed)
    path = out.with_suffix(".recommend.json")
    rec_card = {k: v for k, v in card.items() if k not in ("queries", "query_field", "data")}
    rec_card.update(data={**dict(groups.stats), "groups": len(groups.y), "rows": int(sum(len(y) for y in groups.y))},
                    metrics=metrics, labels="1 for each article the shopper bought in the window",
                    negatives="the other candidates of the recommendation blend's top-N for the shopper at the cutoff")
    save_model(path, "lambdarank", "recommend", list(RECOMMEND_FEATURES), rec_card, booster=booster)
    return path
