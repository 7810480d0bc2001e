"""LiT-style training of the image tower against frozen text embeddings, with dev selection and resume.

The data come prepared (encoders.train_data, or a pack from encoders.train_pack); the views from
encoders.augment; losses and dev metrics from encoders.train_objectives; the state, the best tower and its
model card are written by encoders.train_output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from encoders.image import (MEAN, STD, build_tower, image_size_of, load_checkpoint, model_config,
                            tower_from_checkpoint)
from encoders.text_tuning import LockedText
from encoders.train_data import TrainingData, TrainItem, prepare_data
from encoders.train_objectives import (METRIC_KEYS, altered_precision, contrastive_loss, label_accuracy,
                                       label_loss, retrieval_metrics, selection_score, view_contrastive_loss)
from encoders.train_output import head_state, init_head, save_state, text_state, write_output
from vitrina.config import FinetuneConfig
from vitrina.errors import ConfigError, VitrinaError

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
ROBUST_SEED = 20261204  # the altered dev photos are the same in every run, so their metrics compare across runs
AUGMENTS = ("mild", "strong")


@dataclass(frozen=True)
class FinetuneSettings(FinetuneConfig):
    """[finetune] plus the rest of what decides a training run: the architecture, where it starts, and the
    runtime (a change in what decides it starts a new run instead of resuming the old one, see run_key)."""

    arch: str = "vitrina-rn-small"
    start_from: str = ""  # "" = random init; a vitrina checkpoint, an open_clip checkpoint file or tag
    device: str = "auto"
    threads: int = 2
    bf16: bool = True


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


def run_key(settings: FinetuneSettings, data_key: str) -> str:
    # where and how fast, when to stop early and how the text layers are written do not change what is trained:
    # an early-stopped run goes on when rerun with more patience, a finished one is rewritten with another mix
    fields = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in {"output", "workers", "device", "threads", "patience", "text_mix",
                            "state_every_s"}}
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


def _is_gpu(device: Any) -> bool:
    """Whether the training set and the views live on the device (a GPU) instead of in host memory."""
    return getattr(device, "type", str(device)) == "cuda"


def _to_input(pixels: Any) -> Any:
    """uint8 (n, h, w, 3) tensor -> float (n, 3, h, w) in [0, 1]."""
    import torch

    return pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def _normalise(x: Any) -> Any:
    """[0, 1] (n, 3, h, w) -> the tower's normalised input."""
    import torch

    m = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _rows(pixels: Any, idx: np.ndarray, device: Any) -> Any:
    """Rows idx of the pixel store (a numpy array, or a tensor already on the device) as a device tensor."""
    import torch

    if isinstance(pixels, np.ndarray):
        return torch.from_numpy(pixels[idx]).to(device)
    return pixels[torch.from_numpy(idx).to(pixels.device)]


def _embed(visual: Any, pixels: Any, idx: np.ndarray, device: Any, bf16: bool, batch: int = 512) -> np.ndarray:
    """L2-normalised tower vectors of rows idx of the pixel store."""
    import torch

    from encoders.runtime import autocast

    visual.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(idx), batch):
            x = _normalise(_to_input(_rows(pixels, idx[start:start + batch], device)))
            with autocast(device, bf16):
                f = visual(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _masks(pixels: Any, device: Any, chunk: int = 1024) -> Any:
    """uint8 (n, 1, h, w) product masks (0-255) of every photo in the pixel store, on the store's device."""
    import torch

    from encoders.augment import product_masks

    n = len(pixels)
    parts = []
    for start in range(0, n, chunk):
        x = _to_input(_rows(pixels, np.arange(start, min(n, start + chunk)), device))
        parts.append(product_masks(x).mul_(255).round_().to(torch.uint8))
    out = torch.cat(parts)
    return out.cpu().numpy() if isinstance(pixels, np.ndarray) else out


def _altered_dev(pixels: Any, dv_idx: np.ndarray, n: int, device: Any) -> tuple[np.ndarray, Any]:
    """Up to n dev rows (a fixed sample) and one strong view of each, made with a fixed seed: the same altered
    photos in every run and epoch, as uint8 (n, h, w, 3) on the device."""
    import torch

    from encoders.augment import product_masks, strong_view

    rows = np.sort(np.random.default_rng(ROBUST_SEED).permutation(dv_idx)[:n])
    gen = torch.Generator(device=device).manual_seed(ROBUST_SEED)
    views = []
    for start in range(0, len(rows), 512):
        part = rows[start:start + 512]
        x = _to_input(_rows(pixels, part, device))
        views.append(strong_view(x, product_masks(x), gen))
    altered = torch.cat(views).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return rows, altered


def _views(pixels: Any, masks: Any, idx: np.ndarray, gen: Any, settings: FinetuneSettings, views: Any,
           device: Any) -> Any:
    """The batch's training input: one mild view per photo, or two views (mild-or-strong, strong: `views`, the
    ViewSettings) stacked."""
    import torch

    from encoders.augment import mild_view, two_views

    x = _to_input(_rows(pixels, idx, device))
    if settings.augment != "strong":
        return _normalise(mild_view(x, gen, (settings.crop_scale_min, 1.0), settings.erase))
    m = _rows(masks, idx, device).float().div_(255.0)
    first, second = two_views(x, m, gen, views, mild_scale=(settings.crop_scale_min, 1.0))
    return _normalise(torch.cat([first, second]))


def finetune(items: Sequence[TrainItem] | TrainingData, encode_text: Callable[[list[str]], np.ndarray] | None,
             text_model_id: str, settings: FinetuneSettings, output: Path, work_dir: Path,
             provenance: dict[str, Any] | None = None, resume: str = "auto", progress: bool = True,
             text_side: Callable[[Sequence[str], np.ndarray, Any], Any] | None = None) -> FinetuneResult:
    """Train the tower on the `train` items, select on `dev`, write the best to `output` (+ model card).

    items: the catalogue's TrainItems (images decoded and texts embedded by encode_text, both cached under
    work_dir), or a TrainingData already prepared (a training pack). Items of any other split are dropped
    unread. Images that do not decode are skipped and counted.
    State is saved after every epoch (or every settings.state_every_s seconds) under work_dir; resume="auto"
    continues a partial run with the same settings and data, "require" insists on one, "never" starts over.
    text_side(distinct texts, each row's text index, device) builds the tuned text layers when
    settings.text_layers > 0 (encoders.text_tuning.TunedTextLayers); otherwise the text tower stays locked.
    """
    import torch

    from encoders.augment import settings_for
    from encoders.runtime import autocast, bf16_supported, configure_threads, resolve_device
    from vitrina.config import RuntimeConfig

    t_start = time.time()
    if resume not in {"auto", "require", "never"}:
        raise ConfigError(f"resume must be auto, require or never, got {resume!r}")
    if settings.epochs < 1 or settings.batch_size < 2 or settings.grad_accum < 1:
        raise ConfigError("[finetune] needs epochs >= 1, batch_size >= 2 and grad_accum >= 1")
    if settings.augment not in AUGMENTS:
        raise ConfigError(f"[finetune].augment must be one of {AUGMENTS}, got {settings.augment!r}")
    if settings.view_weight > 0 and settings.augment != "strong":
        raise ConfigError("[finetune].view_weight > 0 needs augment = \"strong\" (two views per photo)")
    try:
        views = settings_for(settings.view_zoom_out, settings.view_background)
    except ValueError as e:
        raise ConfigError(f"[finetune]: {e}") from e
    if settings.text_layers and text_side is None:
        raise ConfigError("text_layers > 0 needs a text_side that builds the tuned text layers")
    runtime = RuntimeConfig(device=settings.device, threads=settings.threads, bf16=settings.bf16)
    device = resolve_device(runtime)
    configure_threads(runtime)
    bf16 = settings.bf16 and bf16_supported(device)
    torch.manual_seed(settings.seed)
    visual, arch, start_head = _start_tower(settings)
    size = image_size_of(model_config(arch))

    fields = settings.label_fields if settings.label_weight > 0 else ()
    if isinstance(items, TrainingData):
        data = items
        if tuple(data.pixels.shape[1:3]) != size:
            raise ConfigError(f"the training pack holds {data.pixels.shape[1]}x{data.pixels.shape[2]} photos but "
                              f"{arch!r} takes {size[0]}x{size[1]}")
        if settings.text_layers:
            raise ConfigError("a training pack holds text vectors, not texts: it cannot tune text layers")
        if not fields:
            data = dataclasses.replace(data, classes=[], labels=np.full(len(data.labels), -1, dtype=np.int64))
    else:
        if encode_text is None:
            raise ConfigError("training from catalogue items needs a text encoder")
        data = prepare_data(items, size, work_dir / "cache", encode_text, text_model_id, fields,
                            settings.max_train_items, settings.seed, settings.workers, progress)
    dim = _output_dim(visual, size)
    if dim != data.text_emb.shape[1]:
        raise ConfigError(f"image tower {arch!r} gives {dim}-d vectors but the text encoder gives "
                          f"{data.text_emb.shape[1]}-d; use an arch whose embed_dim matches")
    tr_idx, dv_idx, text_emb = data.tr_idx, data.dv_idx, data.text_emb

    visual = visual.to(device)
    on_gpu = _is_gpu(device)
    if on_gpu:  # the whole set lives on the card: no copy per step
        visual = visual.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    pixels: Any = torch.from_numpy(data.pixels).to(device) if on_gpu else data.pixels
    masks = _masks(pixels, device) if settings.augment == "strong" else None
    rob_rows, rob_pixels = _altered_dev(pixels, dv_idx, settings.robust_dev, device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    head = init_head(data, device, start_head, fields)  # (prototypes, log scale) or None
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
    last_save = time.time()
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        if bad_epochs >= settings.patience > 0:
            log.info("early stop: no dev improvement for %d epochs", bad_epochs)
            break
        if state["out_of_time"]:
            break
        visual.train()
        text.train()
        gen = torch.Generator().manual_seed(settings.seed * 10_007 + epoch)
        view_gen = gen if not on_gpu else torch.Generator(device=device).manual_seed(settings.seed * 10_007 + epoch)
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
            x = _views(pixels, masks, idx, view_gen, settings, views, device)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, bf16):
                feats = visual(x)
            parts = feats.split(len(idx))  # one view per photo, or two
            t, tids, labs = text.rows(idx), tid_t[idx], labels_t[idx]
            loss = sum(contrastive_loss(f, t, tids, logit_scale) for f in parts) / len(parts)
            if head:
                loss = loss + settings.label_weight * sum(
                    label_loss(f, head[0], head[1], labs, settings.label_smoothing) for f in parts) / len(parts)
            if settings.view_weight > 0:
                loss = loss + settings.view_weight * view_contrastive_loss(parts[0], parts[1],
                                                                           settings.view_temperature)
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
        if budget_s and state["train_seconds"] >= budget_s:  # the next epoch would not begin: judge this one
            state["out_of_time"] = True
        last = epoch == settings.epochs or state["out_of_time"]
        if not last and epoch % max(1, settings.eval_every):
            state.update(epoch=epoch, wall_s=wall_before + time.time() - t_start)
            continue
        metrics = _dev_metrics(visual, pixels, data, text, head, rob_rows, rob_pixels, device, bf16)
        score = selection_score(metrics)
        row = {"epoch": epoch, "partial": bool(state["out_of_time"]), "loss": float(np.mean(losses or [0.0])),
               "img_per_s": seen / max(train_s, 1e-9), "seconds": train_s,
               "temperature": float(1 / logit_scale.detach().exp()), **metrics, "score": score}
        state["history"].append(row)
        log.info("epoch %d: loss %.3f, %.0f img/s, dev %s", epoch, row["loss"], row["img_per_s"],
                 {k: round(v, 4) for k, v in metrics.items()})
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, best_logit=float(logit_scale.detach().exp()),
                         best_visual={k: v.detach().cpu().clone() for k, v in visual.state_dict().items()},
                         best_head=head_state(head), best_text=text_state(text))
            bad_epochs = 0
        else:
            bad_epochs += 1
        state.update(epoch=epoch, wall_s=wall_before + time.time() - t_start)
        if last or time.time() - last_save >= settings.state_every_s:
            state.update(visual=visual.state_dict(), logit_scale=float(logit_scale.detach()), opt=opt.state_dict(),
                         head=head_state(head), text=text_state(text))
            save_state(state_path, state)
            write_output(output, arch, state, settings, provenance, data, complete=False, device=str(device))
            last_save = time.time()
    state["wall_s"] = wall_before + time.time() - t_start
    if not state["history"]:
        raise ConfigError("no epoch was trained: the time budget ran out before the first step")
    write_output(output, arch, state, settings, provenance, data, complete=True, device=str(device))
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    return FinetuneResult(output=output, epochs_run=state["epoch"], best_epoch=state["best_epoch"],
                          best_dev_metrics={k: v for k, v in best.items() if k in METRIC_KEYS},
                          history=state["history"], skipped=len(data.skipped), wall_s=state["wall_s"],
                          train_img_per_s=state["train_images"] / max(state["train_seconds"], 1e-9))


def _dev_metrics(visual: Any, pixels: Any, data: TrainingData, text: Any, head: Any, rob_rows: np.ndarray,
                 rob_pixels: Any, device: Any, bf16: bool) -> dict[str, float]:
    """Retrieval and label metrics of the clean dev photos, and of the fixed altered ones against them."""
    dv_idx = data.dv_idx
    dev_img = _embed(visual, pixels, dv_idx, device, bf16)
    metrics = retrieval_metrics(dev_img, text.embed(dv_idx), data.dev_labels)
    if head:
        metrics["label_acc"] = label_accuracy(dev_img, data.labels[dv_idx], head[0])
    if len(rob_rows):
        rob = _embed(visual, rob_pixels, np.arange(len(rob_rows)), device, bf16)
        where = np.searchsorted(dv_idx, rob_rows)  # each altered photo's clean row among the dev rows
        metrics["rob_i2i_p@10"] = altered_precision(rob, where, dev_img, data.dev_labels)
        if head:
            metrics["rob_label_acc"] = label_accuracy(rob, data.labels[rob_rows], head[0])
    return metrics


def _output_dim(visual: Any, size: tuple[int, int]) -> int:
    """The tower's output width, measured on one blank image."""
    import torch

    was = visual.training
    visual.eval()
    with torch.inference_mode():
        dim = int(visual(torch.zeros(1, 3, *size)).shape[-1])
    visual.train(was)
    return dim
