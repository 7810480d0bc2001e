#!/usr/bin/env bash
# Create .venv and install vitrina with its pinned dependencies (see README "Install" for what it downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# `===` pins the exact string 2.13.0: the registry's CUDA build (runs on CPU too). The local +cpu wheel
# would also satisfy `==2.13.0`, but torchvision (every registry build links CUDA) cannot load beside it.
.venv/bin/python -m pip install --progress-bar off -q "torch===2.13.0" "torchvision==0.28.0"
.venv/bin/python -m pip install --progress-bar off -q -e ".[test]"
.venv/bin/python -c "import torch, torchvision, open_clip, transformers, qdrant_edge; print('vitrina setup ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
