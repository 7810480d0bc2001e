"""HTTP load benchmark: text, personalised and photo searches against `vitrina serve` on loopback, driven by wrk
when it is installed (an outside client) or by this process, with the server's CPU per request and each phase's
throughput over the cheapest JSON endpoint of the same server (`GET /api/items/<id>`), measured in the same run."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlencode, urlsplit

from benchmarks.http_inputs import catalogue_ids, distinct_queries, multipart, read_photos, read_queries
from benchmarks.http_load import (Client, Phase, Request, error_text, percentile, pid_listening, process_pss_mb,
                                  process_rss_each, run_phase, run_wrk, wrk_binary)
from vitrina.config import Config
from vitrina.errors import BadInput

__all__ = ["BadInput", "Client", "percentile", "run_phase"]  # the tests use them from here

# Targets of issue 19 (2-core machine, 44k fashion index, distinct queries, query cache off).
TEXT_P95_MS, TEXT_MIN_RPS = 25.0, 200.0  # 4 connections
BUSY_CONNECTIONS, BUSY_MIN_RPS = 16, 220.0  # 16 connections, no errors
USER_P95_MS = 30.0
IMAGE_P95_MS = 40.0  # 2 connections
MIN_FLOOR_RATIO = 0.11  # text req/s over GET /api/items/<id> req/s of the same server
PHASES = ("floor", "text", "text+user", "image")


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


def _api_key(args: argparse.Namespace, cfg: Config) -> str:
    from web.deps import api_keys

    return str(args.api_key) if args.api_key else next(iter(api_keys(cfg)), "")


def wait_ready(host: str, port: int, seconds: float, server: subprocess.Popen[bytes] | None = None
               ) -> dict[str, Any]:
    """GET /health until it answers (the server may still be loading its models; a started one may fail)."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise BadInput(f"the started server exited with {server.returncode}", "see its log above")
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
                raise BadInput(f"warm-up search failed with HTTP {status}", error_text(data))
            ids = [r["id"] for r in json.loads(data)["results"]]
            events += [{"user_id": user, "item_id": i, "event": "click"} for i in ids[:3]]
        if events:
            events.append({"user_id": user, "item_id": events[0]["item_id"], "event": "purchase"})
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        status, data = client.request("POST", "/api/feedback", json.dumps(events).encode(), headers)
        if status != 200:
            raise BadInput(f"feedback was refused with HTTP {status}", error_text(data)
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
    head = ("phase", "conns", "client", "ok", "errors", "req/s", "x floor", "p50 ms", "p95 ms", "p99 ms", "max ms",
            "cpu ms/req", "other cores", "target")
    lines = [head]
    for r in rows:
        ratio = r.get("x_floor")
        lines.append((r["phase"], str(r["clients"]), r.get("client", "python"), str(r["ok"]), str(r["errors"]),
                      f"{r['rps']:.1f}", "-" if ratio is None else f"{ratio:.3f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}", f"{r['cpu_ms_per_req']:.2f}",
                      f"{r['other_cores']:.2f}" if "other_cores" in r else "-", r.get("verdict", "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i in (0, 2) or i == len(head) - 1 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def verdict(row: dict[str, Any]) -> str:
    """PASS/MISS against issue 19's targets for the phase (none for the floor endpoint)."""
    kind, conns, ratio = row["phase"].split("@")[0], row["clients"], row.get("x_floor")
    if kind == "text" and conns >= BUSY_CONNECTIONS:
        ok, what = row["rps"] >= BUSY_MIN_RPS and not row["errors"], f">={BUSY_MIN_RPS:.0f}/s, no errors"
    elif kind == "text":
        ok = row["p95_ms"] <= TEXT_P95_MS and row["rps"] >= TEXT_MIN_RPS and not row["errors"] and (
            ratio is None or ratio >= MIN_FLOOR_RATIO)
        what = f"p95<={TEXT_P95_MS:.0f}ms, >={TEXT_MIN_RPS:.0f}/s, " + (
            f"x floor>={MIN_FLOOR_RATIO}" if ratio is not None else "x floor not judged: no floor phase")
    elif kind == "text+user":
        ok, what = row["p95_ms"] <= USER_P95_MS and not row["errors"], f"p95<={USER_P95_MS:.0f}ms"
    elif kind == "image":
        ok, what = row["p95_ms"] <= IMAGE_P95_MS and not row["errors"], f"p95<={IMAGE_P95_MS:.0f}ms"
    else:
        return "reference"
    return f"{'PASS' if ok else 'MISS'} ({what})"


def parse_phases(spec: str, clients: int, image_clients: int) -> list[tuple[str, str, int]]:
    """"floor,text,text@16,image@2" -> [(label, kind, connections)]; a kind without @N takes the default."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, _, n = part.partition("@")
        if kind not in PHASES:
            raise BadInput(f"unknown phase {kind!r}", f"choose from {', '.join(PHASES)} (NAME@CONNECTIONS)")
        try:
            conns = int(n) if n else (image_clients if kind == "image" else clients)
        except ValueError as e:
            raise BadInput(f"bad phase {part!r}", "write NAME@CONNECTIONS, e.g. text@16") from e
        if conns < 1:
            raise BadInput(f"phase {part!r} needs at least one connection")
        out.append((part, kind, conns))
    if not out:
        raise BadInput("no phases given")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="running server (loopback only; default http://[web].host:[web].port)")
    parser.add_argument("--serve", action="store_true",
                        help="start `vitrina serve` on a free loopback port for the run (query cache off, see "
                             "--serve-env), measure it, stop it")
    parser.add_argument("--serve-args", default="", help="extra `vitrina serve` options with --serve")
    parser.add_argument("--workers", type=int, default=0,
                        help="with --serve: serving processes (`vitrina serve --workers N`; default [web].workers)")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the --serve server (default VITRINA_SEARCH__QUERY_CACHE=0)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk (an outside client; auto when installed) or this process")
    parser.add_argument("--phases", default="floor,text,text@16,text+user,image,floor",
                        help="comma list of floor, text, text+user, image, each optionally @CONNECTIONS; x floor is "
                             "against the mean of the floor phases (default floor,text,text@16,text+user,image,floor)")
    parser.add_argument("--clients", type=int, default=4, help="connections for phases without @N (default 4)")
    parser.add_argument("--image-clients", type=int, default=2, help="connections for `image` without @N")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds before each phase (wrk)")
    parser.add_argument("--requests", type=int, default=600, help="python client: max requests per text phase")
    parser.add_argument("--image-requests", type=int, default=200, help="python client: max requests per image phase")
    parser.add_argument("--warmup", type=int, default=20, help="python client: unmeasured requests first")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--distinct", type=int, default=48_000,
                        help="distinct text queries made from the dev queries, shared out between the text "
                             "phases (default 48000: three 20 s phases at ~460 req/s send ~28,000; a repeat may "
                             "come from the server's query and reading caches)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--mode", default="", help="search mode (default: the server's default)")
    parser.add_argument("--queries", help="CSV with a `query` column (default: queries_dev.csv beside the catalogue)")
    parser.add_argument("--photos", type=int, default=50, help="distinct product photos to upload (default 50)")
    parser.add_argument("--api-key", help="write key for the feedback events (default: first configured key)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server to answer /health")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--server-pid", type=int, default=0,
                        help="pid of the server (default: the process listening on the port, when visible)")
    parser.add_argument("--seed", type=int, default=0)


def start_server(cfg: Config, args: argparse.Namespace, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`vitrina serve` of this build on a free loopback port, its output in log_dir/serve.log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VITRINA_SEARCH__QUERY_CACHE": "0"}
    for item in args.serve_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadInput(f"--serve-env takes NAME=VALUE, got {item!r}")
        env[name] = value
    cmd = [sys.executable, "-m", "scripts.cli", *(["--config", cfg.source] if cfg.source else []), "serve",
           "--host", "127.0.0.1", "--port", str(port), *(["--workers", str(args.workers)] if args.workers else []),
           *shlex.split(args.serve_args)]
    log = (log_dir / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    print(f"started {' '.join(cmd[1:])} (pid {proc.pid}, log {log_dir / 'serve.log'})")
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Bench:
    """One run's settings and the request makers of its phases."""

    def __init__(self, cfg: Config, args: argparse.Namespace, host: str, port: int, server_pid: int) -> None:
        self.cfg, self.args, self.host, self.port, self.pid = cfg, args, host, port, server_pid
        self.url = f"http://{host}:{port}"
        self.base = {"k": args.k, **({"mode": args.mode} if args.mode else {})}
        self.use_wrk = args.client == "wrk" or (args.client == "auto" and wrk_binary() is not None)
        if args.client == "wrk" and wrk_binary() is None:
            raise BadInput("--client wrk: wrk is not installed", "apt-get install wrk, or use --client python")

    def search(self, texts: Sequence[str], user: str | None) -> list[Request]:
        return [("GET", "/api/search?" + urlencode({**self.base, "q": q, **({"user_id": user} if user else {})}),
                 None, {}) for q in texts]

    def photo(self, photos: Sequence[tuple[str, bytes]]) -> list[Request]:
        out: list[Request] = []
        for name, data in photos:
            body, ctype = multipart({k: str(v) for k, v in self.base.items()}, data, name)
            out.append(("POST", "/api/search", body, {"Content-Type": ctype}))
        return out

    def measure(self, label: str, conns: int, requests: Sequence[Request], warm: Sequence[Request],
                distinct: bool, budget: int) -> Phase:
        """One phase with wrk (for --duration, cycling through `requests`) or the python client (at most
        `budget` requests); `distinct`: the requests are meant to be sent once each (repeats are counted)."""
        a = self.args
        if self.use_wrk:
            if a.warmup_s > 0:
                run_wrk(f"{label}-warmup", conns, warm, self.url, a.warmup_s, a.timeout, a.wrk_threads)
            phase = run_wrk(label, conns, requests, self.url, a.duration, a.timeout, a.wrk_threads, self.pid)
        else:
            def at(reqs: Sequence[Request]) -> Callable[[int], Request]:
                return lambda i: reqs[i % len(reqs)]

            if a.warmup:
                run_phase(f"{label}-warmup", conns, at(warm), self.host, self.port, a.warmup, a.duration, a.timeout)
            phase = run_phase(label, conns, at(requests), self.host, self.port, budget, a.duration, a.timeout,
                              self.pid)
        if not distinct:
            phase.distinct = 0
        return phase


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Measure the phases, print the table; 0 when every request succeeded (and targets met with --check)."""
    phases = parse_phases(args.phases, args.clients, args.image_clients)
    if args.duration <= 0 or args.requests < 1:
        raise BadInput("--duration and --requests must be positive")
    queries_path = Path(args.queries) if args.queries else Path(cfg.catalogue.path).parent / "queries_dev.csv"
    base_queries = read_queries(queries_path, 0)
    text_phases = [p for p in phases if p[1].startswith("text")]
    warm_n = 200
    texts = distinct_queries(base_queries, args.distinct + warm_n, args.seed)
    warm_texts, texts = texts[:warm_n], texts[warm_n:]
    share = max(1, len(texts) // max(1, len(text_phases)))
    photos = read_photos(cfg, args.photos, args.seed) if any(k == "image" for _, k, _ in phases) else []
    items = catalogue_ids(cfg, 2000, args.seed) if any(k == "floor" for _, k, _ in phases) else []
    tmp = Path(tempfile.mkdtemp(prefix="vitrina-bench-http-"))
    server = None
    if args.serve:
        server, url = start_server(cfg, args, tmp)
        pid = server.pid
    else:
        url = args.url or f"http://{cfg.web.host}:{cfg.web.port}"
    host, port = loopback_target(url)
    try:
        health = wait_ready(host, port, args.wait, server)
        pid = server.pid if server else (args.server_pid or pid_listening(port) or 0)
        bench = Bench(cfg, args, host, port, pid)
        print(f"server {bench.url}: {health.get('status')}, index {json.dumps(health.get('index'))}; server pid "
              f"{pid or 'unknown (no CPU per request)'}; load generator "
              f"{'wrk ' + str(args.wrk_threads) + ' threads' if bench.use_wrk else 'python threads'}")
        print(f"{len(texts)} distinct queries from {len(base_queries)} in {queries_path} ({share} per text phase), "
              f"{len(photos)} photos, {len(items)} item ids for the floor endpoint")
        print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        rows = measure_all(bench, phases, texts, warm_texts, share, photos, items)
        rss_each = process_rss_each(pid) if pid else {}
        rss = sum(rss_each.values()) if rss_each else None
        pss = process_pss_mb(pid) if pid else None
    finally:
        if server is not None:
            stop_server(server)
    print()
    print(format_table(rows))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load} on {os.cpu_count()} CPUs (other work here inflates latency; the "
          "x floor ratio and CPU per request are far less sensitive to it)")
    if rss is not None:
        each = ", ".join(f"{p} {mb:.0f}" for p, mb in rss_each.items())
        print(f"server RSS at the end: {rss:.0f} MiB (per process, the parent first: {each})")
    if pss is not None:
        print(f"server PSS at the end: {pss:.0f} MiB (pages shared between its processes counted once: what it "
              "takes from the machine)")
    for r in rows:
        if r["repeats"]:
            print(f"warning: {r['phase']}: {r['repeats']} requests repeated a query (the server's query cache "
                  "may have served them): raise --distinct")
        for kind, n in r["error_kinds"].items():
            print(f"  {r['phase']}: {n} x {kind}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"url": url, "load": os.getloadavg(), "server_rss_mb": rss,
                                                   "server_pss_mb": pss,
                                                   "rows": rows}, indent=2) + "\n", encoding="utf-8")
    if any(r["errors"] or not r["ok"] for r in rows):
        return 1
    if args.check and any(r["verdict"].startswith("MISS") for r in rows):
        return 1
    return 0


def measure_all(bench: Bench, phases: Sequence[tuple[str, str, int]], texts: Sequence[str],
                warm_texts: Sequence[str], share: int, photos: Sequence[tuple[str, bytes]],
                items: Sequence[str]) -> list[dict[str, Any]]:
    """Each phase in order; text phases get disjoint slices of `texts`; rows carry the ratio to the floor."""
    args, rows = bench.args, []
    user, key, seeded = f"bench-{uuid.uuid4().hex[:10]}", _api_key(args, bench.cfg), False
    slices = iter(range(0, len(texts), share))
    try:
        for label, kind, conns in phases:
            if kind == "floor":
                reqs: list[Request] = [("GET", f"/api/items/{quote(i, safe='')}", None, {}) for i in items]
                phase = bench.measure(label, conns, reqs, reqs, distinct=False, budget=args.requests)
            elif kind == "image":
                reqs = bench.photo(photos)
                phase = bench.measure(label, conns, reqs, reqs, distinct=False, budget=args.image_requests)
            else:
                with_user = kind == "text+user"
                if with_user and not seeded:
                    n = seed_feedback(bench.host, bench.port, user, warm_texts[:4], key, args.k)
                    print(f"feedback: {n} events for {user}")
                    seeded = True
                start = next(slices, 0)
                mine = texts[start:start + share]
                if not bench.use_wrk:
                    mine = mine[:args.requests]
                uid = user if with_user else None
                phase = bench.measure(label, conns, bench.search(mine, uid), bench.search(warm_texts, uid),
                                      distinct=True, budget=len(mine))
            row = phase.summary()
            row["kind"] = kind
            rows.append(row)
            cores = (f"; cores busy: server {row['server_cores']:.2f}, client {row['client_cores']:.2f}, other work "
                     f"{row['other_cores']:.2f}" if "other_cores" in row else "")
            print(f"  {label}: {row['rps']:.1f} req/s, p95 {row['p95_ms']:.1f} ms, "
                  f"{row['cpu_ms_per_req']:.2f} ms server CPU per request{cores}", flush=True)
    finally:
        if seeded:
            forget(bench.host, bench.port, user, key)
    floors = with_floor_ratios(rows)
    if len(floors) > 1:
        print(f"x floor: against the mean of the {len(floors)} floor phases ("
              f"{', '.join(f'{f:.1f}' for f in floors)} req/s)")
        note = unsteady_floor(floors)
        if note:
            print(note)
    return rows


def unsteady_floor(floors: list[float], tolerance: float = 0.15) -> str | None:
    """A warning when the floor phases of one run differ by more than `tolerance` of the slower: on this 2-core VM
    a floor phase now and then runs at ~0.6 ms of server CPU a request instead of ~0.36 (3,000 against 5,000 req/s,
    nothing else running), and every x floor of the run moves with it."""
    low, high = min(floors), max(floors)
    if low <= 0 or high / low - 1.0 <= tolerance:
        return None
    return (f"x floor: the floor phases differ by {100.0 * (high / low - 1.0):.0f}% ({low:.1f} to {high:.1f} req/s), "
            "so the ratios above move with the floor; compare the cpu ms/req column, or run again")


def with_floor_ratios(rows: list[dict[str, Any]]) -> list[float]:
    """Set each row's x_floor (req/s over the floor endpoint's; None without a floor phase) and verdict. With
    several floor phases (the default brackets the others) the mean is the reference: the floor of one run moved
    by up to 40% from one phase to the next on this machine, and the ratio with it. Returns the floors' req/s."""
    kinds = [r.pop("kind", r["phase"].split("@")[0]) for r in rows]
    floors = [r["rps"] for r, kind in zip(rows, kinds) if kind == "floor"]
    reference = sum(floors) / len(floors) if floors else None
    for row, kind in zip(rows, kinds):
        row["x_floor"] = row["rps"] / reference if reference and kind != "floor" else None
        row["verdict"] = verdict(row)
    return floors

