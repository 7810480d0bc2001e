"""Natural-query section: shopper phrasings judged by attribute rules (evaluation/natural_queries.csv), per mode."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from evaluation.client import ApiClient, ApiError
from evaluation.data import Catalogue
from evaluation.text import api_rankings
from evaluation.metrics import ndcg_at_k, precision_at_k
from vitrina.errors import CatalogueError

log = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent / "natural_queries.csv"
NATURAL_METRICS = ("p@10", "ndcg@10")
Rule = tuple[tuple[str, frozenset[str]], ...]  # every (field, any-of values) must hold


@dataclass(frozen=True)
class NaturalQuery:
    """One shopper query and its relevance rule (see evaluation/natural_queries.md)."""

    qid: str
    text: str
    intent: str
    split: str
    must: Rule
    prefer: Rule = ()
    must_not: Rule = ()

    def fields(self) -> set[str]:
        return {f for rule in (self.must, self.prefer, self.must_not) for f, _ in rule}

    def grade(self, row: Mapping[str, str]) -> int:
        """0 (not relevant), 1 (meets `must`, no `must_not`), or 2 (also meets a non-empty `prefer`)."""
        if not holds(self.must, row) or (self.must_not and any_holds(self.must_not, row)):
            return 0
        return 2 if self.prefer and holds(self.prefer, row) else 1


def parse_rule(text: str) -> Rule:
    """'articleType=Belts|Suspenders & gender=Men' -> ((articleType, {Belts, Suspenders}), (gender, {Men}))."""
    out = []
    for part in (p.strip() for p in text.split("&")):
        if not part:
            continue
        field, sep, values = part.partition("=")
        vals = frozenset(v.strip() for v in values.split("|") if v.strip())
        if not sep or not field.strip() or not vals:
            raise CatalogueError(f"bad rule condition {part!r}", "expected field=value|value ...")
        out.append((field.strip(), vals))
    return tuple(out)


def holds(rule: Rule, row: Mapping[str, str]) -> bool:
    return all(row.get(field, "") in values for field, values in rule)


def any_holds(rule: Rule, row: Mapping[str, str]) -> bool:
    """must_not: any one of its conditions excludes the product."""
    return any(row.get(field, "") in values for field, values in rule)


def load_natural(path: Path) -> list[NaturalQuery]:
    """The queries of a natural-query CSV (query_id, query, intent, must, prefer, must_not, split)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return [NaturalQuery(r["query_id"], r["query"], r.get("intent", ""), r.get("split", ""),
                                 parse_rule(r["must"]), parse_rule(r.get("prefer", "")),
                                 parse_rule(r.get("must_not", "")))
                    for r in csv.DictReader(f) if r.get("query_id")]
    except (OSError, KeyError) as e:
        raise CatalogueError(f"cannot read natural queries {path}",
                             "expected columns query_id, query, intent, must, prefer, must_not, split") from e


def judge(queries: Sequence[NaturalQuery], catalogue: Catalogue) -> dict[str, dict[str, float]]:
    """query_id -> {product id: grade} over every catalogue row (as qrels_dev.csv covers every row)."""
    qrels: dict[str, dict[str, float]] = {}
    for q in queries:
        qrels[q.qid] = {item: float(g) for item, row in catalogue.rows.items() if (g := q.grade(row)) > 0}
    return qrels


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]]
              ) -> dict[str, dict[str, float]]:
    """query_id -> {"p@10", "ndcg@10"} for one ranking per query."""
    return {qid: {"p@10": precision_at_k(list(run.get(qid, ())), judged, 10),
                  "ndcg@10": ndcg_at_k(list(run.get(qid, ())), judged, 10)} for qid, judged in qrels.items()}


def mean_by(scores: Mapping[str, Mapping[str, float]], groups: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """{"all": means, <group>: means ...} of each metric over the queries of scores, grouped by groups[qid]."""
    buckets: dict[str, list[str]] = defaultdict(list)
    for qid in scores:
        buckets["all"].append(qid)
        buckets[groups[qid]].append(qid)
    return {name: {m: sum(scores[q][m] for q in qids) / len(qids) for m in NATURAL_METRICS}
            for name, qids in buckets.items()}


def run_natural_report(client: ApiClient, catalogue: Catalogue, queries: Sequence[NaturalQuery],
                       modes: Sequence[str]) -> dict[str, Any]:
    """P@10 and NDCG@10 of every mode over all queries, per split and per intent, and per query."""
    some_row = next(iter(catalogue.rows.values()), {})
    missing = sorted({f for q in queries for f in q.fields()} - set(some_row))
    if missing:
        return {"skipped": f"catalogue has no column(s) {missing} the relevance rules use"}
    qrels = judge(queries, catalogue)
    texts = {q.qid: q.text for q in queries}
    rows: dict[str, Any] = {}
    per_query: dict[str, dict[str, Any]] = {q.qid: {"query": q.text, "split": q.split, "intent": q.intent,
                                                     "relevant": len(qrels[q.qid])} for q in queries}
    for mode in modes:
        try:
            run = api_rankings(client, texts, mode, 10)
        except ApiError as e:
            log.warning("natural section: mode %s failed: %s", mode, e.message)
            rows[mode] = {"error": e.message}
            continue
        scores = score_run(run, qrels)
        by_split = mean_by(scores, {q.qid: q.split for q in queries})
        by_intent = mean_by(scores, {q.qid: q.intent for q in queries})
        rows[mode] = {**by_split.pop("all"), "splits": by_split, "intents": by_intent}
        for qid, s in scores.items():
            per_query[qid][mode] = s["p@10"]
        log.info("natural section: %s %s", mode, {m: round(rows[mode][m], 4) for m in NATURAL_METRICS})
    return {"queries": len(queries), "metrics": list(NATURAL_METRICS), "rows": rows, "per_query": per_query}


def best_single_margin(section: Mapping[str, Any], metric: str, split: str | None = None) -> float | None:
    """hybrid minus the best of text, vector and keyword on a metric (over a split when given)."""
    rows = section.get("rows") or {}

    def value(mode: str) -> float | None:
        row = rows.get(mode) or {}
        return (row.get("splits", {}).get(split) or {}).get(metric) if split else row.get(metric)

    hybrid = value("hybrid")
    singles = [v for v in (value(m) for m in ("text", "vector", "keyword")) if v is not None]
    return None if hybrid is None or not singles else hybrid - max(singles)


def format_natural(section: Mapping[str, Any]) -> list[str]:
    """The summary table (all / tune / check) and the per-query P@10 table, as text lines."""
    from evaluation.report import text_table

    if "skipped" in section:
        return [f"natural queries: skipped ({section['skipped']})"]
    rows = {m: r for m, r in section["rows"].items() if "error" not in r}
    splits = sorted({s for r in rows.values() for s in r["splits"]})
    header = ["run"] + [f"{m} {s}" for s in ["all"] + splits for m in NATURAL_METRICS]
    table = [[mode] + [r.get(m) if s == "all" else r["splits"].get(s, {}).get(m)
                       for s in ["all"] + splits for m in NATURAL_METRICS] for mode, r in rows.items()]
    lines = [f"natural queries: {section['queries']} queries (relevance from attribute rules)"]
    lines += text_table(header, table)
    intents = sorted({i for r in rows.values() for i in r["intents"]} - {"all"})
    lines += ["", "  P@10 by intent:"] + ["  " + line for line in text_table(
        ["intent"] + list(rows), [[i] + [rows[m]["intents"][i]["p@10"] for m in rows] for i in intents])]
    lines += ["", "  P@10 per query:"] + ["  " + line for line in text_table(
        ["query", "split", "relevant"] + list(rows),
        [[p["query"], p["split"], p["relevant"]] + [p.get(m) for m in rows] for p in section["per_query"].values()])]
    return lines
