"""HTTP load benchmark: text and photo searches against a running `vitrina serve` on loopback, from this process."""

from __future__ import annotations

import argparse
import csv
import http.client
import ipaddress
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlencode, urlsplit

from vitrina.config import Config
from vitrina.errors import BadInput

# Targets from issue 4 (4 concurrent clients).
TEXT_P95_MS = 50.0
TEXT_MIN_RPS = 100.0
IMAGE_P95_MS = 120.0


@dataclass
class Phase:
    """One measured run: latencies of successful requests, errors, wall time, the server's own took_ms."""

    name: str
    clients: int
    server_cpu_s: float | None = None  # CPU the server process used during the phase (with --server-pid)
    latencies_ms: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {"phase": self.name, "clients": self.clients, "ok": self.ok, "errors": sum(self.errors.values()),
                "rps": self.ok / self.wall_s if self.wall_s > 0 else 0.0,
                "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
                "max_ms": lat[-1] if lat else float("nan"),
                "server_p50_ms": percentile(sorted(self.took_ms), 50),
                "cpu_ms_per_req": (1000.0 * self.server_cpu_s / self.ok) if self.server_cpu_s and self.ok
                else float("nan"),
                "error_kinds": dict(self.errors)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list (numpy's default method); NaN when empty."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


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


def multipart(fields: dict[str, str], image: bytes, filename: str) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one `image` file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def run_phase(name: str, clients: int, make_request: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]],
              host: str, port: int, max_requests: int, max_seconds: float, timeout: float,
              server_pid: int = 0) -> Phase:
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
                        key = f"HTTP {status}: {_error_text(data)}"
                        phase.errors[key] = phase.errors.get(key, 0) + 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"bench-{name}-{c}", daemon=True) for c in range(clients)]
    cpu0 = process_cpu_s(server_pid) if server_pid else None
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.wall_s = time.perf_counter() - t0
    cpu1 = process_cpu_s(server_pid) if server_pid else None
    if cpu0 is not None and cpu1 is not None:
        phase.server_cpu_s = cpu1 - cpu0
    return phase


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds used so far by a local process (Linux /proc), None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _error_text(data: bytes) -> str:
    try:
        body = json.loads(data)
        return f"{body.get('error')}: {body.get('detail')}"[:160]
    except (ValueError, AttributeError):
        return data[:80].decode("utf-8", "replace")


def loopback_target(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL whose host is this machine's loopback; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BadInput(f"--url must look like http://127.0.0.1:8000, got {url!r}")
    host, port = parts.hostname, parts.port or 80
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as e:
        raise BadInput(f"cannot resolve {host!r}", str(e)) from e
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise BadInput(f"refusing to load-test {host!r}: only loopback addresses are allowed",
                       f"resolves to {sorted(addrs)}")
    return host, port


def read_queries(path: Path, limit: int) -> list[str]:
    """The `query` column of a queries CSV (query_id,query)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            queries = [row["query"].strip() for row in csv.DictReader(f) if (row.get("query") or "").strip()]
    except (OSError, KeyError) as e:
        raise BadInput(f"cannot read queries from {path}", str(e)) from e
    if not queries:
        raise BadInput(f"no queries in {path}")
    return queries[:limit] if limit > 0 else queries


def catalogue_rows(cfg: Config) -> list[dict[str, Any]]:
    """The catalogue file's rows as dicts (CSV or JSONL), unmapped."""
    path = Path(cfg.catalogue.path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix == ".jsonl" or cfg.catalogue.format == "jsonl":
                return [json.loads(line) for line in f if line.strip()]
            return list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read the catalogue {path}", str(e)) from e


class QueryPool:
    """Hands out each query once (the server caches query embeddings, so repeats would flatter it).

    Real queries first, then catalogue titles (dev rows) when a run needs more; cycles with a warning
    only when even those run out.
    """

    def __init__(self, queries: Sequence[str], extra: Sequence[str] = ()) -> None:
        self.items = list(dict.fromkeys([*queries, *extra]))
        self.real = len(dict.fromkeys(queries))
        self.pos = 0
        self.repeats = 0

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            if self.pos >= len(self.items):
                self.repeats += 1
            out.append(self.items[self.pos % len(self.items)])
            self.pos += 1
        return out


def title_queries(cfg: Config, seed: int) -> list[str]:
    """Product titles of dev rows (else all rows), lower-cased, as extra shopper-like queries."""
    cat = cfg.catalogue
    rows = catalogue_rows(cfg)
    dev = [r for r in rows if cat.split and r.get(cat.split) == "dev"] or rows
    titles = [str(r.get(cat.title) or "").strip().lower() for r in dev]
    titles = [t for t in titles if t]
    random.Random(seed).shuffle(titles)
    return titles


def read_photos(cfg: Config, count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` real product photos of the catalogue (dev rows first), as (file name, bytes)."""
    cat = cfg.catalogue
    path = Path(cat.path)
    base = Path(cat.image_base) if cat.image_base else path.parent
    rows = [r for r in catalogue_rows(cfg)
            if str(r.get(cat.image) or "") and not str(r[cat.image]).startswith("http")]
    dev = [r for r in rows if cat.split and r.get(cat.split) == "dev"]
    pool = dev if len(dev) >= count else rows
    random.Random(seed).shuffle(pool)
    photos = []
    for row in pool:
        file = base / str(row[cat.image])
        if file.is_file():
            photos.append((file.name, file.read_bytes()))
        if len(photos) >= count:
            break
    if not photos:
        raise BadInput("no readable product photos in the catalogue", str(path))
    return photos


def _api_key(args: argparse.Namespace, cfg: Config) -> str:
    if args.api_key:
        return str(args.api_key)
    extra = os.environ.get(cfg.web.api_keys_env, "") if cfg.web.api_keys_env else ""
    keys = [k for k in cfg.web.api_keys if k] + [k.strip() for k in extra.split(",") if k.strip()]
    return keys[0] if keys else ""


def wait_ready(host: str, port: int, seconds: float) -> dict[str, Any]:
    """GET /health until it answers (the server may still be loading its models)."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        client = Client(host, port, 10.0)
        try:
            status, data = client.request("GET", "/health")
            if status in (200, 503):
                return dict(json.loads(data))
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = str(e)
        finally:
            client.close()
        time.sleep(0.5)
    raise BadInput(f"no vitrina server answering on http://{host}:{port}", f"last error: {last}; start `vitrina serve`")


def seed_feedback(host: str, port: int, user: str, queries: Sequence[str], key: str, k: int) -> int:
    """Clicks and a purchase for `user` on results of a few queries, so personal reranking has a profile."""
    client = Client(host, port, 30.0)
    events = []
    try:
        for q in queries[:4]:
            status, data = client.request("GET", "/api/search?" + urlencode({"q": q, "k": k}))
            if status != 200:
                raise BadInput(f"warm-up search failed with HTTP {status}", _error_text(data))
            ids = [r["id"] for r in json.loads(data)["results"]]
            events += [{"user_id": user, "item_id": i, "event": "click"} for i in ids[:3]]
        if events:
            events.append({"user_id": user, "item_id": events[0]["item_id"], "event": "purchase"})
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        status, data = client.request("POST", "/api/feedback", json.dumps(events).encode(), headers)
        if status != 200:
            raise BadInput(f"feedback was refused with HTTP {status}", _error_text(data)
                           + ("; pass --api-key" if status == 401 else ""))
        return int(json.loads(data)["accepted"])
    finally:
        client.close()


def forget(host: str, port: int, user: str, key: str) -> None:
    client = Client(host, port, 30.0)
    try:
        client.request("DELETE", f"/api/users/{quote(user, safe='')}/profile",
                       headers={"Authorization": f"Bearer {key}"} if key else {})
    except (OSError, http.client.HTTPException):
        pass
    finally:
        client.close()


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("phase", "clients", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "server p50",
            "cpu ms/req", "target")
    lines = [head]
    for r in rows:
        lines.append((r["phase"], str(r["clients"]), str(r["ok"]), str(r["errors"]), f"{r['rps']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}",
                      f"{r['server_p50_ms']:.1f}", f"{r['cpu_ms_per_req']:.1f}", r.get("verdict", "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 or i == len(head) - 1 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def verdict(row: dict[str, Any]) -> str:
    if row["phase"].startswith("text"):
        ok = row["p95_ms"] <= TEXT_P95_MS and row["rps"] >= TEXT_MIN_RPS and not row["errors"]
        return f"{'PASS' if ok else 'MISS'} (p95<={TEXT_P95_MS:.0f}ms, >={TEXT_MIN_RPS:.0f}/s)"
    ok = row["p95_ms"] <= IMAGE_P95_MS and not row["errors"]
    return f"{'PASS' if ok else 'MISS'} (p95<={IMAGE_P95_MS:.0f}ms)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="running server (loopback only; default http://[web].host:[web].port)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=600, help="max requests per text phase (default 600)")
    parser.add_argument("--image-requests", type=int, default=200, help="max requests per image phase")
    parser.add_argument("--image-clients", type=int, default=0, help="clients for photo searches (default --clients)")
    parser.add_argument("--duration", type=float, default=30.0, help="max seconds per phase (default 30)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--mode", default="", help="search mode (default: the server's default)")
    parser.add_argument("--queries", help="CSV with a `query` column (default: queries_dev.csv beside the catalogue)")
    parser.add_argument("--photos", type=int, default=50, help="distinct product photos to upload (default 50)")
    parser.add_argument("--phases", default="text,text+user,image",
                        help="comma-separated subset of text, text+user, image (default all)")
    parser.add_argument("--api-key", help="write key for the feedback events (default: first configured key)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server to answer /health")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--server-pid", type=int, default=0,
                        help="pid of the server process: also report its CPU ms per request (load-independent cost)")
    parser.add_argument("--seed", type=int, default=0)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Measure the phases, print the table; 0 when every request succeeded (and targets met with --check)."""
    url = args.url or f"http://{cfg.web.host}:{cfg.web.port}"
    host, port = loopback_target(url)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"text", "text+user", "image"}
    if unknown or not phases:
        raise BadInput(f"unknown phase(s) {sorted(unknown)}", "choose from text, text+user, image")
    if args.clients < 1 or args.requests < 1 or args.duration <= 0:
        raise BadInput("--clients, --requests and --duration must be positive")
    queries_path = Path(args.queries) if args.queries else Path(cfg.catalogue.path).parent / "queries_dev.csv"
    queries = read_queries(queries_path, 0)
    random.Random(args.seed).shuffle(queries)
    text_phases = [p for p in phases if p != "image"]
    needed = len(text_phases) * (args.requests + args.warmup) + 4
    pool = QueryPool(queries, title_queries(cfg, args.seed) if needed > len(queries) else ())
    photos = read_photos(cfg, args.photos, args.seed) if "image" in phases else []
    health = wait_ready(host, port, args.wait)
    print(f"server http://{host}:{port}: {health.get('status')}, index {json.dumps(health.get('index'))}")
    print(f"{pool.real} queries from {queries_path} (+{len(pool.items) - pool.real} catalogue titles), "
          f"each sent once; {len(photos)} photos; client pid {os.getpid()}")

    base = {"k": args.k, **({"mode": args.mode} if args.mode else {})}
    user = f"bench-{uuid.uuid4().hex[:10]}"
    key = _api_key(args, cfg)

    def text_request(with_user: bool, texts: Sequence[str]) -> Callable[[int], tuple[str, str, bytes | None,
                                                                             dict[str, str]]]:
        def make(i: int) -> tuple[str, str, bytes | None, dict[str, str]]:
            params = {**base, "q": texts[i % len(texts)], **({"user_id": user} if with_user else {})}
            return "GET", "/api/search?" + urlencode(params), None, {}
        return make

    def image_request(i: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        name, data = photos[i % len(photos)]
        body, ctype = multipart({k: str(v) for k, v in base.items()}, data, name)
        return "POST", "/api/search", body, {"Content-Type": ctype}

    rows = []
    seeded = False
    try:
        for name in phases:
            if name == "image":
                make, clients, budget = image_request, args.image_clients or args.clients, args.image_requests
                warm = image_request
            else:
                if name == "text+user" and not seeded:
                    print(f"feedback: {seed_feedback(host, port, user, pool.take(4), key, args.k)} events "
                          f"for {user}")
                    seeded = True
                warm = text_request(name == "text+user", pool.take(args.warmup))
                make, clients, budget = text_request(name == "text+user", pool.take(args.requests)), \
                    args.clients, args.requests
            if args.warmup:
                run_phase(f"{name}-warmup", clients, lambda i: warm(i + 7919), host, port, args.warmup,
                          args.duration, args.timeout)
            phase = run_phase(name, clients, make, host, port, budget, args.duration, args.timeout,
                              args.server_pid)
            row = phase.summary()
            row["verdict"] = verdict(row)
            rows.append(row)
            for kind, n in phase.errors.items():
                print(f"  {name}: {n} x {kind}")
    finally:
        if seeded:
            forget(host, port, user, key)
    if pool.repeats:
        print(f"warning: {pool.repeats} text queries were repeats (the server's query cache may have served them)")
    print()
    print(format_table(rows))
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average at the end: {load} on {os.cpu_count()} CPUs (other work here inflates latency)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"url": url, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    if any(r["errors"] or not r["ok"] for r in rows):
        return 1
    if args.check and any(r["verdict"].startswith("MISS") for r in rows):
        return 1
    return 0
