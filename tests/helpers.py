"""Fixture builders the tests share: small catalogues with real images, and configs pointing at them."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from vitrina.config import Config, load_config

COLOURS = {"Red": (200, 30, 30), "Blue": (30, 60, 200), "Black": (15, 15, 15), "White": (240, 240, 240),
           "Green": (30, 160, 60), "Yellow": (230, 210, 40)}
ARTICLES = ("Tshirts", "Shoes", "Watches", "Handbags", "Jeans", "Caps")
GENDERS = ("Men", "Women")


def draw_product(colour: str, article: str, size: tuple[int, int] = (60, 80), seed: int = 0) -> Image.Image:
    """A real RGB picture: a shape per article type, filled with the product colour, on white."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    w, h = size
    fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[colour])
    k = ARTICLES.index(article) if article in ARTICLES else 0
    if k % 3 == 0:
        d.rectangle([w * 0.2, h * 0.2, w * 0.8, h * 0.8], fill=fill)
    elif k % 3 == 1:
        d.ellipse([w * 0.15, h * 0.25, w * 0.85, h * 0.75], fill=fill)
    else:
        d.polygon([(w * 0.5, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=fill)
    return img


def product_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n products cycling through genders, colours and article types, with prices and splits."""
    rng = random.Random(seed)
    rows = []
    colours = list(COLOURS)
    for i in range(n):
        g, c, a = GENDERS[i % 2], colours[(i // 2) % len(colours)], ARTICLES[(i // 12) % len(ARTICLES)]
        rows.append({
            "id": str(1000 + i), "title": f"{g} {c} {a} style {i}", "gender": g, "baseColour": c,
            "articleType": a, "price": f"{rng.uniform(5, 200):.2f}", "image": f"images/{1000 + i}.jpg",
            "split": ("train", "train", "train", "dev", "test")[i % 5],
        })
    return rows


def write_catalogue(folder: Path, rows: Sequence[dict[str, Any]], fmt: str = "csv",
                    images: bool = True, size: tuple[int, int] = (60, 80)) -> Path:
    """Write rows (and one JPEG per row unless images=False) under folder; returns the catalogue path."""
    folder.mkdir(parents=True, exist_ok=True)
    if images:
        (folder / "images").mkdir(exist_ok=True)
        for i, row in enumerate(rows):
            if row.get("image") and not str(row["image"]).startswith("http"):
                colour = row.get("baseColour") if row.get("baseColour") in COLOURS else "Red"
                draw_product(colour, row.get("articleType", ""), size, seed=i).save(folder / row["image"], "JPEG")
    if fmt == "jsonl":
        path = folder / "products.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    path = folder / "products.csv"
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def make_config(tmp_path: Path, catalogue: Path | None = None, **sections: dict[str, Any]) -> Config:
    """Built-in defaults adapted to the test catalogue schema, data under tmp_path, with overrides."""
    cfg = load_config(env={})
    base = {
        "data": {"dir": str(tmp_path / "var")},
        "catalogue": {
            "path": str(catalogue) if catalogue else "", "format": "auto", "id": "id", "title": "title",
            "price": "price", "category": "articleType", "image": "image", "image_base": "", "split": "split",
            "attributes": ("gender", "articleType", "baseColour"),
            "text_fields": ("title", "gender", "baseColour", "articleType"),
            "keyword_fields": ("title", "gender", "baseColour", "articleType"),
            "filterable": ("gender", "articleType", "baseColour"), "numeric": (),
        },
        "image_encoder": {"checkpoint": str(tmp_path / "models" / "image_tower.pt")},
        # no other shop's photos: config.toml's [finetune].also names the real H&M sample
        "finetune": {"output": str(tmp_path / "models" / "image_tower.pt"), "also": ()},
        "text_encoder": {"tuned_layers": ""},  # stock MiniLM: the shipped tuned layers belong to the fashion tower
        "runtime": {"threads": 2, "device": "cpu"},
        # equal weights for the tiny test towers, whatever the shipped config.toml tunes for its catalogue
        "fusion": {"image_weight": 0.5, "text_weight": 0.5},
        # one serving process of several threads unless a test asks for more processes (config.toml ships 2 x 1)
        "web": {"workers": 1, "threads": 8},
        # the tiny test towers index in float; tests/test_image_int8.py turns the 8-bit tower on
        "indexer": {"image_int8": False},
        # writes embed texts as the index does (tests/test_serve_memory.py runs them on the searches' int8 model)
        "live": {"text_precision": ""},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return cfg.replace(**base)


def index_vectors(cfg: Config, rows: Sequence[dict[str, Any]], text: Any, image: Any,
                  collection: str = "items_v1") -> Any:
    """Write product rows with the given text/image vectors (fused per cfg) into `collection` behind the alias.

    Returns the open store; the caller closes it.
    """
    from encoders.fusion import fuse_batch
    from search.store.factory import open_store
    from search.store.interface import ItemRecord

    cat = cfg.catalogue
    fused = fuse_batch(text, image, cfg.fusion.text_weight, cfg.fusion.image_weight)
    items = [ItemRecord(id=r["id"], vectors={"text": text[i], "image": image[i], "fused": fused[i]},
                        keywords=" ".join(str(r[f]) for f in cat.keyword_fields),
                        payload={"title": r["title"], "image": r["image"], "price": float(r["price"]),
                                 **{a: r[a] for a in cat.attributes}})
             for i, r in enumerate(rows)]
    dim = int(text.shape[1])
    store = open_store(cfg)
    try:
        store.create_collection(collection, {"text": dim, "image": dim, "fused": dim}, cat.filterable, cat.numeric)
        store.upsert(collection, items)
        store.flush(collection)
        store.set_alias(cfg.store.alias, collection)
    except BaseException:
        store.close()
        raise
    return store


def index_with_minilm(cfg: Config, rows: Sequence[dict[str, Any]], image_noise: bool = True) -> Any:
    """Index rows with real MiniLM text vectors of their text fields (see index_vectors); image vectors stand in
    for a trained tower's: the text vector plus as much random noise (seeded), or the text vector itself.
    Returns the open store; the caller closes it."""
    import numpy as np

    from encoders import create_text_encoder

    text = create_text_encoder(cfg).encode([" ".join(str(r[f]) for f in cfg.catalogue.text_fields) for r in rows])
    image = text.copy()
    if image_noise:
        noise = np.random.default_rng(0).normal(size=text.shape).astype(np.float32)
        image = text + noise / np.linalg.norm(noise, axis=1, keepdims=True)
        image /= np.linalg.norm(image, axis=1, keepdims=True)
    return index_vectors(cfg, rows, text, image)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, key: str = "", timeout: float = 60.0) -> tuple[int, Any]:
    """(status, JSON answer) of one request; HTTP errors are answers too."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class ServeProcess:
    """`vitrina --config FILE serve` in a real process on a free port; `stop()` sends SIGTERM, `kill()` SIGKILL."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None, wait_s: float = 180.0) -> None:
        root = Path(__file__).resolve().parent.parent
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.with_name(f"serve-{self.port}.log")
        cmd = [sys.executable, "-m", "scripts.cli", "--config", str(config), "serve", "--port", str(self.port), *args]
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                     stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vitrina serve exited {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if http_json("GET", self.url + "/health", timeout=5)[0] in (200, 503):
                    return
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"vitrina serve did not answer in {wait_s:g} s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._out.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
        self._out.close()


def kill_when_settled(proc: subprocess.Popen[bytes], cfg: Config, rows: int, timeout_s: float = 120.0) -> None:
    """SIGKILL a running `vitrina reindex` once its checkpoint has settled `rows` catalogue rows."""
    from indexer.state import load_state, state_path

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        state = load_state(cfg) if state_path(cfg).exists() else None
        if state is not None and state.position >= rows:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
