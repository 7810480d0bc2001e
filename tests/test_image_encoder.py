"""The image tower: checkpoint round trip, encode shape/norm/determinism, clear errors, torch-free status."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from encoders.image import (build_tower, card_path, create_image_encoder, image_tower_status, load_checkpoint,
                            local_model_configs, model_config)
from encoders.photo import to_tower_pixels
from tests.helpers import draw_product, make_config
from tests.tiny_models import RESNET_ARCH, TEST_ARCH, write_tiny_checkpoint
from vitrina.errors import BadInput, ConfigError, ModelUnavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    ckpt = write_tiny_checkpoint(tmp_path / "models" / "image_tower.pt")
    return make_config(tmp_path, image_encoder={"checkpoint": str(ckpt), "arch": TEST_ARCH, "batch_size": 2})


def photos() -> list[Image.Image]:
    return [draw_product("Red", "Tshirts"), draw_product("Blue", "Shoes", (224, 224)),
            draw_product("Green", "Watches", (60, 60)), draw_product("Black", "Caps")]


def test_encode_shape_norm_and_determinism(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    enc = create_image_encoder(tiny_cfg)
    assert enc.dim == 384
    v = enc.encode(photos())
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, enc.encode(photos()))
    # batch_size 2 splits the batch; one at a time gives the same rows
    one_by_one = np.concatenate([enc.encode([p]) for p in photos()])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)
    assert not np.allclose(v[0], v[1], atol=1e-3)  # different photos, different vectors
    assert enc.encode([]).shape == (0, 384)


def test_flip_average_is_the_mean_of_a_photo_and_its_mirror(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "models" / "image_tower.pt")
    plain = create_image_encoder(make_config(tmp_path, image_encoder={"checkpoint": str(ckpt), "arch": TEST_ARCH,
                                                                      "flip_average": False}))
    both = create_image_encoder(make_config(tmp_path, image_encoder={"checkpoint": str(ckpt), "arch": TEST_ARCH,
                                                                     "flip_average": True}))
    assert both is not plain
    shots = photos()
    mirrored = [ImageOps.mirror(p) for p in shots]
    a, b = plain.encode(shots), plain.encode(mirrored)
    assert not np.allclose(a, b, atol=1e-3)  # the tiny tower is not mirror-symmetric by itself
    want = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    np.testing.assert_allclose(both.encode(shots), want, atol=2e-2)  # bf16 autocast rounds each view
    np.testing.assert_allclose(both.encode(shots), both.encode(mirrored), atol=2e-2)


def test_encoder_is_shared_and_thread_safe(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    enc = create_image_encoder(tiny_cfg)
    assert create_image_encoder(tiny_cfg) is enc
    want = enc.encode(photos())
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(enc.encode(photos()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4
    for g in got:
        np.testing.assert_array_equal(g, want)


def test_checkpoint_round_trip_matches_the_saved_tower(tmp_path: Path) -> None:
    import torch

    from encoders.image import pixels_to_input, save_checkpoint, tower_from_checkpoint

    torch.manual_seed(3)
    visual = build_tower(TEST_ARCH).eval()
    path = save_checkpoint(tmp_path / "t.pt", visual, TEST_ARCH, 14.3, {"complete": True})
    blob = load_checkpoint(path)
    assert blob["arch"] == TEST_ARCH and blob["embed_dim"] == 384 and blob["image_size"] == [32, 32]
    assert all(v.dtype == torch.float16 for v in blob["visual"].values() if v.is_floating_point())
    card = json.loads(card_path(path).read_text())
    assert card["complete"] is True and card["arch"] == TEST_ARCH and len(card["checkpoint_sha256"]) == 64
    again = tower_from_checkpoint(blob).eval()
    x = pixels_to_input(torch.from_numpy(np.stack([to_tower_pixels(p, (32, 32)) for p in photos()])))
    with torch.inference_mode():
        a = torch.nn.functional.normalize(visual(x), dim=-1)
        b = torch.nn.functional.normalize(again(x), dim=-1)
    assert float((a - b).abs().max()) < 5e-3  # fp16 storage


def test_missing_checkpoint_says_run_finetune(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, image_encoder={"checkpoint": str(tmp_path / "none.pt")})
    with pytest.raises(ModelUnavailable) as e:
        create_image_encoder(cfg)
    assert "vitrina finetune" in (e.value.detail or "") and e.value.status == 503
    st = image_tower_status(cfg)
    assert st["available"] is False and "vitrina finetune" in st["reason"]


def test_pretrained_may_name_a_vitrina_checkpoint(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "elsewhere.pt")
    cfg = make_config(tmp_path, image_encoder={"checkpoint": str(tmp_path / "none.pt"), "pretrained": str(ckpt)})
    assert create_image_encoder(cfg).encode(photos()[:1]).shape == (1, 384)
    assert image_tower_status(cfg)["source"] == "pretrained"


def test_corrupt_checkpoint_is_model_unavailable(tmp_path: Path) -> None:
    bad = tmp_path / "image_tower.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable):
        create_image_encoder(make_config(tmp_path, image_encoder={"checkpoint": str(bad)}))


def test_bad_arch_name_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        build_tower("no-such-tower")
    assert "no-such-tower" in e.value.message and TEST_ARCH in (e.value.detail or "")
    assert {"vitrina-vit-tiny", TEST_ARCH} <= set(local_model_configs())
    assert model_config("vitrina-vit-tiny")["embed_dim"] == 384  # image vectors live in MiniLM's space


def test_encode_rejects_non_images_and_handles_odd_modes(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    enc = create_image_encoder(tiny_cfg)
    with pytest.raises(BadInput):
        enc.encode(photos()[0])  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        enc.encode(["x.jpg"])  # type: ignore[list-item]
    rgba = Image.new("RGBA", (40, 50), (255, 0, 0, 0))  # fully transparent: becomes white
    grey = Image.new("L", (60, 80), 128)
    assert enc.encode([rgba, grey]).shape == (2, 384)
    np.testing.assert_array_equal(to_tower_pixels(rgba, (8, 8)), np.full((8, 8, 3), 255, np.uint8))


def test_status_reads_the_card_without_importing_torch(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys, json\n"
        "from tests.helpers import make_config\n"
        "from pathlib import Path\n"
        "import encoders\n"
        f"cfg = make_config(Path({str(Path(tiny_cfg.data.dir).parent)!r}), image_encoder="
        f"{{'checkpoint': {tiny_cfg.image_encoder.checkpoint!r}}})\n"
        "st = encoders.image_tower_status(cfg)\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch imported'\n"
        "print(json.dumps(st))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout.strip().splitlines()[-1])
    assert st["available"] is True and st["arch"] == TEST_ARCH and st["embed_dim"] == 384


def test_label_head_predict_matches_a_numpy_oracle() -> None:
    from encoders.photo import LabelHead

    rng = np.random.default_rng(0)
    classes = [("Shoes", "Men"), ("Shoes", "Women"), ("Watches", "Women"), ("Bags", "Women")]
    protos = rng.standard_normal((4, 16)).astype(np.float32)
    head = LabelHead(["articleType", "gender"], classes, protos * 3.0, scale=7.0)  # rows are normalised inside
    v = rng.standard_normal(16).astype(np.float32)
    v /= np.linalg.norm(v)
    unit = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    p = np.exp(7.0 * unit @ v)
    p /= p.sum()
    want_type = max({"Shoes": p[0] + p[1], "Watches": p[2], "Bags": p[3]}.items(), key=lambda t: t[1])
    want_gender = max({"Men": p[0], "Women": p[1] + p[2] + p[3]}.items(), key=lambda t: t[1])
    got = head.predict(v)
    assert got["articleType"][0] == want_type[0] and got["articleType"][1] == pytest.approx(want_type[1], 1e-5)
    assert got["gender"][0] == want_gender[0] and got["gender"][1] == pytest.approx(want_gender[1], 1e-5)
    with pytest.raises(ModelUnavailable):
        LabelHead(["articleType"], classes, protos, scale=1.0)  # a class with two values for one field


@pytest.mark.parametrize("flip", [False, True])
def test_onnx_runtime_gives_the_fp32_torch_vectors(tmp_path: Path, flip: bool) -> None:
    pytest.importorskip("onnxruntime")
    ckpt = write_tiny_checkpoint(tmp_path / "models" / "image_tower.pt")
    settings = {"checkpoint": str(ckpt), "arch": TEST_ARCH, "flip_average": flip, "batch_size": 3}
    torch_enc = create_image_encoder(make_config(tmp_path, image_encoder=settings, runtime={"bf16": False}))
    onnx_cfg = make_config(tmp_path, image_encoder={**settings, "runtime": "onnx"}, runtime={"bf16": False})
    onnx_enc = create_image_encoder(onnx_cfg)
    assert torch_enc._onnx is None and onnx_enc._onnx is not None
    # the indexer's second thread: a torch handle takes its own lock (the ONNX session is shared), and the
    # torch-free encoder, whose runtime runs calls at once, is its own twin
    assert torch_enc.twin()._lock is not torch_enc._lock and onnx_enc.twin()._onnx is onnx_enc._onnx
    from encoders.image_onnx import open_exported

    torch_free = open_exported(onnx_cfg)
    assert torch_free is not None and torch_free.twin() is torch_free
    assert len(sorted((onnx_cfg.data_dir / "models").glob("image-*.onnx"))) == 1
    shots = photos() + [ImageOps.mirror(p) for p in photos()]
    want, got = torch_enc.encode(shots), onnx_enc.encode(shots)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.min(np.sum(want * got, axis=1))) > 0.9999
    if flip:  # mirror averaging holds on the ONNX path too
        np.testing.assert_allclose(got[:4], got[4:], atol=1e-5)


def test_unknown_image_runtime_is_a_config_error(tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="runtime"):
        create_image_encoder(tiny_cfg.replace(image_encoder={"runtime": "tensorrt"}))


def test_folded_batch_norms_give_the_towers_own_vectors() -> None:
    import torch

    from encoders.image import fold_batch_norms, pixels_to_input

    torch.manual_seed(5)
    visual = build_tower(RESNET_ARCH)
    for m in visual.modules():  # trained-looking statistics, so a fold that ignored them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in visual.modules())
    assert norms > 10
    folded = fold_batch_norms(visual, (64, 64))
    assert folded is not visual and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = pixels_to_input(torch.from_numpy(np.stack([to_tower_pixels(p, (64, 64)) for p in photos()])))
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), visual.eval()(x).numpy(), rtol=1e-4, atol=1e-4)


def test_a_batch_norm_that_does_not_follow_its_conv_is_left_alone() -> None:
    import torch

    from encoders.image import fold_batch_norms

    class NormFirst(torch.nn.Module):  # registered conv then norm, but the norm runs on the input
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x)).mean(dim=(2, 3))

    torch.manual_seed(0)
    net = NormFirst()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.2, 3.0)
    assert fold_batch_norms(net, (8, 8)) is net


def test_a_tower_exported_once_answers_photos_in_a_process_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import torch

    rng = np.random.default_rng(1)
    protos = rng.normal(size=(3, 384)).astype(np.float32)
    labels = {"fields": ["articleType", "gender"], "classes": [["Watches", "Men"], ["Shoes", "Women"], ["Caps", "Men"]],
              "prototypes": torch.from_numpy(protos), "scale": 30.0}
    ckpt = write_tiny_checkpoint(tmp_path / "models" / "image_tower.pt", labels=labels)
    settings = {"checkpoint": str(ckpt), "arch": TEST_ARCH, "flip_average": True, "runtime": "onnx"}
    cfg = make_config(tmp_path, image_encoder=settings, runtime={"bf16": False, "device": "auto"})
    first = create_image_encoder(cfg)  # exports, checks against torch, writes the sidecar
    assert first._onnx is not None and len(list((cfg.data_dir / "models").glob("image-*.npz"))) == 1
    shot = tmp_path / "shot.png"
    draw_product("Blue", "Shoes", (90, 120)).save(shot)
    want = first.encode([Image.open(shot)])[0]
    script = (
        "import json, sys\n"
        "from PIL import Image\n"
        "from tests.helpers import make_config\n"
        "from encoders import create_image_encoder\n"
        f"cfg = make_config(__import__('pathlib').Path({str(tmp_path)!r}), image_encoder={settings!r}, "
        "runtime={'bf16': False, 'device': 'auto'})\n"
        "enc = create_image_encoder(cfg)\n"
        f"vec = enc.encode([Image.open({str(shot)!r})])[0]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'vec': vec.tolist(), 'kind': type(enc).__name__,\n"
        "                  'labels': enc.labels.predict(vec), 'size': list(enc.image_size)}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("a CUDA machine runs the torch tower")
    assert got["torch"] is False and got["kind"] == "OnnxImageEncoder" and got["size"] == [32, 32]
    np.testing.assert_allclose(got["vec"], want, atol=1e-5)
    assert {k: (v, pytest.approx(p, abs=1e-4)) for k, (v, p) in first.labels.predict(want).items()} == \
        {k: tuple(v) for k, v in got["labels"].items()}


def test_bench_image_compares_the_runtimes_on_catalogue_photos(tmp_path: Path) -> None:
    """`vitrina bench image`: each runtime encodes the same catalogue photos; the ONNX vectors are the torch fp32
    ones (cosine reported), the figures land in the JSON; without a trained tower it is a clear BadInput."""
    import argparse

    from benchmarks import image as bench_image
    from tests.helpers import product_rows, write_catalogue

    pytest.importorskip("onnxruntime")
    catalogue = write_catalogue(tmp_path / "shop", product_rows(12))
    ckpt = write_tiny_checkpoint(tmp_path / "models" / "image_tower.pt", arch=RESNET_ARCH)
    cfg = make_config(tmp_path, catalogue, image_encoder={"checkpoint": str(ckpt), "arch": RESNET_ARCH},
                      runtime={"bf16": False})
    parser = argparse.ArgumentParser()
    bench_image.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--n", "9", "--batch-size", "4", "--repeats", "1", "--json-out", str(out)])
    assert bench_image.run(cfg, args) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 9 and [r["runtime"] for r in report["rows"]] == ["torch", "onnx", "int8"]
    assert all(r["photos_per_s"] > 0 for r in report["rows"]) and report["decode_cpu_ms"] > 0
    assert report["rows"][1]["cos_vs_torch_min"] > 0.9999
    assert 0.98 < report["rows"][2]["cos_vs_torch_min"] < 0.99999  # 8 bits: close, and not the float vectors
    with pytest.raises(BadInput, match="runtimes"):
        bench_image.run(cfg, parser.parse_args(["--runtimes", "tensorrt"]))
    with pytest.raises(BadInput, match="no trained image tower"):
        bench_image.run(cfg.replace(image_encoder={"checkpoint": str(tmp_path / "none.pt")}), args)
