"""Tiny random models other tests load: an open_clip image tower saved in vitrina's checkpoint format."""

from __future__ import annotations

from pathlib import Path

TEST_ARCH = "vitrina-test-tiny"  # 32x32 ViT, 384-d output (the text space's dim), ~0.1M params
RESNET_ARCH = "vitrina-rn-tiny"  # a ModifiedResNet like the shipped tower (the 8-bit tower keeps its stem in float)


def write_tiny_checkpoint(path: Path, seed: int = 0, arch: str = TEST_ARCH, labels: dict | None = None) -> Path:
    """Save a tiny randomly initialised image tower (+ model card beside it) at path; returns path.
    labels: an optional label head (see encoders.image.save_checkpoint)."""
    import torch

    from encoders.image import build_tower, save_checkpoint

    torch.manual_seed(seed)
    visual = build_tower(arch)
    card = {"trained_on": {"catalogue": "none (random init for tests)"}, "epochs_run": 0, "best_epoch": None,
            "best_dev_metrics": None, "complete": True, "created": "test"}
    return save_checkpoint(Path(path), visual, arch, logit_scale=1 / 0.07, card=card, labels=labels)
