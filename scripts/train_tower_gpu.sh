#!/usr/bin/env bash
# Train the image towers from training packs on one CUDA GPU, four runs side by side: the fashion tower
# (strong views + two-view term), two fashion ablations (no two-view term; the old mild views) and the H&M tower.
# Make the packs first, where the catalogues are:
#   vitrina finetune --write-pack PACKS/fashion.npz
#   vitrina --config configs/hm.toml finetune --write-pack PACKS/hm.npz
# The GPU machine needs only torch (CUDA) and open_clip: the finetune command runs without the serving stack.
#   bash scripts/train_tower_gpu.sh PACKS OUT [MINUTES]     (MINUTES of training per run, default 6)
# Each run's log and tower go to /tmp/vitrina-gpu; `finalise` tars them into OUT in chunks of 15 MiB (towers.tar.part-*),
# also from a watchdog at FINALISE_AT seconds, so that a machine lent for a fixed time hands back what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKS=$1; OUT=$2; MIN=${3:-6}
PY=${PYTHON:-python3}
WORK=/tmp/vitrina-gpu
mkdir -p "$OUT" "$WORK"
finetune() {  # `vitrina finetune` alone (the other commands import the serving stack)
  "$PY" -c 'import sys; from scripts import cli; cli.COMMAND_MODULES = ("scripts.cmd_finetune",); sys.exit(cli.main())' "$@"
}
finalise() {
  mkdir "$WORK/.final" 2>/dev/null || return 0  # once
  (cd "$WORK" && tar cf - --exclude=.final --exclude='*.tmp' fashion hm fashion-noviews fashion-mild/*.json *.log 2>/dev/null) \
    | split -b 15M - "$OUT/towers.tar.part-"
  ls -la "$OUT"
}
(sleep "${FINALISE_AT:-100000}" </dev/null >/dev/null 2>&1; echo "watchdog: finalising at ${FINALISE_AT:-} s"; finalise) &
watchdog=$!
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true
export VITRINA_FINETUNE__PATIENCE=0 VITRINA_FINETUNE__EVAL_EVERY=5 VITRINA_FINETUNE__WARMUP_STEPS=300 VITRINA_RUNTIME__THREADS=3
common=(--augment strong --epochs 2000 --time-budget "$MIN" --state-every 90 --label-smoothing 0.1 --no-progress)
finetune finetune --pack "$PACKS/fashion.npz" "${common[@]}" --view-weight 0.5 --batch-size 512 --lr 2e-3 \
  --output "$WORK/fashion/image_tower.pt" > "$WORK/fashion.log" 2>&1 &
pids=($!)
finetune finetune --pack "$PACKS/fashion.npz" "${common[@]}" --view-weight 0 --batch-size 512 --lr 2e-3 \
  --output "$WORK/fashion-noviews/image_tower.pt" > "$WORK/fashion-noviews.log" 2>&1 &
pids+=($!)
finetune finetune --pack "$PACKS/fashion.npz" "${common[@]}" --augment mild --view-weight 0 --batch-size 512 \
  --lr 2e-3 --output "$WORK/fashion-mild/image_tower.pt" > "$WORK/fashion-mild.log" 2>&1 &
pids+=($!)
finetune --config configs/hm.toml finetune --pack "$PACKS/hm.npz" "${common[@]}" --view-weight 0.5 --batch-size 256 \
  --lr 2e-3 --output "$WORK/hm/image_tower_hm.pt" > "$WORK/hm.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do sleep 40; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
  tail -n 2 "$WORK"/*.log; done
for p in "${pids[@]}"; do wait "$p" || echo "run $p failed: see its log"; done
tail -n 3 "$WORK"/*.log
finalise
kill "$watchdog" 2>/dev/null || true
