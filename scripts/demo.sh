#!/usr/bin/env bash
# README command 1: install, train the image tower if there is none yet, index the fashion catalogue
# (../shared/data/fashion) on the default embedded store, and print the summary.
#   VITRINA_DEMO_SKIP_FINETUNE=1  index text only when no image tower is trained (much faster)
#   any arguments are passed to `vitrina reindex` (e.g. --fresh, --limit 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
V=.venv/bin/vitrina

tower_trained() {
  "$V" info --json | .venv/bin/python -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["image_tower"]["available"] else 1)'
}

if ! tower_trained; then
  if [ "${VITRINA_DEMO_SKIP_FINETUNE:-0}" = "1" ]; then
    echo "demo: no trained image tower and VITRINA_DEMO_SKIP_FINETUNE=1: indexing text only" >&2
  else
    # ---- FINETUNE: no trained image tower yet, so train one first (LiT against the frozen text encoder) ----
    echo "demo: no trained image tower yet: running \`vitrina finetune\` first" >&2
    "$V" finetune
  fi
fi

# Resumes an interrupted run; searches keep using the previous collection until this one is complete.
"$V" reindex "$@"
echo
"$V" info
