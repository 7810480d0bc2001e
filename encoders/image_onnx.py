"""The image tower on ONNX Runtime (`[image_encoder].runtime = "onnx"`), for uploaded photos: the trained torch
tower exported once to fp32 ONNX, then run with no torch in the forward; on this 2-core box one photo (and its
mirror) takes about 6.5 ms of CPU against 15 ms for the bf16 torch tower, with the same vector as fp32 torch."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders.image import image_tower_status
from encoders.photo import LabelHead, PhotoEncoder
from encoders.runtime import onnx_session, package_versions
from vitrina.config import Config
from vitrina.errors import ModelUnavailable

log = logging.getLogger(__name__)

OPSET = 17
MIN_COSINE = 0.999  # an export whose probe vectors fall below this against the fp32 torch tower is refused


def export_key(checkpoint: Path, arch: str, image_size: tuple[int, int]) -> str:
    """What the exported file depends on: the checkpoint file (path, size, time), the architecture, versions."""
    st = checkpoint.stat()
    parts = [str(checkpoint.resolve()), str(st.st_size), str(st.st_mtime_ns), arch, repr(image_size), str(OPSET)]
    parts.append(package_versions(("torch", "onnxruntime")))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def model_path(cache_dir: Path, checkpoint: Path, arch: str, image_size: tuple[int, int]) -> Path:
    """Where the export of this checkpoint lives (its sidecar beside it, see sidecar_path)."""
    return Path(cache_dir) / f"image-{export_key(checkpoint, arch, image_size)}.onnx"


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (n, h, w, 3) -> float32 (n, 3, h, w) scaled to [0, 1] and normalised: encoders.image.pixels_to_input
    in numpy."""
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class OnnxForward:
    """uint8 pixels -> L2-normalised tower vectors, as ImageEncoder._forward computes them (mirror averaging
    included), through one ONNX Runtime session; `session.run` may be called from several threads."""

    def __init__(self, session: Any, mean: Sequence[float], std: Sequence[float], flip_average: bool) -> None:
        self.session = session
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip_average = flip_average
        self._input = session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = normalise(pixels, self.mean, self.std)
        if self.flip_average:
            both = _unit(self.session.run(None, {self._input: np.concatenate([x, x[..., ::-1]])})[0])
            return _unit(both[:len(x)] + both[len(x):]).astype(np.float32)
        return _unit(self.session.run(None, {self._input: x})[0]).astype(np.float32)


def export(visual: Any, image_size: tuple[int, int], out: Path) -> None:
    """The torch tower in fp32 -> ONNX (batch size free), written atomically to `out`."""
    import copy
    import warnings

    import torch

    model = copy.deepcopy(visual).float().eval()
    probe = torch.zeros(1, 3, image_size[0], image_size[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        # not under inference_mode: there PyTorch's attention takes a fused fast path that ONNX cannot express
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (probe,), tmp, dynamo=False, input_names=["pixels"],
                                  output_names=["vector"], dynamic_axes={"pixels": {0: "n"}, "vector": {0: "n"}},
                                  opset_version=OPSET, verbose=False)
            except Exception as e:  # an operator ONNX lacks: the caller keeps the torch tower
                raise ModelUnavailable(f"the image tower could not be exported to ONNX: {e}") from e
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def attach(encoder: Any, checkpoint: Path, arch: str, cache_dir: Path, threads: int) -> OnnxForward:
    """Export `encoder`'s tower once into cache_dir, open it, check it against the torch tower in fp32 on probe
    photos (ModelUnavailable below MIN_COSINE) and return the forward the encoder then uses."""
    import importlib.util

    import torch

    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailable("onnxruntime is not installed")

    model_file = model_path(cache_dir, checkpoint, arch, encoder.image_size)
    t0 = time.perf_counter()
    if not model_file.is_file():
        log.info("exporting the image tower to %s (once)", model_file)
        export(encoder._visual, encoder.image_size, model_file)
    try:
        session = onnx_session(model_file, threads)
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types)
        raise ModelUnavailable(f"cannot load the ONNX image tower {model_file}", detail=str(e)) from e
    forward = OnnxForward(session, encoder.mean, encoder.std, encoder.flip_average)
    probes = np.random.default_rng(0).integers(0, 256, size=(4, *encoder.image_size, 3), dtype=np.uint8)
    probes[0] = 255  # a blank studio background
    with torch.inference_mode():  # the torch tower's own forward (mirror averaging included), in fp32
        ref = encoder._forward(torch.from_numpy(probes), bf16=False).numpy()
    cosine = float(np.min(np.sum(forward(probes) * ref, axis=1)))
    if cosine < MIN_COSINE:
        raise ModelUnavailable(f"the ONNX image tower differs from torch (cosine {cosine:.4f} < {MIN_COSINE})")
    write_sidecar(model_file, encoder)
    log.info("image tower as fp32 ONNX (%s) loaded in %.1fs, cosine to torch fp32 %.6f", model_file.name,
             time.perf_counter() - t0, cosine)
    return forward


def sidecar_path(model_file: Path) -> Path:
    """What a process needs besides the ONNX file to run the tower without torch: sizes, normalisation, label head."""
    return model_file.with_suffix(".npz")


def write_sidecar(model_file: Path, encoder: Any) -> None:
    """Write sidecar_path(model_file) for `encoder` (atomically; once the export has passed its check)."""
    labels = encoder.labels
    arrays: dict[str, np.ndarray] = {
        "image_size": np.asarray(encoder.image_size, dtype=np.int64), "dim": np.asarray(encoder.dim, dtype=np.int64),
        "mean": np.asarray(encoder.mean, dtype=np.float32), "std": np.asarray(encoder.std, dtype=np.float32)}
    if labels is not None:
        arrays.update(label_fields=np.asarray(labels.fields, dtype=str),
                      label_classes=np.asarray(labels.classes, dtype=str).reshape(len(labels.classes), -1),
                      label_prototypes=labels.prototypes.astype(np.float32),
                      label_scale=np.asarray(labels.scale, dtype=np.float32))
    out = sidecar_path(model_file)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxImageEncoder(PhotoEncoder):
    """The tower as an earlier process exported and checked it, run by ONNX Runtime alone: no torch is imported
    (a search worker that answers photos holds about 0.9 GB less). `.encode` is safe to call from several threads."""

    def __init__(self, forward: OnnxForward, image_size: tuple[int, int], dim: int, name: str,
                 labels: LabelHead | None, batch_size: int, autocontrast: bool, trim: bool) -> None:
        self._onnx = forward
        self.image_size, self.dim, self.name, self.labels = image_size, dim, name, labels
        self.mean, self.std = forward.mean, forward.std
        self.flip_average, self.autocontrast, self.trim = forward.flip_average, autocontrast, trim
        self.batch_size = max(1, int(batch_size))
        self.bf16 = False

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.check_pixels(pixels)
        return self.in_batches(pixels, self._onnx)


def open_exported(cfg: Config) -> OnnxImageEncoder | None:
    """cfg's tower from its ONNX export and sidecar, when an earlier process wrote them for this very checkpoint
    (the export key covers its path, size and time); None otherwise (the caller loads it with torch, which exports)."""
    located = tower_of(cfg)
    if located is None:
        return None
    checkpoint, image_size = located
    return open_model(cfg, model_path(cfg.data_dir / "models", checkpoint, cfg.image_encoder.arch, image_size),
                      image_size, "fp32")


def tower_of(cfg: Config) -> tuple[Path, tuple[int, int]] | None:
    """(checkpoint, image size) of cfg's trained tower as its card tells them, without torch; None when there is
    none or ONNX Runtime is not installed."""
    import importlib.util

    ic = cfg.image_encoder
    checkpoint = Path(ic.checkpoint) if ic.checkpoint else None
    size = image_tower_status(cfg).get("image_size")
    if checkpoint is None or not checkpoint.is_file() or not size or importlib.util.find_spec("onnxruntime") is None:
        return None
    return checkpoint, (int(size[0]), int(size[1]))


def open_model(cfg: Config, model_file: Path, image_size: tuple[int, int], kind: str) -> OnnxImageEncoder | None:
    """The tower in `model_file` (one of its exports: `kind` fp32, or encoders.image_int8's 8 bits) with its
    sidecar, run by ONNX Runtime alone at cfg's settings; None when either file is missing or unreadable."""
    ic = cfg.image_encoder
    if not model_file.is_file() or not sidecar_path(model_file).is_file():
        return None
    t0 = time.perf_counter()
    try:
        with np.load(sidecar_path(model_file), allow_pickle=False) as side:
            if tuple(int(v) for v in side["image_size"]) != image_size:
                return None
            labels = LabelHead([str(f) for f in side["label_fields"]], side["label_classes"].tolist(),
                               side["label_prototypes"], float(side["label_scale"])) \
                if "label_prototypes" in side.files else None
            mean, std, dim = side["mean"].tolist(), side["std"].tolist(), int(side["dim"])
        session = onnx_session(model_file, cfg.runtime.threads or 1)
    except Exception as e:  # noqa: BLE001 (a damaged file: the torch path exports it again)
        log.warning("cannot open the exported image tower %s (%s): loading it with torch", model_file, e)
        return None
    encoder = OnnxImageEncoder(OnnxForward(session, mean, std, ic.flip_average), image_size, dim,
                               str(Path(ic.checkpoint)), labels, ic.batch_size, ic.autocontrast, ic.trim_borders)
    log.info("image tower %s as %s ONNX (%s) loaded without torch in %.1fs", ic.checkpoint, kind, model_file.name,
             time.perf_counter() - t0)
    return encoder
