#!/usr/bin/env bash
# Train the fashion image tower (models/image_tower.pt) in one command: two `vitrina finetune` stages on strong
# views of the catalogue's photos (encoders/augment.py), against the text encoder of config.toml (MiniLM with the
# shipped tuned layers models/image_tower.text.pt). About 100 min of training on 2 CPU cores; CUDA is used when
# present (the shipped tower's GPU stages: scripts/train_tower_gpu.sh and models/README.md). Each stage resumes
# after a crash when rerun. Arguments go to every stage (e.g. --no-progress). H&M: the same two commands with
# `--config configs/hm.toml`.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vitrina
# stage 1: from random initialisation, the [finetune] settings of config.toml (strong views, label smoothing 0.1,
# H&M's train photos beside the catalogue's ([finetune].also),
# 60 min budget: the cosine schedule anneals on time and stops there)
"$V" finetune "$@"
# stage 2: from stage 1's best at a lower learning rate, 40 min budget
"$V" finetune --from models/image_tower.pt --lr 3e-4 --epochs 12 --time-budget 40 "$@"
