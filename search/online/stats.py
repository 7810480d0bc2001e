"""Experiment statistics: ratio metrics clustered by shopper (delta method) and always-valid intervals (mSPRT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Ratio:
    """sum(num) / sum(den) over units (shoppers), with the delta-method variance of that estimate."""

    value: float
    var: float
    units: int
    num: float
    den: float

    def interval(self, z: float = Z95) -> tuple[float, float]:
        half = z * math.sqrt(self.var) if math.isfinite(self.var) else math.inf
        return self.value - half, self.value + half


def ratio(num: np.ndarray, den: np.ndarray) -> Ratio:
    """The ratio of sums over units and its variance: Var(num_i - r den_i) / (m mean(den)^2), the delta method
    for a ratio whose numerator and denominator both vary by unit (e.g. clicks and searches per shopper: the
    searches of one shopper are not independent, the shoppers are). Infinite variance below 2 units."""
    y = np.asarray(num, dtype=np.float64).reshape(-1)
    n = np.asarray(den, dtype=np.float64).reshape(-1)
    m = int(y.shape[0])
    total = float(n.sum())
    if m == 0 or total <= 0:
        return Ratio(0.0, math.inf, m, float(y.sum()), total)
    r = float(y.sum()) / total
    if m < 2:
        return Ratio(r, math.inf, m, float(y.sum()), total)
    resid = y - r * n
    var = float(resid.var(ddof=1)) / (m * (total / m) ** 2)
    return Ratio(r, var, m, float(y.sum()), total)


def always_valid_radius(var: float, alpha: float, tau: float) -> float:
    """Half-width of the always-valid (1 - alpha) interval of a normal estimate with variance `var`: the mixture
    sequential probability ratio test with a N(0, tau^2) mixture over effects (Johari et al. 2017, Robbins 1970).

    |estimate| > radius  <=>  the mSPRT statistic sqrt(V / (V + tau^2)) exp(tau^2 x^2 / (2 V (V + tau^2))) >= 1/alpha,
    so the chance that an experiment with no effect ever shows an interval without 0, however often the report
    is read, is at most alpha. Infinite when the variance is unknown (0, infinite or not a number)."""
    if not (var > 0 and math.isfinite(var)) or tau <= 0:
        return math.inf
    t2 = tau * tau
    return math.sqrt(2.0 * var * (var + t2) / t2 * (math.log(1.0 / alpha) + 0.5 * math.log((var + t2) / var)))


@dataclass(frozen=True)
class Difference:
    """b - a of two independent ratio estimates, with a fixed-horizon 95% interval and an always-valid one."""

    estimate: float
    var: float
    radius: float

    @property
    def interval(self) -> tuple[float, float]:
        return self.estimate - self.radius, self.estimate + self.radius

    @property
    def significant(self) -> bool:
        return abs(self.estimate) > self.radius


def difference(a: Ratio, b: Ratio, alpha: float, tau: float) -> Difference:
    var = a.var + b.var
    return Difference(b.value - a.value, var, always_valid_radius(var, alpha, tau))


def mixture_scale(a: Ratio, b: Ratio, relative: float = 0.1, floor: float = 1e-4) -> float:
    """tau of the mixture: `relative` x the pooled mean of the two arms (effects of about a tenth of the metric
    are the ones the test is tuned to find soonest); never below `floor`."""
    den = a.den + b.den
    pooled = (a.num + b.num) / den if den > 0 else 0.0
    return max(abs(pooled) * relative, floor)
