"""Training data for the image tower: items, hash split, decoded-image and text-embedding caches, the prepared set."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from encoders.photo import to_tower_pixels
from vitrina.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN, DEV = "train", "dev"
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 20_000_000
LABEL_MIN_COUNT = 5  # a label value combination needs this many train items to become a class of the head


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


def split_of(row_split: str, item_id: str) -> str:
    """A catalogue row's split: its own split column where it has one, else `hash_split` of its id. Training and
    the 8-bit tower's calibration both keep to it, so neither fits on rows the evaluation holds back."""
    return row_split or hash_split(item_id)


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


@dataclass
class TrainingData:
    """Everything a training run reads, prepared once: pixels, text targets, splits and labels."""

    pixels: np.ndarray  # uint8 (n, h, w, 3), train items then dev items
    text_emb: np.ndarray  # (n, d) frozen text embeddings, same order
    tid: np.ndarray  # (n,) index of each item's text among the distinct texts
    distinct_texts: list[str]  # the distinct texts, in tid order ([] when read from a pack: no text tuning)
    tr_idx: np.ndarray  # rows used for training (decodable, maybe subsampled)
    dv_idx: np.ndarray  # decodable dev rows
    dev_labels: list[str]
    classes: list[tuple[str, ...]]  # label head classes ([] = no head)
    labels: np.ndarray  # (n,) class index per row, -1 = none
    skipped: list[str]  # ids of the items whose image did not decode
    key: str  # hash of ids, texts and the text model
    ids: list[str] = field(default_factory=list)  # item id per row


def label_classes(items: Sequence[TrainItem], n_train: int, label_fields: Sequence[str]
                  ) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The label head's classes (value combinations with LABEL_MIN_COUNT train items) and each item's class
    index (-1: no head, a missing value or a rare combination)."""
    if not label_fields:
        return [], np.full(len(items), -1, dtype=np.int64)
    counts = Counter(it.label_values for it in items[:n_train] if it.label_values and all(it.label_values))
    classes = sorted(v for v, c in counts.items() if c >= LABEL_MIN_COUNT)
    index = {v: i for i, v in enumerate(classes)}
    return classes, np.array([index.get(it.label_values, -1) for it in items], dtype=np.int64)


def prepare_data(items: Sequence[TrainItem], size: tuple[int, int], cache_dir: Path,
                 encode_text: Callable[[list[str]], np.ndarray], text_model_id: str, label_fields: Sequence[str],
                 max_train_items: int = 0, seed: int = 0, workers: int = 2, progress: bool = True) -> TrainingData:
    """Decoded pixels and text embeddings of the train and dev items (others are dropped unread)."""
    train = [it for it in items if it.split == TRAIN]
    dev = [it for it in items if it.split == DEV]
    if not train or not dev:
        raise ConfigError(f"finetune needs train and dev items, got {len(train)} train and {len(dev)} dev")
    both = train + dev
    pixels, ok = image_cache(both, size, cache_dir, workers=workers, progress=progress)
    texts = [it.text for it in both]
    text_emb = text_embeddings(texts, encode_text, text_model_id, cache_dir, progress=progress)
    skipped = [it for it, good in zip(both, ok) if not good]
    if skipped:
        log.warning("skipped %d items whose image did not decode (e.g. %s)", len(skipped), skipped[0].image)
    n_tr = len(train)
    tr_idx = np.flatnonzero(ok[:n_tr])
    if max_train_items and len(tr_idx) > max_train_items:  # a subset; the cache holds all
        pick = np.random.default_rng(seed).choice(len(tr_idx), max_train_items, replace=False)
        tr_idx = tr_idx[np.sort(pick)]
    dv_idx = n_tr + np.flatnonzero(ok[n_tr:])
    if len(tr_idx) < 2 or len(dv_idx) < 2:
        raise ConfigError("too few decodable train/dev images to train on")
    key = hashlib.sha256(json.dumps([[it.id for it in both], texts, text_model_id]).encode("utf-8")).hexdigest()[:16]
    classes, labels = label_classes(both, n_tr, label_fields)
    distinct, tid = np.unique(np.asarray(texts, dtype=object), return_inverse=True)  # same text, same id
    return TrainingData(classes=classes, labels=labels, pixels=pixels, text_emb=text_emb, tid=tid,
                        distinct_texts=[str(t) for t in distinct], tr_idx=tr_idx, dv_idx=dv_idx,
                        dev_labels=[both[i].label or both[i].id for i in dv_idx], skipped=[s.id for s in skipped],
                        key=key, ids=[it.id for it in both])
