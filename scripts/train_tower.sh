#!/usr/bin/env bash
# Reproduce the shipped fashion image tower (models/image_tower.pt) in one command: the two `vitrina finetune`
# stages its model card records. About 80 min on 2 CPU cores; CUDA is used when present. Each stage resumes
# after a crash when rerun. Arguments go to both stages (e.g. --no-progress).
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vitrina
# stage 1: from random initialisation, the [finetune] settings of config.toml (40 epochs, 60 min budget)
"$V" finetune "$@"
# stage 2: 12 more epochs from stage 1's best, at a lower learning rate, 20 min budget
"$V" finetune --from models/image_tower.pt --lr 3e-4 --epochs 12 --time-budget 20 "$@"
