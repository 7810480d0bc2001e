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
# The browser test (tests/test_browser.py) drives Debian's chromium through playwright (no browser download).
if [ -n "${VITRINA_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "vitrina setup: installing Debian's chromium (apt-get) for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    && echo "vitrina setup: chromium installed: $(command -v chromium)") \
    || echo "vitrina setup: warning: apt-get could not install chromium; the browser test will be skipped" >&2
else
  echo "vitrina setup: note: no chromium and not root (or no apt-get), so the browser test (tests/test_browser.py)" \
       "will be skipped; install it with \`sudo apt-get install chromium\` or set VITRINA_CHROMIUM to a binary" >&2
fi
.venv/bin/python -c "import torch, torchvision, open_clip, transformers, qdrant_edge; print('vitrina setup ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
