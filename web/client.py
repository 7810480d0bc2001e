"""`vitrina upsert`/`delete` beside a running service: find it (--url, or the file `vitrina serve` leaves in the
data dir), send the writes to its API in batches with a progress bar; without a service, write locally."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vitrina.config import Config
from vitrina.errors import BadInput, StoreError, VitrinaError

SEND_TIMEOUT_S = 300.0  # one batch with images can take a while on a busy machine


def service_file(cfg: Config) -> Path:
    """Where `vitrina serve` says it runs: data_dir/serve/<alias>.json (url, pid), removed when it stops."""
    return cfg.data_dir / "serve" / f"{cfg.store.alias}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def find_service(cfg: Config, url: str | None = None) -> str | None:
    """The URL of the service to write through: `url` (which must answer), else the one `vitrina serve` announced
    for this data dir and alias when its process is alive and answers; None when no service runs."""
    if url:
        if not _health(url):
            raise StoreError(f"no vitrina service answers at {url}", detail="start `vitrina serve` or fix --url")
        return url.rstrip("/")
    try:
        info = json.loads(service_file(cfg).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = str(info.get("url") or "")
    if found and _alive(int(info.get("pid") or 0)) and _health(found):
        return found
    return None


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 503  # alive, no index yet: its write API will say so
    except (OSError, ValueError):
        return False


class ServiceClient:
    """The write API of a running service (urllib; `Authorization: Bearer KEY` when a key is given)."""

    def __init__(self, url: str, key: str = "", timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.url, self.key, self.timeout_s = url.rstrip("/"), key, timeout_s

    def call(self, method: str, path: str, body: Any) -> list[dict[str, Any]]:
        """Send JSON, return the per-item results; VitrinaError (with the service's message) for a failed request."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())["items"]
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read())
            except ValueError:
                answer = {"error": e.reason}
            if isinstance(answer, dict) and "items" in answer and e.code not in (401, 413, 415):
                return answer["items"]  # a single item that failed
            err = VitrinaError(f"the service answered {e.code}: {answer.get('error')}", answer.get("detail"))
            err.status = e.code
            raise err from None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot reach the service at {self.url}: {e}") from e

    def upsert(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        return self.call("POST", "/api/items", list(records))

    def delete(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return self.call("DELETE", "/api/items", {"ids": list(ids)})


def api_key(cfg: Config, given: str | None) -> str:
    """--api-key, else $VITRINA_API_KEY, else the first key the config knows (the CLI runs beside the service)."""
    from web.deps import api_keys

    if given:
        return given
    keys = api_keys(cfg)
    return os.environ.get("VITRINA_API_KEY") or (keys[0] if keys else "")


def file_records(cfg: Config, path: str) -> Iterator[tuple[int, Any]]:
    """(row, record) of a JSONL or CSV file of items (a CSV needs the id and title columns; others missing read
    as empty); a record that cannot be read becomes an ItemError. The file is opened now (errors at once)."""
    from indexer.items import ItemError
    from indexer.reader import read_records

    records = read_records(cfg, path, every_column=False)
    return ((row, ItemError("", f"row {row}: {r['__error__']}") if "__error__" in r else r) for row, r in records)


def text_records(text: str) -> list[tuple[int, Any]]:
    """Items given on the command line: one JSON object or a JSON list of them."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise BadInput(f"the item is not valid JSON: {e}") from e
    records = raw if isinstance(raw, list) else [raw]
    if not records:
        raise BadInput("give a JSON object (or a list of objects) with the catalogue's columns")
    return list(enumerate(records, start=1))


def in_batches(rows: Iterator[tuple[int, Any]] | list[tuple[int, Any]], size: int, total: int | None,
               send: Callable[[list[Any], list[int]], list[dict[str, Any]]], progress: bool,
               desc: str) -> list[tuple[int, dict[str, Any]]]:
    """Send rows `size` at a time with a progress bar; (row, result) for every row, in order."""
    from indexer.pipeline import progress_bar

    out: list[tuple[int, dict[str, Any]]] = []
    bar = progress_bar(total, 0, progress, desc)
    batch: list[tuple[int, Any]] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) >= size:
                out += zip([r for r, _ in batch], send([x for _, x in batch], [r for r, _ in batch]))
                bar.update(len(batch))
                batch = []
        if batch:
            out += zip([r for r, _ in batch], send([x for _, x in batch], [r for r, _ in batch]))
            bar.update(len(batch))
    finally:
        bar.close()
    return out


def remote_sender(client: ServiceClient) -> Callable[[list[Any], list[int]], list[dict[str, Any]]]:
    from indexer.items import ItemError

    def send(records: list[Any], rows: list[int]) -> list[dict[str, Any]]:
        ok = [r for r in records if not isinstance(r, ItemError)]
        sent = iter(client.upsert(ok) if ok else [])
        return [{"id": r.item_id, "status": "error", "error": r.message, "detail": r.detail or ""}
                if isinstance(r, ItemError) else next(sent) for r in records]

    return send


def count_rows(path: str) -> int | None:
    """Data rows of a file for the progress bar (lines, less a CSV header); None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            lines = sum(1 for line in f if line.strip())
    except OSError:
        return None
    return lines - 1 if path.lower().endswith((".csv", ".tsv")) else lines


def summary(verb: str, results: list[tuple[int, dict[str, Any]]], where: str, t0: float) -> tuple[list[str], bool]:
    """The report lines (counts per status, then each error with its row) and whether any item failed."""
    counts: dict[str, int] = {}
    for _, r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    done = len(results) - counts.get("error", 0)
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "error")
    wall = time.perf_counter() - t0
    lines = [f"{verb} {done} item(s)" + (f" ({parts})" if parts else "") + f", {counts.get('error', 0)} error(s) "
             f"{where} in {wall:.1f} s ({len(results) / max(wall, 1e-9):.1f} items/s)"]
    for row, r in results:
        if r["status"] == "error":
            where_row = f" (row {row})" if row else ""
            lines.append(f"  error id {r['id']!r}{where_row}: {r['error']}")
    return lines, bool(counts.get("error"))
