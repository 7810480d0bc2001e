"""What logging one response costs a request: a request id, the record, one write, from several threads at once.

    python -m benchmarks.impressions [--threads 8] [--writes 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
import numpy as np

from search.online.impressions import ImpressionLog, new_request_id
from vitrina.config import Config


def measure(threads: int, writes: int, items: int, features: int, folder: Path) -> dict[str, float]:
    """Per-call wall time (microseconds) of new_request_id + ImpressionLog.impression, each thread `writes` times."""
    log = ImpressionLog(folder, sync_s=1.0)
    ids = [f"{1000000 + i:010d}" for i in range(items)]
    rows = np.random.default_rng(0).random((items, features)).tolist() if features else None
    times: list[float] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        mine = []
        for _ in range(writes):
            start = time.perf_counter()
            log.impression(new_request_id(), "search", ids, user_id=f"shopper-{t}", query="red summer dress",
                           mode="hybrid", experiment="ranker", variant="learned", features=rows)
            mine.append(time.perf_counter() - start)
        with lock:
            times.extend(mine)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - start
    log.close()
    us = np.array(times) * 1e6
    start = time.perf_counter()
    n = sum(1 for _ in ImpressionLog(folder).read())
    read_s = time.perf_counter() - start
    return {"p50_us": float(np.percentile(us, 50)), "p95_us": float(np.percentile(us, 95)),
            "p99_us": float(np.percentile(us, 99)), "writes_per_s": len(us) / wall, "read_per_s": n / read_s}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--writes", type=int, default=2000, help="per thread")


def run_bench(args: argparse.Namespace) -> int:
    print(f"{'threads':>7} {'items':>5} {'features':>8} {'p50 us':>8} {'p95 us':>8} {'p99 us':>8} {'writes/s':>9} "
          f"{'read/s':>9}")
    for threads in sorted({1, args.threads}):
        for items, features in ((10, 0), (10, 19), (24, 19), (100, 0), (100, 19)):
            with tempfile.TemporaryDirectory() as tmp:
                r = measure(threads, args.writes, items, features, Path(tmp))
            print(f"{threads:>7} {items:>5} {features:>8} {r['p50_us']:>8.1f} {r['p95_us']:>8.1f} {r['p99_us']:>8.1f} "
                  f"{r['writes_per_s']:>9.0f} {r['read_per_s']:>9.0f}")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    """`vitrina bench impressions`: the log lives in a temporary folder, whatever the config says."""
    return run_bench(args)
