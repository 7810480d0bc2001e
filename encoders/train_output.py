"""What a training run leaves behind: its resumable state, the label head's parameters, and the best tower
so far with its model card."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders.image import file_sha256, save_checkpoint
from encoders.text_tuning import save_text_layers, text_layers_path
from encoders.train_data import TrainingData
from encoders.train_objectives import METRIC_KEYS

log = logging.getLogger(__name__)


def augmentation_card(settings: Any) -> dict[str, Any]:
    """What the training views were, for the model card."""
    from encoders.augment import settings_for

    if settings.augment == "strong":
        return {"views": "two views per photo: the first mild (random resized crop, mirror) with chance `mild`, "
                         "else strong; the second strong (product masked from the near-white border, warped, pasted "
                         "on a flat / gradient / noise / striped / other-photo background, then light, colour, "
                         "shading, greyscale, blur, noise, low-resolution round trip)",
                "strong": dataclasses.asdict(settings_for(settings.view_zoom_out, settings.view_background)),
                "mild_crop_scale_min": settings.crop_scale_min}
    return {"views": "one view: random resized crop and mirror", "crop_scale_min": settings.crop_scale_min,
            "erase": settings.erase}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def init_head(data: TrainingData, device: Any, start: dict[str, Any] | None = None,
              fields: Sequence[str] = ()) -> tuple[Any, Any] | None:
    """The label head's parameters: class prototypes and a learnable log temperature. A class the start
    checkpoint's head (same label fields) already knows keeps its learned prototype and the head its scale;
    any other class starts at the mean frozen text embedding of its train items (in the shared space)."""
    import torch

    if not data.classes:
        return None
    dim = data.text_emb.shape[1]
    protos = np.zeros((len(data.classes), dim), dtype=np.float32)
    train_labels = data.labels[data.tr_idx]
    np.add.at(protos, train_labels[train_labels >= 0], data.text_emb[data.tr_idx][train_labels >= 0])
    scale = 20.0
    if start and list(start["fields"]) == list(fields) and start["prototypes"].shape[1] == dim:
        known = {tuple(c): i for i, c in enumerate(start["classes"])}
        learned = start["prototypes"].float().numpy()
        for i, c in enumerate(data.classes):
            if c in known:
                protos[i] = learned[known[c]]
        scale = float(start["scale"])
        log.info("label head: %d of %d classes start from the checkpoint's head",
                 sum(c in known for c in data.classes), len(data.classes))
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return (torch.nn.Parameter(torch.from_numpy(protos).to(device)),
            torch.nn.Parameter(torch.tensor(math.log(scale), device=device)))


def text_state(text: Any) -> dict[str, Any] | None:
    """The tuned text layers' weights (None for the locked tower)."""
    layers = getattr(text, "layers", None)
    return None if layers is None else {k: v.detach().cpu().clone() for k, v in layers.state_dict().items()}


def head_state(head: tuple[Any, Any] | None) -> tuple[Any, float] | None:
    return None if head is None else (head[0].detach().cpu().clone(), float(head[1].detach()))


def write_output(output: Path, arch: str, state: dict[str, Any], settings: Any,
                 provenance: dict[str, Any] | None, data: TrainingData, complete: bool, device: str) -> None:
    """Write the best tower so far and its model card (complete=False while training goes on)."""
    import open_clip
    import torch

    from encoders.image import build_tower as _build

    if state.get("best_visual") is None:
        return
    visual = _build(arch)
    visual.load_state_dict(state["best_visual"])
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    prov = dict(provenance or {})
    card = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": complete,
        "trained_on": {**prov.pop("trained_on", {}), "train_items": len(data.tr_idx), "dev_items": len(data.dv_idx),
                       "skipped_images": len(data.skipped), "skipped_examples": list(data.skipped[:10])},
        "objective": "LiT: contrastive (InfoNCE, learnable temperature) against the text tower's embeddings, "
                     + (f"its last {settings.text_layers} layer(s) tuned at lr {settings.text_lr:g}"
                        if settings.text_layers else "the text tower locked")
                     + (f" + {settings.label_weight:g} x cross-entropy of a cosine label head over "
                        f"{len(data.classes)} {'/'.join(settings.label_fields)} classes" if data.classes else "")
                     + (f" + {settings.view_weight:g} x NT-Xent between two views of each photo "
                        f"(temperature {settings.view_temperature:g})" if settings.view_weight > 0 else ""),
        "augmentation": augmentation_card(settings),
        "settings": dataclasses.asdict(settings), "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
        "best_dev_metrics": {k: best[k] for k in (*METRIC_KEYS, "score") if k in best},
        "dev_metrics": state["history"],
        "selection": f"max mean({', '.join(k for k in METRIC_KEYS if k in best)}) on dev",
        "train_seconds": state["train_seconds"],
        "train_img_per_s": state["train_images"] / max(state["train_seconds"], 1e-9),
        "wall_s": state["wall_s"], "device": device,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__}, **prov,
    }
    head = state.get("best_head")
    labels = None if head is None or not data.classes else {
        "fields": list(settings.label_fields), "classes": [list(c) for c in data.classes],
        "prototypes": head[0], "scale": math.exp(head[1])}
    if state.get("best_text") is not None:  # the text layers this tower was trained with, beside it
        meta, mix = state["text_meta"], settings.text_mix
        tuned = {k: mix * v.float() + (1.0 - mix) * meta["start"][k].float() for k, v in state["best_text"].items()}
        text_file = save_text_layers(text_layers_path(output), tuned, meta["model"], meta["total_layers"],
                                     {"tower": output.name, "epoch": state["best_epoch"], "text_lr": settings.text_lr,
                                      "mix": mix, "created": card["created"]})
        card["text_layers"] = {"file": text_file.name, "layers": settings.text_layers, "mix": mix,
                               "sha256": file_sha256(text_file)}
    save_checkpoint(output, visual, arch, state.get("best_logit", 1 / 0.07), card, labels=labels)
