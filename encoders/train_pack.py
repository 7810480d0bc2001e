"""A training pack: the prepared train and dev set in one portable file, for training on another machine.

A GPU machine has no catalogue, photos or text model; the pack carries what training reads: each photo at the
tower's size as lossy WebP (about 0.8 KB at 64x64, mean error under 2 grey levels), the frozen text targets as
int8 rows with a scale each (cosine to the float rows > 0.999), ids, splits, label classes and the data key.
Test rows never enter a pack: it is built from the prepared set, which holds train and dev rows only.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from encoders.train_data import TrainingData
from vitrina.errors import ConfigError

log = logging.getLogger(__name__)

PACK_FORMAT = "vitrina-training-pack"
PACK_VERSION = 1
WEBP_QUALITY = 90


def _encode_webp(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "WEBP", quality=WEBP_QUALITY, method=6)
    return buf.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError):  # a Pillow built without WebP: OpenCV, where installed, reads it
        import cv2

        bgr = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise
        return np.ascontiguousarray(bgr[..., ::-1])


def quantise_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and a float32 scale per row such that int8 x scale approximates each row."""
    scale = np.maximum(np.abs(rows).max(axis=1), 1e-12) / 127.0
    return np.round(rows / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def write_pack(data: TrainingData, path: str | os.PathLike[str], workers: int = 2) -> Path:
    """Write the train and dev rows of `data` to one .npz file (atomically); returns its path."""
    path = Path(path)
    rows = np.concatenate([data.tr_idx, data.dv_idx])
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        blobs = list(pool.map(_encode_webp, (data.pixels[i] for i in rows)))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    used_texts, tid = np.unique(data.tid[rows], return_inverse=True)
    q, scale = quantise_rows(data.text_emb[rows][np.unique(tid, return_index=True)[1]])
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "key": data.key, "n_train": int(len(data.tr_idx)),
            "ids": [data.ids[i] for i in rows] if data.ids else [], "dev_labels": list(data.dev_labels),
            "classes": [list(c) for c in data.classes], "skipped": list(data.skipped),
            "image_size": list(data.pixels.shape[1:3])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
             images=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets, text_q=q, text_scale=scale,
             tid=tid.astype(np.int32), labels=data.labels[rows].astype(np.int32))
    os.replace(tmp, path)
    log.info("wrote %s: %d train + %d dev photos, %.1f MB", path, len(data.tr_idx), len(data.dv_idx),
             path.stat().st_size / 1e6)
    return path


def read_pack(path: str | os.PathLike[str], workers: int = 8) -> TrainingData:
    """The TrainingData a pack holds (photos decoded in threads); ConfigError when it is not a pack."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if meta.get("format") != PACK_FORMAT or int(meta.get("version", 0)) > PACK_VERSION:
                raise ConfigError(f"{path} is not a {PACK_FORMAT} (version <= {PACK_VERSION})")
            images, offsets = z["images"].tobytes(), z["offsets"]
            text = z["text_q"].astype(np.float32) * z["text_scale"][:, None]
            tid, labels = z["tid"].astype(np.int64), z["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot read training pack {path}", detail=str(e)) from e
    text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    n = len(offsets) - 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pixels = np.stack(list(pool.map(lambda i: _decode(images[offsets[i]:offsets[i + 1]]), range(n))))
    n_train = int(meta["n_train"])
    return TrainingData(pixels=pixels, text_emb=text[tid], tid=tid, distinct_texts=[],
                        tr_idx=np.arange(n_train), dv_idx=np.arange(n_train, n), dev_labels=list(meta["dev_labels"]),
                        classes=[tuple(c) for c in meta["classes"]], labels=labels, skipped=list(meta["skipped"]),
                        key=str(meta["key"]), ids=list(meta["ids"]))
