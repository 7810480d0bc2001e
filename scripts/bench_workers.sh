#!/usr/bin/env bash
# `vitrina serve --workers N` against --workers M on a shared machine: one service per worker count runs at once,
# and short `vitrina bench http` rounds alternate between them (1, 2, 1, 2, ...), so that other work on the machine
# falls on every service alike; each round prints its rows with the cores the rest of the machine used meanwhile
# (`other cores`), and the end the median of each phase per worker count. The first service runs on the config's
# data dir, each other on a copy of it (a single process holds its collection open: two cannot share one).
# Usage: bash scripts/bench_workers.sh [config.toml]
#   env: PYTHON, WORKERS="1 2", ROUNDS=3, DURATION=10 (seconds a phase), PHASES=floor,text,text@16,text+user
#   A WORKERS item may carry settings for its service: "2:VITRINA_SEARCH__TORCH_THREADS=2,VITRINA_WEB__THREADS=4".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=${1:-config.toml}
WORKERS=${WORKERS:-1 2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PHASES=${PHASES:-floor,text,text@16,text+user}
KEY=${VITRINA_API_KEY:-bench-workers-key}
export VITRINA_API_KEYS=$KEY VITRINA_API_KEY=$KEY HF_HUB_OFFLINE=1 VITRINA_SEARCH__QUERY_CACHE=0
WORK=$(mktemp -d /tmp/vitrina-bench-workers.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

DATA=$("$PY" -c "from vitrina.config import load_config; print(load_config('$CONFIG').data_dir)")
declare -A URL
k=0
for n in $WORKERS; do  # n: the item, e.g. 2 or 2:NAME=VALUE,...
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  settings=()
  [[ $n == *:* ]] && IFS=, read -r -a settings <<<"${n#*:}"
  if [ $((k++)) -gt 0 ]; then  # its own copy of the data dir (the index, the change log, the exported models)
    mkdir -p "$WORK/data-$k/store"
    for part in changes models understand; do [ -e "$DATA/$part" ] && cp -a "$DATA/$part" "$WORK/data-$k/"; done
    for part in aliases collections; do cp -a --sparse=always "$DATA/store/$part" "$WORK/data-$k/store/"; done
    settings+=("VITRINA_DATA__DIR=$WORK/data-$k")
  fi
  env "${settings[@]}" "$PY" -m scripts.cli --config "$CONFIG" serve --port "$port" --workers "${n%%:*}" \
    >"$WORK/serve-${n//[^A-Za-z0-9]/_}.log" 2>&1 &
  PIDS+=($!)
  URL[$n]="http://127.0.0.1:$port"
done
for n in $WORKERS; do
  for _ in $(seq 600); do curl -sf "${URL[$n]}/health" >/dev/null && break; sleep 0.5; done
  curl -sf "${URL[$n]}/health" >/dev/null || { echo "--workers $n did not start:"; tail -20 "$WORK"/serve-*.log; exit 1; }
done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), workers: $WORKERS, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  for n in $WORKERS; do
    echo "## round $r, --workers $n"
    "$PY" -m scripts.cli --config "$CONFIG" bench http --url "${URL[$n]}" --phases "$PHASES" --duration "$DURATION" \
      --seed "$r" --json "$WORK/r$r-w${n//[^A-Za-z0-9]/_}.json" | sed -n '/^phase/,/^server RSS/p'
  done
done
"$PY" - "$WORK" $WORKERS <<'EOF'
import json, re, statistics, sys
from pathlib import Path
work, counts = Path(sys.argv[1]), sys.argv[2:]
print("\nmedian over the rounds (other cores: the rest of the machine during the phase)")
print(f"{'workers':>7}  {'phase':<10} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'cpu ms/req':>10} {'server cores':>12} "
      f"{'other cores':>11} {'errors':>6}")
for n in counts:
    runs = [json.loads(p.read_text()) for p in sorted(work.glob(f"r*-w{re.sub('[^A-Za-z0-9]', '_', n)}.json"))]
    for i, row in enumerate(runs[0]["rows"]):
        rows = [run["rows"][i] for run in runs]
        med = {k: statistics.median(r.get(k, float("nan")) for r in rows)
               for k in ("rps", "p50_ms", "p95_ms", "cpu_ms_per_req", "server_cores", "other_cores")}
        print(f"{n:>7}  {row['phase']:<10} {med['rps']:7.1f} {med['p50_ms']:7.1f} {med['p95_ms']:7.1f} "
              f"{med['cpu_ms_per_req']:10.2f} {med['server_cores']:12.2f} {med['other_cores']:11.2f} "
              f"{sum(r['errors'] for r in rows):6d}")
    rss = runs[-1].get("server_rss_mb")
    print(f"{'':>7}  RSS {rss:.0f} MiB in all at the end" if rss else "")
EOF
