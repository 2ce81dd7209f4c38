"""Time and retry pacing shared by every layer: one wall clock in ms, one exponential backoff."""

from __future__ import annotations

import time
from typing import Iterator


def now_ms() -> int:
    """Wall-clock epoch milliseconds: the unit of every timestamp in the contracts."""
    return int(time.time() * 1000)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Delay after failed attempt ``attempt`` (1-based): base, 2*base, 4*base ... capped at ``cap``."""
    return min(cap, base * 2 ** max(attempt - 1, 0))


def backoff_delays(base_s: float = 0.2, cap_s: float = 5.0) -> Iterator[float]:
    """0.2, 0.4, 0.8 ... capped: the wait between retries of a dependency that is down."""
    attempt = 1
    while True:
        yield backoff(attempt, base_s, cap_s)
        attempt += 1
