"""Item signals kept online from the event log: co-bought counts (distinct shoppers) and decayed popularity."""

from __future__ import annotations

import math
import sqlite3
from collections import OrderedDict, defaultdict
from typing import Any, Iterable, Iterator, Sequence

from search.shopper.personal import EVENTS, DAY_S, Event, decay, event_weight
from vitrina.config import PersonalConfig
from vitrina.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS popularity (
    item_id TEXT PRIMARY KEY,
    score REAL NOT NULL,
    updated_at REAL NOT NULL,
    rank_key REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS item_buyers (
    item_id TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cooc (
    item_a TEXT NOT NULL,
    item_b TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (item_a, item_b)
) WITHOUT ROWID;
"""
_NO_SCORE = -1e300  # rank key of an item whose popularity is 0
CHUNK = 500  # item ids per `IN (...)` statement


def ensure_schema(conn: sqlite3.Connection, cfg: PersonalConfig) -> None:
    """Create the signal tables (inside a write transaction); add the rank key to a store made before it."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(popularity)")}
    if "rank_key" not in columns:
        conn.execute("ALTER TABLE popularity ADD COLUMN rank_key REAL NOT NULL DEFAULT 0")
        for item_id, score, at in conn.execute("SELECT item_id, score, updated_at FROM popularity").fetchall():
            _put_popularity(conn, item_id, score, at, cfg)
    conn.execute("CREATE INDEX IF NOT EXISTS popularity_rank ON popularity(rank_key)")


def check_config(cfg: PersonalConfig) -> None:
    bad = [e for e in cfg.cooc_events if e not in EVENTS]
    if bad or not cfg.cooc_events:
        raise ConfigError(f"[personal].cooc_events must name events from {EVENTS}, got {cfg.cooc_events!r}")
    if cfg.cooc_neighbours < 1 or cfg.cooc_basket < 1:
        raise ConfigError("[personal].cooc_neighbours and cooc_basket must be >= 1")


# ----- popularity: sum of event weights * 0.5 ** (age / half-life) -----

def rank_key(score: float, at: float, cfg: PersonalConfig) -> float:
    """log2 of the score decayed to time 0, up to a constant: ordering by it = ordering by score at any `now`."""
    if score <= 0:
        return _NO_SCORE
    half_life_s = cfg.half_life_days * DAY_S
    return math.log2(score) + (at / half_life_s if half_life_s > 0 else 0.0)


def _put_popularity(conn: sqlite3.Connection, item_id: str, score: float, at: float, cfg: PersonalConfig) -> None:
    conn.execute("INSERT OR REPLACE INTO popularity(item_id, score, updated_at, rank_key) VALUES (?, ?, ?, ?)",
                 (item_id, float(score), float(at), rank_key(score, at, cfg)))


def add_popularity(conn: sqlite3.Connection, events: Iterable[Event], cfg: PersonalConfig) -> None:
    """Fold events into item popularity, order-independently (like the user vectors)."""
    for e in events:
        w = event_weight(e.event, cfg)
        row = conn.execute("SELECT score, updated_at FROM popularity WHERE item_id = ?", (e.item_id,)).fetchone()
        if row is None:
            score, at = w, e.ts
        elif e.ts >= row[1]:
            score, at = row[0] * decay(e.ts - row[1], cfg) + w, e.ts
        else:
            score, at = row[0] + w * decay(row[1] - e.ts, cfg), row[1]
        _put_popularity(conn, e.item_id, score, at, cfg)


def recompute_popularity(conn: sqlite3.Connection, item_ids: Iterable[str], cfg: PersonalConfig) -> None:
    """These items' popularity recomputed exactly from the event log (after a delete)."""
    for item_id in item_ids:
        rows = conn.execute("SELECT event, ts FROM events WHERE item_id = ?", (item_id,)).fetchall()
        if not rows:
            conn.execute("DELETE FROM popularity WHERE item_id = ?", (item_id,))
            continue
        at = max(ts for _, ts in rows)
        score = sum(event_weight(ev, cfg) * decay(at - ts, cfg) for ev, ts in rows)
        _put_popularity(conn, item_id, score, at, cfg)


def popularity(conn: sqlite3.Connection, item_ids: Sequence[str], now: float, cfg: PersonalConfig
               ) -> dict[str, float]:
    out = {item: 0.0 for item in item_ids}
    ids = list(out)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        marks = ",".join("?" * len(chunk))
        for item_id, score, at in conn.execute(
                f"SELECT item_id, score, updated_at FROM popularity WHERE item_id IN ({marks})", chunk):
            out[item_id] = float(score) * decay(now - at, cfg)
    return out


def top_popular(conn: sqlite3.Connection, now: float, cfg: PersonalConfig, batch: int = 500
                ) -> Iterator[tuple[str, float]]:
    """Items by popularity at `now`, best first (read lazily in batches through the rank-key index)."""
    last: tuple[float, str] | None = None
    while True:
        if last is None:
            rows = conn.execute("SELECT item_id, score, updated_at, rank_key FROM popularity "
                                "ORDER BY rank_key DESC, item_id LIMIT ?", (batch,)).fetchall()
        else:
            rows = conn.execute("SELECT item_id, score, updated_at, rank_key FROM popularity "
                                "WHERE rank_key < ? OR (rank_key = ? AND item_id > ?) "
                                "ORDER BY rank_key DESC, item_id LIMIT ?", (last[0], last[0], last[1], batch)
                                ).fetchall()
        for item_id, score, at, _ in rows:
            yield item_id, float(score) * decay(now - at, cfg)
        if len(rows) < batch:
            return
        last = (rows[-1][3], rows[-1][0])


# ----- co-occurrence: how many distinct shoppers bought both items -----

def _bought(conn: sqlite3.Connection, user_id: str, cfg: PersonalConfig) -> OrderedDict[str, None]:
    """The shopper's bought items so far, least recently bought first (from the log)."""
    marks = ",".join("?" * len(cfg.cooc_events))
    rows = conn.execute(f"SELECT item_id FROM events WHERE user_id = ? AND event IN ({marks}) "
                        "GROUP BY item_id ORDER BY MAX(seq)", (user_id, *cfg.cooc_events)).fetchall()
    return OrderedDict((r[0], None) for r in rows)


def _pairs(basket: OrderedDict[str, None], events: Iterable[Event], cfg: PersonalConfig
           ) -> Iterator[tuple[str, list[str]]]:
    """For each newly bought item: (item, the most recent cooc_basket items bought before it).

    `basket` (one shopper's bought items, oldest first) is updated in place; re-buying an item only
    refreshes its recency. This depends on the shopper's own events alone, so deleting a shopper can
    replay exactly what they added.
    """
    for e in events:
        if e.event not in cfg.cooc_events:
            continue
        if e.item_id in basket:
            basket.move_to_end(e.item_id)
            continue
        partners = list(basket)[-cfg.cooc_basket:]
        basket[e.item_id] = None
        yield e.item_id, partners


def _bump(conn: sqlite3.Connection, item: str, partners: list[str], sign: int) -> None:
    conn.execute("INSERT INTO item_buyers(item_id, n) VALUES (?, ?) ON CONFLICT(item_id) DO UPDATE SET n = n + ?",
                 (item, sign, sign))
    rows = [(item, p, sign) for p in partners] + [(p, item, sign) for p in partners]
    conn.executemany("INSERT INTO cooc(item_a, item_b, n) VALUES (?, ?, ?) "
                     "ON CONFLICT(item_a, item_b) DO UPDATE SET n = n + excluded.n", rows)


def _prune(conn: sqlite3.Connection, items: Iterable[str], cfg: PersonalConfig) -> None:
    """Keep an item's row bounded: past 2 x cooc_neighbours, drop all but the top cooc_neighbours."""
    keep = cfg.cooc_neighbours
    for item in items:
        count = conn.execute("SELECT COUNT(*) FROM cooc WHERE item_a = ?", (item,)).fetchone()[0]
        if count > 2 * keep:
            conn.execute("DELETE FROM cooc WHERE item_a = ? AND item_b NOT IN (SELECT item_b FROM cooc WHERE "
                         "item_a = ? ORDER BY n DESC, item_b LIMIT ?)", (item, item, keep))


def add_cooc(conn: sqlite3.Connection, events: Sequence[Event], cfg: PersonalConfig) -> None:
    """Fold events into co-occurrence. Call BEFORE the events are appended to the log."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.event in cfg.cooc_events:
            by_user[e.user_id].append(e)
    touched: set[str] = set()
    for user_id, mine in by_user.items():
        basket = _bought(conn, user_id, cfg)
        for item, partners in _pairs(basket, mine, cfg):
            _bump(conn, item, partners, +1)
            touched.add(item)
            touched.update(partners)
    _prune(conn, sorted(touched), cfg)


def remove_user(conn: sqlite3.Connection, user_id: str, cfg: PersonalConfig) -> None:
    """Take back exactly what this shopper added to co-occurrence. Call BEFORE their events are deleted."""
    rows = conn.execute("SELECT user_id, item_id, event, ts FROM events WHERE user_id = ? ORDER BY seq",
                        (user_id,)).fetchall()
    for item, partners in _pairs(OrderedDict(), [Event(*r) for r in rows], cfg):
        _bump(conn, item, partners, -1)
    conn.execute("DELETE FROM cooc WHERE n <= 0")
    conn.execute("DELETE FROM item_buyers WHERE n <= 0")


def rebuild(conn: sqlite3.Connection, cfg: PersonalConfig, batch: int = 5000) -> dict[str, int]:
    """Wipe the signals and replay the whole event log in arrival order (the same code as online)."""
    conn.execute("DELETE FROM popularity")
    conn.execute("DELETE FROM item_buyers")
    conn.execute("DELETE FROM cooc")
    baskets: dict[str, OrderedDict[str, None]] = defaultdict(OrderedDict)
    last, n = 0, 0
    while True:
        rows = conn.execute("SELECT seq, user_id, item_id, event, ts FROM events WHERE seq > ? ORDER BY seq "
                            "LIMIT ?", (last, batch)).fetchall()
        if not rows:
            break
        events = [Event(r[1], r[2], r[3], float(r[4])) for r in rows]
        add_popularity(conn, events, cfg)
        touched: set[str] = set()
        for e in events:
            for item, partners in _pairs(baskets[e.user_id], [e], cfg):
                _bump(conn, item, partners, +1)
                touched.add(item)
                touched.update(partners)
        _prune(conn, sorted(touched), cfg)
        n += len(rows)
        last = rows[-1][0]
    return {"events": n, "items": conn.execute("SELECT COUNT(*) FROM popularity").fetchone()[0],
            "pairs": conn.execute("SELECT COUNT(*) FROM cooc").fetchone()[0]}


def neighbours(conn: sqlite3.Connection, item_id: str, limit: int, shrink: float
               ) -> list[tuple[str, float, int]]:
    """Co-bought items: (item, c_ij / (sqrt(n_i * n_j) + shrink), c_ij), best first.

    The cosine-style normalisation by each item's number of buyers keeps best-sellers from winning
    every list; `shrink` damps pairs seen once among few buyers.
    """
    return neighbours_many(conn, [item_id], limit, shrink).get(item_id, [])


def neighbours_many(conn: sqlite3.Connection, item_ids: Sequence[str], limit: int, shrink: float
                    ) -> dict[str, list[tuple[str, float, int]]]:
    """`neighbours` of several items in one statement: item -> its list (items with none are left out).
    The score is c_ij / (sqrt(n_i * n_j) + shrink), see `neighbours`."""
    wanted = list(dict.fromkeys(item_ids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = conn.execute("SELECT c.item_a, a.n, c.item_b, c.n, b.n FROM cooc c "
                        "JOIN item_buyers a ON a.item_id = c.item_a JOIN item_buyers b ON b.item_id = c.item_b "
                        f"WHERE c.item_a IN ({marks}) AND c.n > 0 AND a.n > 0", wanted).fetchall()
    out: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    for item, own, other, n, nb in rows:
        out[item].append((other, n / (math.sqrt(own * max(nb, 1)) + shrink), int(n)))
    for scored in out.values():
        scored.sort(key=lambda t: (-t[1], t[0]))
        del scored[limit:]
    return dict(out)


def dump(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every signal as plain data (for tests and for checking a rebuild)."""
    return {
        "popularity": {r[0]: (r[1], r[2]) for r in conn.execute("SELECT item_id, score, updated_at FROM popularity")},
        "buyers": {r[0]: r[1] for r in conn.execute("SELECT item_id, n FROM item_buyers")},
        "cooc": {(r[0], r[1]): r[2] for r in conn.execute("SELECT item_a, item_b, n FROM cooc")},
    }
