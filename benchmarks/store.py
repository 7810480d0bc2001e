"""`vitrina bench store`: upsert rate, index build and plain/filtered top-10 latency of both store backends."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search.store.interface import DenseQuery, Filters, ItemRecord, Store
from vitrina.config import Config
from vitrina.errors import BadInput

CATEGORIES = 20
BRANDS = 50
WORDS = ("shirt", "dress", "shoe", "watch", "bag", "cap", "jean", "sock", "belt", "scarf", "coat", "skirt",
         "boot", "ring", "glove", "vest", "sandal", "hoodie", "short", "tie")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", default="100000",
                        help="synthetic points for the edge store; a comma list (100000,1000000) builds each size "
                             "and prints them side by side")
    parser.add_argument("--dim", type=int, default=512, help="vector size")
    parser.add_argument("--queries", type=int, default=200, help="queries per phase (after 10 warm-up ones)")
    parser.add_argument("--backends", default="edge,qdrant", help="comma list of edge, qdrant")
    parser.add_argument("--qdrant-points", type=int, default=20_000,
                        help="points for qdrant-client local mode (pure Python, brute force: slow past ~20k)")
    parser.add_argument("--qdrant-budget-s", type=float, default=30.0,
                        help="seconds per query phase for local mode; it stops early when they run out")
    parser.add_argument("--batch", type=int, default=1000, help="points per upsert call")
    parser.add_argument("--dir", default="", help="folder for the edge shard (default: a temporary folder "
                                                  "under [data].dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the edge shard in --dir, and reuse one already there (same points and dim) "
                             "instead of loading and indexing again")
    parser.add_argument("--hnsw-ef", type=int, default=None,
                        help="HNSW search ef (default: [store].hnsw_ef; 0 = engine default)")
    parser.add_argument("--hnsw-m", type=int, default=None, help="HNSW degree (default: [store].hnsw_m)")
    parser.add_argument("--ef-construct", type=int, default=None,
                        help="HNSW build breadth (default: [store].hnsw_ef_construct)")
    parser.add_argument("--full-scan-kb", type=int, default=None,
                        help="filtered searches matching fewer KB of vectors scan exactly (default: [store].full_scan_kb)")
    parser.add_argument("--payload-links", choices=("on", "off"), default=None,
                        help="HNSW links per payload value (default: [store].payload_links)")
    parser.add_argument("--max-segment-kb", type=int, default=None,
                        help="largest segment in KB of vectors (default: [store].max_segment_kb; 0 = engine default)")
    parser.add_argument("--max-segment-points", type=int, default=None,
                        help="largest segment in points (default: [store].max_segment_points; 0 = no cap)")
    parser.add_argument("--quantization", choices=("none", "int8"), default=None,
                        help="an int8 copy of the vectors builds the graphs and finds candidates "
                             "(default: [store].quantization)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", default="", help="also write the figures to this JSON file")


@dataclass
class Result:
    backend: str
    points: int
    upsert_s: float = 0.0
    finalize_s: float = 0.0
    upsert_cpu_s: float = 0.0  # this process's CPU (engine threads included) while upserting / building
    finalize_cpu_s: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def cpu_s() -> float:
    """CPU seconds of this process so far, all threads (the engine's index builders too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors clustered by category (so filters and neighbours correlate), categories, brands, prices."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CATEGORIES, dim)).astype(np.float32)
    category = rng.integers(0, CATEGORIES, n)
    vectors = centres[category] * 0.35 + rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, category, rng.integers(0, BRANDS, n), np.round(rng.uniform(5, 500, n), 2)


def records(vectors: np.ndarray, category: np.ndarray, brand: np.ndarray, price: np.ndarray,
            start: int, stop: int) -> list[ItemRecord]:
    out = []
    for i in range(start, stop):
        cat = f"cat{category[i]:02d}"
        out.append(ItemRecord(
            id=f"p{i}", vectors={"fused": vectors[i]}, keywords=f"{WORDS[category[i]]} brand{brand[i]} {cat}",
            payload={"category": cat, "brand": f"brand{brand[i]:02d}", "price": float(price[i]),
                     "title": f"{WORDS[category[i]]} {i}"}))
    return out


def query_plan(vectors: np.ndarray, category: np.ndarray, count: int, seed: int) -> list[tuple[np.ndarray, Filters]]:
    """Queries near stored points, each with a filter: its category and a 150-wide price window (~1.5%)."""
    rng = np.random.default_rng(seed + 1)
    plan = []
    for i in rng.integers(0, len(vectors), count):
        q = vectors[i] + rng.normal(size=vectors.shape[1]).astype(np.float32) * 0.03
        lo = float(rng.uniform(5, 350))
        plan.append((q / np.linalg.norm(q), Filters(equals={"category": (f"cat{category[i]:02d}",)},
                                                     ranges={"price": (lo, lo + 150.0)})))
    return plan


def exact_top(vectors: np.ndarray, mask: np.ndarray | None, q: np.ndarray, k: int = 10) -> set[int]:
    scores = vectors @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return {int(i) for i in top if np.isfinite(scores[i])}


def time_phase(search: Callable[[np.ndarray, Filters], list[Any]], plan: list[tuple[np.ndarray, Filters]],
               budget_s: float, filtered: bool, truth: Callable[[int], set[int]]) -> dict[str, float]:
    for q, f in plan[:10]:  # warm-up
        search(q, f if filtered else Filters())
    latencies, cpu, found = [], [], []
    started = time.perf_counter()
    for q, f in plan[10:]:  # nothing else runs between queries (numpy's BLAS threads spin after a matmul)
        t, c = time.perf_counter(), time.process_time()
        hits = search(q, f if filtered else Filters())
        latencies.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)  # all threads of this process: the engine's too
        found.append({int(h.id[1:]) for h in hits})
        if time.perf_counter() - started > budget_s:
            break
    recalls = [len(got & expected) / len(expected) for got, expected in
               ((got, truth(n + 10)) for n, got in enumerate(found)) if expected]
    ms = np.array(latencies)
    return {"queries": float(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "cpu_p50_ms": float(np.percentile(cpu, 50)),
            "cpu_p95_ms": float(np.percentile(cpu, 95)),
            "recall@10": float(np.mean(recalls)) if recalls else float("nan")}


def bench_backend(name: str, store: Store, n: int, data: tuple[np.ndarray, ...], args: argparse.Namespace,
                  budget_s: float) -> Result:
    vectors, category, brand, price = (a[:n] for a in data)
    result = Result(name, n)
    reuse = "bench" in store.list_collections() and store.collection_info("bench").dims == {"fused": vectors.shape[1]}
    if reuse:
        result.notes.append("reused the collection built by an earlier --keep run: upsert and finalize not timed")
    else:
        store.create_collection("bench", {"fused": vectors.shape[1]}, filterable=("category", "brand"), numeric=())
        t, c = time.perf_counter(), cpu_s()
        for start in range(0, n, args.batch):
            store.upsert("bench", records(vectors, category, brand, price, start, min(n, start + args.batch)))
            store.build_due("bench")  # the embedded store: a segment built as it fills
            if n >= 500_000 and (start // args.batch) % 100 == 99:
                print(f"  {name}: {start + args.batch:,} upserted in {time.perf_counter() - t:.0f}s", flush=True)
        store.flush("bench")
        result.upsert_s, result.upsert_cpu_s = time.perf_counter() - t, cpu_s() - c
        t, c = time.perf_counter(), cpu_s()
        store.finalize("bench")
        result.finalize_s, result.finalize_cpu_s = time.perf_counter() - t, cpu_s() - c
        segments = store.segments("bench")
        if segments is not None:
            result.notes.append(f"{n:,} points in {segments} segment(s)")
        print(f"  {name}: {n:,} points upserted in {result.upsert_s:.0f}s, index built in {result.finalize_s:.0f}s "
              f"({result.upsert_cpu_s + result.finalize_cpu_s:.0f} CPU-s)"
              f"{f', {segments} segment(s)' if segments is not None else ''}", flush=True)
    if store.count("bench") != n:
        raise RuntimeError(f"{name}: {store.count('bench')} points stored, expected {n}")
    plan = query_plan(vectors, category, args.queries + 10, args.seed)
    cats = np.array([f"cat{c:02d}" for c in range(CATEGORIES)])[category]

    def search(q: np.ndarray, f: Filters) -> list[Any]:
        return store.query("bench", DenseQuery(q, "fused"), filters=f, limit=10)

    def truth(filtered: bool) -> Callable[[int], set[int]]:
        def top(i: int) -> set[int]:
            q, f = plan[i]
            if not filtered:
                return exact_top(vectors, None, q)
            lo, hi = f.ranges["price"]
            return exact_top(vectors, (cats == f.equals["category"][0]) & (price >= lo) & (price <= hi), q)
        return top

    result.phases["plain"] = time_phase(search, plan, budget_s, False, truth(False))
    result.phases["filtered"] = time_phase(search, plan, budget_s, True, truth(True))
    return result


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nvitrina bench store: dim {args.dim}, top-10 dense (`fused`, cosine) queries, one thread, "
          "payload category(20) + brand(50) + price; filtered = category + 150-wide price window (~1.5% of points)")
    head = f"{'backend':<14}{'points':>9}{'upsert/s':>10}{'build s':>9}{'CPU s':>8}  {'phase':<9}{'queries':>8}" \
           f"{'p50 ms':>9}{'p95 ms':>9}{'cpu p50':>9}{'cpu p95':>9}{'recall@10':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        for i, (phase, m) in enumerate(r.phases.items()):
            rate = f"{r.points / r.upsert_s:>10,.0f}" if r.upsert_s else f"{'-':>10}"
            cpu = r.upsert_cpu_s + r.finalize_cpu_s
            left = f"{r.backend:<14}{r.points:>9}{rate}{r.finalize_s:>9.1f}{cpu:>8.0f}" if i == 0 else " " * 50
            print(f"{left}  {phase:<9}{int(m['queries']):>8}{m['p50_ms']:>9.2f}{m['p95_ms']:>9.2f}"
                  f"{m['cpu_p50_ms']:>9.2f}{m['cpu_p95_ms']:>9.2f}{m['recall@10']:>11.3f}")
        for note in r.notes:
            print(f"  note ({r.backend}): {note}")
    for r in results:
        if r.backend == "edge" and "filtered" in r.phases:
            p95, cpu95 = r.phases["filtered"]["p95_ms"], r.phases["filtered"]["cpu_p95_ms"]
            verdict = (f"(target <= 5 ms at up to 100k points): {'met' if p95 <= 5 else 'NOT met'} on wall time"
                       if r.points <= 100_000 else "(the 5 ms target is set at 100k points; none at this size)")
            print(f"edge filtered p95 at {r.points:,} points = {p95:.2f} ms wall, {cpu95:.2f} ms CPU {verdict}")
    print("build s: the index build after the upserts (finalize); CPU s: upsert + build, all threads")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:,.0f} MiB")
    print(f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(wall times grow with other jobs, and the engine builds the index in low-priority threads; CPU times "
          "are this process's own)")


def point_counts(spec: str) -> list[int]:
    try:
        counts = [int(x) for x in str(spec).replace("_", "").split(",") if x.strip()]
    except ValueError as e:
        raise BadInput(f"--points takes numbers separated by commas, got {spec!r}") from e
    if not counts or min(counts) < 100:
        raise BadInput("--points >= 100 please")
    return counts


def run(cfg: Config, args: argparse.Namespace) -> int:
    from search.store.edge import EdgeStore, IndexSettings
    from search.store.qdrant import QdrantStore
    from vitrina.config import StoreConfig

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"edge", "qdrant"}:
        raise BadInput("--backends takes edge and/or qdrant")
    counts = point_counts(args.points)
    if args.dim < 2 or args.queries < 1:
        raise BadInput("--dim >= 2 and --queries >= 1 please")
    if args.keep and (not args.dir or len(counts) > 1):
        raise BadInput("--keep needs --dir and one --points value")
    sc = cfg.store
    index = IndexSettings.of(replace(
        sc, hnsw_m=args.hnsw_m or sc.hnsw_m, hnsw_ef_construct=args.ef_construct or sc.hnsw_ef_construct,
        full_scan_kb=args.full_scan_kb or sc.full_scan_kb,
        payload_links=sc.payload_links if args.payload_links is None else args.payload_links == "on",
        max_segment_kb=sc.max_segment_kb if args.max_segment_kb is None else args.max_segment_kb,
        max_segment_points=sc.max_segment_points if args.max_segment_points is None else args.max_segment_points,
        quantization=args.quantization or sc.quantization))
    qdrant_n = min(counts[0], args.qdrant_points)
    data = make_data(max(*counts, qdrant_n), args.dim, args.seed)
    results = []
    if "edge" in backends:
        base = Path(args.dir) if args.dir else cfg.data_dir
        base.mkdir(parents=True, exist_ok=True)
        ef = cfg.store.hnsw_ef if args.hnsw_ef is None else args.hnsw_ef
        cap = index.segment_kb({"fused": args.dim})  # the bench's one vector
        print(f"edge: HNSW m {index.m}, ef_construct {index.ef_construct}, full scan below {index.full_scan_kb} KB, "
              f"payload links {'on' if index.payload_links else 'off'}, segments up to "
              f"{f'{cap} KB' if cap else 'the engine default'}, vectors quantised: "
              f"{index.quantization}; search ef {ef or 'engine default'}",
              flush=True)
        for n in counts:
            folder = base / f"bench-store-{n}x{args.dim}-s{args.seed}" if args.keep \
                else Path(tempfile.mkdtemp(prefix="bench-store-", dir=base))
            print(f"edge: {n:,} points in {folder} ...", flush=True)
            try:
                with EdgeStore(folder, hnsw_ef=ef or None, index=index,
                               oversampling=cfg.store.quantization_oversampling) as store:
                    results.append(bench_backend("edge", store, n, data, args, budget_s=float("inf")))
            finally:
                if not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
    if "qdrant" in backends:
        print(f"qdrant-client local (:memory:): {qdrant_n} points ...", flush=True)
        with QdrantStore.from_config(StoreConfig(backend="qdrant", path=":memory:")) as store:
            r = bench_backend("qdrant-local", store, qdrant_n, data, args, budget_s=args.qdrant_budget_s)
        if qdrant_n < counts[0]:
            r.notes.append(f"local mode is pure Python (brute force, no payload index): run on {qdrant_n} of "
                           f"{counts[0]} points")
        for phase, m in r.phases.items():
            if m["queries"] < args.queries:
                r.notes.append(f"{phase}: stopped after {int(m['queries'])} queries ({args.qdrant_budget_s:.0f} s "
                               "budget per phase)")
        r.notes.append("a Qdrant server ([store].url) is not measured here; local mode stands in for it in tests")
        results.append(r)
    report(results, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0
