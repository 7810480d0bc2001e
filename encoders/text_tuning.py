"""The text side of tower training: locked (LiT) or its last transformer layers lightly tuned.

With `[finetune].text_layers` = 0 the tower trains against the locked text tower's cached embeddings
(`LockedText`). With n > 0, `TunedTextLayers` runs the text tower's first layers once over every training text
(their outputs cached) and only the last n layers, then mean pooling, per batch, so they learn with the image
tower; `vitrina finetune` writes them beside the tower (`<output>.text.pt`) and `[text_encoder].tuned_layers`
puts them into the text encoder for indexing and queries. `python -m evaluation.experiments.text_tuning` compares the two.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vitrina.errors import ModelUnavailable

log = logging.getLogger(__name__)

TEXT_LAYERS_FORMAT = "vitrina-text-layers"


def text_layers_path(tower_output: str | os.PathLike[str]) -> Path:
    """Where `vitrina finetune` writes the tuned text layers beside a tower: models/x.pt -> models/x.text.pt."""
    p = Path(tower_output)
    return p.with_name(p.stem + ".text.pt")


def save_text_layers(path: str | os.PathLike[str], state: Mapping[str, Any], model: str, total_layers: int,
                     card: Mapping[str, Any]) -> Path:
    """Write the tuned last layers (a state dict over layers 0..n-1 of the slice, stored fp16) atomically."""
    import torch

    n = 1 + max(int(k.split(".", 1)[0]) for k in state)
    blob = {"format": TEXT_LAYERS_FORMAT, "version": 1, "model": model, "layers": n, "total_layers": total_layers,
            "state": {k: v.detach().to("cpu", torch.float16) for k, v in state.items()}, "card": dict(card)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_text_layers(path: str | os.PathLike[str]) -> dict[str, Any]:
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise ModelUnavailable(f"cannot read tuned text layers {path}", detail=str(e)) from e
    if not isinstance(blob, dict) or blob.get("format") != TEXT_LAYERS_FORMAT:
        raise ModelUnavailable(f"{path} is not a {TEXT_LAYERS_FORMAT} file (made by vitrina finetune --text-layers)")
    return blob


def apply_text_layers(model: Any, blob: Mapping[str, Any]) -> None:
    """Put the tuned weights into the model's last layers (in place); ModelUnavailable if they do not fit."""
    import torch

    blocks = model.encoder.layer
    n = int(blob["layers"])
    if int(blob["total_layers"]) != len(blocks) or not 1 <= n <= len(blocks):
        raise ModelUnavailable(f"tuned text layers are for a {blob['total_layers']}-layer model, "
                               f"this one has {len(blocks)}")
    tail = torch.nn.ModuleList(blocks[len(blocks) - n:])
    dtype = next(tail.parameters()).dtype
    try:
        tail.load_state_dict({k: v.to(dtype) for k, v in blob["state"].items()}, strict=True)
    except RuntimeError as e:
        raise ModelUnavailable("tuned text layers do not fit the text model", detail=str(e)) from e


class LockedText:
    """The locked text tower: every row's cached embedding, nothing to learn."""

    def __init__(self, text_emb: np.ndarray, device: Any) -> None:
        import torch

        self._emb = text_emb
        self._rows = torch.from_numpy(text_emb).to(device)

    def parameters(self) -> list[Any]:
        return []

    def rows(self, idx: np.ndarray) -> Any:
        """(len(idx), d) L2-normalised tensor of those rows' text vectors (no gradient)."""
        return self._rows[idx]

    def embed(self, idx: np.ndarray) -> np.ndarray:
        return self._emb[idx]

    def train(self, mode: bool = True) -> None:
        """Nothing to switch: the locked tower has no dropout in play."""


class TunedTextLayers:
    """The text tower's last `layers` transformer layers, trainable, over cached inputs to the first of them.

    texts: the distinct training texts; rows map to them through `text_ids` (rows with one text share it).
    start: a tuned-layers file's contents to go on from (encoders.text_tuning.load_text_layers).
    """

    def __init__(self, model_source: str, texts: Sequence[str], text_ids: np.ndarray, layers: int, device: Any,
                 max_length: int = 128, bf16: bool = True, batch: int = 256,
                 start: Mapping[str, Any] | None = None) -> None:
        import torch

        from encoders.runtime import autocast
        from encoders.text import _load

        tokenizer, model = _load(model_source)
        blocks = model.encoder.layer
        if not 1 <= layers <= len(blocks):
            raise ValueError(f"layers must be 1..{len(blocks)}, got {layers}")
        if start is not None:  # go on from layers tuned before (no more of them than are tuned now)
            if int(start["layers"]) > layers:
                raise ValueError(f"the text tower was tuned in its last {start['layers']} layers; tune at least "
                                 f"as many now (got {layers})")
            apply_text_layers(model, start)
        self.total_layers = len(blocks)
        self.model_source = model_source
        self.layers = torch.nn.ModuleList(blocks[len(blocks) - layers:]).to(device)
        self.start_state = {k: v.detach().clone() for k, v in self.layers.state_dict().items()}
        self.text_ids = torch.from_numpy(np.asarray(text_ids, dtype=np.int64))
        self.device, self.bf16 = device, bf16
        ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        self.lengths = torch.tensor([len(x) for x in ids])
        width = int(self.lengths.max())
        self.hidden = torch.zeros(len(ids), width, model.config.hidden_size, dtype=torch.bfloat16)
        first = len(blocks) - layers  # hidden_states[first] is the input to the first tuned layer
        model = model.to(device).eval()
        pad = int(tokenizer.pad_token_id or 0)
        order = np.argsort([len(x) for x in ids], kind="stable")
        with torch.inference_mode():
            for at in range(0, len(ids), batch):
                rows = order[at:at + batch]
                w = max(len(ids[r]) for r in rows)
                inp = torch.full((len(rows), w), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), w), dtype=torch.long)
                for j, r in enumerate(rows):
                    inp[j, :len(ids[r])] = torch.tensor(ids[r])
                    mask[j, :len(ids[r])] = 1
                with autocast(device, bf16):
                    out = model(input_ids=inp.to(device), attention_mask=mask.to(device), output_hidden_states=True)
                self.hidden[torch.from_numpy(rows), :w] = out.hidden_states[first].to("cpu", torch.bfloat16)
        log.info("text tuning: cached layer-%d inputs of %d texts (%d tokens wide, %.0f MB); tuning %d layer(s)",
                 first, len(ids), width, self.hidden.numel() * 2 / 2**20, layers)

    def parameters(self) -> list[Any]:
        return list(self.layers.parameters())

    def train(self, mode: bool = True) -> None:
        self.layers.train(mode)

    def _forward(self, idx: np.ndarray) -> Any:
        import torch

        from encoders.runtime import autocast

        u = self.text_ids[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        lengths = self.lengths[u]
        w = int(lengths.max())
        h = self.hidden[u, :w].to(self.device).float()
        keep = (torch.arange(w)[None, :] < lengths[:, None]).to(self.device)
        additive = torch.zeros(keep.shape, device=self.device).masked_fill(~keep, torch.finfo(torch.float32).min)
        additive = additive[:, None, None, :]  # (b, 1, 1, w): added to every head's attention scores
        with autocast(self.device, self.bf16):
            for layer in self.layers:
                out = layer(h, attention_mask=additive)
                h = out[0] if isinstance(out, tuple) else out
        m = keep[..., None].float()
        pooled = (h.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def rows(self, idx: np.ndarray) -> Any:
        """(len(idx), d) text vectors of those rows, with gradients into the tuned layers."""
        return self._forward(idx)

    def embed(self, idx: np.ndarray, batch: int = 1024) -> np.ndarray:
        import torch

        was = self.layers.training
        self.layers.eval()
        with torch.inference_mode():
            out = [self._forward(idx[s:s + batch]).cpu().numpy() for s in range(0, len(idx), batch)]
        self.layers.train(was)
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
