#!/usr/bin/env bash
# Reproduce the shipped fashion image tower (models/image_tower.pt) and the text layers tuned with it
# (models/image_tower.text.pt) in one command: the three `vitrina finetune` stages the model card records.
# About 100 min on 2 CPU cores; CUDA is used when present. Each stage resumes after a crash when rerun.
# Arguments go to every stage (e.g. --no-progress).
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vitrina
# every stage starts from the stock text tower (config.toml points [text_encoder] at the tuned layers)
export VITRINA_TEXT_ENCODER__TUNED_LAYERS=
# stage 1: from random initialisation, the [finetune] settings of config.toml (40 epochs, 60 min budget),
# against the locked text tower
"$V" finetune "$@"
# stage 2: 12 more epochs from stage 1's best, at a lower learning rate, 20 min budget
"$V" finetune --from models/image_tower.pt --lr 3e-4 --epochs 12 --time-budget 20 "$@"
# stage 3: 6 more epochs with the text tower's last 2 layers tuned too; their weights are written at 0.3 x tuned
# + 0.7 x stock (WiSE-FT) to models/image_tower.text.pt, which config.toml's [text_encoder].tuned_layers loads
"$V" finetune --from models/image_tower.pt --lr 3e-4 --epochs 6 --text-layers 2 --text-lr 2e-5 --text-mix 0.3 "$@"
