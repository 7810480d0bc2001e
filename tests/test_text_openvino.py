"""The OpenVINO text encoder (precision "ov-int8", the query side) against torch on the real MiniLM with the shipped
tuned layers: same vectors (cosine >= 0.995), padding to a bucket changes nothing, one export reused, ONNX Runtime
as the fallback, and no torch in a process that only loads it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import encoders
from encoders import text_onnx
from encoders.text import TextEncoder
from tests.test_text_onnx import (assert_like_torch, assert_same_vectors_from_threads, encoded_in_a_fresh_process,
                                  shipped_with)
from tests.test_text_onnx import torch_fp32  # noqa: F401 (a fixture: torch fp32 on this module's cfg)
from vitrina.config import Config
from vitrina.errors import ModelUnavailable

pytestmark = pytest.mark.slow  # exports the real MiniLM once (~10 s)
pytest.importorskip("openvino")
text_openvino = pytest.importorskip("encoders.text_openvino")

TEXTS = ["men brown watches", "women black heels", "Puma Deck Navy Blue Backpack Unisex " * 20,
         "kids' blue denim jacket, size 8", "Ñandú café naïve 東京", "watch", "a", "bling"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return shipped_with("ov-int8", tmp_path_factory.mktemp("openvino"))


@pytest.fixture(scope="module")
def ov8(cfg: Config) -> text_openvino.OpenVinoTextEncoder:
    encoder = encoders.create_text_encoder(cfg)
    assert isinstance(encoder, text_openvino.OpenVinoTextEncoder)
    return encoder


def test_vectors_and_tokens_match_torch(ov8: text_openvino.OpenVinoTextEncoder, torch_fp32: TextEncoder) -> None:
    assert_like_torch(ov8, torch_fp32, TEXTS)


def test_padding_to_a_bucket_changes_nothing(ov8: text_openvino.OpenVinoTextEncoder,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["men brown watches", "kids' blue denim jacket, size 8"]  # 5 and 12 tokens
    padded = ov8.encode(texts)
    assert {8, 16} <= set(ov8._requests)  # each went to its bucket, compiled once there
    monkeypatch.setattr(ov8, "buckets", (5, 12, ov8.max_length))  # now each runs at its own length, unpadded
    exact = ov8.encode(texts)
    assert float(np.min(np.sum(padded * exact, axis=1))) > 0.9999
    assert ov8.buckets[-1] == ov8.max_length and len(ov8._tokenizer.encode(TEXTS[2]).ids) == ov8.max_length


def test_export_is_reused_and_encode_is_thread_safe(cfg: Config, ov8: text_openvino.OpenVinoTextEncoder,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    models = cfg.data_dir / "models"
    assert len(list(models.glob("text-ov-*.xml"))) == 1 and len(list(models.glob("text-ov-*.npy"))) == 1
    monkeypatch.setattr(text_openvino, "export_ov", lambda *a: pytest.fail("exported again"))
    again = text_openvino.create(cfg.text_encoder, cfg.runtime, models)
    assert_same_vectors_from_threads(again, ov8.encode(TEXTS), TEXTS)


def test_refused_or_unavailable_falls_back_to_onnx_runtime(cfg: Config, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_openvino, "MIN_COSINE", 1.01)  # no export can pass: it is refused, nothing is written
    with pytest.raises(ModelUnavailable, match="too far"):
        text_openvino.create(cfg.text_encoder, cfg.runtime, tmp_path)
    assert not list(tmp_path.glob("text-ov-*"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    other = cfg.replace(data={"dir": str(tmp_path)}, text_encoder={"max_length": 62})  # not cached yet
    assert isinstance(encoders.create_text_encoder(other), text_onnx.OnnxTextEncoder)


def test_an_exported_encoder_loads_without_torch(cfg: Config, ov8: text_openvino.OpenVinoTextEncoder) -> None:
    got = encoded_in_a_fresh_process(cfg, "men brown watches")
    assert got["kind"] == "OpenVinoTextEncoder" and got["torch"] is False and got["ort"] is False
    np.testing.assert_allclose(got["vec"], ov8.encode(["men brown watches"])[0], atol=1e-6)


def test_bench_query_runtimes_smoke(cfg: Config, tmp_path: Path) -> None:
    """benchmarks/query_runtimes.py times the shipped int8 export and OpenVINO by token count and on dev queries."""
    import argparse

    from benchmarks import query_runtimes

    if not (Path(cfg.catalogue.path).parent / "queries_dev.csv").is_file():
        pytest.skip("no dev queries beside the catalogue")
    parser = argparse.ArgumentParser()
    query_runtimes.add_arguments(parser)
    out = tmp_path / "runtimes.json"
    args = parser.parse_args(["--lengths", "4,9", "--queries", "8", "--runs", "3", "--repeats", "1",
                              "--openvino", "on", "--json-out", str(out)])
    assert query_runtimes.run(cfg.replace(data={"dir": str(tmp_path)}), args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["onnxruntime int8", "openvino ov-int8 (shipped)",
                                            "openvino u8 g64 dynamic", "openvino u8 g64 static per length"]
    assert all(r["dev_ms"] > 0 and r["ms_at_4"] > 0 and r["ms_at_9"] > 0 and r["cos_min"] > 0.99 for r in rows)
    assert rows[3]["static_models"] >= 2


def test_openvino_is_imported_without_its_telemetry() -> None:
    """Plain `import openvino` starts a thread that forks a process to post an event to Google Analytics."""
    import subprocess

    code = ("import sys, threading; from encoders.text_openvino import openvino; openvino().Core(); "
            "print(sys.modules.get('openvino_telemetry'), threading.active_count())")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["None", "1"]
