"""Load generators for the HTTP benchmarks: wrk (an outside client, driven through a generated Lua script) and a
Python client, plus what both report on the server: its CPU seconds and memory, found by pid or listening port."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# One request as the phases build it: (method, path, body, headers).
Request = tuple[str, str, bytes | None, dict[str, str]]


@dataclass
class Phase:
    """One measured run: latencies (or wrk's percentiles), errors, wall time, the server's CPU during it."""

    name: str
    clients: int
    client: str = "python"  # which load generator measured it: python or wrk
    server_cpu_s: float | None = None  # CPU the server's processes used during the phase
    client_cpu_s: float | None = None  # ... the load generator (wrk, or this process's threads)
    machine_cpu_s: float | None = None  # ... every process on the machine (so the rest: other work)
    cpu_wall_s: float = 0.0  # the seconds those were measured over
    latencies_ms: list[float] = field(default_factory=list)  # python client: every successful request
    took_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    wrk: dict[str, float] = field(default_factory=dict)  # wrk: requests, errors and percentiles (parse_wrk)
    distinct: int = 0  # distinct requests the phase had to send (more sent = repeats)

    @property
    def ok(self) -> int:
        if self.wrk:
            return int(self.wrk["requests"] - self.wrk["status"])
        return len(self.latencies_ms)

    @property
    def sent(self) -> int:
        return int(self.wrk["requests"]) if self.wrk else self.ok + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        if self.wrk:
            pct = {f"p{q}_ms": self.wrk[f"p{q}_us"] / 1000.0 for q in (50, 90, 95, 99)}
            pct["max_ms"] = self.wrk["max_us"] / 1000.0
            server_p50 = float("nan")
        else:
            lat = sorted(self.latencies_ms)
            pct = {f"p{q}_ms": percentile(lat, q) for q in (50, 90, 95, 99)}
            pct["max_ms"] = lat[-1] if lat else float("nan")
            server_p50 = percentile(sorted(self.took_ms), 50)
        return {"phase": self.name, "clients": self.clients, "client": self.client, "ok": self.ok,
                "errors": sum(self.errors.values()), "rps": self.ok / self.wall_s if self.wall_s > 0 else 0.0,
                **pct, "server_p50_ms": server_p50,
                "cpu_ms_per_req": (1000.0 * self.server_cpu_s / self.ok) if self.server_cpu_s and self.ok
                else float("nan"),
                **self.cores(),
                "repeats": max(0, self.sent - self.distinct) if self.distinct else 0,
                "error_kinds": dict(self.errors)}

    def cores(self) -> dict[str, float]:
        """Cores busy on average during the phase: the server, the load generator, and all other work."""
        if not self.cpu_wall_s or self.machine_cpu_s is None:
            return {}
        server, client = self.server_cpu_s or 0.0, self.client_cpu_s or 0.0
        return {"server_cores": server / self.cpu_wall_s, "client_cores": client / self.cpu_wall_s,
                "other_cores": max(0.0, self.machine_cpu_s - server - client) / self.cpu_wall_s}


class CpuMeter:
    """CPU used from its making to `stop`: by the server's processes, by the load generator (this process's
    threads, or its children that ended meanwhile: wrk) and by the whole machine (/proc/stat)."""

    def __init__(self, server_pid: int, client_is_child: bool) -> None:
        self.server_pid = server_pid
        self.who = resource.RUSAGE_CHILDREN if client_is_child else resource.RUSAGE_SELF
        self.start = self._read()

    def _read(self) -> tuple[float | None, float, float | None, float]:
        use = resource.getrusage(self.who)
        server = process_cpu_s(self.server_pid) if self.server_pid else None
        return server, use.ru_utime + use.ru_stime, machine_busy_s(), time.perf_counter()

    def stop(self, phase: Phase) -> None:
        (s0, c0, m0, t0), (s1, c1, m1, t1) = self.start, self._read()
        if s0 is not None and s1 is not None:
            phase.server_cpu_s = s1 - s0
        phase.client_cpu_s = c1 - c0
        if m0 is not None and m1 is not None:
            phase.machine_cpu_s, phase.cpu_wall_s = m1 - m0, t1 - t0


def machine_busy_s() -> float | None:
    """CPU seconds this machine's cores have been busy so far (/proc/stat: all but idle and iowait), None if
    unreadable."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list (numpy's default method); NaN when empty."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---- the server's processes ---------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (a server with worker processes counts as one)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds used so far by a local process and its children (Linux /proc), None if
    unreadable."""
    total, seen = 0.0, False
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            seen = True
        except (OSError, IndexError, ValueError):
            continue
    return total if seen else None


def _memory_each(pid: int, file: str, field: str) -> dict[int, float]:
    """`field` (kB in /proc/<p>/<file>) in MiB of a process and of each of its descendants that could be read."""
    out = {}
    for p in process_tree(pid):
        try:
            match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{p}/{file}").read_text(), re.M)
        except OSError:
            continue
        if match:
            out[p] = int(match.group(1)) / 1024.0
    return out


def process_rss_each(pid: int) -> dict[int, float]:
    """Resident memory (VmRSS, MiB) of a process and of each of its descendants that could be read."""
    return _memory_each(pid, "status", "VmRSS")


def process_pss_mb(pid: int) -> float | None:
    """Proportional memory (Pss, MiB) of a process and its descendants: each page shared by n processes (the
    workers' libraries, a shard's mapped files, pages forked from the parent) counted 1/n in each, so the sum is
    what the server takes from the machine, where summed VmRSS counts shared pages once per process. None where
    /proc/<pid>/smaps_rollup cannot be read."""
    each = _memory_each(pid, "smaps_rollup", "Pss")
    return sum(each.values()) if each else None


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children in MiB (VmRSS), None if unreadable."""
    each = process_rss_each(pid)
    return sum(each.values()) if each else None


def pid_listening(port: int) -> int | None:
    """The pid of this machine's process listening on TCP `port` (its socket must be visible to us), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    if not found:
        return None
    # with worker processes sharing the socket, the parent (the lowest pid in the tree) stands for them all
    return next((p for p in sorted(found) if not any(p in process_tree(q) and q != p for q in found)), found[0])


# ---- the Python client ----------------------------------------------------------------------------------------
class Client:
    """One keep-alive HTTP/1.1 connection to the server (reopened after any failure)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:  # a stale keep-alive connection is retried once, a second failure is real
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def error_text(data: bytes) -> str:
    try:
        body = json.loads(data)
        return f"{body.get('error')}: {body.get('detail')}"[:160]
    except (ValueError, AttributeError):
        return data[:80].decode("utf-8", "replace")


def run_phase(name: str, clients: int, make_request: Callable[[int], Request], host: str, port: int,
              max_requests: int, max_seconds: float, timeout: float, server_pid: int = 0) -> Phase:
    """`clients` threads, each on its own connection, send requests back to back until the budget is spent."""
    phase = Phase(name, clients)
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        client = Client(host, port, timeout)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                method, path, body, headers = make_request(i)
                t0 = time.perf_counter()
                try:
                    status, data = client.request(method, path, body, headers)
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        key = type(e).__name__
                        phase.errors[key] = phase.errors.get(key, 0) + 1
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                took = None
                if status == 200:
                    try:
                        took = float(json.loads(data).get("took_ms"))
                    except (ValueError, TypeError, AttributeError):
                        took = None
                with lock:
                    if status == 200:
                        phase.latencies_ms.append(ms)
                        if took is not None:
                            phase.took_ms.append(took)
                    else:
                        key = f"HTTP {status}: {error_text(data)}"
                        phase.errors[key] = phase.errors.get(key, 0) + 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"bench-{name}-{c}", daemon=True) for c in range(clients)]
    meter = CpuMeter(server_pid, client_is_child=False)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.wall_s = time.perf_counter() - t0
    meter.stop(phase)
    phase.distinct = max_requests
    return phase


# ---- wrk ------------------------------------------------------------------------------------------------------
# Each wrk thread has its own Lua state: init() reads the request list and pre-formats every request; thread t of
# n sends requests t, t+n, t+2n, ... so the threads never send the same one. done() prints one JSON line.
WRK_LUA = r"""
local reqs, pos, step = {}, 0, 1
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  step = tonumber(args[2])
  pos = tid or 0
  for line in io.lines(args[1]) do
    local method, path, ctype, file = line:match("^([^\t]+)\t([^\t]+)\t([^\t]*)\t([^\t]*)$")
    local body, headers = nil, {}
    if file ~= "" then
      local f = assert(io.open(file, "rb"))
      body = f:read("*a")
      f:close()
      headers["Content-Type"] = ctype
    end
    reqs[#reqs + 1] = wrk.format(method, path, headers, body)
  end
end
function request()
  local r = reqs[(pos % #reqs) + 1]
  pos = pos + step
  return r
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('VITRINA_WRK {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""
_WRK_LINE = re.compile(r"^VITRINA_WRK (\{.*\})\s*$", re.M)
_WRK_KEYS = ("requests", "duration_us", "connect", "read", "write", "status", "timeout", "p50_us", "p90_us",
             "p95_us", "p99_us", "max_us")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def parse_wrk(output: str) -> dict[str, float]:
    """The figures of one wrk run from its output (the line WRK_LUA's done() prints); ValueError without it."""
    match = _WRK_LINE.search(output)
    if not match:
        raise ValueError(f"no VITRINA_WRK line in wrk's output: {output.strip()[-300:]!r}")
    figures = {k: float(v) for k, v in json.loads(match.group(1)).items()}
    missing = [k for k in _WRK_KEYS if k not in figures]
    if missing:
        raise ValueError(f"wrk's summary lacks {missing}")
    return figures


def wrk_errors(figures: dict[str, float]) -> dict[str, int]:
    """wrk's error counts by kind (non-2xx/3xx responses as 'HTTP status'), zeros left out."""
    names = {"status": "HTTP status >= 400", "connect": "connect", "read": "read", "write": "write",
             "timeout": "timeout"}
    return {label: int(figures[k]) for k, label in names.items() if figures.get(k)}


def write_requests(folder: Path, requests: Sequence[Request]) -> Path:
    """The request list the Lua script reads: one line per request, bodies in files beside it."""
    lines, bodies = [], {}
    for method, path, body, headers in requests:
        if any(c in path for c in "\t\n ") or not path.startswith("/"):
            raise ValueError(f"cannot send path {path[:80]!r} through wrk")
        file = ""
        if body is not None:
            file = bodies.get(body, "")
            if not file:
                file = str(folder / f"body{len(bodies)}.bin")
                Path(file).write_bytes(body)
                bodies[body] = file
        lines.append(f"{method}\t{path}\t{headers.get('Content-Type', '')}\t{file}")
    out = folder / "requests.tsv"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def run_wrk(name: str, connections: int, requests: Sequence[Request], url: str, seconds: float, timeout: float,
            threads: int = 2, server_pid: int = 0) -> Phase:
    """wrk -t threads -c connections -d seconds against `url`, cycling through `requests` (each thread its own
    share, so every request is sent once until the list runs out)."""
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError("wrk is not installed")
    threads = max(1, min(threads, connections))
    phase = Phase(name, connections, client="wrk", distinct=len(requests))
    with tempfile.TemporaryDirectory(prefix="vitrina-wrk-") as tmp:
        folder = Path(tmp)
        script = folder / "requests.lua"
        script.write_text(WRK_LUA, encoding="utf-8")
        listing = write_requests(folder, requests)
        cmd = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={max(1, round(timeout))}s", "-s", str(script), url, "--", str(listing), str(threads)]
        meter = CpuMeter(server_pid, client_is_child=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 60)
        elapsed = time.perf_counter() - t0
        meter.stop(phase)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
    phase.wrk = parse_wrk(done.stdout)
    phase.wall_s = phase.wrk["duration_us"] / 1e6 or elapsed
    phase.errors = wrk_errors(phase.wrk)
    return phase
