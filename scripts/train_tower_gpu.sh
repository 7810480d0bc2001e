#!/usr/bin/env bash
# Train the image towers from training packs on one CUDA GPU, several runs side by side.
# Make the packs first, where the catalogues are:
#   vitrina finetune --write-pack PACKS/fashion.npz
#   vitrina --config configs/hm.toml finetune --write-pack PACKS/hm.npz
# The GPU machine needs only torch (CUDA) and open_clip: the finetune command runs without the serving stack.
#   bash scripts/train_tower_gpu.sh PACKS OUT [MINUTES]     (MINUTES of training per run, default 6)
# From scratch (FROM unset): the fashion tower (strong views + two-view term), two fashion ablations (no two-view
# term; the old mild views) and the H&M tower. With FROM=DIR holding image_tower.pt and image_tower_hm.pt (the
# shipped towers): each tower goes on from there at lr ${LR:-5e-4}, once with the default strong views and once
# with views that zoom out further and paste on other backgrounds more often (-far: [finetune].view_zoom_out
# ${FAR_ZOOM:-2.6}, view_background ${FAR_BACKGROUND:-0.8}).
# Each run's log and tower go to /tmp/vitrina-gpu; `finalise` tars them (xz) into OUT in chunks of 15 MiB (towers.tar.xz.part-*),
# also from a watchdog at FINALISE_AT seconds, so that a machine lent for a fixed time hands back what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKS=$1; OUT=$2; MIN=${3:-6}
PY=${PYTHON:-python3}
WORK=/tmp/vitrina-gpu
mkdir -p "$OUT" "$WORK"
RUN_ENV=()  # extra VAR=value settings for the next run()
finetune() {  # `vitrina finetune` alone (the other commands import the serving stack)
  env "${RUN_ENV[@]}" "$PY" -c 'import sys; from scripts import cli; cli.COMMAND_MODULES = ("scripts.cmd_finetune",); sys.exit(cli.main())' "$@"
}
compress() {  # xz where installed, else Python's lzma
  if command -v xz >/dev/null; then xz -T0 -3; else "$PY" -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read(), preset=3))'; fi
}
finalise() {
  mkdir "$WORK/.final" 2>/dev/null || return 0  # once
  (cd "$WORK" && tar cf - --exclude=.final --exclude='*.tmp' \
    $(ls -d */ 2>/dev/null) *.log 2>/dev/null) | compress | split -b 15M - "$OUT/towers.tar.xz.part-"
  ls -la "$OUT"
}
pids=()
run() {  # run NAME CONFIG PACK [finetune args...]: one training in the background, its log in $WORK/NAME.log
  local name=$1 config=$2 pack=$3; shift 3
  finetune --config "$config" finetune --pack "$PACKS/$pack" "${common[@]}" "$@" \
    > "$WORK/$name.log" 2>&1 &
  pids+=($!)
}
(sleep "${FINALISE_AT:-100000}" </dev/null >/dev/null 2>&1; echo "watchdog: finalising at ${FINALISE_AT:-} s"; finalise) &
watchdog=$!
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true
export VITRINA_FINETUNE__PATIENCE=0 VITRINA_FINETUNE__EVAL_EVERY=5 VITRINA_RUNTIME__THREADS=3
common=(--augment strong --epochs 2000 --time-budget "$MIN" --state-every 90 --label-smoothing 0.1 --no-progress)
if [ -z "${FROM:-}" ]; then
  export VITRINA_FINETUNE__WARMUP_STEPS=300
  run fashion config.toml fashion.npz --view-weight 0.5 --batch-size 512 --lr 2e-3 \
    --output "$WORK/fashion/image_tower.pt"
  run fashion-noviews config.toml fashion.npz --view-weight 0 --batch-size 512 --lr 2e-3 \
    --output "$WORK/fashion-noviews/image_tower.pt"
  run fashion-mild config.toml fashion.npz --augment mild --view-weight 0 --batch-size 512 --lr 2e-3 \
    --output "$WORK/fashion-mild/image_tower.pt"
  run hm configs/hm.toml hm.npz --view-weight 0.5 --batch-size 256 --lr 2e-3 --output "$WORK/hm/image_tower_hm.pt"
else
  export VITRINA_FINETUNE__WARMUP_STEPS=100
  for variant in "" -far; do
    RUN_ENV=(); [ -n "$variant" ] && RUN_ENV=(VITRINA_FINETUNE__VIEW_ZOOM_OUT="${FAR_ZOOM:-2.6}"
                                              VITRINA_FINETUNE__VIEW_BACKGROUND="${FAR_BACKGROUND:-0.8}")
    run "fashion$variant" config.toml fashion.npz --from "$FROM/image_tower.pt" --view-weight 0 --batch-size 512 \
      --lr "${LR:-5e-4}" --output "$WORK/fashion$variant/image_tower.pt"
    run "hm$variant" configs/hm.toml hm.npz --from "$FROM/image_tower_hm.pt" --view-weight 0 --batch-size 256 \
      --lr "${LR:-5e-4}" --output "$WORK/hm$variant/image_tower_hm.pt"
  done
  RUN_ENV=()
fi
for i in 1 2 3; do sleep 40; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
  tail -n 2 "$WORK"/*.log; done
for p in "${pids[@]}"; do wait "$p" || echo "run $p failed: see its log"; done
tail -n 3 "$WORK"/*.log
finalise
kill "$watchdog" 2>/dev/null || true
