"""The int8 ONNX Runtime text encoder (precision "int8", the query side) against torch on the real MiniLM with the
shipped tuned layers: same vectors (cosine >= 0.995), same tokens, one export reused, torch as the fallback."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import encoders
from encoders import text_onnx
from encoders.text import TextEncoder
from vitrina.config import Config, load_config
from vitrina.errors import ModelUnavailable

pytestmark = pytest.mark.slow  # exports the real MiniLM once (~15 s)
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["men brown watches", "women black heels", "", "Puma Deck Navy Blue Backpack Unisex " * 20,
         "kids' blue denim jacket, size 8", "Ñandú café naïve 東京", "watch"]


def shipped_with(precision: str, data: Path) -> Config:
    """config.toml (the real MiniLM with the shipped tuned layers), the text encoder at `precision`, data in `data`."""
    base = load_config(REPO / "config.toml", env={})
    return base.replace(data={"dir": str(data)}, runtime={"device": "cpu", "threads": 1},
                        text_encoder={"precision": precision})


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return shipped_with("int8", tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def int8(cfg: Config) -> text_onnx.OnnxTextEncoder:
    encoder = encoders.create_text_encoder(cfg)
    assert isinstance(encoder, text_onnx.OnnxTextEncoder)
    return encoder


@pytest.fixture(scope="module")
def torch_fp32(cfg: Config) -> TextEncoder:
    return TextEncoder(cfg.text_encoder.__class__(**{**cfg.text_encoder.__dict__, "precision": "fp32"}), cfg.runtime)


def dev_queries() -> list[str]:
    path = Path(load_config(REPO / "config.toml", env={}).catalogue.path).parent / "queries_dev.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [r["query"] for r in csv.DictReader(f)][:100]


def assert_like_torch(encoder: Any, torch_fp32: TextEncoder, texts: list[str]) -> None:
    """A query encoder's vectors against torch fp32 on `texts` and the dev queries: unit float32 rows, cosine >=
    0.995, the semantics a search needs, the same tokens and the same whole words (the reading's spelling)."""
    texts = texts + dev_queries()
    got, want = encoder.encode(texts), torch_fp32.encode(texts)
    assert got.shape == want.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.995
    v = encoder.encode(["red summer dress", "crimson sundress for women", "men's leather wallet"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert encoder.encode([]).shape == (0, 384)
    for text in texts[:12]:
        assert encoder._tokenizer.encode(text).ids == \
            torch_fp32._tokenizer([text], truncation=True, max_length=torch_fp32.cfg.max_length)["input_ids"][0]
    assert encoder.whole_words() == torch_fp32.whole_words() and "watch" in encoder.whole_words()


def test_int8_vectors_and_tokens_match_torch(int8: text_onnx.OnnxTextEncoder, torch_fp32: TextEncoder) -> None:
    assert_like_torch(int8, torch_fp32, TEXTS)


def test_export_is_reused_and_encode_is_thread_safe(cfg: Config, int8: text_onnx.OnnxTextEncoder,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = list((cfg.data_dir / "models").glob("text-int8-*.onnx"))
    assert len(files) == 1
    monkeypatch.setattr(text_onnx, "export_int8", lambda *a: pytest.fail("exported again"))
    again = text_onnx.create(cfg.text_encoder, cfg.runtime, cfg.data_dir / "models")
    assert_same_vectors_from_threads(again, int8.encode(TEXTS), TEXTS)


def assert_same_vectors_from_threads(encoder: Any, want: np.ndarray, texts: list[str]) -> None:
    """`encoder` gives `want` for `texts`, also from four threads encoding them at once (each in another order)."""
    np.testing.assert_allclose(encoder.encode(texts), want, atol=1e-6)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = encoder.encode(texts[k:] + texts[:k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for k, got in results.items():
        np.testing.assert_allclose(np.roll(got, k, axis=0), want, atol=1e-6)


def test_refused_or_unavailable_int8_falls_back_to_torch(cfg: Config, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_onnx, "MIN_COSINE", 1.01)  # no export can pass: it is refused, nothing is written
    with pytest.raises(ModelUnavailable, match="too far"):
        text_onnx.create(cfg.text_encoder, cfg.runtime, tmp_path)
    assert not list(tmp_path.glob("*.onnx"))
    other = cfg.replace(data={"dir": str(tmp_path)}, text_encoder={"max_length": 63})  # not cached yet
    encoder = encoders.create_text_encoder(other)
    assert isinstance(encoder, TextEncoder) and encoder.cfg.precision == "bf16"


def encoded_in_a_fresh_process(cfg: Config, text: str) -> dict[str, Any]:
    """`text` encoded by cfg's text encoder in a new process that loads the exported model from cfg's data dir:
    {"vec", "kind" (the encoder's class), "torch" / "ort" (whether torch / onnxruntime got imported)}."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from vitrina.config import load_config\n"
        "import encoders\n"
        f"cfg = load_config({str(REPO / 'config.toml')!r}, env={{}}).replace(data={{'dir': {str(cfg.data_dir)!r}}}, "
        f"runtime={{'device': 'auto', 'threads': 1}}, text_encoder={{'precision': {cfg.text_encoder.precision!r}}})\n"
        "enc = encoders.create_text_encoder(cfg)\n"
        f"vec = enc.encode([{text!r}])[0]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ort': 'onnxruntime' in sys.modules, "
        "'kind': type(enc).__name__, 'vec': vec.tolist()}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_exported_int8_encoder_loads_without_torch(cfg: Config, int8: text_onnx.OnnxTextEncoder) -> None:
    got = encoded_in_a_fresh_process(cfg, "men brown watches")
    assert got["torch"] is False  # a search worker's text side holds no torch
    np.testing.assert_allclose(got["vec"], int8.encode(["men brown watches"])[0], atol=1e-6)


def test_pooling_gives_the_bits_of_numpys_mean_and_norm() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 5, 8, 13, 64):
        hidden = rng.standard_normal((n, 384)).astype(np.float32)
        mean = hidden.mean(axis=0)
        assert np.array_equal(text_onnx.mean_rows(hidden), mean)
        assert np.array_equal(text_onnx.unit(mean), mean / float(np.linalg.norm(mean)))
    assert not text_onnx.unit(np.zeros(4, np.float32)).any()
