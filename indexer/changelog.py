"""The durable log of item writes: an append-only SQLite table under data_dir/changes, the write lock, and
per-collection checkpoints of how far each collection has applied the log, and <alias>.seq: the last sequence
number written, an 8-byte counter that per-process copies (indexer/replica.py) read per request.

Every write the API (or `vitrina upsert`/`delete`) acknowledges is first committed here with a sequence
number (SQLite WAL, synchronous=FULL: fsync'd before the answer), then applied to the collection behind
the alias. Replaying entries in sequence order from any point at or before the first one a collection lacks
gives the same items (upserts and deletes overwrite, patches set the same values again), so a checkpoint
may lag: after a crash the writer replays from it, and `vitrina reindex` replays onto its new collection
the writes made since the catalogue file was written (see indexer/handover.py).
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import sqlite3
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from search.store.interface import ItemRecord
from vitrina.config import Config
from vitrina.errors import StoreError
from vitrina.locks import flock_within

OPS = ("upsert", "patch", "delete")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, op TEXT NOT NULL, item_id TEXT NOT NULL,
    stamp TEXT NOT NULL DEFAULT '', body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS changes_ts ON changes (ts);
CREATE TABLE IF NOT EXISTS applied (collection TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts REAL NOT NULL);
"""


@dataclass(frozen=True)
class Change:
    """One logged write. upsert: `record` as written, `source` the item as given (to embed again with other
    models), `stamp` the models that made the vectors; patch: `fields` to set (None removes); delete: the id."""

    op: str
    item_id: str
    record: ItemRecord | None = None
    source: dict[str, Any] = field(default_factory=dict)
    stamp: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    ts: float = 0.0


def _encode(change: Change) -> str:
    body: dict[str, Any] = {}
    if change.op == "upsert":
        if change.record is None:
            raise ValueError("an upsert change needs its record")
        r = change.record
        body = {"vectors": {k: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                            for k, v in r.vectors.items()},
                "keywords": r.keywords, "payload": r.payload, "source": change.source}
    elif change.op == "patch":
        body = {"fields": change.fields}
    return json.dumps(body, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _decode(seq: int, ts: float, op: str, item_id: str, stamp: str, text: str) -> Change:
    body = json.loads(text)
    if op == "upsert":
        vectors = {k: np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
                   for k, v in body["vectors"].items()}
        record = ItemRecord(item_id, vectors, body["keywords"], body["payload"])
        return Change(op, item_id, record=record, source=body.get("source") or {}, stamp=stamp, seq=seq, ts=ts)
    return Change(op, item_id, fields=body.get("fields") or {}, seq=seq, ts=ts)


def changes_dir(cfg: Config) -> Path:
    return cfg.data_dir / "changes"


class ChangeLog:
    """The log of one alias (data_dir/changes/<alias>.sqlite) and its write lock (<alias>.lock).

    Thread-safe; several processes may share it (SQLite and flock serialise them)."""

    def __init__(self, path: Path, lock_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db_lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._board: mmap.mmap | None = None
        try:
            self._db = sqlite3.connect(self.path, timeout=lock_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            new = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'changes'").fetchone() is None
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the change log {self.path}: {e}") from e
        if new:  # a log made anew starts at 1 again: so does the counter its followers read
            struct.pack_into("<q", self._counter(), 0, 0)

    @classmethod
    def for_config(cls, cfg: Config) -> ChangeLog:
        return cls(changes_dir(cfg) / f"{cfg.store.alias}.sqlite", cfg.live.lock_timeout_s)

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
            if self._board is not None:
                self._board.close()

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            try:
                yield self._db
            except sqlite3.Error as e:
                raise StoreError(f"change log {self.path}: {e}") from e

    # ---- the write lock -------------------------------------------------------------------------------
    @contextmanager
    def locked(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the write lock of this alias (threads of this process, then other processes, by flock):
        writers append and apply under it, and a reindex replays its last entries and moves the alias under it."""
        wait = self.lock_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        if not self._write_lock.acquire(timeout=max(0.0, wait)):
            raise StoreError("the write lock is busy", detail=f"no turn within {wait:g} s; try again")
        try:
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not flock_within(fd, deadline - time.monotonic(), poll_s=0.005):
                    raise StoreError("the write lock is held by another process (a reindex handing over, or "
                                     "another writer)", detail=f"waited {wait:g} s")
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._write_lock.release()

    # ---- entries --------------------------------------------------------------------------------------
    def append(self, changes: list[Change]) -> int:
        """Commit the changes (one transaction, fsync'd) and return the last sequence number given."""
        if any(c.op not in OPS for c in changes):
            raise ValueError(f"op must be one of {OPS}")
        rows = [(time.time(), c.op, c.item_id, c.stamp, _encode(c)) for c in changes]
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO changes (ts, op, item_id, stamp, body) VALUES (?, ?, ?, ?, ?)", rows)
                last = int(db.execute("SELECT max(seq) FROM changes").fetchone()[0] or 0)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return last

    def max_seq(self) -> int:
        """The last sequence number ever given, also when `prune` has dropped that entry (0: none yet)."""
        with self._sql() as db:
            return _top(db)

    def seq_before(self, ts: float) -> int:
        """The last sequence number of the entries logged before time `ts` (0 when none)."""
        with self._sql() as db:
            row = db.execute("SELECT min(seq) FROM changes WHERE ts >= ?", (ts,)).fetchone()
            if row[0] is not None:
                return int(row[0]) - 1
            return _top(db)

    def read(self, after: int = 0, until: int | None = None, batch: int = 500) -> Iterator[Change]:
        """Entries with after < seq <= until (default: to the end), in order, read `batch` at a time."""
        last = after
        while True:
            with self._sql() as db:
                rows = db.execute("SELECT seq, ts, op, item_id, stamp, body FROM changes WHERE seq > ? "
                                  "AND seq <= ? ORDER BY seq LIMIT ?",
                                  (last, until if until is not None else 2**62, batch)).fetchall()
            for row in rows:
                yield _decode(*row)
            if len(rows) < batch:
                return
            last = int(rows[-1][0])

    def stats(self) -> dict[str, Any]:
        """Entries, first and last sequence number, and each collection's checkpoint."""
        with self._sql() as db:
            n, first, last = db.execute("SELECT count(*), min(seq), max(seq) FROM changes").fetchone()
            applied = {c: s for c, s in db.execute("SELECT collection, seq FROM applied ORDER BY collection")}
        return {"path": str(self.path), "entries": int(n), "first_seq": first, "last_seq": last, "applied": applied}

    # ---- the counter followers read --------------------------------------------------------------------
    def announce(self, seq: int) -> None:
        """Tell the followers that entries up to `seq` are written (under the write lock, after the commit): the
        counter in <alias>.seq, shared memory through mmap. A hint that saves them a query: they poll the log too."""
        board = self._counter()
        if seq > struct.unpack_from("<q", board)[0]:
            struct.pack_into("<q", board, 0, int(seq))

    def announced(self) -> int:
        """The last sequence number a writer announced (a read of shared memory: well under a microsecond)."""
        board = self._counter()
        while True:  # an 8-byte write seen half-done reads differently twice
            first, again = struct.unpack_from("<q", board)[0], struct.unpack_from("<q", board)[0]
            if first == again:
                return int(first)

    def _counter(self) -> mmap.mmap:
        if self._board is None:
            with self._db_lock:
                if self._board is None:
                    fd = os.open(self.path.with_suffix(".seq"), os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        if os.fstat(fd).st_size < 8:
                            os.ftruncate(fd, 8)
                        self._board = mmap.mmap(fd, 8)
                    finally:
                        os.close(fd)
        return self._board

    # ---- checkpoints ----------------------------------------------------------------------------------
    def applied(self, collection: str) -> int | None:
        """How far `collection` has durably applied the log (None: never recorded)."""
        with self._sql() as db:
            row = db.execute("SELECT seq FROM applied WHERE collection = ?", (collection,)).fetchone()
        return None if row is None else int(row[0])

    def set_applied(self, collection: str, seq: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO applied (collection, seq, ts) VALUES (?, ?, ?) ON CONFLICT(collection) DO "
                       "UPDATE SET seq = excluded.seq, ts = excluded.ts", (collection, int(seq), time.time()))

    def prune(self, before_ts: float, through_seq: int, keep: set[str]) -> int:
        """Drop entries logged before `before_ts` up to `through_seq` (no reindex will replay them again) and the
        checkpoints of collections not in `keep`; returns the entries dropped."""
        with self._sql() as db:
            cur = db.execute("DELETE FROM changes WHERE ts < ? AND seq <= ?", (before_ts, through_seq))
            for name in [c for (c,) in db.execute("SELECT collection FROM applied") if c not in keep]:
                db.execute("DELETE FROM applied WHERE collection = ?", (name,))
            return int(cur.rowcount)


def _top(db: sqlite3.Connection) -> int:
    """The highest sequence number given: AUTOINCREMENT keeps it in sqlite_sequence (never below any row's seq)
    after its row is pruned; no row there until the first append."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row is not None else 0
