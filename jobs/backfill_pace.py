"""How fast a backfill reads: its budget in rows/s, lowered while live traffic flows so live keeps the machine.

Once every `period_s` the reader looks at three things and picks its rate for the next period:
- **live first** (on by default): the live prompts topics' arrivals (end offsets, `jobs/backfill_load.py`).
  Above `live_busy` prompts/s the pace drops at once to `live_floor` rows/s; when live is quiet it climbs back
  by a tenth of the budget per period. Why: on 2 cores live p99 follows the backfill's throughput (live at
  200 prompts/s: beside a backfill at ~150 rows/s 1.5-1.9x, at 10 rows/s 1.09x; README "Backfills").
- **the lane's lag** (its consumer group on the lane's prompts topic): while the lane is more than `max_lag_s`
  of its own reading rate behind (at least `min_lag_rows`), the reader holds. Without it a budget above the
  lane's capacity fills the lane's topic, and live would wait behind that backlog long after the pace dropped.
- **the host's CPU** (off by default, `busy_high`): AIMD on the busy share of all cores (/proc/stat through
  psutil): above it the pace halves (not below `floor` x budget). With the backfill niced and off the live
  job's interpreter lock it cut rows/s, not live p99 (README), so live arrivals replaced it as the signal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Pace:
    budget: float  # rows/s; <= 0: unpaced
    busy_high: float = 0.8  # 0 or >= 1: never yield to CPU
    floor: float = 0.05
    period_s: float = 1.0
    live_busy: float = 0.0  # live prompts/s above which the backfill drops to live_floor (0: never)
    live_floor: float = 5.0  # rows/s while live is busy; 0: paused (one row per Paced.max_hold_s, see there)
    max_lag_s: float = 0.0  # the lane may be this many seconds of its own reading behind (0: no bound)
    min_lag_rows: int = 100  # ... and at least this many rows (its offsets are committed with its checkpoints)
    rate: float = field(init=False)
    held: bool = field(init=False, default=False)
    live_yielding: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.rate = self.budget

    @property
    def yields(self) -> bool:
        return self.budget > 0 and 0 < self.busy_high < 1

    @property
    def watches_load(self) -> bool:
        """Whether it needs the broker's view (live arrivals, the lane's lag)."""
        return self.budget > 0 and (self.live_busy > 0 or self.max_lag_s > 0)

    def adjust(self, busy: float | None = None, live_per_s: float | None = None,
               lane_lag: int | None = None, lane_rate: float | None = None) -> float:
        """One period's decision. busy: the cores' busy share (0..1); live_per_s: arrivals on the live prompts
        topics; lane_lag: rows the lane has not read yet; lane_rate: rows/s it reads. None: not known this
        period (a failed read holds the current rate rather than guessing)."""
        self.live_yielding = live_per_s is not None and self.live_busy > 0 and live_per_s > self.live_busy
        if self.live_yielding:
            self.rate = min(self.rate, self.budget, self.live_floor)  # at once: live traffic is here
        elif busy is not None and self.yields and busy > self.busy_high:
            self.rate = max(self.budget * self.floor, self.rate / 2)
        elif live_per_s is not None or busy is not None or not self.watches_load:
            self.rate = min(self.budget, self.rate + self.budget / 10)
        self.held = lane_lag is not None and self.max_lag_s > 0 and lane_lag > self.lag_limit(lane_rate)
        return self.rate

    def lag_limit(self, lane_rate: float | None = None) -> float:
        """Rows the lane may have unread: `max_lag_s` of what it reads; one second of the pace until that is known
        (at a start, 4 s of a 500 rows/s pace put 2,000 rows ahead of a lane that reads ~170/s beside live)."""
        return max(self.min_lag_rows, self.rate if lane_rate is None else lane_rate * self.max_lag_s)


Load = Callable[[], "tuple[float | None, int | None, float | None]"]  # () -> (live/s, lane lag, lane rows/s)


class Paced:
    """Holds a reader to `Pace.rate`: call `wait()` once per row (sleeps; the GIL is free meanwhile).
    While the lane is too far behind, or the pace is 0 (paused while live flows), a row waits, at most
    `max_hold_s` (a blocked reader would stall a checkpoint's or a stop-with-savepoint's barrier for ever;
    its rows then go at one per `max_hold_s`)."""

    def __init__(self, pace: Pace, clock=time.monotonic, sleep=time.sleep, busy=None, load: Load | None = None,
                 max_hold_s: float = 10.0) -> None:
        self.pace, self.clock, self.sleep = pace, clock, sleep
        self.busy = busy or CpuBusy().sample
        self.load = load
        self.max_hold_s = max_hold_s
        self.last_lag: int | None = None
        self.next_at = clock()
        self.checked_at = self.next_at

    def _look(self, now: float) -> None:
        busy = self.busy() if self.pace.yields else None
        live, lag, lane_rate = self.load() if self.load is not None and self.pace.watches_load else (None,) * 3
        self.pace.adjust(busy, live, lag, lane_rate)
        self.checked_at, self.last_lag = now, lag

    @property
    def stopped(self) -> bool:
        """Held for the lane, or paused for live traffic (a live floor of 0)."""
        return self.pace.held or self.pace.rate <= 0

    def wait(self) -> None:
        if self.pace.budget <= 0:
            return
        now = self.clock()
        if (self.pace.yields or self.load is not None) and now - self.checked_at >= self.pace.period_s:
            self._look(now)
        held_since = now
        while self.stopped and now - held_since < self.max_hold_s:
            self.sleep(self.pace.period_s)
            now = self.clock()
            self._look(now)
            self.next_at = now
        if self.stopped:  # still, after max_hold_s: this row goes now, the next one waits again
            return
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
