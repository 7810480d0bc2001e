"""Text-query section: graded qrels, every search mode through the API, random and BM25 baselines."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Mapping, Sequence

from evaluation.client import ApiClient, ApiError
from evaluation.data import Catalogue
from evaluation.metrics import evaluate_run

log = logging.getLogger(__name__)

TEXT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr")


def api_rankings(client: ApiClient, queries: Mapping[str, str], mode: str, k: int,
                 extra: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """query_id -> result ids from GET /api/search in one mode."""
    run: dict[str, list[str]] = {}
    for qid, text in queries.items():
        body = client.get("/api/search", {"q": text, "k": k, "mode": mode, **(extra or {})})
        run[qid] = [str(r["id"]) for r in body.get("results", [])]
    return run


def random_rankings(ids: Sequence[str], queries: Mapping[str, str], k: int, seed: int) -> dict[str, list[str]]:
    """k catalogue ids drawn at random (fixed seed) for every query."""
    rng = random.Random(seed)
    return {qid: rng.sample(list(ids), min(k, len(ids))) for qid in queries}


def bm25_rankings(catalogue: Catalogue, fields: Sequence[str], queries: Mapping[str, str],
                  k: int) -> dict[str, list[str]]:
    """BM25 (bm25s, English stemmer and stop words) over the given catalogue fields, outside vitrina."""
    import bm25s

    try:
        import Stemmer

        stemmer: Any = Stemmer.Stemmer("english")
    except ImportError:  # bm25s works without a stemmer, a little weaker
        stemmer = None
    ids = list(catalogue.rows)
    docs = [" ".join(catalogue.rows[i].get(f, "") for f in fields) for i in ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    qids = list(queries)
    # query tokens as strings: the retriever maps them through the corpus vocabulary
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, return_ids=False,
                            show_progress=False)
    docs_idx, scores = retriever.retrieve(tokens, k=min(k, len(ids)), show_progress=False, n_threads=1)
    run = {}
    for row, qid in enumerate(qids):
        run[qid] = [ids[int(d)] for d, s in zip(docs_idx[row], scores[row]) if s > 0]
    return run


def _timed(fn: Callable[[], dict[str, list[str]]]) -> tuple[dict[str, list[str]], float]:
    start = time.perf_counter()
    run = fn()
    return run, time.perf_counter() - start


def run_text_report(client: ApiClient, catalogue: Catalogue, queries: Mapping[str, str],
                    qrels: Mapping[str, Mapping[str, float]], modes: Sequence[str], k: int, seed: int,
                    title_field: str, reference_fields: Sequence[str]) -> dict[str, Any]:
    """NDCG@10, Recall@10/100 and MRR for every mode and baseline, over the queries that have qrels."""
    queries = {q: t for q, t in queries.items() if q in qrels}
    judged = {q: qrels[q] for q in queries}
    rows: dict[str, dict[str, Any]] = {}
    for mode in modes:
        try:
            run, took = _timed(lambda: api_rankings(client, queries, mode, k))
        except ApiError as e:
            log.warning("text section: mode %s failed: %s", mode, e.message)
            rows[mode] = {"kind": "vitrina", "error": e.message}
            continue
        rows[mode] = {"kind": "vitrina", **evaluate_run(run, judged, TEXT_METRICS),
                      "ms_per_query": 1000 * took / max(len(queries), 1),
                      "empty": sum(1 for r in run.values() if not r)}  # queries with no result at all
        log.info("text section: %s %s", mode, {m: round(rows[mode][m], 4) for m in TEXT_METRICS})
    baselines = {
        "random": lambda: random_rankings(list(catalogue.rows), queries, k, seed),
        "bm25 title": lambda: bm25_rankings(catalogue, [title_field], queries, k),
        "bm25 fields (reference)": lambda: bm25_rankings(catalogue, reference_fields, queries, k),
    }
    for name, build in baselines.items():
        try:
            run, took = _timed(build)
        except ImportError as e:
            rows[name] = {"kind": "baseline", "error": f"not available: {e}"}
            continue
        rows[name] = {"kind": "baseline", **evaluate_run(run, judged, TEXT_METRICS),
                      "ms_per_query": 1000 * took / max(len(queries), 1)}
    return {"queries": len(queries), "k": k, "metrics": list(TEXT_METRICS),
            "reference_fields": list(reference_fields), "rows": rows}
