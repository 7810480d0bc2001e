"""The text side of tower training: the tuned last layers reproduce the real MiniLM, and learn when trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders.finetune import FinetuneSettings, finetune
from encoders.text import TextEncoder, resolve_model_path
from tests.test_finetune import SETTINGS, fake_text, items_for
from vitrina.config import RuntimeConfig, TextEncoderConfig
from vitrina.errors import ConfigError

TEXTS = ["red cotton shirt for men", "Nike Women Black Running Shoes with laces and a cushioned sole", "watch", ""]


@pytest.fixture(scope="module")
def minilm() -> str:
    return resolve_model_path(TextEncoderConfig().model)


@pytest.mark.parametrize("layers", [1, 3])
def test_cached_inputs_plus_the_last_layers_give_the_text_encoders_vectors(minilm: str, layers: int) -> None:
    import torch

    from encoders.text_tuning import TunedTextLayers

    want = TextEncoder(TextEncoderConfig(precision="fp32", jit=False),
                       RuntimeConfig(device="cpu", threads=2, bf16=False)).encode(TEXTS)
    side = TunedTextLayers(minilm, TEXTS, np.array([0, 1, 2, 3, 1]), layers, torch.device("cpu"), bf16=False)
    got = side.embed(np.arange(5))
    assert got.shape == (5, 384)
    assert np.all((got[[0, 1, 2, 3]] * want).sum(axis=1) > 0.9999)  # the cache holds bf16 inputs
    assert np.array_equal(got[4], got[1])  # rows with one text share it
    assert len(side.parameters()) > 0 and all(p.requires_grad for p in side.parameters())


def test_training_moves_the_tuned_layers_and_the_loss_falls(tmp_path: Path, catalogue: Path, minilm: str) -> None:
    import torch

    from encoders.text_tuning import TunedTextLayers

    built: list[TunedTextLayers] = []

    def side(texts, text_ids, device):  # type: ignore[no-untyped-def]
        built.append(TunedTextLayers(minilm, texts, text_ids, 1, device))
        return built[-1]

    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 6, "text_layers": 1, "text_lr": 1e-3})
    res = finetune(items_for(catalogue), fake_text, "fake", settings, tmp_path / "t.pt", tmp_path / "w",
                   progress=False, text_side=side)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.8 * losses[0], losses
    before = TunedTextLayers(minilm, ["x"], np.array([0]), 1, torch.device("cpu")).layers.state_dict()
    after = built[0].layers.state_dict()
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    assert moved > 1e-4
    state = torch.load(next((tmp_path / "w").glob("run-*/state.pt")), weights_only=True)
    assert set(state["text"]) == set(before) and state["best_text"] is not None


def test_tuned_text_layers_need_a_text_side(tmp_path: Path, catalogue: Path) -> None:
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "text_layers": 1})
    with pytest.raises(ConfigError, match="text_side"):
        finetune(items_for(catalogue), fake_text, "fake", settings, tmp_path / "t.pt", tmp_path / "w",
                 progress=False)


def test_cli_tunes_text_layers_and_the_text_encoder_serves_them(tmp_path: Path, catalogue: Path,
                                                                minilm: str) -> None:
    import argparse
    import json

    import torch

    from encoders import create_text_encoder
    from encoders.image import card_path, file_sha256
    from encoders.text_tuning import TunedTextLayers, load_text_layers, text_layers_path
    from scripts.cmd_finetune import register
    from tests.helpers import make_config
    from tests.tiny_models import TEST_ARCH

    cfg = make_config(tmp_path, catalogue, image_encoder={"arch": TEST_ARCH}, text_encoder={"precision": "fp32"},
                      finetune={"epochs": 2, "batch_size": 8, "workers": 1, "lr": 3e-3, "text_lr": 1e-3})
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--no-progress", "--text-layers", "1"])
    assert args.func(cfg, args) == 0
    out = Path(cfg.finetune.output)
    text_file = text_layers_path(out)
    card = json.loads(card_path(out).read_text())
    assert card["text_layers"] == {"file": text_file.name, "layers": 1, "mix": 1.0, "sha256": file_sha256(text_file)}
    assert "last 1 layer(s) tuned" in card["objective"]
    stock = create_text_encoder(cfg).encode(TEXTS)
    tuned_cfg = make_config(tmp_path, catalogue, text_encoder={"precision": "fp32", "tuned_layers": str(text_file)})
    tuned = create_text_encoder(tuned_cfg).encode(TEXTS)
    assert float((stock * tuned).sum(axis=1).min()) < 0.999  # the layers moved
    side = TunedTextLayers(minilm, TEXTS, np.arange(4), 1, torch.device("cpu"), bf16=False,
                           start=load_text_layers(text_file))
    assert np.all((side.embed(np.arange(4)) * tuned).sum(axis=1) > 0.999)  # serving = what training computed


def test_a_text_layers_file_that_does_not_fit_is_refused(tmp_path: Path, minilm: str) -> None:
    import torch

    from encoders.text import _load
    from encoders.text_tuning import apply_text_layers, load_text_layers, save_text_layers
    from vitrina.errors import ModelUnavailable

    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ModelUnavailable, match="not a vitrina-text-layers"):
        load_text_layers(junk)
    _, model = _load(minilm)
    last = {k: v for k, v in torch.nn.ModuleList(model.encoder.layer[-1:]).state_dict().items()}
    other = save_text_layers(tmp_path / "t.pt", last, "x", total_layers=12, card={})
    with pytest.raises(ModelUnavailable, match="12-layer"):
        apply_text_layers(model, load_text_layers(other))
    wrong = save_text_layers(tmp_path / "w.pt", {k: v[..., :1] if v.ndim else v for k, v in last.items()}, "x",
                             total_layers=6, card={})
    with pytest.raises(ModelUnavailable, match="do not fit"):
        apply_text_layers(model, load_text_layers(wrong))


def test_text_mix_interpolates_between_the_start_and_the_tuned_layers(tmp_path: Path, catalogue: Path,
                                                                      minilm: str) -> None:
    import torch

    from encoders.text import _load
    from encoders.text_tuning import load_text_layers, text_layers_path

    def side(texts, text_ids, device):  # type: ignore[no-untyped-def]
        from encoders.text_tuning import TunedTextLayers
        return TunedTextLayers(minilm, texts, text_ids, 1, device)

    out, work = tmp_path / "t.pt", tmp_path / "w"
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 2, "text_layers": 1, "text_lr": 1e-3})
    written = {}
    for mix in (1.0, 0.0, 0.5):  # the second and third runs find the finished run and only rewrite the files
        finetune(items_for(catalogue), fake_text, "fake", FinetuneSettings(**{**settings.__dict__, "text_mix": mix}),
                 out, work, progress=False, text_side=side)
        written[mix] = {k: v.float() for k, v in load_text_layers(text_layers_path(out))["state"].items()}
    _, model = _load(minilm)
    stock = torch.nn.ModuleList(model.encoder.layer[-1:]).state_dict()
    assert len(list(work.glob("run-*"))) == 1
    for k in stock:
        assert torch.allclose(written[0.0][k], stock[k].half().float())
        assert torch.allclose(written[0.5][k], (0.5 * written[1.0][k] + 0.5 * stock[k]).half().float(), atol=2e-3)
    assert any(not torch.allclose(written[1.0][k], written[0.0][k]) for k in stock)
