"""The text tower on OpenVINO with 8-bit weights (`precision = "ov-int8"`), for queries: exported once from the torch
model (tuned layers included), then run with neither torch nor ONNX Runtime.

Why another runtime: ONNX Runtime's 8-bit kernels (encoders/text_onnx.py) cost ~0.18 ms of CPU for every token of a
query, OpenVINO's ~0.05 ms once a model is compiled for a fixed token count (`vitrina bench query_runtimes`). So the
graph takes the word embeddings and a padding mask: the embeddings are looked up here (a memory-mapped table the
worker processes share), a query is padded to the next of a few token counts (BUCKETS), and each count used gets
its own compiled model (~24 MB of a worker each, compiled on first use, ~0.2 s). The weights are 8-bit per output
channel; activations are quantised at run time in groups of QUANT["group"] values by OpenVINO's CPU plugin.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders.text_onnx import (MIN_COSINE, PROBES, OneTextPerRun, export_fp32, export_key, exported, mean_rows,
                                refuse_if_far, unit)
from vitrina.config import RuntimeConfig, TextEncoderConfig
from vitrina.errors import ModelUnavailable

log = logging.getLogger(__name__)

QUANT = {"weights": "u8-per-channel", "group": 64, "opset": 17, "graph": "embeds-masked"}
PACKAGES = ("torch", "onnx", "openvino")  # whose versions name an export
# token counts a text is padded to, each used one compiled once (~24 MB a worker): 12 spares the 9-12 token queries
# (a fifth of `vitrina bench http`'s) the 16-token model's cost
BUCKETS = (8, 12, 16, 32, 64, 128, 256, 512)


def openvino() -> Any:
    """The openvino module, imported without its usage telemetry. Left alone, `import openvino` imports its model
    converter, which (consent defaulting to yes) forks a process that sends an "import" event to Google Analytics:
    no search server should call out, and this one has no network. A missing openvino_telemetry is what the
    converter expects (it then uses its own stub)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  (None: importing it fails)
    import openvino as ov

    return ov


def weights_to_u8(src: Path, dst: Path) -> int:
    """Every MatMul with a constant 2-D weight in `src` gets uint8 weights (per output column, symmetric around the
    zero point 128) behind a DequantizeLinear, the pattern OpenVINO runs as a compressed FullyConnected; returns how
    many. The word embeddings are not in the "embeds" graph, so this is every weight that matters."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if name in weights and len(weights[name].dims) == 2:
            w = numpy_helper.to_array(weights[name])
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            q = (np.clip(np.round(w / scale), -127, 127) + 128).astype(np.uint8)
            graph.initializer.remove(weights.pop(name))
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_u8"),
                                      numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                                      numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), f"{name}_zero")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_u8", f"{name}_scale", f"{name}_zero"],
                                          [f"{name}_w"], axis=1))
            node.input[1] = f"{name}_w"
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return count


def export_ov(cfg: TextEncoderConfig, runtime: RuntimeConfig, out: Path) -> None:
    """torch -> ONNX ("embeds" graph) -> 8-bit weights -> OpenVINO IR `out` (.xml + .bin) and the word embeddings
    beside it (.npy), checked against torch on PROBES; the .xml is written last (its presence means complete)."""
    ov = openvino()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        plain, u8 = Path(tmp) / "fp32.onnx", Path(tmp) / "u8.onnx"
        fp32 = export_fp32(cfg, runtime, plain, graph="embeds")
        reference = fp32.encode(list(PROBES))
        np.save(Path(tmp) / "embeddings.npy", fp32._model.embeddings.word_embeddings.weight.detach().float().numpy())
        weights_to_u8(plain, u8)
        staged = Path(tmp) / "model.xml"
        ov.save_model(ov.Core().read_model(str(u8)), str(staged), compress_to_fp16=False)
        staged_encoder = OpenVinoTextEncoder.open(staged, Path(tmp) / "embeddings.npy", Path(fp32.source), cfg,
                                                  threads=1)
        refuse_if_far(reference, staged_encoder, MIN_COSINE, f"the OpenVINO export of {fp32.source}",
                      "use [search].query_precision = \"int8\"")
        os.replace(Path(tmp) / "embeddings.npy", out.with_suffix(".npy"))
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)


class OpenVinoTextEncoder(OneTextPerRun):
    """OneTextPerRun with OpenVINO, each text padded to the next of BUCKETS (one run at a time; the GIL is
    released while the model runs)."""

    def __init__(self, core: Any, model_file: Path, embeddings: np.ndarray, tokenizer: Any, max_length: int,
                 source: str, threads: int) -> None:
        super().__init__()
        self._core, self._model_file, self._embeddings, self._tokenizer = core, model_file, embeddings, tokenizer
        self.dim, self.max_length, self.source = int(embeddings.shape[1]), max_length, source
        self._settings = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY",
                          "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": QUANT["group"],
                          "ENABLE_CPU_PINNING": False}
        self._requests: dict[int, Any] = {}
        self._run_lock = threading.Lock()  # one request per bucket: a run at a time
        self.buckets = tuple(b for b in BUCKETS if b < max_length) + (max_length,)

    @classmethod
    def open(cls, model_file: Path, embeddings_file: Path, source: Path, cfg: TextEncoderConfig,
             threads: int) -> OpenVinoTextEncoder:
        from tokenizers import Tokenizer

        ov = openvino()
        try:
            core = ov.Core()
            # page cache shared by the workers; a plain ndarray view of the map (np.memmap indexes in Python)
            embeddings = np.asarray(np.load(str(embeddings_file), mmap_mode="r"))
            tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 (openvino raises its own exception types)
            raise ModelUnavailable(f"cannot load the OpenVINO text model {model_file}", detail=str(e)) from e
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=cfg.max_length)
        encoder = cls(core, model_file, embeddings, tokenizer, cfg.max_length, str(source), threads)
        # The three smallest buckets are compiled now (failing here if they cannot): most queries take one of them, so
        # no shopper's search waits ~0.2 s for a compile.
        for bucket in encoder.buckets[:3]:
            encoder._request(bucket)
        return encoder

    def _request(self, bucket: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """The infer request of the model compiled for `bucket` tokens (compiled on first use) and writable views
        of its two input tensors: a run writes the query into them in place and passes no inputs, which skips
        OpenVINO's Python input handling (~0.1 ms a call)."""
        entry = self._requests.get(bucket)
        if entry is None:
            t0 = time.perf_counter()
            try:
                model = self._core.read_model(str(self._model_file))
                model.reshape({"embeds": [1, bucket, self.dim], "mask": [1, bucket]})
                request = self._core.compile_model(model, "CPU", self._settings).create_infer_request()
                embeds, mask = request.get_tensor("embeds").data, request.get_tensor("mask").data
            except Exception as e:  # noqa: BLE001
                raise ModelUnavailable(f"cannot compile the OpenVINO text model for {bucket} tokens",
                                       detail=str(e)) from e
            entry = self._requests[bucket] = (request, embeds, mask)
            log.info("OpenVINO text model compiled for %d tokens in %.2fs", bucket, time.perf_counter() - t0)
        return entry

    def encode_ids(self, ids: Sequence[int]) -> np.ndarray:
        """The (dim,) vector of one tokenised text ([CLS] ... [SEP]), as `encode` runs it."""
        return self._run(ids)

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        n = len(ids)
        with self._run_lock:
            request, embeds, mask = self._request(next(b for b in self.buckets if b >= n))
            embeds[0, :n] = self._embeddings[ids]
            embeds[0, n:] = 0.0
            mask[0, :n] = 1
            mask[0, n:] = 0
            request.infer()
            return unit(mean_rows(request.get_output_tensor(0).data[0, :n]))


def create(cfg: TextEncoderConfig, runtime: RuntimeConfig, cache_dir: Path) -> OpenVinoTextEncoder:
    """The OpenVINO encoder of cfg's model, exported into cache_dir on first use (torch is needed only then)."""
    openvino()  # ImportError here: the caller falls back to ONNX Runtime

    def file_name(source: str) -> str:
        return str(Path(cache_dir) / f"text-ov-{export_key(source, cfg, QUANT, PACKAGES)}.xml")

    t0 = time.perf_counter()
    source, model_file = exported(cfg, runtime, file_name, export_ov, "ov-int8")
    encoder = OpenVinoTextEncoder.open(model_file, model_file.with_suffix(".npy"), Path(source), cfg,
                                       runtime.threads or 1)
    log.info("text encoder %s on OpenVINO (%s) loaded in %.1fs", source, model_file.name, time.perf_counter() - t0)
    return encoder
