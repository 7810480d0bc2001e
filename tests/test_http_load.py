"""The HTTP benchmark's pieces that need no server: wrk's output parsed from a captured run, the request list wrk's
Lua script reads, the distinct queries, phase specs and verdicts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks import http as bench_http
from benchmarks.http_inputs import distinct_queries
from benchmarks.http_load import (Phase, parse_wrk, process_cpu_s, process_pss_mb, process_rss_each, process_rss_mb,
                                  wrk_errors, write_requests)
from vitrina.errors import BadInput

# `wrk -t2 -c4 -d2s -s <WRK_LUA> http://127.0.0.1:8795 -- requests.tsv 2` against `vitrina serve`, one of the
# four item ids unknown (404s count as "status" errors).
WRK_SAMPLE = """Running 2s test @ http://127.0.0.1:8795
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    19.76ms   50.29ms 282.05ms   91.91%
    Req/Sec   452.28    243.41     1.03k    72.22%
  1666 requests in 2.01s, 610.38KB read
  Non-2xx or 3xx responses: 390
Requests/sec:    826.87
Transfer/sec:    302.94KB
VITRINA_WRK {"requests": 1666, "duration_us": 2014826, "bytes": 625027, "connect": 0, "read": 0, "write": 0, \
"status": 390, "timeout": 0, "p50_us": 3845, "p90_us": 30270, "p95_us": 151285, "p99_us": 257415, \
"max_us": 282046, "mean_us": 19762.2}
"""


def test_parse_wrk_reads_the_summary_line() -> None:
    figures = parse_wrk(WRK_SAMPLE)
    assert figures["requests"] == 1666 and figures["status"] == 390 and figures["p95_us"] == 151285
    assert wrk_errors(figures) == {"HTTP status >= 400": 390}
    phase = Phase("floor", 4, client="wrk", wrk=figures, wall_s=figures["duration_us"] / 1e6, distinct=1000)
    row = phase.summary()
    assert row["ok"] == 1666 - 390
    assert row["rps"] == pytest.approx((1666 - 390) / 2.014826)
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"]) == (3.845, 151.285, 257.415, 282.046)
    assert row["repeats"] == 666  # 1,666 sent of 1,000 distinct


def test_parse_wrk_refuses_output_without_the_summary() -> None:
    with pytest.raises(ValueError, match="VITRINA_WRK"):
        parse_wrk(WRK_SAMPLE.split("VITRINA_WRK")[0])
    with pytest.raises(ValueError, match="lacks"):
        parse_wrk('VITRINA_WRK {"requests": 3}\n')


def test_write_requests_lists_one_line_per_request_and_shares_bodies(tmp_path: Path) -> None:
    body = b"--b\r\nbinary \x00\xff\r\n--b--\r\n"
    listing = write_requests(tmp_path, [("GET", "/api/search?q=red+shoes&k=10", None, {}),
                                        ("POST", "/api/search", body, {"Content-Type": "multipart/form-data; boundary=b"}),
                                        ("POST", "/api/search", body, {"Content-Type": "multipart/form-data; boundary=b"})])
    lines = [line.split("\t") for line in listing.read_text().splitlines()]
    assert lines[0] == ["GET", "/api/search?q=red+shoes&k=10", "", ""]
    assert lines[1][2] == "multipart/form-data; boundary=b" and lines[1][3] == lines[2][3]
    assert Path(lines[1][3]).read_bytes() == body
    with pytest.raises(ValueError):
        write_requests(tmp_path, [("GET", "/api/search?q=red shoes", None, {})])


def test_distinct_queries_are_distinct_deterministic_and_start_with_the_real_ones() -> None:
    base = ["men brown watches", "women black heels", "kids blue shirt"]
    out = distinct_queries(base, 500, seed=3)
    assert len(out) == len(set(out)) == 500
    assert set(out[:3]) == set(base)
    assert out == distinct_queries(base, 500, seed=3) and out != distinct_queries(base, 500, seed=4)
    assert all(any(w in q.split() for b in base for w in b.split()) for q in out)


def test_phase_specs_and_verdicts() -> None:
    assert bench_http.parse_phases("floor,text,text@16,image", 4, 2) == [
        ("floor", "floor", 4), ("text", "text", 4), ("text@16", "text", 16), ("image", "image", 2)]
    for bad in ("texts", "text@x", "text@0", ""):
        with pytest.raises(BadInput):
            bench_http.parse_phases(bad, 4, 2)
    row = {"phase": "text", "clients": 4, "rps": 250.0, "p95_ms": 20.0, "errors": 0, "x_floor": 0.12}
    assert bench_http.verdict(row).startswith("PASS")
    assert bench_http.verdict({**row, "x_floor": 0.09}).startswith("MISS")
    unjudged = bench_http.verdict({**row, "x_floor": None})  # no floor phase: the ratio is not claimed
    assert unjudged.startswith("PASS") and "x floor not judged" in unjudged and ">=0.11" not in unjudged
    assert bench_http.verdict({**row, "phase": "text@16", "clients": 16, "p95_ms": 90.0}).startswith("PASS")
    assert bench_http.verdict({**row, "phase": "image", "p95_ms": 45.0}).startswith("MISS")
    assert bench_http.verdict({**row, "phase": "floor"}) == "reference"


def test_a_run_whose_floor_phases_disagree_says_so() -> None:
    assert bench_http.unsteady_floor([5000.0, 4900.0]) is None
    note = bench_http.unsteady_floor([3000.0, 5000.0])
    assert note is not None and "67%" in note and "3000.0 to 5000.0" in note
    assert bench_http.unsteady_floor([5000.0]) is None


def test_the_floor_ratio_is_against_the_mean_of_the_floor_phases() -> None:
    def row(phase: str, rps: float) -> dict:
        return {"phase": phase, "kind": phase.split("@")[0], "clients": 4, "rps": rps, "p95_ms": 10.0, "errors": 0}

    rows = [row("floor", 3000.0), row("text", 330.0), row("text@16", 300.0), row("floor", 5000.0)]
    assert bench_http.with_floor_ratios(rows) == [3000.0, 5000.0]
    assert [r["x_floor"] for r in rows] == [None, pytest.approx(330 / 4000), pytest.approx(300 / 4000), None]
    assert [r["verdict"] for r in rows] == ["reference", bench_http.verdict(rows[1]), bench_http.verdict(rows[2]),
                                            "reference"]
    assert rows[1]["verdict"].startswith("MISS") and "kind" not in rows[1]  # 0.0825 < 0.11
    alone = [row("text", 500.0)]
    assert bench_http.with_floor_ratios(alone) == [] and alone[0]["x_floor"] is None
    assert "x floor not judged" in alone[0]["verdict"]


def test_own_process_cpu_and_memory_are_readable() -> None:
    cpu = process_cpu_s(os.getpid())
    rss = process_rss_mb(os.getpid())
    assert cpu is not None and cpu > 0 and rss is not None and rss > 10


def test_pss_counts_pages_a_forked_worker_shares_once() -> None:
    """Summed VmRSS counts the pages a worker shares with its parent twice; PSS (what bench http also prints)
    counts them once: 64 MiB touched before a fork show up ~twice in RSS and ~once in PSS."""
    if not Path(f"/proc/{os.getpid()}/smaps_rollup").is_file():
        pytest.skip("no /proc/<pid>/smaps_rollup here")
    block = bytearray(os.urandom(1 << 20)) * 64  # 64 MiB of private, touched pages
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child only holds the inherited pages until the parent has measured
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    try:
        time.sleep(0.2)
        rss = sum(mb for p, mb in process_rss_each(os.getpid()).items() if p in (os.getpid(), child))
        pss = process_pss_mb(os.getpid())
        assert pss is not None and rss - pss > 48, (rss, pss)
    finally:
        os.write(write, b"x")
        os.close(write)
        os.waitpid(child, 0)
    assert len(block) == 64 << 20


def test_vitrina_bench_lists_the_benchmarks_not_their_helpers() -> None:
    import benchmarks
    from scripts.cmd_bench import available

    names = available()
    assert {"http", "index", "store", "recommend", "write"} <= set(names) and not set(names) & benchmarks.HELPERS
    assert all((Path(benchmarks.__file__).parent / f"{name}.py").is_file() for name in benchmarks.HELPERS)
