"""A synthetic shop for tests and demos: shoppers with hidden tastes see rankings, click and buy with position bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from search.online.impressions import feedback_record, impression_record
from search.online.interleaving import coin, team_draft

DAY_S = 86_400.0
T0 = 1_590_969_600.0  # 2020-06-01T00:00:00Z: simulated days start here


@dataclass(frozen=True)
class Shop:
    """Items and shoppers as hidden unit vectors in one taste space; prices for revenue."""

    items: np.ndarray  # (n_items, dim)
    tastes: np.ndarray  # (n_shoppers, dim)
    prices: np.ndarray  # (n_items,)

    def item_id(self, i: int) -> str:
        return f"item-{i}"

    def shopper_id(self, u: int) -> str:
        return f"shopper-{u}"

    def price_of(self, ids: Sequence[str]) -> dict[str, float]:
        return {i: float(self.prices[int(i.rsplit("-", 1)[1])]) for i in ids}


@dataclass(frozen=True)
class Behaviour:
    """How a simulated shopper reacts to a list: examines position p (0-based) with probability
    1 / (p + 1) ** position_bias, clicks an examined item with sigmoid(click_scale * taste.item + click_bias),
    carts a clicked one with `cart` and buys a carted one with `buy`."""

    position_bias: float = 1.0
    click_scale: float = 3.0
    click_bias: float = -2.5
    cart: float = 0.3
    buy: float = 0.5


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_shop(n_items: int = 400, n_shoppers: int = 2000, dim: int = 8, seed: int = 0) -> Shop:
    """Random unit item and taste vectors (tastes lean toward a few clusters, as real interests do)."""
    rng = np.random.default_rng(seed)
    items = _unit(rng.normal(size=(n_items, dim)))
    centres = _unit(rng.normal(size=(4, dim)))
    tastes = _unit(centres[rng.integers(0, 4, n_shoppers)] + 0.8 * rng.normal(size=(n_shoppers, dim)))
    prices = np.round(rng.lognormal(3.0, 0.5, n_items), 2)
    return Shop(items, tastes, prices)


# A ranker scores candidate items for searching shoppers: (shop, shopper index per search (S,),
# candidate item indices (S, C), rng) -> scores (S, C), higher first.
Ranker = Callable[[Shop, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def taste_ranker(noise: float) -> Ranker:
    """Ranks by the shopper's true taste seen through Gaussian noise of this size (0: perfect)."""

    def rank(shop: Shop, users: np.ndarray, cand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        true = np.einsum("sd,scd->sc", shop.tastes[users], shop.items[cand])
        return true + noise * rng.normal(size=true.shape)

    return rank


def _reactions(shop: Shop, users: np.ndarray, shown: np.ndarray, b: Behaviour, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Click, cart and purchase masks (S, k) for the shown lists."""
    k = shown.shape[1]
    examine = rng.random(shown.shape) < 1.0 / (np.arange(k) + 1.0) ** b.position_bias
    affinity = np.einsum("sd,skd->sk", shop.tastes[users], shop.items[shown])
    click = examine & (rng.random(shown.shape) < 1.0 / (1.0 + np.exp(-(b.click_scale * affinity + b.click_bias))))
    cart = click & (rng.random(shown.shape) < b.cart)
    buy = cart & (rng.random(shown.shape) < b.buy)
    return click, cart, buy


def simulate(shop: Shop, rankers: Mapping[str, Ranker], assign: Callable[[str], str], searches: int,
             experiment: str = "sim", k: int = 10, candidates: int = 50, days: int = 7,
             behaviour: Behaviour = Behaviour(), interleave: tuple[str, str] | None = None, seed: int = 0,
             features: Callable[[Shop, np.ndarray, np.ndarray], np.ndarray] | None = None) -> list[dict]:
    """Log records (the impression log's own format) of `searches` searches by random shoppers, each served by
    the variant `assign(shopper id)` names (or, with `interleave`, by a team-draft of those two rankers), and of
    the clicks, carts and purchases that followed, each naming its request id and position.
    `features(shop, users (S,), shown (S, k)) -> (S, k, F)` adds logged ranker features when given."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, shop.tastes.shape[0], searches)
    cand = np.argsort(rng.random((searches, shop.items.shape[0])), axis=1)[:, :candidates]  # distinct items
    ts = np.sort(T0 + rng.random(searches) * days * DAY_S)
    names = [assign(shop.shopper_id(int(u))) for u in users]
    shown = np.zeros((searches, k), dtype=np.int64)
    teams: list[list[str] | None] = [None] * searches
    rids = [f"sim{seed}-{s}" for s in range(searches)]
    if interleave is None:
        for name in sorted(set(names)):  # a fixed order: the rankers draw from one generator
            rows = np.array([i for i, n in enumerate(names) if n == name])
            scores = rankers[name](shop, users[rows], cand[rows], rng)
            shown[rows] = np.take_along_axis(cand[rows], np.argsort(-scores, axis=1, kind="stable")[:, :k], 1)
    else:
        lists = {}
        for name in interleave:
            scores = rankers[name](shop, users, cand, rng)
            lists[name] = np.take_along_axis(cand, np.argsort(-scores, axis=1, kind="stable")[:, :k], 1)
        for s in range(searches):
            items, team = team_draft([int(i) for i in lists[interleave[0]][s]],
                                     [int(i) for i in lists[interleave[1]][s]], k, coin(rids[s]))
            shown[s] = items
            teams[s] = team
        names = ["+".join(interleave)] * searches
    click, cart, buy = _reactions(shop, users, shown, behaviour, rng)
    feats = features(shop, users, shown) if features is not None else None
    item_ids = [shop.item_id(i) for i in range(shop.items.shape[0])]
    by_search: dict[int, list[int]] = {}
    for srch, p in zip(*np.nonzero(click)):
        by_search.setdefault(int(srch), []).append(int(p))
    records: list[dict] = []
    for s in range(searches):
        shopper = shop.shopper_id(int(users[s]))
        ids = [item_ids[i] for i in shown[s].tolist()]
        records.append(impression_record(rids[s], "search", ids, user_id=shopper, experiment=experiment,
                                         variant=names[s], teams=teams[s], ts=float(ts[s]),
                                         features=None if feats is None else feats[s]))
        for p in by_search.get(s, ()):
            t = float(ts[s]) + 5.0 + p
            records.append(feedback_record(shopper, ids[p], "click", t, rids[s], p))
            if cart[s, p]:
                records.append(feedback_record(shopper, ids[p], "cart", t + 30.0, rids[s], p))
            if buy[s, p]:
                records.append(feedback_record(shopper, ids[p], "purchase", t + 60.0, rids[s], p))
    return records


SIM_FEATURES = ("taste_signal", "noise")  # what a learned ranker sees of a simulated item (see taste_features)


def taste_features(noise: float = 0.5, seed: int = 0) -> Callable[[Shop, np.ndarray, np.ndarray], np.ndarray]:
    """Features of the shown items: the shopper's true taste for the item seen through Gaussian noise (a model
    can learn that it predicts clicks) and pure noise (it must learn to ignore)."""

    def features(shop: Shop, users: np.ndarray, shown: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        true = np.einsum("sd,skd->sk", shop.tastes[users], shop.items[shown])
        return np.stack([true + noise * rng.normal(size=true.shape), rng.normal(size=true.shape)], axis=-1)

    return features
