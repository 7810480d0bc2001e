"""The image tower in 8 bits for the indexer (`[indexer].image_int8`): the fp32 ONNX export of encoders.image_onnx,
statically quantised by ONNX Runtime (weights per channel, activations calibrated on catalogue photos at their
99.999th percentile, the three stem convolutions kept in float), run by ONNX Runtime's integer kernels. On this
2-core box's AVX-512 VNNI it encodes about 1.3x the photos per CPU-second of the bf16 torch tower (README "Figures");
over 1,024 catalogue photos its vectors came within cosine 0.9946 of fp32 torch, where bf16 torch's are within
0.999."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from encoders import image_onnx
from encoders.image_onnx import (OnnxForward, OnnxImageEncoder, export, export_key, normalise, open_model,
                                 sidecar_path, tower_of, write_sidecar)
from encoders.runtime import onnx_session
from vitrina.config import Config
from vitrina.errors import ModelUnavailable

log = logging.getLogger(__name__)

RECIPE = "qdq-per-channel-percentile-99.999-stem-float-v2"  # what a cached model was made by (part of its key)
STEM = ("/conv1/Conv", "/conv2/Conv", "/conv3/Conv")  # the ModifiedResNet stem: coarse in 8 bits (cosine 0.986)
MIN_COSINE = 0.98  # a quantised tower whose calibration vectors fall below this against fp32 torch is refused
CALIBRATION_BATCH = 64


def model_path(cache_dir: Path, checkpoint: Path, arch: str, image_size: tuple[int, int], calibration: str) -> Path:
    """Where the quantised tower of this checkpoint, calibrated on the photos named by `calibration`, lives."""
    key = hashlib.sha256("\n".join([export_key(checkpoint, arch, image_size), RECIPE, calibration]).encode())
    return Path(cache_dir) / f"image-int8-{key.hexdigest()[:16]}.onnx"


def quantize(fp32_model: Path, inputs: list[np.ndarray], out: Path) -> None:
    """Quantise the fp32 ONNX tower to 8 bits into `out`, with `inputs` (normalised float32 batches) as calibration
    data; ModelUnavailable when the quantiser cannot (an operator it does not know how to treat). ONNX Runtime's
    optional pre-processing (symbolic shape inference) is left out: on this tower it changed neither the speed nor
    the vectors, and it fails on some exports."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {"pixels": batch}

    try:
        quantize_static(str(fp32_model), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=list(STEM))
    except Exception as e:  # noqa: BLE001 (the quantiser raises whatever its graph code meets)
        raise ModelUnavailable(f"the image tower could not be quantised: {type(e).__name__}: {e}") from e


def attach(encoder: Any, checkpoint: Path, arch: str, cache_dir: Path, threads: int, calibration: str,
           photos: Callable[[], np.ndarray]) -> OnnxForward:
    """The 8-bit forward of `encoder`'s torch tower: made once into cache_dir from `photos()` (uint8 pixels at the
    tower's size; called only when no model for this checkpoint and `calibration` is cached), opened and checked
    against the torch tower in fp32 on those photos before it is kept (ModelUnavailable below MIN_COSINE or
    without photos)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailable("onnxruntime is not installed")
    size = encoder.image_size
    model_file = model_path(cache_dir, checkpoint, arch, size, calibration)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = not model_file.is_file()
    if made:
        pixels = photos()
        if len(pixels) == 0:
            raise ModelUnavailable("no catalogue photos to calibrate the 8-bit image tower on")
        fp32 = image_onnx.model_path(cache_dir, checkpoint, arch, size)
        if not fp32.is_file():
            export(encoder._visual, size, fp32)
        x = normalise(pixels, encoder.mean, encoder.std)
        if encoder.flip_average:  # calibrated on what it will run: each photo and its mirror
            x = np.concatenate([x, x[..., ::-1]])
        log.info("quantising the image tower to 8 bits on %d calibration photos into %s (once)", len(pixels),
                 model_file)
        with tempfile.TemporaryDirectory(dir=cache_dir) as work:
            made_file = Path(work) / model_file.name
            quantize(fp32, [np.ascontiguousarray(x[i:i + CALIBRATION_BATCH])
                            for i in range(0, len(x), CALIBRATION_BATCH)], made_file)
            forward = OnnxForward(_open(made_file, threads), encoder.mean, encoder.std, encoder.flip_average)
            with torch.inference_mode():  # checked on its calibration photos before it is kept
                ref = encoder._forward(torch.from_numpy(pixels[:256]), bf16=False).numpy()
            cosine = float(np.min(np.sum(forward(pixels[:256]) * ref, axis=1)))
            if cosine < MIN_COSINE:
                raise ModelUnavailable(f"the 8-bit image tower differs from torch (cosine {cosine:.4f} < "
                                       f"{MIN_COSINE})")
            os.replace(made_file, model_file)
        write_sidecar(model_file, encoder)
        log.info("image tower quantised in %.1fs, cosine to torch fp32 >= %.4f on its calibration photos",
                 time.perf_counter() - t0, cosine)
        return forward
    if not sidecar_path(model_file).is_file():  # a process that died between the two files
        write_sidecar(model_file, encoder)
    log.info("image tower in 8 bits from %s", model_file.name)
    return OnnxForward(_open(model_file, threads), encoder.mean, encoder.std, encoder.flip_average)


def _open(model_file: Path, threads: int) -> Any:
    try:
        return onnx_session(model_file, threads)
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types)
        raise ModelUnavailable(f"cannot load the 8-bit image tower {model_file}", detail=str(e)) from e


def open_cached(cfg: Config, calibration: str) -> OnnxImageEncoder | None:
    """cfg's tower in 8 bits as an earlier process made it for this checkpoint and `calibration`, opened from its
    file and sidecar without building the torch tower (0.09 s instead of 2.7 s); None when it was not made yet."""
    located = tower_of(cfg)
    if located is None:
        return None
    checkpoint, image_size = located
    model_file = model_path(cfg.data_dir / "models", checkpoint, cfg.image_encoder.arch, image_size, calibration)
    return open_model(cfg, model_file, image_size, "8-bit")
