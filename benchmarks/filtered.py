"""Filtered search on the live index: top-k recall of the engine against exact search, and its latency.

    vitrina bench filtered [--queries 150] [--values 2] [--using fused,image] [--k 10]

For the `--values` most common values of every [catalogue].filterable field, each of `--queries` dev queries (their
text vectors) is searched with that value as a filter, through the store as the service asks it, and scored against
the exact top k of the same filter computed here in numpy over every stored vector. Recall tells what the index
settings ([store].hnsw_m, hnsw_ef_construct, full_scan_kb, payload_links, hnsw_ef) cost a filtered search.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_inputs import read_queries
from vitrina.config import Config
from vitrina.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queries", type=int, default=150, help="dev queries per filter (default 150)")
    parser.add_argument("--values", type=int, default=2, help="most common values per filterable field (default 2)")
    parser.add_argument("--using", default="fused,image", help="named vectors to search (default fused,image)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")


def _exact(matrix: np.ndarray, mask: np.ndarray, vector: np.ndarray, k: int) -> list[int]:
    scores = np.where(mask, matrix @ vector, -np.inf)
    top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
    return [int(i) for i in top[np.argsort(-scores[top])] if np.isfinite(scores[i])]


def run(cfg: Config, args: argparse.Namespace) -> int:
    from encoders import create_text_encoder, query_side
    from search.store.factory import open_store
    from search.store.interface import DenseQuery, Filters

    using = [u.strip() for u in args.using.split(",") if u.strip()]
    if args.queries <= 0 or args.values <= 0 or args.k <= 0 or not using:
        raise BadInput("--queries, --values and --k must be > 0, --using names at least one vector")
    fields = list(cfg.catalogue.filterable)
    texts = read_queries(Path(cfg.catalogue.path).parent / "queries_dev.csv", 0)[:args.queries]
    vectors = create_text_encoder(query_side(cfg)).encode(texts)
    store = open_store(cfg)
    try:
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        stored: dict[str, list[np.ndarray]] = {u: [] for u in using}
        for hit in store.scroll(cfg.store.alias, with_vectors=using):
            if all(u in hit.vectors for u in using):
                ids.append(hit.id)
                payloads.append(hit.payload)
                for u in using:
                    stored[u].append(hit.vectors[u])
        if not ids:
            raise BadInput(f"the index {cfg.store.alias!r} holds no points with vectors {using}")
        matrices = {u: np.stack(v).astype(np.float32) for u, v in stored.items()}
        print(f"{len(ids):,} points in {cfg.store.alias!r}, {len(texts)} dev queries, top {args.k}, "
              f"[store] hnsw_ef {cfg.store.hnsw_ef}")
        print(f"{'vector':8s} {'filter':32s} {'points':>7s} {'recall':>7s} {'min':>5s} {'p50 ms':>7s} {'p95 ms':>7s}")
        overall: dict[str, list[float]] = {u: [] for u in using}
        for field in fields:
            counts = Counter(str(p.get(field)) for p in payloads if p.get(field) not in (None, ""))
            for value, n in counts.most_common(args.values):
                mask = np.array([str(p.get(field)) == value for p in payloads])
                flt = Filters(equals={field: (value,)})
                for u in using:
                    recalls, took = [], []
                    for v in vectors:
                        want = {ids[i] for i in _exact(matrices[u], mask, v, args.k)}
                        t0 = time.perf_counter()
                        got = {h.id for h in store.query(cfg.store.alias, DenseQuery(v, u), flt, limit=args.k,
                                                         with_payload=False)}
                        took.append(1000.0 * (time.perf_counter() - t0))
                        recalls.append(len(want & got) / max(1, len(want)))
                    overall[u].extend(recalls)
                    print(f"{u:8s} {f'{field}={value}':32s} {n:7d} {np.mean(recalls):7.3f} {min(recalls):5.2f} "
                          f"{np.percentile(took, 50):7.2f} {np.percentile(took, 95):7.2f}")
        for u, values in overall.items():
            print(f"{u}: mean filtered recall@{args.k} {np.mean(values):.4f} over {len(values)} searches")
    finally:
        store.close()
    return 0
