"""Spelling correction learnt from the catalogue's own words: an unknown query word becomes the most frequent catalogue
word within one or two edits (symmetric-delete lookup, Damerau distance)."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping


def deletes(word: str, depth: int) -> set[str]:
    """Every string made from `word` by deleting up to `depth` characters (the word itself included)."""
    out, frontier = {word}, {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))} - out
        out |= frontier
    return out


def damerau(a: str, b: str, limit: int = 3) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two neighbours); `limit` once beyond."""
    if abs(len(a) - len(b)) >= limit:
        return limit
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return min(prev[len(b)], limit)


class Speller:
    """Corrects words the catalogue (and the text encoder's vocabulary, when given) does not know.

    Candidates are catalogue words held by at least `min_count` items, starting with the same letter; a word of fewer
    than `min_length` letters is never corrected; words of `long_word` letters or more may be two edits away (with
    the length changed by one at most), shorter ones one. Ties in distance go to the word more items hold.
    """

    def __init__(self, counts: Mapping[str, int], known: Callable[[str], bool] | None = None, min_count: int = 2,
                 min_length: int = 5, long_word: int = 7) -> None:
        self.counts = {w: n for w, n in counts.items() if n >= min_count and w.isalpha() and len(w) >= 3}
        self.all_words = set(counts)
        self.known_elsewhere = known
        self.min_length = min_length
        self.long_word = long_word
        self._deletes: dict[str, list[str]] = defaultdict(list)
        for w in self.counts:
            for d in deletes(w, 2 if len(w) >= long_word - 1 else 1):
                self._deletes[d].append(w)

    def known(self, word: str) -> bool:
        """A catalogue word, a word the encoder knows whole, or the plural of one ('hoodies' when 'hoodie' is)."""
        forms = [word] + [word[:-n] for n in (1, 2) if word.endswith("es"[2 - n:]) and len(word) - n >= 3]
        elsewhere = self.known_elsewhere
        return any(w in self.all_words or (elsewhere is not None and elsewhere(w)) for w in forms)

    def correct(self, word: str) -> str | None:
        """The correction of a lower-case word, or None when it is known, short, not a word, or nothing is near."""
        if len(word) < self.min_length or not word.isalpha() or self.known(word):
            return None
        depth = 2 if len(word) >= self.long_word else 1
        found: dict[str, int] = {}
        for d in deletes(word, depth):
            for cand in self._deletes.get(d, ()):
                if cand not in found:
                    found[cand] = damerau(word, cand, depth + 1)
        # typists rarely get the first letter wrong, and two edits must not change the length by two
        near = [(dist, -self.counts[c], c) for c, dist in found.items()
                if dist <= depth and c[0] == word[0] and (dist < 2 or abs(len(c) - len(word)) <= 1)]
        return min(near)[2] if near else None

    def correct_all(self, words: Iterable[str]) -> dict[str, str]:
        """{word: correction} for the words that have one."""
        out = {}
        for w in words:
            fixed = self.correct(w)
            if fixed is not None:
                out[w] = fixed
        return out
