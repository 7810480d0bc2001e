"""LiT-style training of the image tower against frozen text embeddings, with dev selection and resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from encoders.image import (build_tower, file_sha256, image_size_of, load_checkpoint, model_config,
                            pixels_to_input, save_checkpoint, tower_from_checkpoint)
from encoders.text_tuning import LockedText, save_text_layers, text_layers_path
from encoders.train_data import DEV, TRAIN, TrainItem, augment, image_cache, text_embeddings
from vitrina.config import FinetuneConfig
from vitrina.errors import ConfigError, VitrinaError

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class FinetuneSettings(FinetuneConfig):
    """[finetune] plus the rest of what decides a training run: the architecture, where it starts, and the
    runtime (a change in what decides it starts a new run instead of resuming the old one, see run_key)."""

    arch: str = "vitrina-rn-small"
    start_from: str = ""  # "" = random init; a vitrina checkpoint, an open_clip checkpoint file or tag
    device: str = "auto"
    threads: int = 2
    bf16: bool = True


LABEL_MIN_COUNT = 5  # a label value combination needs this many train items to become a class of the head
METRIC_KEYS = ("t2i_recall@10", "t2i_p@10", "i2i_p@10", "label_acc")


@dataclass
class FinetuneResult:
    output: Path
    epochs_run: int
    best_epoch: int
    best_dev_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
    train_img_per_s: float = 0.0


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, labels: Sequence[str],
                      k: int = 10) -> dict[str, float]:
    """Dev metrics over n items (rows L2-normalised): text->image Recall@k of the item's own image,
    text->image P@k and image->image P@k (self excluded) where a hit shares the query item's label."""
    n = len(image_emb)
    if n < 2:
        return {"t2i_recall@10": 0.0, "t2i_p@10": 0.0, "i2i_p@10": 0.0}
    lab = np.unique(np.asarray(labels, dtype=object), return_inverse=True)[1]
    k = min(k, n - 1)
    t2i, t2i_p, i2i_p = 0.0, 0.0, 0.0
    for start in range(0, n, 1024):
        rows = np.arange(start, min(n, start + 1024))
        s = text_emb[rows] @ image_emb.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        t2i += float((top == rows[:, None]).any(axis=1).sum())
        t2i_p += float((lab[top] == lab[rows][:, None]).mean(axis=1).sum())
        s = image_emb[rows] @ image_emb.T
        s[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        i2i_p += float((lab[top] == lab[rows][:, None]).mean(axis=1).sum())
    return {"t2i_recall@10": t2i / n, "t2i_p@10": t2i_p / n, "i2i_p@10": i2i_p / n}


def selection_score(metrics: dict[str, float]) -> float:
    """The single number dev model selection maximises: the mean of the dev metrics (label_acc when a head
    is trained)."""
    return float(np.mean([metrics[k] for k in METRIC_KEYS if k in metrics]))


def label_classes(items: Sequence[TrainItem], n_train: int, settings: FinetuneSettings
                  ) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The label head's classes (value combinations with LABEL_MIN_COUNT train items) and each item's class
    index (-1: no head, a missing value or a rare combination)."""
    if not settings.label_fields or settings.label_weight <= 0:
        return [], np.full(len(items), -1, dtype=np.int64)
    counts = Counter(it.label_values for it in items[:n_train] if it.label_values and all(it.label_values))
    classes = sorted(v for v, c in counts.items() if c >= LABEL_MIN_COUNT)
    index = {v: i for i, v in enumerate(classes)}
    return classes, np.array([index.get(it.label_values, -1) for it in items], dtype=np.int64)


def label_loss(feats: Any, prototypes: Any, log_scale: Any, labels: Any, smoothing: float = 0.0) -> Any:
    """Cross-entropy of a cosine classifier: one prototype per class in the embedding space itself, so
    learning it also pulls photos of a class together. Rows labelled -1 are ignored."""
    import torch

    known = labels >= 0
    if not bool(known.any()):
        return feats.sum() * 0.0
    f = torch.nn.functional.normalize(feats[known].float(), dim=-1)
    logits = log_scale.exp() * f @ torch.nn.functional.normalize(prototypes, dim=-1).T
    return torch.nn.functional.cross_entropy(logits, labels[known], label_smoothing=smoothing)


def run_key(settings: FinetuneSettings, data_key: str) -> str:
    # where and how fast, when to stop early and how the text layers are written do not change what is trained:
    # an early-stopped run goes on when rerun with more patience, a finished one is rewritten with another mix
    fields = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in {"output", "workers", "device", "threads", "patience", "text_mix"}}
    blob = json.dumps({"settings": fields, "data": data_key}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _start_tower(settings: FinetuneSettings) -> tuple[Any, str, dict[str, Any] | None]:
    """The tower training starts from, its arch name, and the start checkpoint's label head (or None)."""
    src = settings.start_from
    if src and Path(src).is_file():
        try:
            blob = load_checkpoint(src)
        except VitrinaError:
            blob = None
        if blob is not None:
            return tower_from_checkpoint(blob), str(blob["arch"]), blob.get("labels")
    return build_tower(settings.arch, src), settings.arch, None


def _param_groups(visual: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in visual.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine to 0 over the steps, or over the time budget when that runs out first."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = max((step - warmup) / max(1, total - warmup), time_progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _embed_pixels(visual: Any, pixels: np.ndarray, device: Any, bf16: bool, batch: int = 512) -> np.ndarray:
    import torch

    from encoders.runtime import autocast

    visual.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            x = pixels_to_input(torch.from_numpy(pixels[start:start + batch]).to(device))
            with autocast(device, bf16):
                f = visual(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class _Data:
    pixels: np.ndarray  # uint8 (n, h, w, 3), train items then dev items
    text_emb: np.ndarray  # (n, d) frozen text embeddings, same order
    tid: np.ndarray  # (n,) index of each item's text among the distinct texts
    distinct_texts: list[str]  # the distinct texts, in tid order
    tr_idx: np.ndarray  # rows used for training (decodable, maybe subsampled)
    dv_idx: np.ndarray  # decodable dev rows
    dev_labels: list[str]
    classes: list[tuple[str, ...]]  # label head classes ([] = no head)
    labels: np.ndarray  # (n,) class index per row, -1 = none
    skipped: list[TrainItem]
    key: str  # hash of ids, texts and the text model


def _prepare_data(items: Sequence[TrainItem], settings: FinetuneSettings, size: tuple[int, int], cache_dir: Path,
                  encode_text: Callable[[list[str]], np.ndarray], text_model_id: str, progress: bool) -> _Data:
    """Decoded pixels and text embeddings of the train and dev items (others are dropped unread)."""
    train = [it for it in items if it.split == TRAIN]
    dev = [it for it in items if it.split == DEV]
    if not train or not dev:
        raise ConfigError(f"finetune needs train and dev items, got {len(train)} train and {len(dev)} dev")
    both = train + dev
    pixels, ok = image_cache(both, size, cache_dir, workers=settings.workers, progress=progress)
    texts = [it.text for it in both]
    text_emb = text_embeddings(texts, encode_text, text_model_id, cache_dir, progress=progress)
    skipped = [it for it, good in zip(both, ok) if not good]
    if skipped:
        log.warning("skipped %d items whose image did not decode (e.g. %s)", len(skipped), skipped[0].image)
    n_tr = len(train)
    tr_idx = np.flatnonzero(ok[:n_tr])
    if settings.max_train_items and len(tr_idx) > settings.max_train_items:  # a subset; the cache holds all
        pick = np.random.default_rng(settings.seed).choice(len(tr_idx), settings.max_train_items, replace=False)
        tr_idx = tr_idx[np.sort(pick)]
    dv_idx = n_tr + np.flatnonzero(ok[n_tr:])
    if len(tr_idx) < 2 or len(dv_idx) < 2:
        raise ConfigError("too few decodable train/dev images to train on")
    key = hashlib.sha256(json.dumps([[it.id for it in both], texts, text_model_id]).encode("utf-8")).hexdigest()[:16]
    classes, labels = label_classes(both, n_tr, settings)
    distinct, tid = np.unique(np.asarray(texts, dtype=object), return_inverse=True)  # same text, same id
    return _Data(classes=classes, labels=labels, pixels=pixels, text_emb=text_emb, tid=tid,
                 distinct_texts=[str(t) for t in distinct], tr_idx=tr_idx,
                 dv_idx=dv_idx, dev_labels=[both[i].label or both[i].id for i in dv_idx], skipped=skipped, key=key)


def contrastive_loss(feats: Any, text: Any, text_ids: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE between image features and frozen text rows; items with identical texts share
    the target mass instead of being each other's negatives."""
    import torch

    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    logits = logit_scale.exp() * f @ text.T
    same = (text_ids[:, None] == text_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def finetune(items: Sequence[TrainItem], encode_text: Callable[[list[str]], np.ndarray], text_model_id: str,
             settings: FinetuneSettings, output: Path, work_dir: Path, provenance: dict[str, Any] | None = None,
             resume: str = "auto", progress: bool = True,
             text_side: Callable[[Sequence[str], np.ndarray, Any], Any] | None = None) -> FinetuneResult:
    """Train the tower on the `train` items, select on `dev`, write the best to `output` (+ model card).

    Items of any other split are dropped unread. Images that do not decode are skipped and counted.
    State is saved after every epoch under work_dir; resume="auto" continues a partial run with the same
    settings and data, "require" insists on one, "never" starts over.
    text_side(distinct texts, each row's text index, device) builds the tuned text layers when
    settings.text_layers > 0 (encoders.text_tuning.TunedTextLayers); otherwise the text tower stays locked.
    """
    import torch

    from encoders.runtime import autocast, bf16_supported, configure_threads, resolve_device
    from vitrina.config import RuntimeConfig

    t_start = time.time()
    if resume not in {"auto", "require", "never"}:
        raise ConfigError(f"resume must be auto, require or never, got {resume!r}")
    if settings.epochs < 1 or settings.batch_size < 2 or settings.grad_accum < 1:
        raise ConfigError("[finetune] needs epochs >= 1, batch_size >= 2 and grad_accum >= 1")
    if settings.text_layers and text_side is None:
        raise ConfigError("text_layers > 0 needs a text_side that builds the tuned text layers")
    runtime = RuntimeConfig(device=settings.device, threads=settings.threads, bf16=settings.bf16)
    device = resolve_device(runtime)
    configure_threads(runtime)
    bf16 = settings.bf16 and bf16_supported(device)
    torch.manual_seed(settings.seed)
    visual, arch, start_head = _start_tower(settings)
    size = image_size_of(model_config(arch))

    data = _prepare_data(items, settings, size, work_dir / "cache", encode_text, text_model_id, progress)
    dim = _output_dim(visual, size)
    if dim != data.text_emb.shape[1]:
        raise ConfigError(f"image tower {arch!r} gives {dim}-d vectors but the text encoder gives "
                          f"{data.text_emb.shape[1]}-d; use an arch whose embed_dim matches")
    pixels, tr_idx, dv_idx, text_emb, skipped = data.pixels, data.tr_idx, data.dv_idx, data.text_emb, data.skipped

    visual = visual.to(device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    head = _init_head(data, device, start_head, settings.label_fields)  # (prototypes, log scale) or None
    text = text_side(data.distinct_texts, data.tid, device) if settings.text_layers else LockedText(text_emb, device)
    extra = [logit_scale] + (list(head) if head else [])
    groups = _param_groups(visual, settings.weight_decay) + [{"params": extra, "weight_decay": 0.0}]
    for g in groups:
        g["base_lr"] = settings.lr
    if text.parameters():
        groups.append({"params": text.parameters(), "weight_decay": settings.weight_decay,
                       "base_lr": settings.text_lr})
    opt = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    trained = list(visual.parameters()) + extra + text.parameters()
    batch = min(settings.batch_size, len(tr_idx))
    steps_per_epoch = max(1, len(tr_idx) // batch // settings.grad_accum)
    total_steps = steps_per_epoch * settings.epochs
    warmup = min(settings.warmup_steps, total_steps // 2)
    budget_s = settings.time_budget_min * 60.0
    run_dir = work_dir / f"run-{run_key(dataclasses.replace(settings, arch=arch), data.key)}"
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_score": -1.0, "best_epoch": 0, "best_visual": None,
                             "train_seconds": 0.0, "train_images": 0, "wall_s": 0.0, "step": 0, "out_of_time": False}
    if resume == "require" and not state_path.is_file():
        raise ConfigError(f"--resume: no partial run to resume at {state_path}")
    if resume != "never" and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        visual.load_state_dict(saved["visual"])
        with torch.no_grad():
            logit_scale.fill_(float(saved["logit_scale"]))
            if head:
                head[0].copy_(saved["head"][0])
                head[1].fill_(float(saved["head"][1]))
        if saved.get("text") is not None:
            text.layers.load_state_dict(saved["text"])
        opt.load_state_dict(saved["opt"])
        state = saved
        log.info("resuming %s after epoch %d", run_dir.name, state["epoch"])
    if settings.text_layers:
        state["text_meta"] = {"model": text.model_source, "total_layers": text.total_layers,
                              "start": text.start_state}
    wall_before = float(state["wall_s"])
    run_dir.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    tid_t = torch.from_numpy(data.tid).to(device)
    labels_t = torch.from_numpy(data.labels).to(device)
    bad_epochs = sum(1 for h in state["history"] if h["epoch"] > state["best_epoch"])
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        if bad_epochs >= settings.patience > 0:
            log.info("early stop: no dev improvement for %d epochs", bad_epochs)
            break
        if state["out_of_time"]:
            break
        visual.train()
        text.train()
        gen = torch.Generator().manual_seed(settings.seed * 10_007 + epoch)
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
        n_micro = steps_per_epoch * settings.grad_accum
        t0, seen, losses = time.time(), 0, []
        bar = tqdm(range(n_micro), desc=f"epoch {epoch}/{settings.epochs}", unit="batch", disable=not progress,
                   mininterval=10)
        for m in bar:
            if m % settings.grad_accum == 0:
                spent = (state["train_seconds"] + time.time() - t0) / budget_s if budget_s else 0.0
                if spent >= 1.0:
                    state["out_of_time"] = True
                    log.info("time budget of %.0f min reached in epoch %d", settings.time_budget_min, epoch)
                    break
                for g in opt.param_groups:
                    g["lr"] = g.get("base_lr", settings.lr) * lr_factor(state["step"], warmup, total_steps, spent)
            idx = np.sort(order[m * batch:(m + 1) * batch])
            x = augment(pixels_to_input(torch.from_numpy(pixels[idx]).to(device)), gen,
                        scale=(settings.crop_scale_min, 1.0), erase=settings.erase)
            t = text.rows(idx)
            with autocast(device, bf16):
                feats = visual(x)
            loss = contrastive_loss(feats, t, tid_t[idx], logit_scale)
            if head:
                loss = loss + settings.label_weight * label_loss(feats, head[0], head[1], labels_t[idx],
                                                                 settings.label_smoothing)
            (loss / settings.grad_accum).backward()
            if (m + 1) % settings.grad_accum == 0:
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                opt.step()
                state["step"] += 1
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    logit_scale.clamp_(0.0, math.log(100.0))
            losses.append(float(loss.detach()))
            seen += len(idx)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        bar.close()
        if seen == 0:  # the budget ran out before this epoch began
            break
        train_s = time.time() - t0
        state["train_seconds"] += train_s
        state["train_images"] += seen
        dev_img = _embed_pixels(visual, pixels[dv_idx], device, bf16)
        metrics = retrieval_metrics(dev_img, text.embed(dv_idx), data.dev_labels)
        if head:
            metrics["label_acc"] = _label_accuracy(dev_img, data.labels[dv_idx], head[0])
        score = selection_score(metrics)
        row = {"epoch": epoch, "partial": bool(state["out_of_time"]), "loss": float(np.mean(losses or [0.0])),
               "img_per_s": seen / max(train_s, 1e-9), "seconds": train_s,
               "temperature": float(1 / logit_scale.detach().exp()), **metrics, "score": score}
        state["history"].append(row)
        log.info("epoch %d: loss %.3f, %.0f img/s, dev %s", epoch, row["loss"], row["img_per_s"],
                 {k: round(v, 4) for k, v in metrics.items()})
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, best_logit=float(logit_scale.detach().exp()),
                         best_visual={k: v.detach().cpu().clone() for k, v in visual.state_dict().items()},
                         best_head=_head_state(head), best_text=_text_state(text))
            bad_epochs = 0
        else:
            bad_epochs += 1
        state.update(epoch=epoch, visual=visual.state_dict(), logit_scale=float(logit_scale.detach()),
                     opt=opt.state_dict(), head=_head_state(head), text=_text_state(text),
                     wall_s=wall_before + time.time() - t_start)
        _save_state(state_path, state)
        _write_output(output, arch, state, settings, provenance, data, t_start, complete=False,
                      device=str(device))
    state["wall_s"] = wall_before + time.time() - t_start
    if not state["history"]:
        raise ConfigError("no epoch was trained: the time budget ran out before the first step")
    _write_output(output, arch, state, settings, provenance, data, t_start, complete=True, device=str(device))
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    return FinetuneResult(output=output, epochs_run=state["epoch"], best_epoch=state["best_epoch"],
                          best_dev_metrics={k: best[k] for k in METRIC_KEYS if k in best},
                          history=state["history"], skipped=len(skipped), wall_s=state["wall_s"],
                          train_img_per_s=state["train_images"] / max(state["train_seconds"], 1e-9))


def _init_head(data: _Data, device: Any, start: dict[str, Any] | None = None,
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


def _text_state(text: Any) -> dict[str, Any] | None:
    """The tuned text layers' weights (None for the locked tower)."""
    layers = getattr(text, "layers", None)
    return None if layers is None else {k: v.detach().cpu().clone() for k, v in layers.state_dict().items()}


def _head_state(head: tuple[Any, Any] | None) -> tuple[Any, float] | None:
    return None if head is None else (head[0].detach().cpu().clone(), float(head[1].detach()))


def _label_accuracy(image_emb: np.ndarray, labels: np.ndarray, prototypes: Any) -> float:
    """Share of the labelled rows whose nearest prototype is their class."""
    known = labels >= 0
    if not known.any():
        return 0.0
    protos = prototypes.detach().float().cpu().numpy()
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return float(((image_emb[known] @ protos.T).argmax(axis=1) == labels[known]).mean())


def _output_dim(visual: Any, size: tuple[int, int]) -> int:
    """The tower's output width, measured on one blank image."""
    import torch

    was = visual.training
    visual.eval()
    with torch.inference_mode():
        dim = int(visual(torch.zeros(1, 3, *size)).shape[-1])
    visual.train(was)
    return dim


def _write_output(output: Path, arch: str, state: dict[str, Any], settings: FinetuneSettings,
                  provenance: dict[str, Any] | None, data: _Data, t_start: float, complete: bool,
                  device: str) -> None:
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
                       "skipped_images": len(data.skipped), "skipped_examples": [s.id for s in data.skipped[:10]]},
        "objective": "LiT: contrastive (InfoNCE, learnable temperature) against the text tower's embeddings, "
                     + (f"its last {settings.text_layers} layer(s) tuned at lr {settings.text_lr:g}"
                        if settings.text_layers else "the text tower locked")
                     + (f" + {settings.label_weight:g} x cross-entropy of a cosine label head over "
                        f"{len(data.classes)} {'/'.join(settings.label_fields)} classes" if data.classes else ""),
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
