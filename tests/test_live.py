"""`vitrina serve` beside the CLI: upsert/delete through the running service (found from the data dir), safe
defaults for listening beyond loopback, --workers (refused on qdrant-client's local mode; pre-fork on a shared
socket)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from indexer.pipeline import reindex
from scripts.cli import main
from scripts.cmd_serve import check_open_writes, is_loopback, workers_refused
from search.store.factory import open_store
from tests.helpers import ServeProcess, free_port, http_json, make_config, product_rows, write_catalogue
from tests.test_indexer import write_config
from tests.tiny_models import write_tiny_checkpoint
from vitrina.config import Config
from vitrina.errors import ConfigError

KEY = "cli-key"
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("data", "catalogue", "image_encoder", "runtime", "indexer", "store", "web", "live")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Path, ServeProcess]]:
    root = tmp_path_factory.mktemp("live")
    cfg = make_config(root, write_catalogue(root / "shop", product_rows(24)), web={"api_keys": (KEY,)},
                      store={"timeout_s": 1.0})
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    reindex(cfg, progress=False)
    config = write_config(root / "vitrina.toml", cfg, SECTIONS)
    server = ServeProcess(config, "--threads", "4")
    yield cfg, config, server
    server.stop()


def test_cli_upsert_and_delete_go_through_the_running_service(served: tuple[Config, Path, ServeProcess],
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    cfg, config, server = served
    rows = [{"id": f"c{i}", "title": f"Men Black Watches capybara{i}", "gender": "Men", "articleType": "Watches",
             "baseColour": "Black", "price": "12", "image": "images/1002.jpg"} for i in range(7)]
    rows.append({"id": "c-bad", "title": "Men Black Watches", "price": "lots", "image": "images/1002.jpg"})
    items = tmp_path / "new.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = ["--config", str(config)]
    assert main([*c, "upsert", str(items), "--batch-size", "3"]) == 1  # one bad row: non-zero, the rest written
    out = capsys.readouterr().out
    assert f"upserted 7 item(s) (7 created), 1 error(s) through {server.url}" in out
    assert "error id 'c-bad' (row 8): bad price 'lots'" in out
    status, item = http_json("GET", f"{server.url}/api/items/c3")
    assert status == 200 and item["title"] == "Men Black Watches capybara3"
    status, found = http_json("GET", f"{server.url}/api/search?q=capybara5&mode=keyword")
    assert [r["id"] for r in found["results"]] == ["c5"]
    assert main([*c, "upsert", json.dumps({**rows[0], "price": "13"})]) == 0
    assert "upserted 1 item(s) (1 updated), 0 error(s) through" in capsys.readouterr().out
    assert main([*c, "delete", "c0", "c1", "nope"]) == 1
    out = capsys.readouterr().out
    assert f"deleted 2 item(s) through {server.url}" in out and "not found: nope" in out
    assert http_json("GET", f"{server.url}/api/items/c0")[0] == 404
    assert main([*c, "delete", "c2", "--url", server.url, "--api-key", "wrong"]) == 2
    assert "401" in capsys.readouterr().err
    # writing here instead, while the service holds the embedded store, fails with a clear message
    assert main([*c, "delete", "c2", "--local"]) == 2
    err = capsys.readouterr().err
    assert "open in another process" in err and "serve" in err
    assert main([*c, "info"]) == 0
    assert "write log" in capsys.readouterr().out


def test_a_large_file_goes_in_batches_with_a_progress_bar(served: tuple[Config, Path, ServeProcess],
                                                         tmp_path: Path) -> None:
    cfg, config, server = served
    items = tmp_path / "many.csv"
    lines = ["id,title,gender,articleType,baseColour,price,image"]
    lines += [f"m{i},Women Red Caps wombat{i},Women,Caps,Red,{i},images/1001.jpg" for i in range(45)]
    items.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "scripts.cli", "--config", str(config), "upsert", "--file",
                           str(items), "--batch-size", "10"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "upserted 45 item(s) (45 created), 0 error(s)" in done.stdout
    assert "45/45" in done.stderr  # the progress bar reached the end
    assert http_json("GET", f"{server.url}/api/items/m44")[1]["attributes"]["price"] == 44.0


def test_open_host_needs_keys_unless_the_config_says_so(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("shop.example")
    check_open_writes(cfg, "127.0.0.1")
    with pytest.raises(ConfigError, match="without an API key"):
        check_open_writes(cfg, "0.0.0.0")
    check_open_writes(cfg.replace(web={"api_keys": ("k",)}), "0.0.0.0")
    check_open_writes(cfg.replace(web={"open_writes": True}), "0.0.0.0")
    config = write_config(tmp_path / "v.toml", cfg, SECTIONS)
    env = {**os.environ, "VITRINA_API_KEYS": ""}
    done = subprocess.run([sys.executable, "-m", "scripts.cli", "--config", str(config), "serve", "--host",
                           "0.0.0.0", "--port", str(free_port())], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2 and "refusing to serve on '0.0.0.0' without an API key" in done.stderr
    assert "open_writes" in done.stderr
    many = subprocess.run([sys.executable, "-m", "scripts.cli", "--config", str(config), "serve", "--workers", "2",
                           "--port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VITRINA_STORE__BACKEND": "qdrant", "VITRINA_STORE__PATH": ":memory:"})
    assert many.returncode == 2 and "local mode" in many.stderr and "one process" in many.stderr
    assert "Qdrant server" in many.stderr  # what to run instead (the embedded store serves several: see
    # tests/test_serve_replicas.py)
    assert workers_refused(cfg) is None
    why = workers_refused(cfg.replace(ranker={"online": True}))  # each process would learn its own model
    assert why is not None and "online click model" in why


def test_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    """The pre-fork runner with a tiny app: two processes answer on one socket; one killed is replaced;
    SIGTERM stops every worker."""
    port = free_port()
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, waitress
        from scripts.serve_workers import listen, run_workers
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [('{{"pid": %d}}' % os.getpid()).encode()]
        sock = listen("127.0.0.1", {port})
        sys.exit(run_workers(2, lambda: waitress.serve(app, sockets=[sock], threads=1, _quiet=True) or 0))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                pids.add(http_json("GET", f"http://127.0.0.1:{port}/", timeout=5)[1]["pid"])
            except OSError:
                time.sleep(0.1)
        assert len(pids) == 2 and proc.pid not in pids
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        seen: set[Any] = set()
        deadline = time.monotonic() + 60
        while len(seen - pids - {victim}) < 1 and time.monotonic() < deadline:
            try:
                seen.add(http_json("GET", f"http://127.0.0.1:{port}/", timeout=5)[1]["pid"])
            except OSError:
                time.sleep(0.1)
        assert seen - pids - {victim}, "the killed worker was not replaced"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in seen:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        proc.kill()
        proc.wait()


def test_the_service_announces_itself_and_cleans_up(served: tuple[Config, Path, ServeProcess]) -> None:
    from web.client import find_service, service_file

    cfg, _, server = served
    info = json.loads(service_file(cfg).read_text())
    assert info["url"] == server.url and info["pid"] == server.proc.pid
    assert find_service(cfg) == server.url
    other = make_config(cfg.data_dir.parent / "elsewhere")
    assert find_service(other) is None  # another data dir: no service, writes would go local
    store = open_store(cfg.replace(store={"timeout_s": 0.2}))
    store.close()
