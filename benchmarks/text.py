"""Text-encoder throughput benchmark: texts/s on real catalogue texts for fp32 vs bf16 (torch) and int8 (ONNX Runtime,
one text at a time, as queries run), batch sizes, max_length."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from vitrina.config import Config
from vitrina.errors import BadInput


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=3000, help="catalogue texts to encode (default 3000)")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated: fp32, bf16, int8 (ONNX Runtime; batch size does not apply) "
                             "(default fp32,bf16)")
    parser.add_argument("--batch-sizes", type=_ints, default=[32, 128], help="comma-separated (default 32,128)")
    parser.add_argument("--max-lengths", type=_ints, default=[32, 64], help="comma-separated (default 32,64)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per setting; the best counts")
    parser.add_argument("--catalogue", help="catalogue file (default [catalogue].path)")
    parser.add_argument("--queries", type=int, default=200,
                        help="then encode this many texts one at a time, as the service does a query, with 1 "
                             "thread: CPU ms per query for fp32, bf16 and bf16 traced (0 = skip; default 200)")
    parser.add_argument("--json-out", help="write the rows as JSON here")


def catalogue_texts(cfg: Config, n: int, path: str | None = None) -> list[str]:
    """The first n texts exactly as the indexer composes them ([catalogue].text_fields)."""
    try:
        from indexer.reader import Product, read_catalogue
    except ImportError:  # indexer not part of this build: join the fields plainly
        file = Path(path or cfg.catalogue.path)
        if not file.is_file():
            raise BadInput(f"catalogue file not found: {file}") from None
        with file.open(newline="", encoding="utf-8") as f:
            rows = [r for _, r in zip(range(n), csv.DictReader(f))]
        return [", ".join(str(r.get(k) or "") for k in cfg.catalogue.text_fields if r.get(k)) for r in rows]
    texts: list[str] = []
    for item in read_catalogue(cfg, path):
        if isinstance(item, Product):
            texts.append(item.text)
            if len(texts) >= n:
                break
    return texts


def _measure(encoder: Any, texts: list[str], batch_size: int, repeats: int) -> tuple[float, float, Any]:
    """Best wall seconds, the CPU seconds of that pass (all threads), and the vectors."""
    encoder.encode(texts[: min(len(texts), 2 * batch_size)], batch_size=batch_size)  # warm-up
    best, vectors = (float("inf"), float("inf")), None
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        vectors = encoder.encode(texts, batch_size=batch_size)
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best[0], best[1], vectors


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Encode the same texts under every setting; print texts/s and bf16-vs-fp32 cosine; 0 on success."""
    import numpy as np

    from encoders.runtime import bf16_supported, resolve_device
    from encoders.text import TextEncoder

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16", "int8") for p in precisions):
        raise BadInput(f"--precisions takes fp32, bf16 and/or int8, got {args.precisions!r}")
    runtime = dataclasses.replace(cfg.runtime, threads=args.threads)
    device = resolve_device(runtime)
    texts = catalogue_texts(cfg, args.n, args.catalogue)
    if not texts:
        raise BadInput("no texts to encode (empty catalogue?)")
    print(f"{len(texts)} texts from {args.catalogue or cfg.catalogue.path}; device {device}, threads {args.threads}, "
          f"native bf16: {bf16_supported(device)}", flush=True)
    print(f"example: {texts[0]!r}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict[str, Any]] = []
    reference: dict[int, Any] = {}
    for max_length in args.max_lengths:
        for precision in precisions:
            tc = dataclasses.replace(cfg.text_encoder, max_length=max_length, precision=precision)
            if precision == "int8":
                from encoders.text_onnx import create

                encoder = create(tc, runtime, cfg.data_dir / "models")
            else:
                encoder = TextEncoder(tc, runtime)
            if precision == precisions[0] and precision != "int8":
                lengths = [len(x) for x in encoder._tokenizer(texts, truncation=False)["input_ids"]]
                cut = sum(length > max_length for length in lengths)
                print(f"tokens per text: mean {statistics.mean(lengths):.1f}, max {max(lengths)}; "
                      f"{cut} of {len(texts)} cut at max_length {max_length}", flush=True)
            if precision == "bf16" and not encoder.bf16:
                print("bf16 requested but not supported on this device: skipped")
                continue
            for batch_size in args.batch_sizes if precision != "int8" else [1]:  # int8: one text a call
                seconds, cpu, vectors = _measure(encoder, texts, batch_size, args.repeats)
                row: dict[str, Any] = {"precision": precision, "max_length": max_length, "batch_size": batch_size,
                                       "texts_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 3),
                                       "texts_per_cpu_s": round(len(texts) / max(cpu, 1e-9), 1),
                                       "load_avg": round(os.getloadavg()[0], 2)}
                if precision == "fp32":
                    reference.setdefault(max_length, vectors)
                elif max_length in reference:
                    c = (np.asarray(vectors) * reference[max_length]).sum(axis=1)
                    row["cos_vs_fp32_min"], row["cos_vs_fp32_mean"] = round(float(c.min()), 6), round(float(c.mean()), 6)
                rows.append(row)
                extra = f"  cos vs fp32 min {row['cos_vs_fp32_min']:.6f}" if "cos_vs_fp32_min" in row else ""
                print(f"{precision:>5} max_length {max_length:>3} batch {batch_size:>4}: "
                      f"{row['texts_per_s']:>8.1f} texts/s  {row['texts_per_cpu_s']:>7.1f} texts/cpu-s  "
                      f"(load {row['load_avg']:.1f}){extra}", flush=True)
    queries = _per_query(cfg, texts[:args.queries]) if args.queries > 0 else []
    if args.json_out:
        out = {"n": len(texts), "threads": args.threads, "device": str(device), "cpu_count": os.cpu_count(),
               "rows": rows, "per_query": queries}
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def _per_query(cfg: Config, texts: list[str]) -> list[dict[str, Any]]:
    """CPU ms per text encoded alone (batch of one, 1 thread: how the service embeds a query), per setting."""
    from encoders.text import TextEncoder

    runtime = dataclasses.replace(cfg.runtime, threads=1)
    out = []
    for precision, jit in (("fp32", False), ("bf16", False), ("bf16", True)):
        encoder = TextEncoder(dataclasses.replace(cfg.text_encoder, precision=precision, jit=jit), runtime)
        for t in texts[:20]:
            encoder.encode([t])
        c0 = time.process_time()
        for t in texts:
            encoder.encode([t])
        ms = 1000.0 * (time.process_time() - c0) / len(texts)
        out.append({"precision": precision, "jit": jit, "cpu_ms_per_query": round(ms, 2),
                    "load_avg": round(os.getloadavg()[0], 2)})
        print(f"one at a time, 1 thread, {precision} {'traced' if jit else 'eager '}: {ms:6.2f} ms CPU per text "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out
