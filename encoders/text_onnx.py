"""The text tower on ONNX Runtime with int8 weights (`precision = "int8"`), for queries: exported once from the
torch model (tuned layers included), then run with no torch at all; about half the CPU of the bf16 torch trace."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from encoders.runtime import onnx_session, package_versions
from encoders.text import text_list, whole_words_of
from vitrina.config import RuntimeConfig, TextEncoderConfig
from vitrina.errors import ModelUnavailable

log = logging.getLogger(__name__)

# MatMulNBits, 8 bits, blocks of 32 weights, int8 compute (accuracy level 4), over a graph exported with no
# attention mask (one text per run, never padded) and plain attention: 1.32 ms of CPU a dev query against 1.59 ms over
# the masked graph, the same vectors (cosine to fp32 >= 0.999 on the 460 dev and natural queries, >= 0.998 on odd
# texts). Blocks of 64 ran at 1.18 ms but cost text mode 0.07 NDCG@10 on the misspelt natural queries; 128: 1.06 ms,
# cosine 0.995 on a long repeated text; per-tensor dynamic int8 quantisation: cosine 0.91; 4 bits: 0.93.
QUANT = {"bits": 8, "block_size": 32, "accuracy_level": 4, "opset": 17, "graph": "unmasked-eager"}
MIN_COSINE = 0.995  # an export whose probe vectors fall below this against torch is refused
PROBES = ("men brown leather watch", "women black heels", "a", "kids' blue denim jacket with pockets, size 8",
          "Puma running shoes")


def export_key(source: str, cfg: TextEncoderConfig, quant: dict[str, Any] = QUANT,
               packages: tuple[str, ...] = ("torch", "onnxruntime", "onnx")) -> str:
    """What an exported file depends on: the model's files, the tuned layers file, versions and settings."""
    parts = [source, str(cfg.max_length), repr(sorted(quant.items())), package_versions(packages)]
    for f in sorted(Path(source).glob("*")) if Path(source).is_dir() else []:
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    if cfg.tuned_layers:
        st = Path(cfg.tuned_layers).stat()
        parts.append(f"tuned:{Path(cfg.tuned_layers).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_fp32(cfg: TextEncoderConfig, runtime: RuntimeConfig, out: Path, graph: str = "ids") -> Any:
    """The torch model (stock weights + tuned layers) as an fp32 ONNX graph written to `out`; returns that torch
    model's fp32 TextEncoder (the reference an export is checked against). `graph` "ids": `input_ids -> hidden`
    with no attention mask; "embeds": `(embeds, mask) -> hidden`, the word embeddings looked up by the caller and
    padding masked (encoders.text_openvino)."""
    import warnings

    import torch

    from encoders.text import TextEncoder

    fp32 = TextEncoder(dataclasses.replace(cfg, precision="fp32", jit=False),
                       dataclasses.replace(runtime, device="cpu"))
    # Texts run one at a time, never padded, so the "ids" graph needs no mask: without one the export drops about a
    # third of its nodes (the mask's broadcasting and its shape arithmetic), and plain attention keeps it a few MatMuls.
    attention = fp32._model.config._attn_implementation
    fp32._model.set_attn_implementation("eager")
    module = _hidden_module(fp32._model, graph).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    if graph == "ids":
        example, names = (ids,), ["input_ids"]
    else:
        embeds = fp32._model.embeddings.word_embeddings(ids)
        example, names = (embeds, torch.ones_like(ids)), ["embeds", "mask"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about shape branches; the probe check decides
        torch.onnx.export(module, example, str(out), dynamo=False, input_names=names, output_names=["hidden"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in (*names, "hidden")},
                          opset_version=QUANT["opset"])
    fp32._model.set_attn_implementation(attention)  # the reference encodes as the torch tower does
    return fp32


def export_int8(cfg: TextEncoderConfig, runtime: RuntimeConfig, out: Path) -> None:
    """The torch model (stock weights + tuned layers) -> ONNX -> 8-bit MatMulNBits weights, written to `out`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        plain = Path(tmp) / "fp32.onnx"
        fp32 = export_fp32(cfg, runtime, plain)
        reference = fp32.encode(list(PROBES))
        algo = DefaultWeightOnlyQuantConfig(block_size=QUANT["block_size"], is_symmetric=True,
                                            accuracy_level=QUANT["accuracy_level"], bits=QUANT["bits"])
        quantizer = MatMulNBitsQuantizer(onnx.load(str(plain)), block_size=QUANT["block_size"], is_symmetric=True,
                                         accuracy_level=QUANT["accuracy_level"], algo_config=algo)
        quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # it logs every MatMul it visits
        try:
            quantizer.process()
        finally:
            quiet.setLevel(level)
        staged = Path(tmp) / "int8.onnx"
        quantizer.model.save_model_to_file(str(staged), False)
        refuse_if_far(reference, OnnxTextEncoder.open(staged, Path(fp32.source), cfg, threads=1), MIN_COSINE,
                      f"the int8 export of {fp32.source}", "use [search].query_precision = \"bf16\"")
        os.replace(staged, out)


def refuse_if_far(reference: np.ndarray, encoder: Any, min_cosine: float, what: str, hint: str) -> None:
    """ModelUnavailable when `encoder`'s vectors of PROBES fall below `min_cosine` against `reference` (torch's)."""
    worst = float(np.min(np.sum(reference * encoder.encode(list(PROBES)), axis=1)))
    if not worst >= min_cosine:
        raise ModelUnavailable(f"{what} is too far from torch (cosine {worst:.4f} < {min_cosine})", hint)


def _hidden_module(model: Any, graph: str) -> Any:
    import torch

    if graph not in ("ids", "embeds"):
        raise ValueError(f"unknown graph {graph!r}")

    class Hidden(torch.nn.Module):
        """model(input_ids) -> last hidden state, every token attended ("ids"), or model(embeds, mask) -> the same
        from the word embeddings with padding masked ("embeds")."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, first: Any, mask: Any = None) -> Any:
            if graph == "ids":
                return self.inner(input_ids=first).last_hidden_state
            return self.inner(inputs_embeds=first, attention_mask=mask).last_hidden_state

    return Hidden(model)


class OneTextPerRun:
    """A query-side text encoder that runs one text at a time (no padding between texts): texts to (n, dim)
    L2-normalised float32 rows; `.encode` is safe to call from several threads. Subclasses set `_tokenizer`, `dim`,
    `max_length`, `source` and implement `_run(token ids) -> (dim,) unit vector`."""

    _tokenizer: Any
    dim: int
    bf16 = False

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a tokenizer object is not meant to be shared between threads
        self._whole_words: frozenset[str] | None = None

    def whole_words(self) -> frozenset[str]:
        """The words the tokenizer holds whole, as TextEncoder.whole_words (the query reading's spelling knows them)."""
        if self._whole_words is None:
            self._whole_words = whole_words_of(self._tokenizer)
        return self._whole_words

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised, in input order. Empty strings are fine."""
        items = text_list(texts)
        with self._lock:
            encodings = self._tokenizer.encode_batch(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for row, enc in enumerate(encodings):
            out[row] = self._run(enc.ids)
        return out

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError


def unit(v: np.ndarray) -> np.ndarray:
    """`v` (1-D) over its L2 norm: np.linalg.norm's own sum for a vector (`v.dot(v)`), without its ~3 us of checks."""
    return v / max(float(np.sqrt(v.dot(v))), 1e-12)


def mean_rows(hidden: np.ndarray) -> np.ndarray:
    """The mean of a 2-D array's rows, the same sum and division as `.mean(axis=0)` without its ~5 us of Python."""
    return hidden.sum(axis=0) / hidden.shape[0]


class OnnxTextEncoder(OneTextPerRun):
    """OneTextPerRun with ONNX Runtime (the session releases the GIL while the model runs)."""

    def __init__(self, session: Any, tokenizer: Any, dim: int, max_length: int, source: str) -> None:
        super().__init__()
        self._session, self._tokenizer = session, tokenizer
        self.dim, self.max_length, self.source = dim, max_length, source

    @classmethod
    def open(cls, model_file: Path, source: Path, cfg: TextEncoderConfig, threads: int) -> OnnxTextEncoder:
        from tokenizers import Tokenizer

        try:
            session = onnx_session(model_file, threads)
            tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types)
            raise ModelUnavailable(f"cannot load the int8 text model {model_file}", detail=str(e)) from e
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=cfg.max_length)
        dim = int(session.get_outputs()[0].shape[-1])
        return cls(session, tokenizer, dim, cfg.max_length, str(source))

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        hidden = self._session.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0]
        return unit(mean_rows(hidden[0]))


def exported(cfg: TextEncoderConfig, runtime: RuntimeConfig, file_name: Callable[[str], str],
             export: Callable[..., None], precision: str) -> tuple[str, Path]:
    """cfg's local model folder and the file `file_name(model folder)` names, exported there by `export` first when
    missing (torch is needed only then); ModelUnavailable without a local folder holding tokenizer.json."""
    from encoders.text import resolve_model_path

    source = resolve_model_path(cfg.model)
    if not (Path(source) / "tokenizer.json").is_file():
        raise ModelUnavailable(f"precision {precision} needs a local model folder with tokenizer.json, "
                               f"got {cfg.model!r}")
    model_file = Path(file_name(source))
    if not model_file.is_file():
        log.info("exporting the text model to %s (once)", model_file)
        export(cfg, runtime, model_file)
    return source, model_file


def create(cfg: TextEncoderConfig, runtime: RuntimeConfig, cache_dir: Path) -> OnnxTextEncoder:
    """The int8 encoder of cfg's model, exported into cache_dir on first use (torch is needed only then)."""
    t0 = time.perf_counter()
    source, model_file = exported(cfg, runtime,
                                  lambda src: str(Path(cache_dir) / f"text-int8-{export_key(src, cfg)}.onnx"),
                                  export_int8, "int8")
    encoder = OnnxTextEncoder.open(model_file, Path(source), cfg, runtime.threads or 1)
    log.info("text encoder %s as int8 ONNX (%s) loaded in %.1fs", source, model_file.name, time.perf_counter() - t0)
    return encoder
