"""Fuse a text and an image embedding from the shared space into one L2-normalised vector (numpy only)."""

from __future__ import annotations

import math

import numpy as np

from vitrina.errors import BadInput

_EPS = 1e-12


def check_weights(text_weight: float, image_weight: float) -> None:
    """Raise BadInput unless both weights are finite, non-negative and not both zero."""
    for name, w in (("text_weight", text_weight), ("image_weight", image_weight)):
        if not isinstance(w, (int, float, np.floating, np.integer)) or isinstance(w, bool) or not math.isfinite(w):
            raise BadInput(f"{name} must be a finite number, got {w!r}")
        if w < 0:
            raise BadInput(f"{name} must be >= 0, got {w!r}")
    if text_weight == 0 and image_weight == 0:
        raise BadInput("text_weight and image_weight cannot both be 0")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise BadInput(f"{name} must be a 2-d array (n, dim), got shape {a.shape}")
    return a


def fuse(text: np.ndarray, image: np.ndarray | None, text_weight: float, image_weight: float) -> np.ndarray:
    """L2-normalised weighted sum of the unit text and unit image vectors; image None gives the text alone.

    If the weighted sum vanishes (opposite vectors, or the text weight is 0 with a zero image),
    the unit text vector is returned, so the result is unit-length whenever the text is non-zero.
    """
    t = np.asarray(text)
    if t.ndim != 1:
        raise BadInput(f"text must be a 1-d vector, got shape {t.shape}")
    img = None
    if image is not None:
        img = np.asarray(image)
        if img.ndim != 1:
            raise BadInput(f"image must be a 1-d vector, got shape {img.shape}")
        img = img[None, :]
    mask = None if img is None else np.ones(1, dtype=bool)
    return fuse_batch(t[None, :], img, text_weight, image_weight, present=mask)[0]


def fuse_batch(texts: np.ndarray, images: np.ndarray | None, text_weight: float, image_weight: float,
               present: np.ndarray | None = None) -> np.ndarray:
    """Row-wise `fuse` for (n, d) arrays. An image row is absent where `present` is False or the row has NaN.

    `images` None means every image is absent. Returns float32 (n, d).
    """
    check_weights(text_weight, image_weight)
    t = _as_matrix(texts, "texts")
    if not np.all(np.isfinite(t)):
        raise BadInput("texts contain NaN or infinite values")
    t_unit = _unit_rows(t)
    n, d = t.shape
    if images is None:
        return t_unit.astype(np.float32)
    im = _as_matrix(images, "images")
    if im.shape != (n, d):
        raise BadInput(f"images shape {im.shape} does not match texts shape {t.shape}")
    has = ~np.any(np.isnan(im), axis=1)
    if present is not None:
        p = np.asarray(present)
        if p.shape != (n,):
            raise BadInput(f"present mask must have shape ({n},), got {p.shape}")
        has &= p.astype(bool)
    clean = np.where(has[:, None], im, 0.0)
    if not np.all(np.isfinite(clean)):
        raise BadInput("images contain infinite values")
    mixed = text_weight * t_unit + image_weight * _unit_rows(clean)
    norms = np.linalg.norm(mixed, axis=1)
    use_mix = has & (norms > _EPS)
    out = np.where(use_mix[:, None], mixed / np.maximum(norms, _EPS)[:, None], t_unit)
    return out.astype(np.float32)
