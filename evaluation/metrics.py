"""Ranking metrics as pure functions: NDCG@k, Recall@k, MRR, P@k, HR@k, AP@k and MAP@k."""

from __future__ import annotations

import math
from typing import Callable, Collection, Mapping, Sequence

# A ranking is a sequence of item ids, best first; judgements map item id -> graded relevance (> 0 is relevant).
Ranking = Sequence[str]
Judgements = Mapping[str, float]


def _unique(ranked: Ranking) -> list[str]:
    """The ranking with repeated ids dropped (first occurrence kept), so no item is counted twice."""
    seen: set[str] = set()
    out = []
    for item in ranked:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _relevant(judged: Judgements | Collection[str]) -> set[str]:
    if isinstance(judged, Mapping):
        return {item for item, rel in judged.items() if rel > 0}
    return set(judged)


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: sum of gain_i / log2(i + 1) over ranks i = 1, 2, ..."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Ranking, qrels: Judgements, k: int, exponential: bool = False) -> float:
    """NDCG@k with graded gains (rel, or 2^rel - 1 when `exponential`) and the log2 discount.

    The ideal ranking is made from every judged item of the query, not only the retrieved ones;
    a query with no relevant item scores 0.
    """
    def gain(rel: float) -> float:
        return (2.0 ** rel - 1.0) if exponential else float(rel)

    ideal = dcg([gain(r) for r in sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]])
    if ideal <= 0:
        return 0.0
    gains = [gain(qrels.get(item, 0.0)) if qrels.get(item, 0.0) > 0 else 0.0 for item in _unique(ranked)[:k]]
    return dcg(gains) / ideal


def recall_at_k(ranked: Ranking, relevant: Judgements | Collection[str], k: int) -> float:
    """Share of the relevant items found in the top k (0 when the query has none)."""
    rel = _relevant(relevant)
    if not rel:
        return 0.0
    return sum(1 for item in _unique(ranked)[:k] if item in rel) / len(rel)


def precision_at_k(ranked: Ranking, relevant: Judgements | Collection[str], k: int) -> float:
    """Relevant items in the top k divided by k (a short ranking is not padded in its favour)."""
    rel = _relevant(relevant)
    return sum(1 for item in _unique(ranked)[:k] if item in rel) / k


def hit_rate_at_k(ranked: Ranking, relevant: Judgements | Collection[str], k: int) -> float:
    """1 when at least one relevant item is in the top k, else 0."""
    rel = _relevant(relevant)
    return 1.0 if any(item in rel for item in _unique(ranked)[:k]) else 0.0


def reciprocal_rank(ranked: Ranking, relevant: Judgements | Collection[str], k: int | None = None) -> float:
    """1 / rank of the first relevant item (within the top k when given), else 0; its mean is MRR."""
    rel = _relevant(relevant)
    items = _unique(ranked)
    for i, item in enumerate(items if k is None else items[:k]):
        if item in rel:
            return 1.0 / (i + 1)
    return 0.0


def average_precision_at_k(ranked: Ranking, actual: Judgements | Collection[str], k: int = 12) -> float:
    """AP@k as in the H&M Kaggle competition: sum of precision@i at each hit / min(len(actual), k)."""
    rel = _relevant(actual)
    if not rel:
        return 0.0
    hits, score = 0, 0.0
    for i, item in enumerate(_unique(ranked)[:k]):
        if item in rel:
            hits += 1
            score += hits / (i + 1)
    return score / min(len(rel), k)


METRICS: dict[str, Callable[[Ranking, Judgements, int | None], float]] = {
    "ndcg": lambda r, q, k: ndcg_at_k(r, q, k if k is not None else len(r)),
    "ndcg_exp": lambda r, q, k: ndcg_at_k(r, q, k if k is not None else len(r), exponential=True),
    "recall": lambda r, q, k: recall_at_k(r, q, k if k is not None else len(r)),
    "precision": lambda r, q, k: precision_at_k(r, q, k if k is not None else max(len(r), 1)),
    "hit_rate": lambda r, q, k: hit_rate_at_k(r, q, k if k is not None else len(r)),
    "mrr": lambda r, q, k: reciprocal_rank(r, q, k),
    "map": lambda r, q, k: average_precision_at_k(r, q, k if k is not None else 12),
}


def parse_metric(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'mrr' -> ('mrr', None). Unknown names raise ValueError."""
    base, _, cut = name.partition("@")
    if base not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    if cut and (not cut.isdigit() or int(cut) < 1):
        raise ValueError(f"metric cut-off must be a positive integer: {name!r}")
    return base, int(cut) if cut else None


def per_query(run: Mapping[str, Ranking], qrels: Mapping[str, Judgements], metric: str) -> dict[str, float]:
    """One metric (e.g. 'ndcg@10') for every query of qrels; a query missing from run scores 0."""
    base, k = parse_metric(metric)
    fn = METRICS[base]
    return {qid: fn(list(run.get(qid, ())), judged, k) for qid, judged in qrels.items()}


def evaluate_run(run: Mapping[str, Ranking], qrels: Mapping[str, Judgements],
                 metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the queries of qrels: {'ndcg@10': 0.71, 'mrr': 0.8, ...}."""
    out = {}
    for metric in metrics:
        scores = per_query(run, qrels, metric)
        out[metric] = sum(scores.values()) / len(scores) if scores else 0.0
    return out
