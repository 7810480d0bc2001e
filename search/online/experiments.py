"""Online experiments: variants as config overrides, a stable salted split of shoppers, each variant's config."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from vitrina.config import Config, ExperimentsConfig, override
from vitrina.errors import ConfigError

# Sections a variant may change per request (the index, the models and the service itself are shared).
OVERRIDABLE = ("search", "personal", "recommend", "ranker", "segments")
METHODS = ("ab", "interleave")
METRICS = ("ctr", "cart_rate", "conversion", "revenue")


@dataclass(frozen=True)
class Variant:
    """One arm: its name, its share of shoppers and the config keys it changes ("section.key", text value)."""

    name: str
    share: float
    overrides: tuple[tuple[str, str], ...] = ()


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """"name: section.key=value; section.key=value" (or just "name") as (name, overrides)."""
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"[experiments].variants entry {text!r}: the name must be letters, digits, - _ .")
    pairs = []
    for part in (p.strip() for p in rest.split(";")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"[experiments].variants entry {text!r}: {part!r} is not section.key=value")
        section = key.strip().split(".", 1)[0]
        if section not in OVERRIDABLE:
            raise ConfigError(f"[experiments].variants entry {text!r}: [{section}] cannot differ per request",
                              f"variants may change {', '.join(OVERRIDABLE)}")
        pairs.append((key.strip(), value.strip()))
    return name, tuple(pairs)


def parse_variants(ec: ExperimentsConfig) -> tuple[Variant, ...]:
    """The [experiments] variants with their shares (normalised to sum to 1); ConfigError when inconsistent."""
    parsed = [parse_variant(v) for v in ec.variants]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"[experiments].variants: repeated names {names}")
    if ec.name and len(parsed) < 2:
        raise ConfigError(f"[experiments] {ec.name!r} needs at least two variants", "e.g. [\"control\", "
                          "\"learned: ranker.search_model=models/ranker.txt\"]")
    if ec.method not in METHODS:
        raise ConfigError(f"[experiments].method must be one of {METHODS}, got {ec.method!r}")
    if ec.primary not in METRICS:
        raise ConfigError(f"[experiments].primary must be one of {METRICS}, got {ec.primary!r}")
    if not 0 < ec.alpha < 1:
        raise ConfigError(f"[experiments].alpha must be in (0, 1), got {ec.alpha}")
    if ec.shares and len(ec.shares) != len(parsed):
        raise ConfigError(f"[experiments].shares has {len(ec.shares)} values for {len(parsed)} variants")
    try:
        shares = [float(s) for s in ec.shares] if ec.shares else [1.0] * len(parsed)
    except ValueError as e:
        raise ConfigError(f"[experiments].shares must be numbers, got {ec.shares}") from e
    if any(not math.isfinite(s) or s < 0 for s in shares) or (parsed and sum(shares) <= 0):
        raise ConfigError(f"[experiments].shares must be >= 0 and not all 0, got {ec.shares}")
    total = sum(shares) or 1.0
    return tuple(Variant(n, s / total, o) for (n, o), s in zip(parsed, shares))


def bucket(salt: str, user_id: str) -> float:
    """A number in [0, 1) fixed by the salt and the shopper id alone (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(variants: Sequence[Variant], salt: str, user_id: str) -> Variant:
    """The variant whose slice of [0, 1) (in the configured order, sized by the shares) holds the bucket."""
    if not variants:
        raise ConfigError("no variants to assign")
    x = bucket(salt, user_id)
    edge = 0.0
    for v in variants:
        edge += v.share
        if x < edge:
            return v
    return variants[-1]  # rounding at the top edge


def variant_config(cfg: Config, variant: Variant) -> Config:
    """cfg with the variant's overrides applied (checked and typed like the file's own keys)."""
    for key, value in variant.overrides:
        cfg = override(cfg, key, value)
    return cfg


class Experiments:
    """The running experiment of a config: who gets which variant, and the config each variant runs with."""

    def __init__(self, cfg: Config) -> None:
        ec = cfg.experiments
        self.name = ec.name
        self.salt = ec.salt or ec.name
        self.method = ec.method
        self.variants = parse_variants(ec) if ec.name else ()
        self.configs = {v.name: variant_config(cfg, v) for v in self.variants}  # errors show at start, not later

    @property
    def running(self) -> bool:
        return bool(self.name)

    def assign(self, user_id: str | None) -> Variant | None:
        """The shopper's variant; None without a running experiment or a shopper id (anonymous requests are
        served by the config as it is and stay out of the report)."""
        if not self.variants or user_id is None:
            return None
        return assign(self.variants, self.salt, user_id)

    def pair(self) -> tuple[Variant, Variant]:
        """The two rankers interleaving compares: the first two variants."""
        return self.variants[0], self.variants[1]
