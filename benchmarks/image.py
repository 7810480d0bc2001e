"""Image-tower throughput as the indexer runs it: photos per CPU-second on catalogue photos for each runtime of the
tower (torch, bf16 where the CPU has it; ONNX Runtime fp32; ONNX Runtime in 8 bits, [indexer].image_int8), with the mirror view of [indexer].mirror_view, and
what decoding a photo costs beside it. The indexer's tower runs in one thread of its own (indexer.embed.tower_runtime
on 2 cores), so that is the default here."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from vitrina.config import Config
from vitrina.errors import BadInput

RUNTIMES = ("torch", "onnx", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1024, help="catalogue photos to encode (default 1024)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated: torch, onnx, int8 (default all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the tower (default 1, as the indexer)")
    parser.add_argument("--batch-size", type=int, default=0, help="photos a batch (default [image_encoder].batch_size)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per runtime; the best counts")
    parser.add_argument("--json-out", help="write the figures as JSON here")


def _runtimes(text: str) -> list[str]:
    names = [r.strip() for r in text.split(",") if r.strip()]
    if not names or any(r not in RUNTIMES for r in names):
        raise BadInput(f"--runtimes takes {', '.join(RUNTIMES)}, got {text!r}")
    return names


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Encode the same photos with each runtime; print photos/s, photos per CPU-second and the cosine to the first
    runtime's vectors; 0 on success."""
    import numpy as np

    from encoders import create_image_encoder, image_tower_status
    from indexer.embed import eight_bit_tower, index_side
    from indexer.reader import Product, image_base, read_catalogue
    from vitrina.images import load_image

    runtimes = _runtimes(args.runtimes)
    status = image_tower_status(cfg)
    if not status.get("available"):
        raise BadInput(f"no trained image tower to measure: {status.get('reason') or 'none configured'}")
    side = index_side(cfg).replace(runtime={"threads": max(1, args.threads)})
    if args.batch_size > 0:
        side = side.replace(image_encoder={"batch_size": args.batch_size})
    sources = [p.image for p in read_catalogue(cfg) if isinstance(p, Product) and p.image]
    sources = sources[:max(1, args.n)]
    if not sources:
        raise BadInput("no photos to encode (no catalogue rows with an image)")
    base = image_base(cfg)
    print(f"{len(sources)} photos; tower {status.get('checkpoint') or cfg.image_encoder.checkpoint}, "
          f"{args.threads} thread(s), mirror view {'on' if side.image_encoder.flip_average else 'off'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict[str, Any]] = []
    reference, pixels, decode_ms = None, None, 0.0
    for runtime in runtimes:
        if runtime == "int8":  # the torch tower quantised as the indexer does (calibrated once, then cached)
            tower = create_image_encoder(side)
            encoder = eight_bit_tower(side.replace(indexer={"image_int8": True}), tower)
            if encoder is tower:  # it fell back to the torch tower
                raise BadInput("the 8-bit image tower could not be made here (see the warning above)")
        else:
            encoder = create_image_encoder(side.replace(image_encoder={"runtime": runtime}))
        if pixels is None:  # every runtime reads the same pixels (PhotoEncoder.pixels): decoded once
            c0 = time.process_time()
            pixels = np.stack([encoder.pixels(load_image(s, base, cfg.indexer, fit=encoder.decode_size))
                               for s in sources])
            decode_ms = 1000.0 * (time.process_time() - c0) / len(sources)
        encoder.encode_pixels(pixels[:encoder.batch_size])  # warm-up
        best, vectors = (float("inf"), float("inf")), None
        for _ in range(max(1, args.repeats)):
            t0, c0 = time.perf_counter(), time.process_time()
            vectors = encoder.encode_pixels(pixels)
            best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
        row: dict[str, Any] = {"runtime": runtime, "bf16": encoder.bf16 and runtime == "torch",
                               "photos_per_s": round(len(sources) / best[0], 1),
                               "photos_per_cpu_s": round(len(sources) / max(best[1], 1e-9), 1),
                               "load_avg": round(os.getloadavg()[0], 2)}
        if reference is None:
            reference = vectors
        else:
            c = np.sum(np.asarray(vectors) * reference, axis=1)
            row[f"cos_vs_{runtimes[0]}_min"] = round(float(c.min()), 6)
        rows.append(row)
        extra = "".join(f"  cos vs {runtimes[0]} min {v:.6f}" for k, v in row.items() if k.startswith("cos_vs"))
        print(f"{runtime:>5}{' bf16' if row['bf16'] else ''}: {row['photos_per_s']:>7.1f} photos/s  "
              f"{row['photos_per_cpu_s']:>7.1f} photos/cpu-s  (load {row['load_avg']:.1f}){extra}", flush=True)
    print(f"decode + resize: {decode_ms:.2f} ms CPU a photo", flush=True)
    if args.json_out:
        out = {"n": len(sources), "threads": args.threads, "cpu_count": os.cpu_count(), "decode_cpu_ms":
               round(decode_ms, 3), "rows": rows}
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0
