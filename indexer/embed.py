"""Products -> ItemRecords: images decoded in a thread pool, text and image towers run side by side, then fused."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders import (cached_eight_bit_tower, calibration_key, create_image_encoder, create_text_encoder,
                      fuse_batch, image_tower_status, text_encoder_key, tuned_layers_stamp)
from indexer.reader import Product, Skipped, image_base
from search.store.interface import ItemRecord
from vitrina.config import Config
from vitrina.errors import ConfigError, ModelUnavailable, VitrinaError
from vitrina.images import load_image

log = logging.getLogger(__name__)


class StageTimer:
    """Seconds spent per stage, summed over threads (so decode time can exceed wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in self.seconds.items()}


def tower_runtime(cfg: Config) -> Config:
    """cfg with [runtime].threads split between two encoder threads (one torch thread each on 2 cores)."""
    if cfg.indexer.parallel_encode and cfg.runtime.threads > 1:
        return cfg.replace(runtime={"threads": max(1, cfg.runtime.threads // 2)})
    return cfg


def index_side(cfg: Config) -> Config:
    """cfg as the index embeds photos: the mirror view of [image_encoder].flip_average only where
    [indexer].mirror_view keeps it (queries always take both views when flip_average is on)."""
    if cfg.image_encoder.flip_average and not cfg.indexer.mirror_view:
        return cfg.replace(image_encoder={"flip_average": False})
    return cfg


def live_side(cfg: Config) -> Config:
    """cfg as items written through the API are embedded: the text encoder at [live].text_precision where set
    (its vectors then carry their own model stamp, so a reindex embeds the items it replays again)."""
    if cfg.live.text_precision:
        return cfg.replace(text_encoder={"precision": cfg.live.text_precision})
    return cfg


def load_image_encoder(cfg: Config) -> tuple[Any | None, str]:
    """The trained image tower as the index runs it, or (None, why not): never a randomly initialised one."""
    status = image_tower_status(cfg)
    if not status.get("available"):
        return None, str(status.get("reason") or "no trained image tower")
    run = tower_runtime(index_side(cfg))
    enc = cached_eight_bit_tower(cfg, run) if cfg.indexer.image_int8 else None
    if enc is None:
        try:
            enc = create_image_encoder(run)
        except ModelUnavailable as e:
            return None, e.message + (f" ({e.detail})" if e.detail else "")
        if cfg.indexer.image_int8:
            enc = eight_bit_tower(cfg, enc)
    if enc.dim != cfg.text_encoder.dim:
        raise ConfigError(f"the image tower gives {enc.dim}-d vectors but the text encoder {cfg.text_encoder.dim}-d",
                          detail="the towers must share one space to be fused; retrain with `vitrina finetune`")
    return enc, ""


def eight_bit_tower(cfg: Config, enc: Any) -> Any:
    """`enc` running in 8 bits (encoders.image_int8) where it is the torch tower on the CPU, calibrated on the
    catalogue's photos the first time; `enc` itself elsewhere (a GPU runs bf16 faster) or, with a warning, when
    the 8-bit tower cannot be made."""
    from encoders.image import ImageEncoder

    if not isinstance(enc, ImageEncoder) or str(enc.device) != "cpu" or not cfg.image_encoder.checkpoint:
        return enc
    from encoders import image_int8

    n = max(1, cfg.indexer.calibration_photos)
    try:
        forward = image_int8.attach(enc, Path(cfg.image_encoder.checkpoint), cfg.image_encoder.arch,
                                    cfg.data_dir / "models", tower_runtime(cfg).runtime.threads or 1,
                                    calibration=calibration_key(cfg), photos=lambda: calibration_photos(cfg, enc, n))
    except (ImportError, ModelUnavailable) as e:
        log.warning("the 8-bit image tower is unavailable (%s): indexing with %s", e, enc.name)
        return enc
    return enc.with_forward(forward)


HELD_BACK = ("dev", "test")  # catalogue splits nothing is fitted on, the 8-bit tower's calibration included


def calibration_photos(cfg: Config, enc: Any, n: int) -> np.ndarray:
    """(<= n, h, w, 3) uint8: photos of `n` catalogue products spread evenly over its rows that are not held back
    (HELD_BACK splits; a catalogue without a split column splits by id as `vitrina finetune` does), as the tower
    reads them, fetched and decoded [indexer].decode_workers at a time (a catalogue of photo URLs); unreadable ones
    are left out."""
    from encoders.train_data import split_of
    from indexer.reader import read_catalogue

    rows = [p for p in read_catalogue(cfg)
            if isinstance(p, Product) and p.image and split_of(p.split, p.id) not in HELD_BACK]
    picked = [rows[int(i)] for i in np.unique(np.linspace(0, len(rows) - 1, num=min(n, len(rows))).round())] \
        if rows else []
    base = image_base(cfg)

    def read(p: Product) -> np.ndarray | None:
        try:
            return enc.pixels(load_image(p.image, base, cfg.indexer, fit=enc.decode_size))
        except Exception as e:  # noqa: BLE001 - a bad photo is left out of the calibration, as the indexer skips it
            log.debug("calibration photo %s left out: %s", p.image, e)
            return None

    with ThreadPoolExecutor(max(1, cfg.indexer.decode_workers), thread_name_prefix="calibrate") as pool:
        out = [px for px in pool.map(read, picked) if px is not None]
    return np.stack(out) if out else np.empty((0, *enc.image_size, 3), dtype=np.uint8)


def tower_identity(image_tower: str) -> str:
    """The tower's name, with its file's modification time when it is a file: a retrained tower is a new tower."""
    tower_file = Path(image_tower) if image_tower else None
    if tower_file is not None and tower_file.is_file():
        return f"{image_tower}@{tower_file.stat().st_mtime_ns}"
    return image_tower


def model_stamp(cfg: Config, image_tower: str) -> str:
    """What makes an item's record (vectors, keywords, payload) the same when built again: the catalogue mapping,
    the text model and its tuned layers, the fusion weights and the image tower as the index runs it (16 hex
    digits)."""
    mapping = dataclasses.replace(cfg.catalogue, path="", format="")
    parts: tuple[Any, ...] = (mapping, cfg.text_encoder, tuned_layers_stamp(cfg), cfg.fusion,
                              index_side(cfg).image_encoder, tower_identity(image_tower))
    if cfg.indexer.image_int8:  # the 8-bit tower's vectors (the stamps of indexes without it stay as they were)
        parts += ("image_int8",)
    settings = repr(parts)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


TEXT_CACHE = 8192  # texts whose vectors an Embedder keeps (1.5 KB each at 384-d)

_TWINS: dict[Any, Any] = {}
_TWINS_LOCK = threading.Lock()


def _text_twin(cfg: Config) -> Any:
    """A second, separately locked copy of the text encoder (cached like create_text_encoder's)."""
    from encoders.text import TextEncoder

    key = text_encoder_key(cfg)
    with _TWINS_LOCK:
        if key not in _TWINS:
            _TWINS[key] = TextEncoder(cfg.text_encoder, cfg.runtime)
        return _TWINS[key]


class Embedder:
    """Turns batches of Products into ItemRecords (vectors text, fused and, with a trained tower, image).

    Every product's image is decoded and checked, with or without an image tower, so the same items
    are indexed either way: a missing, truncated or non-image file makes the item Skipped("bad image").
    """

    def __init__(self, cfg: Config, image_encoder: Any | None, timer: StageTimer | None = None,
                 bulk: bool = False) -> None:
        from encoders.runtime import configure_threads

        self.cfg = cfg
        run = tower_runtime(cfg)
        self.text_encoder = create_text_encoder(run)
        if "torch" in sys.modules:  # (int8 text and an 8-bit tower run without it: then there is nothing to set)
            configure_threads(run.runtime)  # cached encoders may have been built with other settings
        parallel = cfg.indexer.parallel_encode and cfg.runtime.threads > 1
        # In bulk, a second copy of the text model lets the main thread take a share of each batch's texts:
        # half when there is no image tower, else what balances its image work against the text thread
        # (two threads with one torch thread each beat one op on two threads, more so on a busy machine) ...
        self._text_twin: Any | None = None
        if parallel and bulk:
            self._text_twin = _text_twin(run)
        self._per_item: dict[str, float] = {}  # moving averages: seconds per item of "text" and "image"
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # recent text -> vector (LRU)
        self._cache_lock = threading.Lock()
        self.image_encoder = image_encoder
        # ... and, when the catalogue's texts are the lighter work, a second handle on the image tower lets the
        # text thread take a share of each batch's photos.
        self._image_twin = image_encoder.twin() if self._text_twin is not None and image_encoder is not None \
            else None
        self.stamp = model_stamp(cfg, image_encoder.name if image_encoder is not None else "")
        self.timer = timer or StageTimer()
        self.base = image_base(cfg)
        self.dims = {"text": self.text_encoder.dim, "image": self.text_encoder.dim, "fused": self.text_encoder.dim}
        self._decode_pool = ThreadPoolExecutor(max(1, cfg.indexer.decode_workers), thread_name_prefix="decode")
        self._text_pool = ThreadPoolExecutor(1, thread_name_prefix="text") if parallel else None

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        if self._text_pool is not None:
            self._text_pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- images ---------------------------------------------------------------------------------
    def submit_images(self, products: Sequence[Product]) -> list[Future[Any]]:
        """Start decoding the batch's images now (call it a batch ahead so decoding overlaps encoding)."""
        return [self._decode_pool.submit(self._decode, p) for p in products]

    def _decode(self, product: Product) -> np.ndarray | Skipped | None:
        """Pixels at the tower's size (None when there is no tower or no image), or Skipped for a bad image."""
        if not product.image:
            return None
        t0 = time.perf_counter()
        try:
            if self.image_encoder is None:
                load_image(product.image, self.base, self.cfg.indexer)  # still checked: a bad image is skipped
                return None
            img = load_image(product.image, self.base, self.cfg.indexer, fit=self.image_encoder.decode_size)
            return self.image_encoder.pixels(img)
        except VitrinaError as e:
            return Skipped(product.id, f"bad image: {e.message}", product.row)
        except Exception as e:  # noqa: BLE001 - a bad image must never abort the batch
            return Skipped(product.id, f"bad image: {type(e).__name__}: {e}", product.row)
        finally:
            self.timer.add("decode", time.perf_counter() - t0)

    # ---- the batch ------------------------------------------------------------------------------
    def shares(self, texts: int, images: int) -> tuple[float, float]:
        """(fraction of the batch's `texts` the main thread encodes with the twin text model, fraction of its
        `images` photos the text thread encodes with the image twin) that gives both threads the same work by the
        per-item times learnt so far: texts move to the main thread when there is more text work than photo work,
        photos to the text thread when there is less (a catalogue that repeats its texts has little)."""
        if self._text_twin is None:
            return 0.0, 0.0
        if self.image_encoder is None:
            return 0.5, 0.0
        t, i = self._per_item.get("text"), self._per_item.get("image")
        if not t or i is None:
            return 0.0, 0.0
        text_s, image_s = t * texts, i * images
        if text_s >= image_s:
            return (text_s - image_s) / (2 * text_s) if text_s > 0 else 0.0, 0.0  # (1-m)T == I + mT
        return 0.0, min(0.5, (image_s - text_s) / (2 * image_s))  # T + qI == (1-q)I

    def _learn(self, what: str, seconds: float, items: int) -> None:
        if items > 0:
            old = self._per_item.get(what)
            now = seconds / items
            self._per_item[what] = now if old is None else 0.7 * old + 0.3 * now

    def _known_texts(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The vectors of the batch's texts this Embedder has encoded lately, and its other distinct texts in
        order: a catalogue repeats many texts (28% of the fashion one), and one text is one vector."""
        vectors_of: dict[str, np.ndarray] = {}
        todo: list[str] = []
        with self._cache_lock:
            for text in dict.fromkeys(texts):
                hit = self._text_cache.get(text)
                if hit is None:
                    todo.append(text)
                else:
                    self._text_cache.move_to_end(text)
                    vectors_of[text] = hit
        return vectors_of, todo

    def _remember_texts(self, texts: Sequence[str], vectors: np.ndarray, vectors_of: dict[str, np.ndarray]) -> None:
        with self._cache_lock:
            for text, vec in zip(texts, vectors):
                vec = np.array(vec, dtype=np.float32)  # its own row, so the cache never pins a whole batch
                vec.setflags(write=False)
                vectors_of[text] = vec
                self._text_cache[text] = vec
            while len(self._text_cache) > TEXT_CACHE:
                self._text_cache.popitem(last=False)

    def _encode_images(self, pixels: np.ndarray, encoder: Any = None) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return (encoder or self.image_encoder).encode_pixels(pixels)
        finally:
            self.timer.add("image", time.perf_counter() - t0)

    def _timed_text(self, texts: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._encode_text(texts)
        self._learn("text", time.perf_counter() - t0, len(texts))
        return out

    def _encode_text(self, texts: list[str], encoder: Any = None) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return (encoder or self.text_encoder).encode(texts)
        finally:
            self.timer.add("text", time.perf_counter() - t0)

    def embed(self, products: Sequence[Product], images: list[Future[Any]] | None = None
              ) -> tuple[list[ItemRecord], list[Skipped]]:
        """Records for the products whose image is fine (or absent), Skipped for the others."""
        if not products:
            return [], []
        futures = images if images is not None else self.submit_images(products)
        texts = [p.text for p in products]
        vectors_of, todo = self._known_texts(texts)
        photos = sum(1 for p in products if p.image) if self.image_encoder is not None else 0
        main_share, helper_share = self.shares(len(todo), photos)
        split = len(todo) - round(len(todo) * main_share)
        pending = self._text_pool.submit(self._timed_text, todo[:split]) if self._text_pool and split else None
        t0 = time.perf_counter()
        decoded = [f.result() for f in futures]
        self.timer.add("wait_decode", time.perf_counter() - t0)
        keep = [i for i, d in enumerate(decoded) if not isinstance(d, Skipped)]
        skips = [d for d in decoded if isinstance(d, Skipped)]
        with_pixels = [i for i in keep if isinstance(decoded[i], np.ndarray)]
        image_vecs = np.full((len(products), self.dims["image"]), np.nan, dtype=np.float32)
        if with_pixels and self.image_encoder is not None:
            pixels = np.stack([decoded[i] for i in with_pixels])
            mine = len(pixels) - round(len(pixels) * helper_share) if self._image_twin is not None else len(pixels)
            helped = self._text_pool.submit(self._encode_images, pixels[mine:], self._image_twin) \
                if mine < len(pixels) and self._text_pool is not None else None
            t1 = time.perf_counter()
            image_vecs[with_pixels[:mine]] = self._encode_images(pixels[:mine])
            self._learn("image", time.perf_counter() - t1, mine)
            if helped is not None:
                image_vecs[with_pixels[mine:]] = helped.result()
        rest = self._encode_text(todo[split:], self._text_twin) if split < len(todo) else None
        t2 = time.perf_counter()
        fresh = pending.result() if pending is not None else self._encode_text(todo[:split])  # [] encodes to (0, d)
        if rest is not None:
            fresh = np.concatenate([fresh, rest])
        self.timer.add("wait_text", time.perf_counter() - t2)
        self._remember_texts(todo, fresh, vectors_of)
        text_vecs = np.stack([vectors_of[t] for t in texts])
        t3 = time.perf_counter()
        present = np.zeros(len(products), dtype=bool)
        present[with_pixels] = True
        fused = fuse_batch(text_vecs, image_vecs, self.cfg.fusion.text_weight, self.cfg.fusion.image_weight,
                           present=present).astype(np.float32)
        records = []
        for i in keep:
            p = products[i]
            vectors = {"text": text_vecs[i], "fused": fused[i]}
            if present[i]:
                vectors["image"] = image_vecs[i]
            records.append(ItemRecord(id=p.id, vectors=vectors, keywords=p.keywords, payload=p.payload()))
        self.timer.add("fuse", time.perf_counter() - t3)
        return records, skips
