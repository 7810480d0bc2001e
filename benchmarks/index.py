"""`vitrina bench index`: end-to-end reindex throughput on N real catalogue items, with time per stage."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vitrina.config import Config
from vitrina.errors import BadInput

STAGES = {
    "read": "catalogue parse + batching (main thread)",
    "decode": "image read + decode + resize (summed over decode threads)",
    "wait_decode": "main thread waiting for decoded images",
    "text": "text tower (its own thread when parallel)",
    "image": "image tower",
    "wait_text": "main thread waiting for the text tower",
    "fuse": "fusion + records",
    "write": "store upserts (writer thread)",
    "flush": "store flush + checkpoint writes (writer thread)",
    "finalize": "count check + HNSW/index build",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="catalogue rows to index (default 2000)")
    parser.add_argument("--batch-size", type=int, default=0, help="override [indexer].batch_size")
    parser.add_argument("--modes", default="parallel,sequential",
                        help="comma list of parallel (text+image towers in 2 threads, 1 torch thread each) "
                             "and sequential (one after the other, all torch threads)")
    parser.add_argument("--random-tower", action="store_true",
                        help="time a randomly initialised tower of [image_encoder].arch when none is trained "
                             "(the same speed; the vectors are thrown away with the temporary store)")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")


def _random_tower(cfg: Config, folder: Path) -> Path:
    from encoders.image import build_tower, save_checkpoint

    path = folder / "random_tower.pt"
    card = {"trained_on": {"catalogue": "none: random init for timing only"}, "complete": False}
    return save_checkpoint(path, build_tower(cfg.image_encoder.arch), cfg.image_encoder.arch, 1 / 0.07, card)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from encoders import image_tower_status
    from indexer.pipeline import reindex

    if args.n <= 0:
        raise BadInput("--n must be > 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"parallel", "sequential"}:
        raise BadInput("--modes takes parallel and/or sequential")
    logging.getLogger("indexer.pipeline").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="vitrina-bench-"))
    results: dict[str, Any] = {"n": args.n, "catalogue": cfg.catalogue.path, "threads": cfg.runtime.threads,
                               "modes": {}}
    try:
        if not image_tower_status(cfg).get("available"):
            if not args.random_tower:
                print("no trained image tower: timing TEXT ONLY (add --random-tower to time the image tower too)")
            else:
                cfg = cfg.replace(image_encoder={"checkpoint": str(_random_tower(cfg, tmp))})
        results["image_tower"] = image_tower_status(cfg).get("checkpoint") if image_tower_status(cfg).get(
            "available") else None
        for mode in modes:
            run_cfg = cfg.replace(data={"dir": str(tmp / mode)}, store={"backend": "edge", "alias": "bench"},
                                  indexer={"parallel_encode": mode == "parallel",
                                           **({"batch_size": args.batch_size} if args.batch_size else {})})
            reindex(run_cfg.replace(), limit=min(args.n, 256), progress=False)  # warm-up: models loaded, caches hot
            cpu0, wall0 = time.process_time(), time.perf_counter()
            summary = reindex(run_cfg, fresh=True, limit=args.n, progress=False)
            cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
            fill = summary.wall_s - summary.stages_s.get("finalize", 0.0)
            row = {"indexed": summary.indexed, "skipped": summary.skipped, "wall_s": summary.wall_s,
                   "items_per_s": summary.items_per_s,
                   "items_per_s_without_finalize": round(summary.written / max(fill, 1e-9), 1),
                   "image_vectors": summary.image_vectors, "stages_s": summary.stages_s,
                   "process_cpu_s": round(cpu_s, 2), "cpu_share": round(cpu_s / max(wall_s, 1e-9), 2),
                   "items_per_cpu_s": round(summary.written / max(cpu_s, 1e-9), 1)}
            results["modes"][mode] = row
            print(f"\n{mode}: {summary.indexed} items in {summary.wall_s:.1f}s = {summary.items_per_s:.1f} items/s "
                  f"end to end ({row['items_per_s_without_finalize']:.1f} items/s before the index build), "
                  f"image vectors: {summary.image_vectors}")
            print(f"  process CPU {cpu_s:.1f}s ({row['cpu_share']:.2f} cores busy on average): "
                  f"{row['items_per_cpu_s']:.1f} items per CPU-second, so at most "
                  f"{2 * row['items_per_cpu_s']:.0f} items/s on 2 free cores")
            for stage, secs in sorted(summary.stages_s.items(), key=lambda x: -x[1]):
                print(f"  {stage:<12} {secs:8.2f}s  {STAGES.get(stage, '')}")
        enc = encoders_only(cfg, args.n, args.batch_size)
        results["encoders_only"] = enc
        print(f"\nencoders only (decode + both towers + fusion, no store, no index build): "
              f"{enc['items']} items in {enc['wall_s']:.1f}s = {enc['items_per_s']:.1f} items/s, "
              f"{enc['cpu_share']:.2f} cores busy")
        for mode, row in results["modes"].items():
            row["x_encoders_only"] = round(row["items_per_s"] / max(enc["items_per_s"], 1e-9), 3)
            print(f"  {mode}: end to end / encoders only = {row['x_encoders_only']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


def encoders_only(cfg: Config, n: int, batch_size: int = 0) -> dict[str, Any]:
    """The first n catalogue rows through what reindex runs before the store (image decode in its threads, text
    and image towers side by side, fusion), batches overlapped as reindex does; no store, no index build."""
    import itertools

    from indexer.embed import Embedder, StageTimer, load_image_encoder
    from indexer.reader import Skipped, read_catalogue

    run_cfg = cfg.replace(indexer={"parallel_encode": True, **({"batch_size": batch_size} if batch_size else {})})
    products = [r for r in itertools.islice(read_catalogue(run_cfg), n) if not isinstance(r, Skipped)]
    size = max(1, run_cfg.indexer.batch_size)
    batches = [products[i:i + size] for i in range(0, len(products), size)]
    image_encoder, _ = load_image_encoder(run_cfg)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    items = 0
    with Embedder(run_cfg, image_encoder, StageTimer(), bulk=len(products) > 4 * size) as embedder:
        ahead = embedder.submit_images(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            current, ahead = ahead, embedder.submit_images(batches[i + 1]) if i + 1 < len(batches) else []
            records, _ = embedder.embed(batch, current)
            items += len(records)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"items": items, "wall_s": round(wall, 2), "items_per_s": round(items / max(wall, 1e-9), 1),
            "cpu_share": round(cpu / max(wall, 1e-9), 2)}
