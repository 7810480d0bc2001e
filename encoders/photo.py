"""The photo side of an image tower that needs no torch: pixels at the tower's size (alpha on white, squashed,
levels and borders as configured), the label head that reads attributes from a vector, and PhotoEncoder, what every
runtime of the tower (torch in encoders.image, ONNX Runtime in encoders.image_onnx) does around its forward."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from vitrina.errors import BadInput, ModelUnavailable


def to_tower_pixels(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8: the photo on white if it has alpha, squashed to the tower's size (open_clip 'squash')."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    img = img.convert("RGB")
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def stretch_levels(pixels: np.ndarray, low: float = 1.0, high: float = 99.0, min_span: int = 24) -> np.ndarray:
    """(h, w, 3) uint8 with its levels stretched so the low-th percentile is black and the high-th white, the
    same for the three channels (hues kept). A studio shot (white background, dark product) barely changes;
    a dark, flat phone photo gets its range back. Nearly flat photos (span < min_span) are left alone."""
    lo, hi = np.percentile(pixels, (low, high))
    if hi - lo < min_span:
        return pixels
    out = (pixels.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def trim_borders(img: Image.Image, tolerance: int = 12, margin: float = 0.04) -> Image.Image:
    """The photo cropped to its content: rows and columns at the edges whose every pixel is within `tolerance`
    of the corner colour are cut (a studio or packshot background), leaving `margin` of the content's size
    around it. A photo whose content fills the frame, or that is all background, comes back as it is."""
    rgb = img.convert("RGB")
    a = np.asarray(rgb, dtype=np.int16)
    h, w = a.shape[:2]
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    ref = np.median(corners, axis=0)
    content = np.abs(a - ref).max(axis=2) > tolerance
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if not len(rows) or not len(cols):
        return rgb
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    my, mx = round((y1 - y0) * margin), round((x1 - x0) * margin)
    box = (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my))
    return rgb if box == (0, 0, w, h) else rgb.crop(box)


class LabelHead:
    """Predicts catalogue attribute values (e.g. articleType, gender) from an image vector: softmax over the
    cosine to one prototype per value combination seen in training. Pure numpy, cheap per query."""

    def __init__(self, fields: Sequence[str], classes: Sequence[Sequence[str]], prototypes: np.ndarray,
                 scale: float) -> None:
        protos = np.asarray(prototypes, dtype=np.float32)
        if protos.ndim != 2 or len(protos) != len(classes) or any(len(c) != len(fields) for c in classes):
            raise ModelUnavailable("label head: prototypes, classes and fields do not fit together")
        self.fields = tuple(str(f) for f in fields)
        self.classes = [tuple(str(v) for v in c) for c in classes]
        self.prototypes = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
        self.scale = float(scale)

    @classmethod
    def from_checkpoint(cls, blob: dict[str, Any]) -> "LabelHead | None":
        lab = blob.get("labels")
        if not lab:
            return None
        return cls(lab["fields"], lab["classes"], lab["prototypes"].float().numpy(), lab["scale"])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, classes): each (n, dim) image vector's softmax over the class prototypes."""
        logits = self.scale * (np.asarray(vectors, dtype=np.float32) @ self.prototypes.T)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, vector: np.ndarray) -> dict[str, tuple[str, float]]:
        """{field: (most likely value, its probability)}; a field's probability sums over the classes."""
        p = self.probabilities(np.asarray(vector, dtype=np.float32)[None, :])[0]
        out: dict[str, tuple[str, float]] = {}
        for j, field in enumerate(self.fields):
            mass: dict[str, float] = {}
            for c, prob in zip(self.classes, p):
                mass[c[j]] = mass.get(c[j], 0.0) + float(prob)
            value = max(mass, key=mass.__getitem__)
            out[field] = (value, mass[value])
        return out


class PhotoEncoder:
    """Photos -> (n, dim) L2-normalised float32 rows through an image tower: the preparation every runtime shares
    (alpha on white, squashed to the tower's size, levels and borders as configured); `encode_pixels` is the
    runtime's forward."""

    image_size: tuple[int, int]
    dim: int
    batch_size: int
    name: str
    labels: LabelHead | None
    flip_average: bool
    autocontrast: bool
    trim: bool

    def twin(self) -> PhotoEncoder:
        """A handle for a second thread that encodes batches beside this one's: the encoder itself where the
        runtime runs calls at once (ONNX Runtime); encoders.image.ImageEncoder gives a copy with its own lock."""
        return self

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, rows L2-normalised, in input order."""
        if isinstance(images, Image.Image):
            raise BadInput("encode takes a sequence of images, not one image")
        items = list(images)
        for i, img in enumerate(items):
            if not isinstance(img, Image.Image):
                raise BadInput(f"image #{i} is {type(img).__name__}, expected PIL.Image.Image")
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.encode_pixels(np.stack([self.pixels(img) for img in items]))

    @property
    def decode_size(self) -> int:
        """The side a photo must keep when it is decoded for this tower (vitrina.images.decode_image's fit):
        twice the tower's larger side, so the squash to the tower's size still averages over whole pixels (at 1x,
        the fashion catalogue's 224 px photos decoded at 112 px cost 0.003-0.004 P@10 on the altered dev photos),
        or 8x when borders are trimmed first (the content may be a small part of the frame)."""
        return max(self.image_size) * (8 if self.trim else 2)

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The photo as this tower reads it: (h, w, 3) uint8 at its size, levels stretched if configured. The
        indexer and uploaded photos both come through here, so both sides are prepared the same way."""
        px = to_tower_pixels(trim_borders(img) if self.trim else img, self.image_size)
        return stretch_levels(px) if self.autocontrast else px

    def in_batches(self, pixels: np.ndarray, forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """(n, dim) float32: `forward` over `pixels` batch_size at a time."""
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            out[start:start + len(chunk)] = forward(chunk)
        return out

    def check_pixels(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or tuple(pixels.shape[1:3]) != self.image_size or pixels.shape[3] != 3:
            raise BadInput(f"pixels must be (n, {self.image_size[0]}, {self.image_size[1]}, 3) uint8")

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Like encode, for uint8 (n, h, w, 3) arrays already at the tower's size."""
        raise NotImplementedError
