"""Persistent shopper profiles and the append-only feedback event log, in one SQLite file (WAL)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from search.shopper import signals
from search.shopper.personal import EVENTS, Event, UserState, decay, update_user, validate_event
from vitrina.config import Config, PersonalConfig
from vitrina.errors import BadInput, StoreError

FILENAME = "profiles.sqlite3"
BUSY_TIMEOUT_S = 30.0
_BATCH = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, seq);
CREATE INDEX IF NOT EXISTS events_item ON events(item_id);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT PRIMARY KEY,
    vector BLOB,
    evidence REAL NOT NULL,
    updated_at REAL NOT NULL,
    counts TEXT NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL
);
"""

# One in-process lock per database file: threads queue here instead of spinning on SQLite's busy handler.
_LOCKS: dict[str, threading.Lock] = defaultdict(threading.Lock)
_LOCKS_GUARD = threading.Lock()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class ProfileStore:
    """Shopper profiles + event log + item popularity; thread- and process-safe, no lost updates.

    Every write is one `BEGIN IMMEDIATE` transaction (read-modify-write under SQLite's write lock), so
    concurrent writers in threads or processes never overwrite each other; each thread has its own
    connection (made lazily, remade after a fork). Profiles and popularity are derived from the event
    log, which is append-only except for `delete` (privacy), so they can always be rebuilt from it.
    """

    def __init__(self, path: Path, cfg: PersonalConfig) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / FILENAME
        self.cfg = cfg
        self._local = threading.local()
        with _LOCKS_GUARD:
            self._lock = _LOCKS[str(self.path.resolve())]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            signals.check_config(cfg)
            self._conn()
            self._write(self._init_schema)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the profile store {self.path}: {e}") from e

    # ----- connections and transactions -----

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _write(self, fn: Any, *args: Any) -> Any:
        """Run fn(conn, *args) inside one BEGIN IMMEDIATE transaction; roll back on any error."""
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"profile store busy or unavailable: {e}") from e
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
                return result
            except BaseException as e:
                conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"profile store write failed: {e}") from e
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"profile store read failed: {e}") from e

    def _locked_read(self, fn: Any, *args: Any) -> Any:
        """fn(conn, *args) inside one read transaction: a consistent snapshot across its statements."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"profile store read failed: {e}") from e

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        signals.ensure_schema(conn, self.cfg)

    # ----- writes -----

    def record(self, events: Sequence[Event], vectors: Mapping[str, np.ndarray]) -> int:
        """Append events to the log and fold them into profiles and popularity, all in one transaction.

        `vectors` maps item id -> fused item vector; an event whose item has no vector is logged and
        counted but does not move the profile vector. All events are validated first: one bad event
        rejects the whole batch with BadInput. Returns the number of events accepted.
        """
        now = time.time()
        events = [validate_event(e, now) for e in events]
        if not events:
            return 0
        return int(self._write(self._record, events, vectors))

    def _record(self, conn: sqlite3.Connection, events: list[Event], vectors: Mapping[str, np.ndarray]) -> int:
        signals.add_cooc(conn, events, self.cfg)  # reads the shopper's earlier events: before the insert
        signals.add_popularity(conn, events, self.cfg)
        conn.executemany("INSERT INTO events(user_id, item_id, event, ts) VALUES (?, ?, ?, ?)",
                         [(e.user_id, e.item_id, e.event, float(e.ts)) for e in events])
        by_user: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            by_user[e.user_id].append(e)
        for user_id, user_events in by_user.items():
            row = conn.execute("SELECT vector, evidence, updated_at, counts, first_ts, last_ts FROM profiles "
                               "WHERE user_id = ?", (user_id,)).fetchone()
            state, first, last = self._state(row)
            for e in user_events:
                vec = vectors.get(e.item_id)
                if vec is not None:
                    state = update_user(state, vec, e.event, e.ts, self.cfg)
                else:
                    state = _count_only(state, e.event)
                first = e.ts if first is None else min(first, e.ts)
                last = e.ts if last is None else max(last, e.ts)
            assert state is not None
            blob = state.vector.astype(np.float32).tobytes() if state.vector.size else None
            conn.execute("INSERT OR REPLACE INTO profiles(user_id, vector, evidence, updated_at, counts, first_ts,"
                         " last_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (user_id, blob, float(state.evidence), float(state.updated_at),
                          json.dumps(state.counts, sort_keys=True), float(first), float(last)))
        return len(events)

    def delete(self, user_id: str) -> bool:
        """Forget a shopper: profile, every event, their share of popularity and co-occurrence.

        True if anything existed.
        """
        def _delete(conn: sqlite3.Connection) -> bool:
            items = [r[0] for r in conn.execute("SELECT DISTINCT item_id FROM events WHERE user_id = ?",
                                                (user_id,))]
            signals.remove_user(conn, user_id, self.cfg)  # replays their events: before they are deleted
            gone = conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            gone += conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)).rowcount
            signals.recompute_popularity(conn, items, self.cfg)
            return gone > 0
        return bool(self._write(_delete))

    # ----- reads -----

    @staticmethod
    def _state(row: tuple[Any, ...] | None) -> tuple[UserState | None, float | None, float | None]:
        if row is None:
            return None, None, None
        blob, evidence, updated_at, counts, first, last = row
        vector = np.frombuffer(blob, dtype=np.float32).copy() if blob else np.zeros(0, dtype=np.float32)
        state = UserState(vector=vector, evidence=float(evidence), updated_at=float(updated_at),
                          counts={k: int(v) for k, v in json.loads(counts).items()})
        return state, float(first), float(last)

    def get(self, user_id: str) -> UserState | None:
        """The shopper's state (vector may be empty if no event had a vector), or None if unknown."""
        rows = self._read("SELECT vector, evidence, updated_at, counts, first_ts, last_ts FROM profiles "
                          "WHERE user_id = ?", (user_id,))
        state, _, _ = self._state(rows[0] if rows else None)
        if state is not None and state.vector.size == 0:
            return None
        return state

    def profile(self, user_id: str) -> dict[str, Any] | None:
        """What the personal vector is built from: counts per event, evidence, first/last event time."""
        rows = self._read("SELECT vector, evidence, updated_at, counts, first_ts, last_ts FROM profiles "
                          "WHERE user_id = ?", (user_id,))
        state, first, last = self._state(rows[0] if rows else None)
        if state is None:
            return None
        counts = {name: state.counts.get(name, 0) for name in EVENTS}
        return {
            "user_id": user_id,
            "counts": counts,
            "events": sum(counts.values()),
            "evidence": state.evidence,
            "evidence_now": state.evidence * decay(time.time() - state.updated_at, self.cfg),
            "has_vector": bool(state.vector.size),
            "first_event": _iso(first),
            "last_event": _iso(last),
            "updated_at": _iso(state.updated_at),
        }

    def vectors(self) -> Iterator[tuple[str, UserState]]:
        """Every shopper with a taste vector, and their state (for grouping shoppers into segments)."""
        last = ""
        while True:
            rows = self._read("SELECT user_id, vector, evidence, updated_at, counts, first_ts, last_ts FROM profiles "
                              f"WHERE user_id > ? ORDER BY user_id LIMIT {_BATCH}", (last,))
            for row in rows:
                state, _, _ = self._state(row[1:])
                if state is not None and state.vector.size:
                    yield row[0], state
            if len(rows) < _BATCH:
                return
            last = rows[-1][0]

    def purchased(self, user_id: str) -> set[str]:
        """Items this shopper has bought (from the event log)."""
        rows = self._read("SELECT DISTINCT item_id FROM events WHERE user_id = ? AND event = 'purchase'",
                          (user_id,))
        return {r[0] for r in rows}

    def recent_purchases(self, user_id: str, limit: int) -> list[str]:
        """The shopper's `limit` most recently bought distinct items, newest first (by event time)."""
        if limit <= 0:
            return []
        rows = self._read("SELECT item_id FROM events WHERE user_id = ? AND event = 'purchase' GROUP BY item_id "
                          "ORDER BY MAX(ts) DESC, item_id LIMIT ?", (user_id, int(limit)))
        return [r[0] for r in rows]

    def popularity(self, item_ids: Sequence[str], now: float | None = None) -> dict[str, float]:
        """Recency-weighted popularity: sum of event weights * 0.5 ** (age / half-life), at `now` (None = now).

        Items never seen get 0.
        """
        now = time.time() if now is None else float(now)
        ids = list(item_ids)
        if len(ids) <= signals.CHUNK:  # one statement is a snapshot already: no read transaction around it
            try:
                return signals.popularity(self._conn(), ids, now, self.cfg)
            except sqlite3.Error as e:
                raise StoreError(f"profile store read failed: {e}") from e
        return self._locked_read(signals.popularity, ids, now, self.cfg)

    def events(self, since: float | None = None, user_id: str | None = None) -> Iterator[Event]:
        """The event log in arrival order, optionally from time `since` on and for one shopper."""
        last = 0
        while True:
            sql = "SELECT seq, user_id, item_id, event, ts FROM events WHERE seq > ?"
            params: list[Any] = [last]
            if since is not None:
                sql += " AND ts >= ?"
                params.append(float(since))
            if user_id is not None:
                sql += " AND user_id = ?"
                params.append(user_id)
            rows = self._read(sql + f" ORDER BY seq LIMIT {_BATCH}", params)
            for seq, uid, iid, ev, ts in rows:
                yield Event(user_id=uid, item_id=iid, event=ev, ts=float(ts))
            if len(rows) < _BATCH:
                return
            last = rows[-1][0]

    def neighbours(self, item_id: str, limit: int = 100, shrink: float = 1.0) -> list[tuple[str, float, int]]:
        """Items co-bought with this one: (item, normalised score, shoppers who bought both), best first."""
        return self._locked_read(signals.neighbours, item_id, limit, shrink)

    def neighbours_many(self, item_ids: Sequence[str], limit: int = 100, shrink: float = 1.0
                        ) -> dict[str, list[tuple[str, float, int]]]:
        """`neighbours` of several items in one statement: item -> its list (items with none are left out)."""
        try:
            return signals.neighbours_many(self._conn(), list(item_ids), limit, shrink)
        except sqlite3.Error as e:
            raise StoreError(f"profile store read failed: {e}") from e

    def popular(self, now: float | None = None, batch: int = 500) -> Iterator[tuple[str, float]]:
        """Every item with events, by recency-weighted popularity at `now`, best first (read lazily)."""
        now = time.time() if now is None else float(now)
        try:
            yield from signals.top_popular(self._conn(), now, self.cfg, batch)
        except sqlite3.Error as e:
            raise StoreError(f"profile store read failed: {e}") from e

    def rebuild_signals(self) -> dict[str, int]:
        """Wipe popularity and co-occurrence and replay the event log into them (one transaction)."""
        return dict(self._write(signals.rebuild, self.cfg))

    def dump_signals(self) -> dict[str, Any]:
        """Every derived signal as plain data (tests, and checking a rebuild)."""
        return dict(self._locked_read(signals.dump))

    def last_seen(self, item_ids: Sequence[str]) -> dict[str, float]:
        """Time of the newest event on each item that has one (items never seen are left out)."""
        out: dict[str, float] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), signals.CHUNK):
            chunk = ids[start:start + signals.CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._read(f"SELECT item_id, updated_at FROM popularity WHERE item_id IN ({marks})", chunk)
            out.update((item_id, float(at)) for item_id, at in rows)
        return out

    def latest_ts(self) -> float | None:
        """Time of the newest event in the log (the shop's clock), or None when the log is empty."""
        value = self._read("SELECT MAX(ts) FROM events")[0][0]
        return None if value is None else float(value)

    def clock(self) -> float:
        """The shop's "now" for decay: the wall clock, but never past the newest event in the log.

        For a live shop the two agree; for a replayed history (events from 2020) decay is measured from
        the end of that history, so old shoppers do not all fade to cold start at today's date.
        """
        wall = time.time()
        latest = self.latest_ts()
        return wall if latest is None else min(wall, latest)

    def count_events(self, user_id: str | None = None) -> int:
        """Rows in the event log (for one shopper, or all)."""
        if user_id is None:
            return int(self._read("SELECT COUNT(*) FROM events")[0][0])
        return int(self._read("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,))[0][0])


def open_profiles(cfg: Config) -> ProfileStore:
    """The profile store of this deployment: cfg.data_dir / profiles.sqlite3."""
    return ProfileStore(cfg.data_dir / FILENAME, cfg.personal)


def _count_only(state: UserState | None, event: str) -> UserState:
    """Count an event whose item has no vector: the taste vector and evidence stay as they are."""
    if event not in EVENTS:
        raise BadInput(f"unknown event {event!r}")
    if state is None:
        return UserState(vector=np.zeros(0, dtype=np.float32), evidence=0.0, updated_at=0.0, counts={event: 1})
    counts = dict(state.counts)
    counts[event] = counts.get(event, 0) + 1
    return UserState(vector=state.vector, evidence=state.evidence, updated_at=state.updated_at, counts=counts)
