"""The CLIP image tower: open_clip architectures kept as JSON, the checkpoint format, and ImageEncoder, the tower on
torch (the photo preparation it shares with the ONNX runtime is encoders.photo)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders.photo import LabelHead, PhotoEncoder
from vitrina.config import Config
from vitrina.errors import ConfigError, ModelUnavailable

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_FORMAT = "vitrina-image-tower"
CHECKPOINT_VERSION = 1
# open_clip's OPENAI_DATASET_MEAN / _STD (kept here so this module stays torch-free at import)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

_REGISTER_LOCK = threading.Lock()
_REGISTERED = False
_ENCODERS: dict[tuple[Any, ...], ImageEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def card_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The model card JSON that sits beside a checkpoint: models/image_tower.pt -> models/image_tower.card.json."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".card.json")


def local_model_configs() -> list[str]:
    """Names of the architectures shipped in encoders/model_configs (no torch import)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def model_config(arch: str) -> dict[str, Any]:
    """The open_clip model config for `arch` (a shipped name or an open_clip built-in); ConfigError if unknown."""
    file = CONFIG_DIR / f"{arch}.json"
    if file.is_file():
        return json.loads(file.read_text(encoding="utf-8"))
    register_model_configs()
    import open_clip

    found = open_clip.get_model_config(arch)
    if found is None:
        raise ConfigError(f"unknown image tower architecture {arch!r}",
                          detail=f"shipped: {local_model_configs()}; or any open_clip built-in name")
    return found


def register_model_configs() -> None:
    """Add encoders/model_configs to open_clip's registry (once per process)."""
    global _REGISTERED
    with _REGISTER_LOCK:
        if not _REGISTERED:
            import open_clip

            open_clip.add_model_config(CONFIG_DIR)
            _REGISTERED = True


def image_size_of(model_cfg: dict[str, Any]) -> tuple[int, int]:
    """(height, width) the tower takes, from a model config."""
    size = model_cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def build_tower(arch: str, pretrained: str = "") -> Any:
    """A fresh visual tower (random init, or open_clip weights from a pretrained tag/file) for `arch`."""
    model_config(arch)  # clear ConfigError for unknown names
    register_model_configs()
    import open_clip

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns on every random init
    try:
        model = open_clip.create_model(arch, pretrained=pretrained or None)
    except (RuntimeError, OSError, ValueError) as e:
        raise ModelUnavailable(f"cannot build image tower {arch!r} from pretrained {pretrained!r}",
                               detail=f"{e}; pretrained tags need network access, use a local file") from e
    finally:
        logging.disable(previous)
    return model.visual


def pixels_to_input(pixels: Any, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Any:
    """uint8 (n, h, w, 3) tensor -> normalised float (n, 3, h, w), the tower's input."""
    import torch

    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def fold_batch_norms(visual: Any, size: tuple[int, int], min_cosine: float = 0.99999) -> Any:
    """An inference copy of the tower with every eval-mode BatchNorm2d folded into the Conv2d registered just before
    it in the same module (y = bn(conv(x)) as one conv), or `visual` itself when the copy's fp32 output on a probe
    batch strays from the original's (the layout assumption would not hold); `visual` is left in eval mode. Under
    bf16 autocast a BatchNorm runs in fp32 with a cast on each side; folded, the tower reads and writes each
    activation once less."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(visual).float().eval()
    count = 0
    for parent in list(folded.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and \
                    bn.track_running_stats and conv.out_channels == bn.num_features:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, torch.nn.Identity())
                count += 1
    if count == 0:
        return visual
    probe = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, size[0], size[1], generator=probe)
    with torch.inference_mode():
        dtype = next(visual.parameters()).dtype
        ref = torch.nn.functional.normalize(visual.eval()(x.to(dtype)).float(), dim=-1)
        got = torch.nn.functional.normalize(folded(x).float(), dim=-1)
    if float((ref * got).sum(-1).min()) < min_cosine:
        log.warning("folding the image tower's batch norms changed its output: running it unfolded")
        return visual
    return folded


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], visual: Any, arch: str, logit_scale: float,
                    card: dict[str, Any], labels: dict[str, Any] | None = None) -> Path:
    """Write the tower (fp16 visual state_dict + arch + model config) and its model card, atomically.

    labels, when given, is the label head: {"fields": [...], "classes": [[value per field], ...],
    "prototypes": (n_classes, dim) tensor, "scale": float}.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model_config(arch)
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
             for k, v in visual.state_dict().items()}
    blob = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch, "model_config": cfg,
            "image_size": list(image_size_of(cfg)), "mean": list(MEAN), "std": list(STD),
            "embed_dim": int(cfg["embed_dim"]), "logit_scale": float(logit_scale), "visual": state}
    if labels is not None:
        blob["labels"] = {"fields": [str(f) for f in labels["fields"]],
                          "classes": [[str(v) for v in c] for c in labels["classes"]],
                          "prototypes": labels["prototypes"].detach().to("cpu", torch.float16),
                          "scale": float(labels["scale"])}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    full_card = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "checkpoint": path.name,
                 "checkpoint_sha256": file_sha256(path), "checkpoint_bytes": path.stat().st_size, "arch": arch,
                 "embed_dim": int(cfg["embed_dim"]), "image_size": list(image_size_of(cfg)),
                 "model_config": cfg, **card}
    if labels is not None:
        full_card["label_head"] = {"fields": blob["labels"]["fields"], "classes": len(blob["labels"]["classes"])}
    card_tmp = card_path(path).with_name(card_path(path).name + ".tmp")
    card_tmp.write_text(json.dumps(full_card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(card_tmp, card_path(path))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a vitrina image-tower checkpoint; ModelUnavailable if it is not one."""
    import torch

    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged pickle raises almost anything (UnpicklingError, EOFError, ...)
        raise ModelUnavailable(f"cannot read image tower checkpoint {path}", detail=str(e)) from e
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ModelUnavailable(f"{path} is not a vitrina image tower checkpoint (format {CHECKPOINT_FORMAT!r})")
    if int(blob.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelUnavailable(f"{path}: checkpoint version {blob.get('version')} is newer than this code reads")
    return blob


def tower_from_checkpoint(blob: dict[str, Any]) -> Any:
    """Rebuild the visual tower described by a loaded checkpoint, with its weights (fp32)."""
    register_model_configs()
    import open_clip
    import torch

    arch = str(blob["arch"])
    if open_clip.get_model_config(arch) is None:  # a config this build does not ship: use the embedded one
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"vitrina-arch-{os.getpid()}" / f"{arch}.json"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(blob["model_config"]), encoding="utf-8")
        open_clip.add_model_config(tmp)
    visual = build_tower(arch)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in blob["visual"].items()}
    try:
        visual.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelUnavailable(f"checkpoint weights do not fit architecture {arch!r}", detail=str(e)) from e
    return visual


class ImageEncoder(PhotoEncoder):
    """The tower on torch; `.encode` is safe to call from several threads."""

    def __init__(self, visual: Any, image_size: tuple[int, int], device: Any, bf16: bool = True,
                 batch_size: int = 128, name: str = "", mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD, labels: LabelHead | None = None, flip_average: bool = False,
                 autocontrast: bool = False, trim: bool = False) -> None:
        import torch

        from encoders.runtime import bf16_supported

        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.device = device
        self.bf16 = bool(bf16 and bf16_supported(device))
        self.batch_size = max(1, int(batch_size))
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.labels = labels
        self.flip_average = bool(flip_average)
        self.autocontrast = bool(autocontrast)
        self.trim = bool(trim)
        self._onnx: Any = None  # encoders.image_onnx.OnnxForward when [image_encoder].runtime = "onnx"
        self._visual = fold_batch_norms(visual, self.image_size).to(device).eval()
        self._torch = torch
        self._lock = threading.Lock()
        with torch.inference_mode():
            probe = torch.zeros(1, self.image_size[0], self.image_size[1], 3, dtype=torch.uint8)
            self.dim = int(self._forward(probe).shape[1])

    def twin(self) -> ImageEncoder:
        """Another handle on the same tower with its own lock, for a second thread that runs batches beside this
        one's (the forward only reads the weights; the indexer's two encoder threads each take one)."""
        other = copy.copy(self)
        other._lock = threading.Lock()
        return other

    def with_forward(self, forward: Any) -> ImageEncoder:
        """Another handle on this tower whose batches run through `forward` (uint8 pixels -> unit vectors, safe
        to call from several threads: an ONNX Runtime session such as encoders.image_int8's)."""
        other = self.twin()
        other._onnx = forward
        return other

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Like encode, for uint8 (n, h, w, 3) arrays already at the tower's size."""
        self.check_pixels(pixels)
        torch = self._torch
        onnx = self._onnx  # ONNX Runtime runs calls from several threads at once: no lock
        with contextlib.nullcontext() if onnx is not None else self._lock, torch.inference_mode():
            return self.in_batches(pixels, onnx if onnx is not None else self._torch_forward)

    def _torch_forward(self, chunk: np.ndarray) -> np.ndarray:
        return self._forward(self._torch.from_numpy(np.ascontiguousarray(chunk))).cpu().numpy()

    def _forward(self, pixels: Any, bf16: bool | None = None) -> Any:
        """uint8 (n, h, w, 3) tensor -> unit vectors; `bf16` overrides the encoder's autocast (False: fp32)."""
        from encoders.runtime import autocast

        unit = self._torch.nn.functional.normalize
        x = pixels_to_input(pixels.to(self.device), self.mean, self.std)
        with autocast(self.device, self.bf16 if bf16 is None else bf16):
            if self.flip_average:  # the tower trained on mirrored photos too: both views in one batch, one vector
                both = unit(self._visual(self._torch.cat([x, x.flip(-1)])).float(), dim=-1)
                feats = both[:len(x)] + both[len(x):]
            else:
                feats = self._visual(x)
        return unit(feats.float(), dim=-1)


def _build_encoder(cfg: Config) -> ImageEncoder:
    from encoders.runtime import configure_threads, resolve_device

    ic = cfg.image_encoder
    device = resolve_device(cfg.runtime)
    configure_threads(cfg.runtime)
    t0 = time.perf_counter()
    ckpt = Path(ic.checkpoint) if ic.checkpoint else None
    if ckpt is not None and ckpt.is_file():
        blob = load_checkpoint(ckpt)
        visual, size, name = tower_from_checkpoint(blob), tuple(blob["image_size"]), str(ckpt)
        mean, std, labels = blob.get("mean", MEAN), blob.get("std", STD), LabelHead.from_checkpoint(blob)
    elif ic.pretrained and (blob := _try_vitrina_checkpoint(ic.pretrained)) is not None:
        visual, size, name = tower_from_checkpoint(blob), tuple(blob["image_size"]), ic.pretrained
        mean, std, labels = blob.get("mean", MEAN), blob.get("std", STD), LabelHead.from_checkpoint(blob)
    elif ic.pretrained:
        visual = build_tower(ic.arch, ic.pretrained)
        size, name = image_size_of(model_config(ic.arch)), f"{ic.arch}:{ic.pretrained}"
        pre = getattr(visual, "preprocess_cfg", None) or {}
        mean, std, labels = tuple(pre.get("mean", MEAN)), tuple(pre.get("std", STD)), None
    else:
        raise ModelUnavailable(
            f"no trained image tower at {ckpt}",
            detail="train one with `vitrina finetune` (writes [finetune].output), or set "
                   "[image_encoder].checkpoint / [image_encoder].pretrained")
    enc = ImageEncoder(visual, size, device, bf16=cfg.runtime.bf16, batch_size=ic.batch_size, name=name,
                       mean=mean, std=std, labels=labels, flip_average=ic.flip_average, autocontrast=ic.autocontrast,
                       trim=ic.trim_borders)
    if ic.runtime == "onnx" and str(device) == "cpu" and ckpt is not None and ckpt.is_file():
        try:
            from encoders.image_onnx import attach

            enc._onnx = attach(enc, ckpt, ic.arch, cfg.data_dir / "models", cfg.runtime.threads or 1)
        except (ImportError, ModelUnavailable) as e:
            log.warning("image tower on ONNX Runtime unavailable (%s): using torch", e)
    if enc.dim != cfg.text_encoder.dim:
        log.warning("image tower %s gives %d-d vectors but the text encoder gives %d-d: text->image search "
                    "will not work with it", name, enc.dim, cfg.text_encoder.dim)
    log.info("image tower %s on %s (%s, %dx%d) loaded in %.1fs", name, device, "bf16" if enc.bf16 else "fp32",
             size[0], size[1], time.perf_counter() - t0)
    return enc


def _try_vitrina_checkpoint(source: str) -> dict[str, Any] | None:
    """The loaded checkpoint if `source` is a file in vitrina's format, else None (an open_clip tag or file)."""
    if not Path(source).is_file():
        return None
    try:
        return load_checkpoint(source)
    except ModelUnavailable:
        return None


def create_image_encoder(cfg: Config) -> PhotoEncoder:
    """The image tower for cfg, built once per (checkpoint, settings) and shared; ModelUnavailable if none."""
    ic = cfg.image_encoder
    ckpt = Path(ic.checkpoint) if ic.checkpoint else None
    stamp = ckpt.stat().st_mtime_ns if ckpt is not None and ckpt.is_file() else None
    key = (str(ckpt), stamp, ic.pretrained, ic.arch, ic.batch_size, ic.flip_average, ic.autocontrast,
           ic.trim_borders, ic.runtime, cfg.runtime.device, cfg.runtime.bf16, cfg.runtime.threads)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = _exported_encoder(cfg) or _build_encoder(cfg)
            _ENCODERS[key] = enc
        return enc


def _exported_encoder(cfg: Config) -> PhotoEncoder | None:
    """On the CPU with [image_encoder].runtime "onnx": the tower an earlier process exported, without torch."""
    from encoders.runtime import surely_cpu

    if cfg.image_encoder.runtime != "onnx" or not surely_cpu(cfg.runtime):
        return None
    try:
        from encoders.image_onnx import open_exported
    except ImportError:
        return None
    return open_exported(cfg)


_STATUS: dict[Any, dict[str, Any]] = {}  # image_tower_status by config and the files' stat: /health asks often


def _stamp(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st is not None else None


def image_tower_status(cfg: Config) -> dict[str, Any]:
    """Cheap (no torch) account of the image tower: is one there, which arch, trained on what, dev metrics.
    Kept until the checkpoint or its card changes (two stat calls instead of reading the card)."""
    ic = cfg.image_encoder
    ckpt = Path(ic.checkpoint) if ic.checkpoint else None
    key = (ic, _stamp(ckpt), _stamp(card_path(ckpt)) if ckpt is not None else None)
    if key not in _STATUS:
        if len(_STATUS) > 64:
            _STATUS.clear()
        _STATUS[key] = _tower_status(cfg)
    return dict(_STATUS[key])


def _tower_status(cfg: Config) -> dict[str, Any]:
    ic = cfg.image_encoder
    ckpt = Path(ic.checkpoint) if ic.checkpoint else None
    status: dict[str, Any] = {"available": False, "checkpoint": str(ckpt) if ckpt else "", "arch": ic.arch,
                              "pretrained": ic.pretrained, "source": None}
    if ckpt is not None and ckpt.is_file():
        status.update(available=True, source="checkpoint", bytes=ckpt.stat().st_size)
        card = card_path(ckpt)
        if card.is_file():
            try:
                info = json.loads(card.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                status["card_error"] = str(e)
            else:
                status.update(arch=info.get("arch", ic.arch), embed_dim=info.get("embed_dim"),
                              image_size=info.get("image_size"), trained_on=info.get("trained_on"),
                              epochs=info.get("epochs_run"), best_epoch=info.get("best_epoch"),
                              dev_metrics=info.get("best_dev_metrics"), complete=info.get("complete"),
                              created=info.get("created"))
        else:
            status["card_error"] = f"no model card at {card}"
        return status
    if ic.pretrained:
        status.update(available=True, source="pretrained")
        return status
    status["reason"] = f"no trained image tower at {ckpt}; run `vitrina finetune`"
    return status
