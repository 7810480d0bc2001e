-- wrk script: text searches with distinct queries (one per request, no repeats across threads while they last),
-- read from the file named by $QUERIES (one URL-encoded query per line); prints a JSON line with req/s and
-- latency percentiles. Used by scripts/bench_live.sh:  QUERIES=q.txt wrk -t4 -c16 -d30s -s scripts/wrk_search.lua URL
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  queries = {}
  for line in io.lines(os.getenv("QUERIES")) do
    queries[#queries + 1] = line
  end
  nthreads = tonumber(os.getenv("WRK_THREADS") or "4")
  pos = tid - 1
  path = os.getenv("SEARCH_PATH") or "/api/search?k=10&q="
end

function request()
  local q = queries[(pos % #queries) + 1]
  pos = pos + nthreads
  return wrk.format("GET", path .. q)
end

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_s": %.1f, "rps": %.1f, "p50_ms": %.1f, "p95_ms": %.1f, ' ..
    '"p99_ms": %.1f, "max_ms": %.1f, "socket_errors": %d, "non_2xx": %d}\n', summary.requests, s,
    summary.requests / s, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.connect + e.read + e.write + e.timeout, e.status))
end
