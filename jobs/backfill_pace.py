"""How fast a backfill reads: its budget in rows/s, lowered while the machine is busy so live traffic keeps it.

AIMD on the host's CPU, measured where the rows are read (the ingest job's Python worker): every
`period_s` the busy share of all cores since the last look (/proc/stat through psutil); above `busy_high`
the pace halves (not below `floor` x budget), otherwise it climbs by a tenth of the budget per period back
to the budget. Why the CPU and not live latency: on one machine the backfill hurts live traffic through
the cores it takes (and the TaskManager's interpreter lock, which needs a core to run); the busy share
is what every process sees at no cost, and it counts other load too (that also slows live traffic).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Pace:
    budget: float  # rows/s; <= 0: unpaced
    busy_high: float = 0.8  # 0 or >= 1: never yield
    floor: float = 0.05
    period_s: float = 1.0
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        self.rate = self.budget

    @property
    def yields(self) -> bool:
        return self.budget > 0 and 0 < self.busy_high < 1

    def adjust(self, busy: float) -> float:
        """One period's decision from the busy share (0..1) of the machine's cores."""
        if busy > self.busy_high:
            self.rate = max(self.budget * self.floor, self.rate / 2)
        else:
            self.rate = min(self.budget, self.rate + self.budget / 10)
        return self.rate


class Paced:
    """Holds a reader to `Pace.rate`: call `wait()` once per row (sleeps; the GIL is free meanwhile)."""

    def __init__(self, pace: Pace, clock=time.monotonic, sleep=time.sleep, busy=None) -> None:
        self.pace, self.clock, self.sleep = pace, clock, sleep
        self.busy = busy or CpuBusy().sample
        self.next_at = clock()
        self.checked_at = self.next_at

    def wait(self) -> None:
        if self.pace.budget <= 0:
            return
        now = self.clock()
        if self.pace.yields and now - self.checked_at >= self.pace.period_s:
            self.pace.adjust(self.busy())
            self.checked_at = now
        self.next_at = max(self.next_at, now - 0.5) + 1.0 / self.pace.rate  # at most 0.5 s of credit
        if self.next_at - now > 0.005:
            self.sleep(self.next_at - now)


class CpuBusy:
    """Busy share of all cores since the previous call (the first call: since boot)."""

    def __init__(self) -> None:
        self.prev = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        import psutil

        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, idle

    def sample(self) -> float:
        busy, idle = self._read()
        d_busy, d_idle = busy - self.prev[0], idle - self.prev[1]
        self.prev = (busy, idle)
        total = d_busy + d_idle
        # iowait is not monotonic in /proc/stat: over a short window one share can step back past zero
        return min(1.0, max(0.0, d_busy / total)) if total > 0 else 0.0
