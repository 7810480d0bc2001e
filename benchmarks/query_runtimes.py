"""The query encoder's runtimes side by side: CPU ms per query by token count and on distinct dev queries (with extra
words, as `vitrina bench http` sends them), one text a run on one thread, as a search worker encodes a query.

    vitrina bench query_runtimes [--lengths 4,6,8,12,16,32] [--queries 600] [--repeats 3] [--openvino auto|on|off]

Rows:
- `onnxruntime int8`: the query encoder of [search].query_precision = "int8" (encoders/text_onnx.py), its session.
- `openvino ov-int8 (shipped)`: the query encoder of "ov-int8" (encoders/text_openvino.py) as the service runs it:
  8-bit weights, a query padded to the next bucket of token counts, one model compiled per bucket used.
- `openvino ... dynamic` / `... static per length` (`--openvino`, on where OpenVINO is installed): the "ids" export
  (word embeddings inside) with the same 8-bit weights, compiled once with a dynamic token axis, or once per exact
  token count (the RSS those models add is printed): what led to the shipped layout.

Cosines are to the torch fp32 tower on the same queries (the shipped export's floor is 0.995). Throwaway measurement:
nothing here changes what the service runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vitrina.config import Config
from vitrina.errors import BadInput

CLS, SEP = 101, 102


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError("token counts are at least 2 ([CLS] and [SEP])")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=_ints, default=[4, 6, 8, 12, 16, 32],
                        help="token counts to time, [CLS] and [SEP] included (default 4,6,8,12,16,32)")
    parser.add_argument("--queries", type=int, default=600,
                        help="distinct queries made from queries_dev.csv beside the catalogue (default 600)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (default 3)")
    parser.add_argument("--runs", type=int, default=300, help="runs per token count a pass (default 300)")
    parser.add_argument("--openvino", choices=("auto", "on", "off"), default="auto",
                        help="also time OpenVINO: auto = when installed (default)")
    parser.add_argument("--group", type=int, default=64,
                        help="OpenVINO's activation quantisation group (DYNAMIC_QUANTIZATION_GROUP_SIZE, default 64)")
    parser.add_argument("--json-out", help="write the rows as JSON here")


def _best_ms(run: Callable[[np.ndarray], Any], inputs: Sequence[np.ndarray], repeats: int) -> float:
    for x in inputs[:20]:
        run(x)
    best = float("inf")
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        for x in inputs:
            run(x)
        best = min(best, 1000.0 * (time.process_time() - c0) / len(inputs))
    return best


def _pooled(hidden: np.ndarray) -> np.ndarray:
    from encoders.text_onnx import unit

    return unit(hidden[0].mean(axis=0))


def _rss_mib() -> float:
    from benchmarks.http_load import process_rss_mb

    return process_rss_mb(os.getpid()) or 0.0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from benchmarks.http_inputs import distinct_queries, read_queries
    from encoders import query_side
    from encoders.text_onnx import create, export_fp32

    use_ov = args.openvino == "on" or (args.openvino == "auto" and importlib.util.find_spec("openvino") is not None)
    if args.openvino == "on" and importlib.util.find_spec("openvino") is None:
        raise BadInput("--openvino on needs the openvino package", "pip install openvino, or --openvino auto")
    dev = Path(cfg.catalogue.path).parent / "queries_dev.csv"
    if not dev.is_file():
        raise BadInput(f"no dev queries at {dev}")
    texts = distinct_queries(read_queries(dev, 0), max(1, args.queries), seed=0)
    q = query_side(cfg)
    shipped = create(q.text_encoder, dataclasses.replace(q.runtime, threads=1), cfg.data_dir / "models")
    tokenizer = shipped._tokenizer
    inputs = [np.asarray([e.ids], dtype=np.int64) for e in tokenizer.encode_batch(texts)]
    rng = np.random.default_rng(0)
    synthetic = {n: [np.asarray([[CLS, *rng.integers(2000, 29000, n - 2), SEP]], dtype=np.int64)
                     for _ in range(max(1, args.runs))] for n in args.lengths}
    tokens = [x.shape[1] for x in inputs]
    print(f"{len(texts)} distinct queries from {dev}: tokens per query mean {statistics.mean(tokens):.1f}, "
          f"median {statistics.median(tokens):.0f}, max {max(tokens)}; one thread; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "fp32.onnx"
        reference = export_fp32(q.text_encoder, q.runtime, plain)
        ref = reference.encode(texts)
        del reference
        gc.collect()

        def add(name: str, infer: Callable[[np.ndarray], np.ndarray], per_length: Callable[[int], Any] | None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
            got = np.stack([_pooled(infer(x)) for x in inputs])
            cos = np.sum(ref * got, axis=1)
            row: dict[str, Any] = {"runtime": name, "dev_ms": round(_best_ms(infer, inputs, args.repeats), 3),
                                   "cos_min": round(float(cos.min()), 5),
                                   "cos_p1": round(float(np.percentile(cos, 1)), 5)}
            for n in args.lengths:
                fn = per_length(n) if per_length is not None else infer
                row[f"ms_at_{n}"] = round(_best_ms(fn, synthetic[n], args.repeats), 3)
            row.update(extra or {})
            rows.append(row)
            print(f"  {name:34s} dev {row['dev_ms']:.3f} ms  cos min {row['cos_min']:.4f}  by tokens: "
                  + "  ".join(f"{n}: {row[f'ms_at_{n}']:.3f}" for n in args.lengths)
                  + (f"  {extra}" if extra else ""), flush=True)
            return row

        session = shipped._session
        add("onnxruntime int8", lambda x: session.run(None, {"input_ids": x})[0], None)
        if use_ov:
            from encoders.text_openvino import create as create_ov

            ov8 = create_ov(q.text_encoder, dataclasses.replace(q.runtime, threads=1), cfg.data_dir / "models")
            add("openvino ov-int8 (shipped)", lambda x: ov8.encode_ids(x[0])[None, None, :], None)
            _openvino_rows(plain, Path(tmp), args, add)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"queries": len(texts), "rows": rows}, indent=2))
    return 0


def _openvino_rows(plain: Path, tmp: Path, args: argparse.Namespace, add: Callable[..., None]) -> None:
    from encoders.text_openvino import openvino, weights_to_u8

    ov = openvino()

    u8 = tmp / "u8.onnx"
    weights_to_u8(plain, u8)
    core = ov.Core()
    ir = tmp / "u8.xml"
    ov.save_model(core.read_model(str(u8)), str(ir), compress_to_fp16=False)
    settings = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                "DYNAMIC_QUANTIZATION_GROUP_SIZE": args.group}
    before = _rss_mib()
    request = core.compile_model(core.read_model(str(ir)), "CPU", settings).create_infer_request()
    request.infer({0: np.asarray([[CLS, 2023, SEP]], dtype=np.int64)})
    dynamic_mib = _rss_mib() - before
    add(f"openvino u8 g{args.group} dynamic", lambda x: request.infer({0: x})[0], None,
        {"rss_added_mib": round(dynamic_mib)})
    static: dict[int, Any] = {}

    def compiled(n: int) -> Any:
        if n not in static:
            model = core.read_model(str(ir))
            model.reshape({0: [1, n]})
            static[n] = core.compile_model(model, "CPU", settings).create_infer_request()
        return static[n]

    before = _rss_mib()
    row = add(f"openvino u8 g{args.group} static per length", lambda x: compiled(x.shape[1]).infer({0: x})[0],
              lambda n: (lambda x: compiled(n).infer({0: x})[0]))
    row.update(static_models=len(static), rss_added_mib=round(_rss_mib() - before))
    print(f"  static: {len(static)} compiled models added {row['rss_added_mib']} MiB RSS "
          f"({row['rss_added_mib'] / max(1, len(static)):.0f} MiB each)", flush=True)
