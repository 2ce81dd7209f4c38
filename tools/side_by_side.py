"""Live latency with and without a backfill, from interleaved runs: the figures `rscf bench backfill` reports.

Why (issue #17): one 20 s run at 200 prompts/s has 4,000 samples, so its p99 rests on its 40 worst, and on
this 2-core machine two alone runs of one bench differed 1.0-4.2x. A single alone/beside pair cannot show
a 10 % difference. Runs are interleaved instead, alone, beside, alone, beside, ..., alone (every beside run
bracketed by two alone runs), and two figures come out:
- pooled: the p99 of every beside sample against the p99 of every alone sample (R x 4,000 samples each);
- bracketed: each beside run's p99 against the mean p99 of the alone runs just before and after it (drift
  of the machine cancels), and the median of those ratios over the rounds.
"""

from __future__ import annotations

import statistics
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile, rounded to 0.1 (every `rscf bench pipeline` percentile), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)


def p99(samples: Sequence[float]) -> float | None:
    return percentile(samples, 0.99)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def side_by_side(alone: Sequence[Sequence[float]], beside: dict[str, Sequence[Sequence[float]]]) -> dict:
    """Figures of R interleaved rounds: `alone` holds R + 1 runs' overhead samples (ms), `beside[arm]` R runs',
    where beside run r ran between alone runs r and r + 1."""
    rounds = len(alone) - 1
    if rounds < 1:
        raise ValueError("needs at least two alone runs around the beside runs")
    alone_p99 = [p99(run) for run in alone]
    pooled_alone = p99([x for run in alone for x in run])
    out: dict = {"rounds": rounds, "alone_p99_ms": alone_p99, "pooled_alone_p99_ms": pooled_alone, "arms": {}}
    for arm, runs in beside.items():
        if len(runs) != rounds:
            raise ValueError(f"arm {arm}: {len(runs)} beside runs for {rounds} rounds")
        beside_p99 = [p99(run) for run in runs]
        bracketed = []
        for r, value in enumerate(beside_p99):
            around = [x for x in (alone_p99[r], alone_p99[r + 1]) if x is not None]
            bracketed.append(_ratio(value, statistics.fmean(around) if around else None))
        pooled = p99([x for run in runs for x in run])
        known = [x for x in bracketed if x is not None]
        out["arms"][arm] = {"beside_p99_ms": beside_p99, "pooled_p99_ms": pooled,
                            "pooled_ratio": _ratio(pooled, pooled_alone), "bracketed_ratios": bracketed,
                            "median_bracketed_ratio": round(statistics.median(known), 3) if known else None}
    return out
