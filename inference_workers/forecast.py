"""Request-rate forecast for predictive pre-scaling: additive Holt-Winters (level, trend, season).

Why this and not a library: a pool's history is a few hundred points (one rate sample per
controller tick over a few seasons); additive Holt-Winters with a small grid search over
(alpha, beta, gamma) fits it in milliseconds in plain Python. statsforecast (2.1.1) would bring
numba and LLVM (~150 MB, seconds of JIT at every controller start on 2 cores) for the same model;
Prophet brings cmdstan. Holt-Winters is what recurring bursts need: the season carries the burst,
the level follows slow drift, and it needs two seasons of history before it says anything
(`None` until then: the controller is purely reactive and says so).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

GRID = (0.1, 0.3, 0.5, 0.8)


@dataclass(frozen=True)
class Fit:
    alpha: float
    beta: float
    gamma: float
    sse: float
    level: float
    trend: float
    season: tuple[float, ...]  # the last m seasonal terms; season[i] applies to step n + i (mod m)

    def forecast(self, h: int) -> list[float]:
        """The next `h` steps (never negative: a rate)."""
        m = len(self.season)
        return [max(0.0, self.level + (i + 1) * self.trend + self.season[i % m]) for i in range(h)]


def _run(y: Sequence[float], m: int, a: float, b: float, g: float) -> Fit:
    first = sum(y[:m]) / m
    second = sum(y[m:2 * m]) / m
    level, trend = first, (second - first) / m
    season = [y[i] - first for i in range(m)]
    sse = 0.0
    for t in range(m, len(y)):
        s = season[t % m]
        pred = level + trend + s
        sse += (y[t] - pred) ** 2
        new_level = a * (y[t] - s) + (1 - a) * (level + trend)
        trend = b * (new_level - level) + (1 - b) * trend
        season[t % m] = g * (y[t] - new_level) + (1 - g) * s
        level = new_level
    n = len(y)
    ordered = tuple(season[(n + i) % m] for i in range(m))
    return Fit(a, b, g, sse, level, trend, ordered)


def fit(y: Sequence[float], m: int) -> Fit | None:
    """Best (alpha, beta, gamma) on the grid by one-step-ahead squared error; None below two seasons."""
    if m < 2 or len(y) < 2 * m:
        return None
    best = None
    for a, b, g in itertools.product(GRID, (0.0, 0.1), GRID):
        f = _run(y, m, a, b, g)
        if best is None or f.sse < best.sse:
            best = f
    return best


def peak_ahead(y: Sequence[float], m: int, horizon_steps: int) -> float | None:
    """Highest forecast rate over the next `horizon_steps`; None without two seasons of history."""
    f = fit(y, m)
    if f is None:
        return None
    return max(f.forecast(max(1, horizon_steps)))


def replicas_for_rate(rate: float | None, replica_rps: float, headroom: float = 1.2) -> int:
    """Replicas needed to serve `rate` requests/s with some headroom; 0 when unknown."""
    if rate is None or replica_rps <= 0 or rate <= 0:
        return 0
    return math.ceil(rate * headroom / replica_rps)


def resample(samples: Sequence[tuple[float, float]], step_s: float, now: float, length: int) -> list[float]:
    """Rate samples (time, rate) as a regular series of `length` steps ending at `now`; each step is
    the mean of its samples, an empty step carries the previous value (0 at the start)."""
    series: list[float] = []
    prev = 0.0
    start = now - length * step_s
    buckets: dict[int, list[float]] = {}
    for t, r in samples:
        i = int((t - start) // step_s)
        if 0 <= i < length:
            buckets.setdefault(i, []).append(r)
    for i in range(length):
        vals = buckets.get(i)
        prev = sum(vals) / len(vals) if vals else prev
        series.append(prev)
    return series
