"""The impression log: what each response showed and the feedback that named it, as day files of JSON lines."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vitrina.errors import StoreError

log = logging.getLogger(__name__)

FOLDER = "impressions"
IMPRESSION, FEEDBACK = "impression", "feedback"
SURFACES = ("search", "similar", "also_bought", "recommendations")


def new_request_id() -> str:
    """A fresh request id: 32 hex characters (uuid4)."""
    return uuid.uuid4().hex


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True, order=True)
class Position:
    """A place in the log: a day file's name and a byte offset in it (records before it have been read)."""

    file: str = ""
    offset: int = 0


def impression_record(request_id: str, surface: str, items: Sequence[str], user_id: str | None = None,
                      offset: int = 0, query: str | None = None, mode: str | None = None,
                      experiment: str | None = None, variant: str | None = None, teams: Sequence[str] | None = None,
                      features: Sequence[Sequence[float]] | None = None, segment: int | None = None,
                      ts: float | None = None) -> dict[str, Any]:
    """One response as a log record: the items shown (position = offset + index), who asked, which variant
    answered (and, interleaved, which team placed each item), the ranker features of each shown item (read
    them back with features_of)."""
    record: dict[str, Any] = {"kind": IMPRESSION, "request_id": request_id,
                              "ts": round(time.time() if ts is None else ts, 3), "surface": surface,
                              "user_id": user_id, "items": list(items), "offset": offset}
    for key, value in (("query", query), ("mode", mode), ("experiment", experiment), ("variant", variant),
                       ("segment", segment)):
        if value is not None:
            record[key] = value
    if teams is not None:
        record["teams"] = list(teams)
    if features is not None:  # little-endian float32, base64: a tenth of the time floats as JSON text take
        record["features"] = base64.b64encode(np.asarray(features, dtype="<f4").tobytes()).decode("ascii")
    return record


def features_of(record: Mapping[str, Any]) -> np.ndarray | None:
    """A logged response's feature rows (one per shown item) as a float64 array, None when it has none."""
    raw = record.get("features")
    if raw is None or not record.get("items"):
        return None
    if isinstance(raw, str):
        flat = np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float64)
        return flat.reshape(len(record["items"]), -1)
    return np.asarray(raw, dtype=np.float64)


def feedback_record(user_id: str, item_id: str, event: str, ts: float, request_id: str | None = None,
                    position: int | None = None) -> dict[str, Any]:
    """One feedback event as a log record, with the response (request id) and position it came from if known."""
    record: dict[str, Any] = {"kind": FEEDBACK, "ts": round(ts, 3), "user_id": user_id, "item_id": item_id,
                              "event": event}
    if request_id is not None:
        record["request_id"] = request_id
    if position is not None:
        record["position"] = position
    return record


class ImpressionLog:
    """Append-only JSON lines, one file per UTC day of writing, safe for threads and for a crash of the process.

    Each record is one `os.write` of one line on a file opened with O_APPEND, under a lock (a few microseconds):
    once `write` returns, the line is in the kernel's page cache and survives the process being killed. An
    fsync every `sync_s` seconds (a background thread; 0 = after every record) bounds what a crash of the
    machine itself can lose. Readers skip a torn last line.
    """

    def __init__(self, folder: Path, sync_s: float = 1.0, keep_days: int = 0) -> None:
        self.folder = Path(folder)
        self.sync_s = float(sync_s)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_day = ""
        self._dirty = False
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the impression log folder {self.folder}: {e}") from e
        if keep_days > 0:
            self.prune(keep_days)

    # ----- writing -----

    def write(self, record: dict[str, Any]) -> Position:
        """Append one record (a JSON object with a `kind`) as one line; returns the position just past it."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()
        day = _day(time.time())
        with self._lock:
            if self._closed.is_set():
                raise StoreError("the impression log is closed")
            if self._fd is None or day != self._fd_day:
                self._open(day)
            assert self._fd is not None
            view = memoryview(line)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
                if self.sync_s <= 0:
                    os.fsync(self._fd)
                end = Position(f"{self._fd_day}.jsonl", os.lseek(self._fd, 0, os.SEEK_CUR))
            except OSError as e:
                raise StoreError(f"cannot write the impression log: {e}") from e
            self._dirty = True
        if self.sync_s > 0 and self._syncer is None:
            self._start_syncer()
        return end

    def _open(self, day: str) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.folder / f"{day}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fd_day = day
        dir_fd = os.open(self.folder, os.O_RDONLY)  # the new file's name is durable too
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _start_syncer(self) -> None:
        with self._lock:
            if self._syncer is not None:
                return
            self._syncer = threading.Thread(target=self._sync_loop, name="impression-log-sync", daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._closed.wait(self.sync_s):
            self.sync()

    def sync(self) -> None:
        """fsync what was written so far."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def impression(self, request_id: str, surface: str, items: Sequence[str], **fields: Any) -> Position:
        """Log one response (see impression_record)."""
        return self.write(impression_record(request_id, surface, items, **fields))

    def feedback(self, user_id: str, item_id: str, event: str, ts: float, request_id: str | None = None,
                 position: int | None = None) -> Position:
        """Log one feedback event (see feedback_record)."""
        return self.write(feedback_record(user_id, item_id, event, ts, request_id, position))

    # ----- reading -----

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def read(self, kinds: Iterable[str] | None = None, since: float | None = None, until: float | None = None,
             start: Position | None = None) -> Iterator[dict[str, Any]]:
        """Records in the order they were written (optionally only some kinds, record times in [since, until),
        from a position on); a line that does not parse (a torn write) is skipped."""
        for record, _ in self.read_from(start or Position(), kinds, since, until):
            yield record

    def read_from(self, start: Position, kinds: Iterable[str] | None = None, since: float | None = None,
                  until: float | None = None) -> Iterator[tuple[dict[str, Any], Position]]:
        """Records after `start`, each with the position just past it (to resume from)."""
        wanted = set(kinds) if kinds is not None else None
        for path in self.files():
            if path.name < start.file:
                continue
            offset = start.offset if path.name == start.file else 0
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # a line still being written (or torn by a crash): not complete yet
                        offset += len(line)
                        try:
                            record = json.loads(line)
                        except ValueError:
                            log.warning("impression log %s: skipped a bad line", path.name)
                            continue
                        if not isinstance(record, dict):
                            continue
                        if wanted is not None and record.get("kind") not in wanted:
                            continue
                        ts = record.get("ts", 0.0)
                        if (since is not None and ts < since) or (until is not None and ts >= until):
                            continue
                        yield record, Position(path.name, offset)
            except OSError as e:
                raise StoreError(f"cannot read the impression log {path}: {e}") from e

    def prune(self, keep_days: int) -> list[Path]:
        """Delete day files older than keep_days (by their day); returns those deleted."""
        oldest = _day(time.time() - timedelta(days=keep_days).total_seconds())
        gone = [p for p in self.files() if p.stem < oldest]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        """Sync and close the current file (later writes raise)."""
        self._closed.set()
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
        if self._syncer is not None:
            self._syncer.join(timeout=5)


def open_log(data_dir: Path, sync_s: float = 1.0, keep_days: int = 0) -> ImpressionLog:
    """The impression log of a deployment: <data dir>/impressions/."""
    return ImpressionLog(Path(data_dir) / FOLDER, sync_s, keep_days)
