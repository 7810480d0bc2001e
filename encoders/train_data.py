"""Training data for the image tower: items, hash split, decoded-image and text-embedding caches, augmentation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from encoders.image import to_tower_pixels

log = logging.getLogger(__name__)

TRAIN, DEV = "train", "dev"
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 20_000_000


@dataclass(frozen=True)
class TrainItem:
    """One product as training sees it: a local image file, the text the frozen text tower embeds, a label."""

    id: str
    image: str  # local file path
    text: str
    split: str  # train | dev (anything else is never read)
    label: str = ""  # neighbours sharing it count as relevant in dev metrics (e.g. "Tshirts|Men")
    label_values: tuple[str, ...] = ()  # the values of [finetune].label_fields the label head learns to predict


def hash_split(item_id: str) -> str:
    """Deterministic split of an id, the Myntra rule: int(sha256(id)) % 10 -> 0 test, 1 dev, 2-9 train."""
    bucket = int(hashlib.sha256(str(item_id).encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else DEV if bucket == 1 else TRAIN


def items_key(items: Sequence[TrainItem], extra: str = "") -> str:
    """Short stable hash of what an image cache holds (ids, paths, file sizes and times) plus `extra`."""
    h = hashlib.sha256(extra.encode("utf-8"))
    for it in items:
        try:
            st = os.stat(it.image)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{it.id}\t{it.image}\t{stamp}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray | None:
    """The image at path as tower pixels, or None if it is missing, too big or not a decodable image."""
    try:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            return None
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                return None
            img.load()
            return to_tower_pixels(img, size)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None


def _decode_chunk(args: tuple[list[str], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    paths, size = args
    out = np.zeros((len(paths), size[0], size[1], 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        px = decode_image(p, size)
        if px is not None:
            out[i], ok[i] = px, True
    return out, ok


def image_cache(items: Sequence[TrainItem], size: tuple[int, int], cache_dir: Path, workers: int = 2,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, h, w, 3) pixels for every item and a bool mask of those that decoded; built once, then read.

    The cache file is keyed by the items (ids, paths, file stamps) and the resolution, so a changed catalogue
    or tower size builds a new one. Undecodable images are marked False, never raised.
    """
    key = items_key(items, extra=f"{size[0]}x{size[1]}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    pix_file = cache_dir / f"images-{key}-{size[0]}x{size[1]}.npy"
    ok_file = cache_dir / f"images-{key}-{size[0]}x{size[1]}.ok.npy"
    if pix_file.is_file() and ok_file.is_file():
        log.info("image cache hit: %s", pix_file)
        return np.load(pix_file), np.load(ok_file)
    from tqdm import tqdm

    paths = [it.image for it in items]
    chunk = 512
    jobs = [(paths[i:i + chunk], size) for i in range(0, len(paths), chunk)]
    pixels = np.zeros((len(items), size[0], size[1], 3), dtype=np.uint8)
    ok = np.zeros(len(items), dtype=bool)
    bar = tqdm(total=len(items), desc="decode images", unit="img", disable=not progress, mininterval=5)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_chunk, jobs)
            for j, (px, good) in enumerate(results):
                pixels[j * chunk:j * chunk + len(good)], ok[j * chunk:j * chunk + len(good)] = px, good
                bar.update(len(good))
    else:
        for j, job in enumerate(jobs):
            px, good = _decode_chunk(job)
            pixels[j * chunk:j * chunk + len(good)], ok[j * chunk:j * chunk + len(good)] = px, good
            bar.update(len(good))
    bar.close()
    for target, arr in ((pix_file, pixels), (ok_file, ok)):
        tmp = target.with_name(target.stem + ".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, target)
    return pixels, ok


def text_embeddings(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], model_id: str,
                    cache_dir: Path, chunk: int = 2048, progress: bool = True) -> np.ndarray:
    """(n, d) float32 embeddings of texts by the frozen text tower, computed once per (model, texts) and cached."""
    h = hashlib.sha256(model_id.encode("utf-8"))
    h.update(json.dumps(list(texts)).encode("utf-8"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_dir / f"text-{h.hexdigest()[:16]}.npy"
    if file.is_file():
        log.info("text embedding cache hit: %s", file)
        return np.load(file)
    from tqdm import tqdm

    unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
    parts = []
    for start in tqdm(range(0, len(unique), chunk), desc="embed texts", unit="chunk", disable=not progress):
        parts.append(np.asarray(encode([str(t) for t in unique[start:start + chunk]]), dtype=np.float32))
    emb = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    out = emb[inverse] if len(texts) else emb
    tmp = file.with_name(file.stem + ".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, file)
    return out


def augment(pixels: Any, generator: Any, scale: tuple[float, float] = (0.8, 1.0),
            ratio: tuple[float, float] = (0.9, 1.1), flip: float = 0.5, erase: float = 0.0) -> Any:
    """Random resized crop + horizontal flip of a normalised (n, 3, h, w) batch, then with chance `erase` one
    random rectangle (2-20% of the area) set to the mean colour; colours are left alone."""
    import torch

    n = pixels.shape[0]
    dev = pixels.device

    def uniform(lo: float, hi: float) -> Any:
        return torch.rand(n, generator=generator).mul_(hi - lo).add_(lo).to(dev)

    area = uniform(*scale)
    log_r = uniform(float(np.log(ratio[0])), float(np.log(ratio[1])))
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    tx = (uniform(-1.0, 1.0)) * (1.0 - sw)
    ty = (uniform(-1.0, 1.0)) * (1.0 - sh)
    sign = torch.where(torch.rand(n, generator=generator).to(dev) < flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=pixels.dtype)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = torch.nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if erase <= 0:
        return out
    h, w = out.shape[-2:]
    area = uniform(0.02, 0.2)
    r = torch.exp(uniform(float(np.log(0.3)), float(np.log(3.3))))
    eh = (torch.sqrt(area * r) * h).clamp(1, h)
    ew = (torch.sqrt(area / r) * w).clamp(1, w)
    y0 = uniform(0.0, 1.0) * (h - eh)
    x0 = uniform(0.0, 1.0) * (w - ew)
    on = torch.rand(n, generator=generator).to(dev) < erase
    ys = torch.arange(h, device=dev, dtype=out.dtype)[None, :, None]
    xs = torch.arange(w, device=dev, dtype=out.dtype)[None, None, :]
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]) & on[:, None, None])
    return out.masked_fill(box[:, None], 0.0)
