#!/usr/bin/env bash
# Live-catalogue figures on the built index (README "Changing the catalogue while it serves"):
#   1. write throughput through POST /api/items, batches of 100 real products with their photos (one client), after
#      a first batch of 10 (which loads a worker's write-side encoders), and the server's memory before and after;
#   2. text search with wrk (another process), distinct queries (no query-cache hits): 4 and 16 clients;
#   3. text search at 4 clients while a writer adds 20 items/s (batches of 10 every 0.5 s);
#   4. with COPIES=2: two services, each on its own copy of the whole data dir, both loaded by wrk at once (no
#      writes shared: the ceiling of two serving processes; WORKERS=2 is the real thing, writes followed by both).
# WORKERS=N serves with `vitrina serve --workers N` (on the embedded store each worker searches its own copy).
# Usage: bash scripts/bench_live.sh [config.toml]   (env: PYTHON, DURATION=30, COPIES=1, WORKERS=1)
# Written items are deleted at the end of each phase; the index is left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=${1:-config.toml}
DURATION=${DURATION:-30}
COPIES=${COPIES:-1}
WORKERS=${WORKERS:-1}
KEY=${VITRINA_API_KEY:-bench-live-key}
export VITRINA_API_KEYS=$KEY VITRINA_API_KEY=$KEY HF_HUB_OFFLINE=1
WORK=$(mktemp -d /tmp/vitrina-bench-live.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {  # start PORT [env...]: vitrina serve in the background, wait for /health
  local port=$1; shift
  env "$@" "$PY" -m scripts.cli --config "$CONFIG" serve --port "$port" --workers "$WORKERS" \
    >"$WORK/serve-$port.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.5; done
  echo "server on $port did not start:"; tail -20 "$WORK/serve-$port.log"; exit 1
}
cpu_s() {  # CPU seconds the serving processes (PIDS and their workers) have used so far
  "$PY" -c 'import sys; from benchmarks.http_load import process_cpu_s
print(sum(process_cpu_s(int(p)) or 0.0 for p in sys.argv[1:]))' "${PIDS[@]}"
}
wrk_phase() {  # wrk_phase NAME CLIENTS SLICE URL...: one wrk per URL at once (CLIENTS split between them)
  local name=$1 clients=$2 slice=$3; shift 3
  local per=$((clients / $#)) outs=() jobs=() cpu0 t0
  cpu0=$(cpu_s) t0=$(date +%s.%N)
  for url in "$@"; do
    local out="$WORK/wrk-${name//[^a-z0-9-]/_}-$clients-${url##*:}.json"
    QUERIES="$WORK/queries-$slice.txt" WRK_THREADS=$((per < 4 ? per : 4)) \
      wrk -t$((per < 4 ? per : 4)) -c"$per" -d"${SECONDS_OF:-$DURATION}s" --timeout 10s -s scripts/wrk_search.lua \
      "$url" | tail -1 >"$out" &
    outs+=("$out") jobs+=($!)
  done
  wait "${jobs[@]}"
  local busy
  busy=$(awk -v c0="$cpu0" -v c1="$(cpu_s)" -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {print (c1 - c0) / (t1 - t0)}')
  "$PY" - "$name" "$clients" "$busy" "${outs[@]}" <<'EOF'
import json, sys
name, clients, busy, files = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
rows = [json.loads(open(f).read()) for f in files]
print(json.dumps({"phase": name, "clients": int(clients), "rps": round(sum(r["rps"] for r in rows), 1),
                  "server_cores_busy": round(busy, 2),
                  "p50_ms": max(r["p50_ms"] for r in rows), "p95_ms": max(r["p95_ms"] for r in rows),
                  "p99_ms": max(r["p99_ms"] for r in rows), "requests": sum(r["requests"] for r in rows),
                  "errors": sum(r["socket_errors"] + r["non_2xx"] for r in rows), "processes": len(rows)}))
EOF
}

"$PY" - "$CONFIG" "$WORK" <<'EOF'
import sys
from urllib.parse import quote
from benchmarks.http_inputs import read_queries, title_queries
from vitrina.config import load_config
from pathlib import Path
cfg = load_config(sys.argv[1])
titles = title_queries(cfg, 0) + [t for t in title_queries(cfg.replace(catalogue={"split": ""}), 1)]
queries = list(dict.fromkeys(read_queries(Path(cfg.catalogue.path).parent / "queries_dev.csv", 0) + titles))
size = len(queries) // 4
for i in range(4):  # one slice per phase: no query repeats across phases (each process caches 4,096)
    Path(sys.argv[2], f"queries-{i}.txt").write_text("\n".join(quote(q) for q in queries[i * size:(i + 1) * size]))
print(f"{len(queries)} distinct queries, {size} per phase", file=sys.stderr)
EOF

PORT=$(free_port)
start "$PORT"
URL="http://127.0.0.1:$PORT"
SERVER=${PIDS[0]}  # its workers count with it (benchmarks/http_load.process_cpu_s)
SECONDS_OF=5 wrk_phase "warm-up" 4 3 "$URL" >/dev/null  # first searches fill the engine's caches
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), workers $WORKERS, copies $COPIES"
curl -s "$URL/health" | "$PY" -c 'import json,sys; h=json.load(sys.stdin); print("# index", h["index"])'

if [ "$COPIES" -gt 1 ]; then
  DATA=$("$PY" -c "from vitrina.config import load_config; print(load_config('$CONFIG').data_dir)")
  mkdir -p "$WORK/copy"; cp -r "$DATA/store" "$WORK/copy/store"; rm -f "$WORK/copy/store/collections"/*/lock
  PORT2=$(free_port); start "$PORT2" VITRINA_DATA__DIR="$WORK/copy"
  SECONDS_OF=5 wrk_phase "warm-up" 4 3 "http://127.0.0.1:$PORT2" >/dev/null
  wrk_phase "search-2proc" 4 0 "$URL" "http://127.0.0.1:$PORT2"
  wrk_phase "search-2proc" 16 1 "$URL" "http://127.0.0.1:$PORT2"
  exit 0
fi

memory() {  # memory PHASE: RSS and PSS (MiB) of the server and of each of its processes
  "$PY" - "$1" "$SERVER" <<'EOF'
import json, sys
from benchmarks.http_load import process_pss_mb, process_rss_each
each = process_rss_each(int(sys.argv[2]))
print(json.dumps({"phase": sys.argv[1], "rss_mb": round(sum(each.values())),
                  "pss_mb": round(process_pss_mb(int(sys.argv[2])) or 0), "rss_mb_each": [round(v) for v in each.values()]}))
EOF
}
memory "memory before writes"
# the first write a worker takes loads its write-side encoders ([web].warm_writes, [live].text_precision)
"$PY" -m scripts.cli --config "$CONFIG" bench write --url "$URL" --batches 1 --batch-size 10 --cleanup \
  | sed 's/^{/{"phase": "first write", /'
"$PY" -m scripts.cli --config "$CONFIG" bench write --url "$URL" --batches 10 --batch-size 100 --cleanup \
  --server-pid "$SERVER" | sed 's/^{/{"phase": "write", /'
memory "memory after writes"
wrk_phase "search" 4 0 "$URL"
wrk_phase "search" 16 1 "$URL"
"$PY" -m scripts.cli --config "$CONFIG" bench write --url "$URL" --rate 20 --batch-size 10 \
  --duration "$((DURATION + 4))" --cleanup >"$WORK/writer.json" &
WRITER=$!
sleep 2
wrk_phase "search while writing 20 items/s" 4 2 "$URL"
wait "$WRITER" || true
sed 's/^{/{"phase": "writer during search", /' "$WORK/writer.json"
