"""Query-dependent hybrid weights: how much the keyword list, the vector list and the attribute reading count, from
what the query is (how much of it the keywords match, how surely it was read)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuerySignals:
    """What the fusion looks at, each 0..1 except `words`."""

    words: int = 0  # content words of the query
    keyword_coverage: float = 1.0  # share of the query's IDF mass the best keyword hits hold
    exact_share: float = 0.0  # share of the content words named word for word as attribute values
    confidence: float = 0.0  # the surest similarity reading

    def as_dict(self) -> dict[str, float]:
        """As the API shows them (e.g. as features for a learned ranker)."""
        return {"words": self.words, "keyword_coverage": round(self.keyword_coverage, 4),
                "exact_share": round(self.exact_share, 4), "confidence": round(self.confidence, 4)}


@dataclass(frozen=True)
class FusionParams:
    """The shop's settings: base RRF weights ([search]) and how the keyword weight follows its coverage
    ([understand])."""

    keyword: float = 1.0
    vector: float = 1.0
    attributes: float = 5.0
    keyword_floor: float = 0.0  # share of the keyword weight kept when the keywords match nothing that matters
    coverage_power: float = 0.5  # > 1: partial matches count less; < 1: more


@dataclass(frozen=True)
class FusionWeights:
    keyword: float
    vector: float
    attributes: float

    def as_dict(self) -> dict[str, float]:
        return {"keyword": round(self.keyword, 4), "vector": round(self.vector, 4),
                "attributes": round(self.attributes, 4)}


def fusion_weights(signals: QuerySignals, params: FusionParams) -> FusionWeights:
    """keyword = base x (floor + (1 - floor) x coverage^power): a query whose telling words no keyword hit holds
    ('wristwatch for men' against 'Mr. Men Men T-shirt') leans on the vectors and the reading; a query the keywords
    match fully ('men brown watches') keeps the base weight. Vector and attribute weights stay at their base."""
    cov = min(1.0, max(0.0, signals.keyword_coverage))
    floor = min(1.0, max(0.0, params.keyword_floor))
    share = floor + (1.0 - floor) * cov ** max(params.coverage_power, 0.0)
    return FusionWeights(params.keyword * share, params.vector, params.attributes)
