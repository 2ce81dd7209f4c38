"""The backfill's pace: its budget, halved while the machine is busy, climbing back when it is not."""

from __future__ import annotations

from jobs.backfill_pace import CpuBusy, Pace, Paced


def test_halves_when_busy_floors_and_climbs_back_to_the_budget():
    p = Pace(500, busy_high=0.8)
    assert [p.adjust(0.95) for _ in range(6)] == [250, 125, 62.5, 31.25, 25, 25], "floor: 5 % of the budget"
    assert p.adjust(0.5) == 75
    for _ in range(20):
        p.adjust(0.5)
    assert p.rate == 500, "never above the budget"


def test_no_yield_when_off_or_unpaced():
    assert not Pace(500, busy_high=0).yields and not Pace(0, busy_high=0.8).yields and Pace(500).yields


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_paced_holds_the_rate_and_follows_the_busy_signal():
    clock = Clock()
    busy = iter([0.95] * 100)
    paced = Paced(Pace(100, busy_high=0.8), clock=clock, sleep=clock.sleep, busy=lambda: next(busy))
    for _ in range(100):  # first second at the budget: 100 rows
        paced.wait()
    assert 0.95 <= clock.t <= 1.05
    start = clock.t
    for _ in range(50):  # busy: the pace halves each second
        paced.wait()
    assert clock.t - start > 0.9, "50 rows took about a second at 50 rows/s or less"
    assert paced.pace.rate < 100


def test_cpu_busy_is_a_share():
    c = CpuBusy()
    sum(i * i for i in range(200_000))
    assert 0.0 <= c.sample() <= 1.0
