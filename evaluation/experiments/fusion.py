"""Choosing the query reading and fusion settings ([understand]) on the two dev sets, in-process and fast.

    python -m evaluation.experiments.fusion [--config config.toml] [--rounds 2] [--out var/exp/fusion.json]

Each query of the natural set (evaluation/natural_queries.csv) and of queries_dev.csv is parsed once (spelling,
price, negations: settings-free) and its keyword and dense lists fetched once for the parsed text; then every
setting tried re-reads the attribute values (search.query.reading), recomputes the weights (search.query.fusion_weights) and
fuses the lists (search.query.hybrid) exactly as the service does, without a store round trip. A coordinate search, one
setting at a time over its grid, `--rounds` times, maximises P@10 + NDCG@10 of the natural set's `tune` split while
queries_dev NDCG@10 stays >= --attr-floor; the `check` split is only reported. Figures to quote come from
`vitrina evaluate`, which goes through the HTTP API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.data import load_catalogue, load_qrels, load_queries
from evaluation.natural import DEFAULT_PATH, judge, load_natural
from search.query.fusion_weights import FusionParams, QuerySignals, fusion_weights
from search.query.hybrid import hybrid_rows
from evaluation.metrics import ndcg_at_k, precision_at_k
from search.query.reading import keyword_coverage, keyword_text_fields, reader_settings
from search.store.interface import DenseQuery, KeywordQuery
from vitrina.config import Config, load_config

log = logging.getLogger("exp_fusion")
READ_KEYS = ("temperature", "threshold", "name_mix", "similar_weight", "neighbours", "neighbour_k", "coverage_power",
             "keyword_floor")

GRID: dict[str, tuple[Any, ...]] = {
    "temperature": (0.02, 0.03, 0.04, 0.06),
    "threshold": (0.3, 0.35, 0.4, 0.45, 0.5),
    "name_mix": (0.0, 0.25, 0.5),
    "similar_weight": (0.5, 1.0, 1.5, 2.0),
    "neighbours": (0.0, 0.3, 0.5, 0.7, 1.0),
    "neighbour_k": (5, 10, 20),
    "coverage_power": (0.5, 1.0, 2.0),
    "keyword_floor": (0.0, 0.1, 0.25),
    "season": (0.25, 0.5, 1.0),  # exact-word weight of season values
    "usage": (0.25, 0.5, 1.0),  # exact-word weight of usage values
    "attribute_weight": (3.0, 5.0, 8.0),
}


def collect(cfg: Config) -> tuple[Any, list[dict[str, Any]]]:
    """The service and, per query: set, split, judgements, parsed text and its keyword and dense hits."""
    from search.query.engine import SearchService

    svc = SearchService(cfg)
    catalogue = load_catalogue(cfg)
    natural = load_natural(DEFAULT_PATH)
    nat_qrels = judge(natural, catalogue)
    folder = Path(cfg.catalogue.path).parent
    attr = load_queries(folder / "queries_dev.csv")
    attr_qrels = load_qrels(folder / "qrels_dev.csv")
    items = [("natural", q.qid, q.text, q.split, nat_qrels[q.qid]) for q in natural]
    items += [("attr", qid, text, "attr", attr_qrels[qid]) for qid, text in attr.items() if qid in attr_qrels]
    reader, pool, out = svc.reader(), cfg.search.candidates, []
    for kind, qid, text, split, qrels in items:
        cons, _ = reader.parse(text)
        vec = svc.text_vector(cons.text)
        out.append({"kind": kind, "qid": qid, "text": text, "split": split, "qrels": qrels,
                    "keyword": svc.store.query(svc.alias, KeywordQuery(cons.text), None, limit=pool),
                    "dense": svc.store.query(svc.alias, DenseQuery(vec, "fused"), None, limit=pool)})
    return svc, out


def score(svc: Any, queries: list[dict[str, Any]], setting: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean P@10 and NDCG@10 per split (tune, check, attr) under one setting."""
    cfg = svc.cfg.replace(understand={k: setting[k] for k in READ_KEYS}
                          | {"exact_weights": (f"season={setting['season']}", f"usage={setting['usage']}")})
    reader = svc.reader()
    reader.settings = dataclasses.replace(reader_settings(cfg), cache=0)
    u, s = cfg.understand, cfg.search
    params = FusionParams(s.keyword_weight, s.vector_weight, setting["attribute_weight"], u.keyword_floor,
                          u.coverage_power)
    fields = keyword_text_fields(cfg)
    sums: dict[str, list[tuple[float, float]]] = {}
    for q in queries:
        reading = reader.read(q["text"], svc.text_vector).with_neighbours(q["dense"], u.neighbours, u.neighbour_k)
        coverage = keyword_coverage(reading, q["keyword"], fields, reader.values)
        weights = fusion_weights(QuerySignals(len(reading.words), coverage, reading.exact_share, reading.confidence),
                                 params)
        rows = hybrid_rows(q["keyword"], q["dense"], [], weights, 0.0, s.rrf_k, reading.share,
                           reading.excluded if reading.exclude else None)
        ranked = [h.id for h, _ in rows[:10]]
        sums.setdefault(q["split"], []).append((precision_at_k(ranked, q["qrels"], 10),
                                                ndcg_at_k(ranked, q["qrels"], 10)))
    return {split: {"p@10": float(np.mean([a for a, _ in v])), "ndcg@10": float(np.mean([b for _, b in v]))}
            for split, v in sums.items()}


def objective(result: dict[str, dict[str, float]], attr_floor: float) -> float:
    tune = result["tune"]["p@10"] + result["tune"]["ndcg@10"]
    return tune if result["attr"]["ndcg@10"] >= attr_floor else tune - 10.0


def search(svc: Any, queries: list[dict[str, Any]], start: dict[str, Any], rounds: int, attr_floor: float
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Coordinate search from `start`; returns the best setting and every setting tried with its figures."""
    best = dict(start)
    best_result = score(svc, queries, best)
    trail = [{"setting": dict(best), **best_result}]
    for r in range(rounds):
        for name, values in GRID.items():
            for value in values:
                if value == best[name]:
                    continue
                trial = {**best, name: value}
                result = score(svc, queries, trial)
                trail.append({"setting": trial, **result})
                if objective(result, attr_floor) > objective(best_result, attr_floor) + 1e-9:
                    best, best_result = trial, result
                    log.info("round %d: %s=%s -> tune %.4f/%.4f check %.4f/%.4f attr %.4f", r + 1, name, value,
                             result["tune"]["p@10"], result["tune"]["ndcg@10"], result["check"]["p@10"],
                             result["check"]["ndcg@10"], result["attr"]["ndcg@10"])
    return best, trail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--attr-floor", type=float, default=0.978, help="least queries_dev NDCG@10 a setting may have")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    u = cfg.understand
    weights = dict(w.split("=") for w in u.exact_weights)
    start = {**{k: getattr(u, k) for k in READ_KEYS}, "season": float(weights.get("season", 1.0)),
             "usage": float(weights.get("usage", 1.0)), "attribute_weight": cfg.search.attribute_weight}
    t0 = time.perf_counter()
    svc, queries = collect(cfg)
    log.info("collected %d queries in %.1fs", len(queries), time.perf_counter() - t0)
    best, trail = search(svc, queries, start, args.rounds, args.attr_floor)
    final = score(svc, queries, best)
    print(json.dumps({"start": {"setting": start, **trail[0]}, "best": {"setting": best, **final}}, indent=2))
    out = args.out or cfg.data_dir / "exp" / "fusion.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"grid": GRID, "best": best, "trail": trail}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
