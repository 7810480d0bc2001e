#!/usr/bin/env bash
# `vitrina serve --workers N` against --workers M on a shared machine: one service per worker count runs at once,
# and short `vitrina bench http` rounds alternate between them (1, 2, 1, 2, ...), so that other work on the machine
# falls on every service alike; each round prints its rows with the cores the rest of the machine used meanwhile
# (`other cores`), and the end the median of each phase per worker count.
# Usage: bash scripts/bench_workers.sh [config.toml]
#   env: PYTHON, WORKERS="1 2", ROUNDS=3, DURATION=10 (seconds a phase), PHASES=floor,text,text@16,text+user
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

declare -A URL
for n in $WORKERS; do
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$PY" -m scripts.cli --config "$CONFIG" serve --port "$port" --workers "$n" >"$WORK/serve-$n.log" 2>&1 &
  PIDS+=($!)
  URL[$n]="http://127.0.0.1:$port"
done
for n in $WORKERS; do
  for _ in $(seq 600); do curl -sf "${URL[$n]}/health" >/dev/null && break; sleep 0.5; done
  curl -sf "${URL[$n]}/health" >/dev/null || { echo "--workers $n did not start:"; tail -20 "$WORK/serve-$n.log"; exit 1; }
done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), workers: $WORKERS, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  for n in $WORKERS; do
    echo "## round $r, --workers $n"
    "$PY" -m scripts.cli --config "$CONFIG" bench http --url "${URL[$n]}" --phases "$PHASES" --duration "$DURATION" \
      --seed "$r" --json "$WORK/r$r-w$n.json" | sed -n '/^phase/,/^server RSS/p'
  done
done
"$PY" - "$WORK" $WORKERS <<'EOF'
import json, statistics, sys
from pathlib import Path
work, counts = Path(sys.argv[1]), sys.argv[2:]
print("\nmedian over the rounds (other cores: the rest of the machine during the phase)")
print(f"{'workers':>7}  {'phase':<10} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'cpu ms/req':>10} {'server cores':>12} "
      f"{'other cores':>11} {'errors':>6}")
for n in counts:
    runs = [json.loads(p.read_text()) for p in sorted(work.glob(f"r*-w{n}.json"))]
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
