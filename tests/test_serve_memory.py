"""What a search worker loads: after `vitrina reindex` has exported the query-side models (the OpenVINO text model
config.toml ships, fp32 image tower with its sidecar), a real `vitrina serve` answers text and photo searches with no
torch in the process, and loads the write-side encoders at its first write ([web].warm_writes off); with the int8
text model for writes ([live].text_precision, also exported by the reindex) and the 8-bit image tower, it writes
without torch too."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServeProcess, draw_product, http_json, make_config, product_rows, write_catalogue
from tests.test_indexer import write_config
from tests.tiny_models import RESNET_ARCH, TEST_ARCH, write_tiny_checkpoint
from vitrina.config import Config

pytestmark = pytest.mark.slow  # exports the real MiniLM to OpenVINO and int8 (~10 s each)
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

KEY = "memory-key"
REPO = Path(__file__).resolve().parent.parent
ITEM = {"id": "w1", "title": "Men Black Watches", "gender": "Men", "articleType": "Watches", "baseColour": "Black",
        "price": "12", "image": "images/1002.jpg"}
SECTIONS = ("data", "catalogue", "image_encoder", "text_encoder", "runtime", "indexer", "store", "web", "live",
            "search")


def holds_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def photo_search(url: str) -> int:
    buf = io.BytesIO()
    draw_product("Red", "Shoes", (60, 80)).save(buf, "JPEG")
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/search?k=5&mode=image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status


def reindexed(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Path, Config]:
    """A config file for a small catalogue with a tiny tower, and `vitrina reindex` run on it."""
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", product_rows(24)), web={"api_keys": (KEY,)},
                      search={"query_precision": "ov-int8", "photo_runtime": "onnx"}, **sections)
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint), arch=cfg.image_encoder.arch)
    config = write_config(tmp_path / "vitrina.toml", cfg, SECTIONS)
    out = subprocess.run([sys.executable, "-m", "scripts.cli", "--config", str(config), "reindex", "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return config, cfg


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_a_worker_searches_text_and_photos_without_torch_and_loads_it_at_its_first_write(tmp_path: Path) -> None:
    config, cfg = reindexed(tmp_path, image_encoder={"arch": TEST_ARCH, "runtime": "torch"})
    models = cfg.data_dir / "models"
    assert len(list(models.glob("text-ov-*.xml"))) == 1 and len(list(models.glob("image-*.npz"))) == 1
    assert not list(models.glob("text-int8-*.onnx"))  # [live].text_precision "" here: writes embed as the index
    server = ServeProcess(config)
    try:
        pid = server.proc.pid  # one worker: the process itself serves
        status, body = http_json("GET", server.url + "/api/search?q=red+shoes&k=5")
        assert status == 200 and body["results"], body
        assert photo_search(server.url) == 200
        assert not holds_torch(pid), server.output()[-2000:]
        status, body = http_json("POST", server.url + "/api/items", ITEM, key=KEY)
        assert status == 201, body
        assert holds_torch(pid)  # the write-side encoders, loaded for the first write
        status, body = http_json("GET", server.url + "/api/items/w1")
        assert status == 200 and body["title"] == "Men Black Watches"
    finally:
        assert server.stop() == 0, server.output()[-3000:]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_writes_through_the_int8_text_model_and_the_8_bit_tower_load_no_torch(tmp_path: Path) -> None:
    config, cfg = reindexed(tmp_path, image_encoder={"arch": RESNET_ARCH, "runtime": "torch"},
                            indexer={"image_int8": True, "calibration_photos": 12}, live={"text_precision": "int8"})
    models = cfg.data_dir / "models"
    assert len(list(models.glob("image-int8-*.onnx"))) == 1  # the reindex calibrated it
    assert len(list(models.glob("text-int8-*.onnx"))) == 1 and len(list(models.glob("text-ov-*.xml"))) == 1
    server = ServeProcess(config)
    try:
        pid = server.proc.pid
        status, body = http_json("POST", server.url + "/api/items", ITEM, key=KEY)
        assert status == 201, body
        assert not holds_torch(pid), server.output()[-2000:]
        status, body = http_json("GET", server.url + "/api/search?q=black+watches&k=3&mode=text")
        assert status == 200 and "w1" in [r["id"] for r in body["results"]], body
        status, body = http_json("GET", server.url + "/api/items/w1")
        assert status == 200 and body["title"] == "Men Black Watches"
    finally:
        assert server.stop() == 0, server.output()[-3000:]
