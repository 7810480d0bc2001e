"""evaluation.metrics against hand-computed cases and against ranx on random runs and graded qrels."""

from __future__ import annotations

import math
import random

import pytest

from evaluation import metrics as m


def test_ndcg_hand_computed() -> None:
    qrels = {"a": 2, "b": 1, "c": 1}
    # ranking b, x, a: dcg = 1/log2(2) + 0 + 2/log2(4) = 2; ideal a, b, c = 2 + 1/log2(3) + 1/2
    ideal = 2 + 1 / math.log2(3) + 0.5
    assert m.ndcg_at_k(["b", "x", "a"], qrels, 3) == pytest.approx(2 / ideal)
    assert m.ndcg_at_k(["a", "b", "c"], qrels, 3) == pytest.approx(1.0)
    # the ideal uses every judged item, not just those retrieved: one perfect hit at k=1 is still 1
    assert m.ndcg_at_k(["a"], qrels, 1) == pytest.approx(1.0)
    assert m.ndcg_at_k(["b"], qrels, 1) == pytest.approx(0.5)
    assert m.ndcg_at_k(["x", "y"], qrels, 10) == 0.0
    assert m.ndcg_at_k(["a"], {}, 10) == 0.0
    # exponential gains: a=3, b=c=1
    assert m.ndcg_at_k(["b", "a"], qrels, 2, exponential=True) == pytest.approx(
        (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    # a repeated id is counted once
    assert m.ndcg_at_k(["a", "a", "b"], qrels, 3) == pytest.approx(m.ndcg_at_k(["a", "b"], qrels, 3))


def test_recall_precision_hit_rr_hand_computed() -> None:
    rel = {"a": 2, "b": 1, "z": 0}  # z is judged but not relevant
    ranked = ["x", "b", "y", "a", "z"]
    assert m.recall_at_k(ranked, rel, 2) == 0.5
    assert m.recall_at_k(ranked, rel, 10) == 1.0
    assert m.precision_at_k(ranked, rel, 2) == 0.5
    assert m.precision_at_k(ranked, rel, 10) == 0.2  # not padded: 2 hits / 10
    assert m.hit_rate_at_k(ranked, rel, 1) == 0.0
    assert m.hit_rate_at_k(ranked, rel, 2) == 1.0
    assert m.reciprocal_rank(ranked, rel) == 0.5
    assert m.reciprocal_rank(ranked, rel, k=1) == 0.0
    assert m.reciprocal_rank(["z"], rel) == 0.0
    assert m.recall_at_k(ranked, set(), 5) == 0.0
    assert m.recall_at_k(ranked, {"a", "b"}, 4) == 1.0  # a plain set of relevant ids works too


def test_average_precision_kaggle_definition() -> None:
    # hits at ranks 1 and 3: (1/1 + 2/3) / min(3, 12)
    assert m.average_precision_at_k(["a", "x", "b"], {"a", "b", "c"}) == pytest.approx((1 + 2 / 3) / 3)
    # more actual items than k: divide by k, not by len(actual)
    actual = {f"i{j}" for j in range(20)}
    ranked = [f"i{j}" for j in range(12)]
    assert m.average_precision_at_k(ranked, actual, 12) == pytest.approx(1.0)
    assert m.average_precision_at_k(["x"] * 3, {"a"}) == 0.0
    assert m.average_precision_at_k(["a"], set()) == 0.0
    # only the first k count
    assert m.average_precision_at_k(["x", "a"], {"a"}, k=1) == 0.0


def test_evaluate_run_means_and_missing_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ["a", "x"]}  # q2 missing: scores 0
    out = m.evaluate_run(run, qrels, ["mrr", "recall@1", "hit_rate@2", "map@12"])
    assert out == {"mrr": 0.5, "recall@1": 0.5, "hit_rate@2": 0.5, "map@12": 0.5}
    with pytest.raises(ValueError):
        m.parse_metric("nope@3")
    with pytest.raises(ValueError):
        m.parse_metric("ndcg@0")


def _random_case(rng: random.Random, n_queries: int = 40, n_docs: int = 60
                 ) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, list[str]] = {}
    docs = [f"d{i}" for i in range(n_docs)]
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 25))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if not any(qrels[qid].values()):
            qrels[qid][judged[0]] = 1
        run[qid] = rng.sample(docs, rng.randint(0, 40))
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_ranx_on_random_runs(seed: int) -> None:
    ranx = pytest.importorskip("ranx")
    rng = random.Random(seed)
    qrels, run = _random_case(rng)
    # ranx needs scores; give strictly decreasing ones so its order is ours. An empty ranking gets a
    # junk document nobody judged (ranx cannot hold an empty query).
    scored = {q: ({d: float(len(r) - i) for i, d in enumerate(r)} or {"junk": 1.0}) for q, r in run.items()}
    pairs = {
        "ndcg@10": "ndcg@10", "ndcg@5": "ndcg@5", "ndcg_exp@10": "ndcg_burges@10", "recall@10": "recall@10",
        "recall@100": "recall@100", "precision@10": "precision@10", "hit_rate@10": "hit_rate@10",
        "mrr": "mrr", "mrr@10": "mrr@10",
    }
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(scored), list(pairs.values()), make_comparable=True)
    ours = m.evaluate_run(run, qrels, list(pairs))
    for mine, their_name in pairs.items():
        assert ours[mine] == pytest.approx(theirs[their_name], abs=1e-9), mine
    # Kaggle AP@12 equals ranx's map@12 for every query with at most 12 relevant items
    small = {q: j for q, j in qrels.items() if sum(1 for r in j.values() if r > 0) <= 12}
    theirs_map = ranx.evaluate(ranx.Qrels(small), ranx.Run({q: scored[q] for q in small}), "map@12")
    assert m.evaluate_run(run, small, ["map@12"])["map@12"] == pytest.approx(theirs_map, abs=1e-9)
