"""`vitrina serve --workers 2` on the embedded store: each worker searches its own copy of the index, which follows
the change log. Real processes: a write acknowledged by one worker is read at once, by id and by search, from the
other (each asked on a kept-alive connection, which stays with one worker); a killed worker is replaced and its
copy removed; a stop leaves every write in the collection itself; a reindex in another process moves both workers
to copies of the new collection without a failed search."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from indexer.pipeline import reindex
from search.store.factory import open_store
from tests.helpers import ServeProcess, make_config, product_rows, write_catalogue
from tests.test_indexer import write_config
from tests.tiny_models import write_tiny_checkpoint
from vitrina.config import Config

KEY = "replica-key"
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("data", "catalogue", "image_encoder", "runtime", "indexer", "store", "web", "live")


class Worker:
    """A kept-alive HTTP connection to the service, and the pid of the worker process that took it."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.pid = self.health()["pid"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        self.conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/health")[1]

    def search(self, words: str) -> list[str]:
        status, found = self.call("GET", f"/api/search?q={words}&mode=keyword&k=5")
        assert status == 200, found
        return [r["id"] for r in found["results"]]

    def close(self) -> None:
        self.conn.close()


def workers(server: ServeProcess, n: int = 2, not_pids: frozenset[int] = frozenset(), wait_s: float = 120.0
            ) -> list[Worker]:
    """A connection to each of `n` distinct workers (none of `not_pids`): new connections until every one answered."""
    found: dict[int, Worker] = {}
    deadline = time.monotonic() + wait_s
    while len(found) < n and time.monotonic() < deadline:
        try:
            w = Worker(server.port)
        except OSError:
            time.sleep(0.2)
            continue
        if w.pid in found or w.pid in not_pids:
            w.close()
        else:
            found[w.pid] = w
    assert len(found) == n, (found.keys(), server.output()[-3000:])
    return list(found.values())


def item(n: int, word: str) -> dict[str, Any]:
    return {"id": f"r{n}", "title": f"Men Black Watches {word}", "gender": "Men", "articleType": "Watches",
            "baseColour": "Black", "price": "12", "image": "images/1002.jpg"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Path]]:
    root = tmp_path_factory.mktemp("replicas")
    cfg = make_config(root, write_catalogue(root / "shop", product_rows(24)), web={"api_keys": (KEY,)},
                      store={"timeout_s": 10.0})
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    reindex(cfg, progress=False)
    yield cfg, write_config(root / "vitrina.toml", cfg, SECTIONS)


def alias_target(cfg: Config) -> str | None:
    store = open_store(cfg)
    try:
        return store.get_alias(cfg.store.alias)
    finally:
        store.close()


def copies(cfg: Config) -> set[str]:
    folder = cfg.data_dir / "store" / "replicas"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_write_through_one_worker_is_read_at_once_from_the_other(shop: tuple[Config, Path]) -> None:
    cfg, config = shop
    server = ServeProcess(config, "--workers", "2", "--threads", "4")
    try:
        a, b = workers(server)
        assert copies(cfg) == {str(a.pid), str(b.pid)} and server.proc.pid not in (a.pid, b.pid)
        status, answer = a.call("POST", "/api/items", item(1, "axolotl"))
        assert status == 201, answer
        status, got = b.call("GET", "/api/items/r1")  # the other process, at once: no waiting, no retry
        assert status == 200 and got["title"] == "Men Black Watches axolotl", got
        assert b.search("axolotl") == ["r1"]
        status, answer = b.call("PATCH", "/api/items/r1", {"price": 7.5, "stock": 3})
        assert status == 200 and answer["items"][0]["status"] == "updated", answer
        assert a.call("GET", "/api/items/r1")[1]["attributes"]["price"] == 7.5
        assert a.call("POST", "/api/items", [item(2, "capybara"), item(3, "capybara")])[0] == 200
        assert a.call("DELETE", "/api/items/r2")[0] == 200
        assert b.call("GET", "/api/items/r2")[0] == 404 and b.search("capybara") == ["r3"]
        assert a.call("DELETE", "/api/items/1000")[0] == 200  # a catalogue item, deleted through the other
        assert b.call("GET", "/api/items/1000")[0] == 404
        seqs = {w.pid: w.health()["copy"] for w in (a, b)}
        assert {c["log_seq"] for c in seqs.values()} == {6}, seqs  # r1, its patch, r2 and r3, two deletes
        assert len({c["collection"] for c in seqs.values()}) == 1
        assert a.health()["index"]["points"] == 24 + 3 - 2  # the writer's count (another's may lag 10 s)

        # a worker killed with SIGKILL: another takes its place, with a fresh copy; the dead one's copy goes
        os.kill(a.pid, signal.SIGKILL)
        a.close()
        (c,) = workers(server, 1, not_pids=frozenset({a.pid, b.pid}))
        deadline = time.monotonic() + 30
        while str(a.pid) in copies(cfg) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert copies(cfg) == {str(b.pid), str(c.pid)}
        assert c.call("GET", "/api/items/r1")[1]["attributes"]["stock"] == 3
        assert c.call("GET", "/api/items/r2")[0] == 404 and c.search("capybara") == ["r3"]
        assert c.health()["copy"]["log_seq"] == 6
        for w in (b, c):
            w.close()
    finally:
        code = server.stop()
    assert code == 0, server.output()[-3000:]
    assert copies(cfg) == set()  # every copy removed at the stop
    store = open_store(cfg)  # and the collection itself holds every write (brought up to date at the stop)
    try:
        assert {h.id for h in store.retrieve(cfg.store.alias, ["r1", "r2", "r3", "1000"])} == {"r1", "r3"}
        assert store.count(cfg.store.alias) == 25
    finally:
        store.close()
    again = ServeProcess(config, "--workers", "2", "--threads", "2")  # a restart keeps everything
    try:
        for w in workers(again):
            assert w.call("GET", "/api/items/r1")[1]["attributes"]["price"] == 7.5
            assert w.search("capybara") == ["r3"] and w.call("GET", "/api/items/1000")[0] == 404
            w.close()
    finally:
        assert again.stop() == 0


def test_kept_alive_connections_are_shared_evenly_between_the_workers(shop: tuple[Config, Path]) -> None:
    """Least-connections accept (scripts/serve_workers.ConnectionBalance): 4 and then 6 long-lived connections,
    opened one after another as a load generator's are, land 2:2 and 3:3 rather than where the race for the
    accept puts them; a closed connection frees its worker's turn."""
    _, config = shop
    server = ServeProcess(config, "--workers", "2", "--threads", "1")  # as config.toml ships
    conns: list[Worker] = []
    try:
        for w in workers(server):  # both serve
            w.close()
        time.sleep(0.3)  # the closes seen by each worker's loop
        conns = [Worker(server.port) for _ in range(4)]
        pids = [c.pid for c in conns]
        assert sorted(pids.count(p) for p in set(pids)) == [2, 2], pids
        conns += [Worker(server.port) for _ in range(2)]
        pids = [c.pid for c in conns]
        assert sorted(pids.count(p) for p in set(pids)) == [3, 3], pids
        for c in [c for c in conns if c.pid == pids[0]][:2]:
            c.close()
            conns.remove(c)
        time.sleep(0.3)
        again = Worker(server.port)  # the worker now holding fewer takes it
        conns.append(again)
        assert again.pid == pids[0], (again.pid, pids)
    finally:
        for c in conns:
            c.close()
        assert server.stop() == 0, server.output()[-3000:]


def test_both_workers_follow_a_reindex_in_another_process(shop: tuple[Config, Path]) -> None:
    cfg, config = shop
    server = ServeProcess(config, "--workers", "2", "--threads", "4")
    stop = threading.Event()
    errors: list[Any] = []
    searches = [0]

    def search() -> None:
        while not stop.is_set():
            w = Worker(server.port)  # a new connection each time: both workers take some
            try:
                for _ in range(5):
                    status, answer = w.call("GET", "/api/search?q=black+watches&k=10")
                    if status != 200:
                        errors.append((w.pid, status, answer))
                    searches[0] += 1
            except OSError as e:
                errors.append(repr(e))
            finally:
                w.close()

    written: list[str] = []

    def write() -> None:  # on through the reindex and the switch of both workers
        n = 100
        while not stop.is_set():
            n += 1
            w = Worker(server.port)
            try:
                status, answer = w.call("POST", "/api/items", item(n, f"w{n}"))
                if status == 201:
                    written.append(f"r{n}")
                else:
                    errors.append((w.pid, status, answer))
            finally:
                w.close()
            time.sleep(0.05)

    threads = [threading.Thread(target=search, daemon=True) for _ in range(2)]
    threads.append(threading.Thread(target=write, daemon=True))
    try:
        a, b = workers(server)
        before = a.health()["copy"]["collection"]
        for t in threads:
            t.start()
        assert a.call("POST", "/api/items", item(9, "okapi"))[0] == 201
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "scripts.cli", "--config", str(config), "reindex",
                               "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "replayed" in done.stdout, done.stdout
        after = alias_target(cfg)
        assert after != before
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {w.health()["copy"]["collection"] for w in (a, b)} != {after}:
            time.sleep(0.2)
        for w in (a, b):
            copy = w.health()["copy"]
            assert copy["collection"] == after, copy
            assert w.search("okapi") == ["r9"]  # the write made before the reindex is in the new copy too
            # the old copy is gone from the worker's folder (dropped just after the switch, once the searches
            # still on it are done: /health may name the new copy a moment before)
            folder = Path(copy["path"]) / "collections"
            while time.monotonic() < deadline and sorted(p.name for p in folder.iterdir()) != [after]:
                time.sleep(0.1)
            assert sorted(p.name for p in folder.iterdir()) == [after]
        assert b.call("POST", "/api/items", item(10, "quokka"))[0] == 201  # and writes go on into the new copies
        assert a.search("quokka") == ["r10"]
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        for w in (a, b):  # every write acknowledged before, during and after the switch, in both copies
            missing = [i for i in written if w.call("GET", f"/api/items/{i}")[0] != 200]
            assert not missing and len(written) > 10, (w.pid, missing, len(written))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        code = server.stop()
    assert code == 0, server.output()[-3000:]
    assert not errors, errors[:5]
    assert searches[0] > 20, searches


def test_a_copy_keeps_the_holes_and_bytes_of_sparse_files(tmp_path: Path) -> None:
    from search.store.edge_shards import copy_sparse

    src, dst = tmp_path / "chunk.mmap", tmp_path / "copy.mmap"
    with open(src, "wb") as f:  # 32 MiB with data at the start, in the middle and at the end
        f.truncate(32 << 20)
        for at in (0, 16 << 20, (32 << 20) - 5):
            f.seek(at)
            f.write(b"vitrina"[: (32 << 20) - at])
    copy_sparse(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_blocks * 512 < (1 << 20)  # not 32 MiB on disk


def test_clean_replicas_removes_only_copies_no_process_holds(tmp_path: Path) -> None:
    import fcntl

    from indexer.replica import clean_replicas, replicas_dir

    cfg = make_config(tmp_path)
    held, dead = replicas_dir(cfg) / "101", replicas_dir(cfg) / "102"
    for folder in (held, dead):
        (folder / "collections").mkdir(parents=True)
    fd = os.open(held / "owner", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_replicas(cfg) == ["102"] and held.is_dir() and not dead.exists()
    finally:
        os.close(fd)
    assert clean_replicas(cfg, 101) == ["101"] and not held.exists()


def test_the_announced_counter_is_shared_and_starts_again_with_a_new_log(tmp_path: Path) -> None:
    from indexer.changelog import Change, ChangeLog

    writer, reader = ChangeLog(tmp_path / "a.sqlite"), ChangeLog(tmp_path / "a.sqlite")
    try:
        assert reader.announced() == 0
        writer.announce(writer.append([Change("delete", "x"), Change("delete", "y")]))
        assert reader.announced() == 2  # what another process reads through its own mapping
        writer.announce(1)  # never backwards
        assert reader.announced() == 2
    finally:
        writer.close()
        reader.close()
    (tmp_path / "a.sqlite").unlink()  # a log made anew: a stale counter would hide its first entries
    with ChangeLog(tmp_path / "a.sqlite") as log:
        assert log.announced() == 0


def test_connection_balance_turns() -> None:
    """A worker listens while no live other holds fewer connections; a silent one (stuck or dead) is left out."""
    from scripts.serve_workers import ConnectionBalance

    balance = ConnectionBalance(3)
    balance.slot = 0
    assert balance.my_turn(5)  # alone: nobody else has spoken yet
    balance.slot = 1
    balance.publish(2)
    balance.slot = 2
    balance.publish(4)
    balance.slot = 0
    assert not balance.my_turn(3) and balance.my_turn(2) and balance.fewest_elsewhere() == 2
    balance.slot = 1
    balance.publish(2, now=time.monotonic() - ConnectionBalance.STALE_S - 1)  # silent since
    balance.slot = 0
    assert balance.fewest_elsewhere() == 4 and balance.my_turn(3)
