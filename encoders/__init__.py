"""Encoder factories (text, image) and fusion; torch-free at import, models load on first use."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encoders.fusion import fuse, fuse_batch
from vitrina.config import EXPORTED_PRECISIONS, Config
from vitrina.errors import ModelUnavailable

if TYPE_CHECKING:
    from encoders.text import TextEncoder

__all__ = ["create_image_encoder", "create_text_encoder", "fuse", "fuse_batch", "image_tower_status",
           "text_encoder_key", "tuned_layers_stamp"]

log = logging.getLogger(__name__)
_TEXT_CACHE: dict[tuple[Any, ...], TextEncoder] = {}
_TEXT_LOCK = threading.Lock()


def tuned_layers_stamp(cfg: Config) -> int | None:
    """The modification time of [text_encoder].tuned_layers (None: none, or missing): a retrained file is new."""
    tc = cfg.text_encoder
    tuned = Path(tc.tuned_layers) if tc.tuned_layers else None
    return tuned.stat().st_mtime_ns if tuned is not None and tuned.is_file() else None


def text_encoder_key(cfg: Config) -> tuple[Any, ...]:
    """What makes two text encoders the same in this process: model, tuned layers file (and its time: retrained =
    new), settings ([runtime] names the device; "auto" resolves the same way every time here, and without torch,
    which the int8 encoder never loads)."""
    from encoders.text import resolve_model_path

    tc = cfg.text_encoder
    return (resolve_model_path(tc.model), tc, tuned_layers_stamp(cfg), cfg.runtime)


def create_text_encoder(cfg: Config) -> TextEncoder:
    """The text encoder for cfg, built once per (model, tuned layers, device, settings) and shared by every caller:
    torch, ONNX Runtime for precision "int8" (encoders.text_onnx) or OpenVINO for "ov-int8" (encoders.text_openvino,
    falling back to "int8"); the same `encode`."""
    from encoders.text import TextEncoder

    key = text_encoder_key(cfg)
    with _TEXT_LOCK:
        encoder = _TEXT_CACHE.get(key)
        if encoder is None:
            precision = cfg.text_encoder.precision
            encoder = _ov_text_encoder(cfg) if precision == "ov-int8" else None
            if encoder is None and precision in EXPORTED_PRECISIONS:
                encoder = _int8_text_encoder(cfg)
            if encoder is None:
                tc = cfg.text_encoder
                encoder = TextEncoder(replace(tc, precision="bf16") if precision in EXPORTED_PRECISIONS else tc,
                                      cfg.runtime)
            _TEXT_CACHE[key] = encoder
        return encoder


def _int8_text_encoder(cfg: Config) -> Any:
    """encoders.text_onnx's encoder (exported once into [data].dir/models), or None with a warning when ONNX
    Runtime is missing or the export is refused: the caller then runs torch at bf16."""
    try:
        from encoders.text_onnx import create

        return create(cfg.text_encoder, cfg.runtime, cfg.data_dir / "models")
    except (ImportError, ModelUnavailable) as e:
        log.warning("text encoder precision int8 unavailable (%s): using torch bf16", e)
        return None


def _ov_text_encoder(cfg: Config) -> Any:
    """encoders.text_openvino's encoder (exported once into [data].dir/models), or None with a warning when
    OpenVINO is missing or the export is refused: the caller then tries ONNX Runtime ("int8")."""
    try:
        from encoders.text_openvino import create

        return create(cfg.text_encoder, cfg.runtime, cfg.data_dir / "models")
    except (ImportError, ModelUnavailable) as e:
        log.warning("text encoder precision ov-int8 unavailable (%s): using int8 on ONNX Runtime", e)
        return None


def query_side(cfg: Config) -> Config:
    """cfg as the search service builds its models: [search].torch_threads intra-op threads when set, the text
    encoder at [search].query_precision and the image tower on [search].photo_runtime (int8: the 8-bit tower of
    `create_photo_encoder`, or fp32 ONNX until a reindex has made it)."""
    sc = cfg.search
    runtime = {"threads": sc.torch_threads} if sc.torch_threads > 0 else {}
    photo = "onnx" if sc.photo_runtime == "int8" else sc.photo_runtime
    return cfg.replace(runtime=runtime, text_encoder={"precision": sc.query_precision},
                       image_encoder={"runtime": photo})


def calibration_key(cfg: Config) -> str:
    """What names the 8-bit tower's calibration photos: the catalogue file and how many were taken."""
    return f"{Path(cfg.catalogue.path).resolve()}|{max(1, cfg.indexer.calibration_photos)}"


def cached_eight_bit_tower(cfg: Config, run: Config) -> Any | None:
    """The 8-bit tower ([indexer].image_int8) an earlier reindex made for cfg's checkpoint and catalogue, opened
    without torch at `run`'s settings; None when there is none yet, ONNX Runtime is missing or models run on a GPU."""
    from encoders.runtime import surely_cpu

    if not cfg.image_encoder.checkpoint or not surely_cpu(run.runtime):
        return None
    try:
        from encoders.image_int8 import open_cached
    except ImportError:
        return None
    return open_cached(run, calibration_key(cfg))


def create_photo_encoder(cfg: Config) -> Any:
    """The search service's tower for uploaded photos: with [search].photo_runtime "int8" the 8-bit tower the
    index was built with (where a reindex has made it), else create_image_encoder(query_side(cfg))."""
    qc = query_side(cfg)
    if cfg.search.photo_runtime == "int8":
        enc = cached_eight_bit_tower(cfg, qc)
        if enc is not None:
            return enc
        if image_tower_status(qc).get("available"):  # else create_image_encoder says there is no tower
            log.warning("[search].photo_runtime int8: no 8-bit tower made yet (a reindex with [indexer].image_int8 "
                        "makes it): uploaded photos go through the fp32 ONNX tower")
    return create_image_encoder(qc)


def prepare_query_models(cfg: Config) -> None:
    """Export the search service's models now (int8 / ov-int8 text encoder for queries and for items written through
    the API ([live].text_precision), fp32 image tower and its sidecar) if they are not there yet, from a process that
    has torch loaded anyway (a reindex), so that serving processes load them without torch. Best effort: a failure
    is logged, and the service exports on first use instead."""
    qc = query_side(cfg)
    try:
        for precision in dict.fromkeys((qc.text_encoder.precision, cfg.live.text_precision)):
            if precision in EXPORTED_PRECISIONS:
                create_text_encoder(qc.replace(text_encoder={"precision": precision}))
        if qc.image_encoder.runtime == "onnx" and image_tower_status(qc).get("available"):
            create_image_encoder(qc)
    except (ModelUnavailable, ImportError, OSError) as e:
        log.warning("query models not prepared (%s): the service prepares them on first use", e)


def create_image_encoder(cfg: Config) -> Any:
    """The image tower for cfg (see encoders.image); raises ModelUnavailable when none is trained."""
    from encoders.image import create_image_encoder as create

    return create(cfg)


def image_tower_status(cfg: Config) -> dict[str, Any]:
    """Whether a trained image tower is available for cfg, and why not (see encoders.image)."""
    from encoders.image import image_tower_status as status

    return status(cfg)
