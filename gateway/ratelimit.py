"""Per-key token buckets: a flood from one key gets 429 with Retry-After; other keys are untouched.

One bucket per API key id (a key's OAuth tokens share it), refilled at ``rate_per_s`` up to
``burst``. In-process: the gateway is one process; a fleet of gateways would move this to
Redis (the same arithmetic in a Lua script).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 when allowed, else the seconds until ``cost`` tokens are back (for Retry-After)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:  # forget full buckets first (they equal a new one)
                for k in [k for k, (t, _) in self._buckets.items() if t >= self.burst][: self.max_keys // 10]:
                    del self._buckets[k]
            return (cost - tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, at least 1 (RFC 9110 delay-seconds)."""
    return str(max(1, math.ceil(wait_s)))
