"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008): merge two rankings, credit clicks to their team."""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

A, B = "A", "B"


def coin(request_id: str) -> random.Random:
    """The coin flips of one request, fixed by its id (so a logged interleaving can be replayed)."""
    return random.Random(int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big"))


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Interleave rankings a and b into at most k items; returns (items, team of each item).

    Each round, the team with fewer picks so far picks next (a coin decides between equals): it adds its highest
    ranked item not yet in the list. A team whose ranking is used up passes its turn to the other.
    """
    items: list[str] = []
    teams: list[str] = []
    taken: set[str] = set()
    picks = {A: 0, B: 0}
    next_at = {A: 0, B: 0}
    lists = {A: a, B: b}

    def first_free(team: str) -> str | None:
        ranking, i = lists[team], next_at[team]
        while i < len(ranking) and ranking[i] in taken:
            i += 1
        next_at[team] = i
        return ranking[i] if i < len(ranking) else None

    while len(items) < k:
        free = {t: first_free(t) for t in (A, B)}
        if free[A] is None and free[B] is None:
            break
        if picks[A] < picks[B]:
            team = A
        elif picks[B] < picks[A]:
            team = B
        else:
            team = A if rng.random() < 0.5 else B
        if free[team] is None:
            team = B if team == A else A
        item = free[team]
        assert item is not None
        items.append(item)
        teams.append(team)
        taken.add(item)
        picks[team] += 1
    return items, teams


def credit(teams: Sequence[str], clicked: Sequence[int]) -> tuple[int, int]:
    """Clicks credited to team A and team B: a click at position p (0-based, in the shown list) goes to the team
    that placed the item there; positions outside the list and repeated clicks count once or not at all."""
    a = b = 0
    for p in sorted(set(clicked)):
        if 0 <= p < len(teams):
            if teams[p] == A:
                a += 1
            else:
                b += 1
    return a, b


def outcome(a_clicks: int, b_clicks: int) -> str | None:
    """Which team won one impression: "A", "B", "tie" (equal, some clicks) or None (no clicks)."""
    if a_clicks == b_clicks:
        return "tie" if a_clicks else None
    return A if a_clicks > b_clicks else B
