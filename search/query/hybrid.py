"""Hybrid fusion of one query's candidate lists: weighted RRF of the keyword, dense and personal lists, plus the
attribute agreement with what the query was read as, and values the shopper ruled out sent last."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from search.query.fusion_weights import FusionWeights
from search.query.ranking import rrf
from search.store.interface import Hit

USER_COS = "_user_cosine"  # explain key carrying a known user cosine to the personal rerank (popped there)
Payload = Mapping[str, Any]


def hybrid_rows(keyword: Sequence[Hit], dense: Sequence[Hit], mine: Sequence[Hit], weights: FusionWeights,
                personal_weight: float, rrf_k: int, share: Callable[[Payload], float] | None = None,
                excluded: Callable[[Payload], bool] | None = None) -> list[tuple[Hit, dict[str, Any]]]:
    """Every candidate with its explain parts, best first (stable: equal scores keep the RRF order).

    relevance = RRF(keyword, dense, mine; weights) + attributes / (rrf_k + 1) x share(payload): a full attribute
    match weighs like rank 1 in a list of that weight. An `excluded` item loses more than any candidate can have."""
    fused = rrf([[h.id for h in keyword], [h.id for h in dense], [h.id for h in mine]],
                [weights.keyword, weights.vector, personal_weight], rrf_k)
    by_id = {h.id: h for h in mine}
    by_id.update({h.id: h for h in keyword})
    by_id.update({h.id: h for h in dense})
    kw = {h.id: (i + 1, h.score) for i, h in enumerate(keyword)}
    dn = {h.id: (i + 1, h.score) for i, h in enumerate(dense)}
    pr = {h.id: (i + 1, h.score) for i, h in enumerate(mine)}
    scale = weights.attributes / (rrf_k + 1)
    use_share = share is not None and weights.attributes > 0
    rows = []
    for item_id, score in fused.items():
        hit = by_id[item_id]
        k_rank, k_score = kw.get(item_id, (None, None))
        d_rank, d_score = dn.get(item_id, (None, None))
        agree = share(hit.payload) if use_share else 0.0  # type: ignore[misc]
        parts = {"keyword": k_score, "keyword_rank": k_rank, "dense": d_score, "vector_rank": d_rank,
                 "rrf": score, "attributes": agree, "relevance": score + scale * agree}
        if d_score is not None:  # the dense list is on the fused vectors: its score is explain's cosine
            parts["vector"] = d_score
        if item_id in pr:  # its score is the user cosine the rerank needs: kept, not asked for again
            parts["personal_rank"], parts[USER_COS] = pr[item_id]
        if excluded is not None and excluded(hit.payload):
            parts["excluded"] = True
            parts["relevance"] -= sum((weights.keyword, weights.vector, personal_weight)) + 2.0 * scale
        rows.append((hit, parts))
    rows.sort(key=lambda r: -r[1]["relevance"])
    return rows
