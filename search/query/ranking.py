"""Pure ranking maths for the search engine: weighted reciprocal rank fusion, cosine against a query, facets."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def rrf(rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: int = 60
        ) -> dict[str, float]:
    """Weighted RRF: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1; ids absent from a list add 0.

    Returns ids in fused order (best first; ties keep first-seen order) with their scores.
    """
    if weights is None or len(weights) == 0:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if k < 0:
        raise ValueError(f"rrf k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + float(w) / (k + rank)
    items = list(scores.items())
    items.sort(key=lambda kv: -kv[1])  # stable: ties keep first-seen order
    return dict(items)


def cosines(query: np.ndarray | None, vectors: Sequence[np.ndarray | None]) -> list[float | None]:
    """Cosine of each vector to the query (None where either is missing or zero)."""
    if query is None:
        return [None] * len(vectors)
    q = np.asarray(query, dtype=np.float64)
    qn = float(np.linalg.norm(q))
    out: list[float | None] = []
    for v in vectors:
        if v is None or qn == 0.0:
            out.append(None)
            continue
        a = np.asarray(v, dtype=np.float64)
        n = float(np.linalg.norm(a))
        out.append(None if n == 0.0 or a.shape != q.shape else float(a @ q / (n * qn)))
    return out


def facet_counts(payloads: Iterable[Mapping[str, Any]], fields: Sequence[str], limit: int = 20
                 ) -> dict[str, dict[str, int]]:
    """{field: {value: count}} over the given results, most frequent first (ties by value), `limit` values per
    field; a list value counts each distinct element once, a missing or empty value not at all."""
    counts: dict[str, Counter[str]] = {f: Counter() for f in fields}
    for p in payloads:
        for f in fields:
            v = p.get(f)
            values = set(v) if isinstance(v, (list, tuple)) else {v}
            counts[f].update(str(x) for x in values if x is not None and x != "")
    return {f: dict(sorted(c.items(), key=lambda t: (-t[1], t[0]))[:limit]) for f, c in counts.items()}
