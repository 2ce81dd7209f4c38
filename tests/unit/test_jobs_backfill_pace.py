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


def test_live_first_drops_to_the_floor_at_once_and_climbs_back_when_live_is_quiet():
    p = Pace(500, busy_high=0, live_busy=10, live_floor=5)
    assert p.watches_load and p.adjust(live_per_s=3) == 500, "quiet live: the budget"
    assert p.adjust(live_per_s=200) == 5 and p.live_yielding, "live arrives: the floor in one period"
    assert p.adjust(live_per_s=200) == 5
    assert p.adjust(live_per_s=0) == 55, "climbs by a tenth of the budget per period"
    assert [p.adjust(live_per_s=0) for _ in range(10)][-1] == 500
    assert p.adjust(live_per_s=None) == 500 and Pace(500, busy_high=0, live_busy=10).adjust(None) == 500


def test_an_unknown_live_rate_keeps_the_pace_rather_than_climbing():
    p = Pace(500, busy_high=0, live_busy=10, live_floor=5)
    p.adjust(live_per_s=300)
    assert p.adjust(live_per_s=None) == 5, "a failed read holds the floor while live may still be there"


def test_live_off_never_yields_to_live():
    p = Pace(500, busy_high=0, live_busy=0)
    assert not p.watches_load and p.adjust(live_per_s=10_000) == 500


def test_the_lane_lag_bound_is_seconds_of_the_lanes_own_rate():
    p = Pace(500, busy_high=0, live_busy=10, max_lag_s=4, min_lag_rows=100)
    p.adjust(live_per_s=0, lane_lag=490)
    assert not p.held, "lane rate unknown: one second of the pace (500 rows)"
    p.adjust(live_per_s=0, lane_lag=600)
    assert p.held, "not more before the lane's rate is known (its first checkpoints)"
    p.adjust(live_per_s=0, lane_lag=900, lane_rate=200)
    assert p.held, "the lane reads 200 rows/s: more than 800 unread rows is more than 4 s of it"
    p.adjust(live_per_s=0, lane_lag=700, lane_rate=200)
    assert not p.held
    p.adjust(live_per_s=0, lane_lag=90, lane_rate=0)
    assert not p.held, "at least min_lag_rows, even before the lane has committed anything"
    assert not Pace(500, busy_high=0).watches_load


def test_paced_holds_while_the_lane_is_behind_then_reads_on():
    clock = Clock()
    lags = iter([5_000, 5_000, 5_000, 0] + [0] * 1000)
    paced = Paced(Pace(100, busy_high=0, max_lag_s=4), clock=clock, sleep=clock.sleep,
                  load=lambda: (0.0, next(lags), 100.0))
    clock.t = 1.0  # the first look is due
    paced.wait()
    assert 3.0 <= clock.t - 1.0 <= 3.1, "three periods held, then the row"
    start = clock.t
    for _ in range(100):
        paced.wait()
    assert 0.9 <= clock.t - start <= 1.1, "then at the budget again"


def test_paced_holds_no_longer_than_max_hold_s_for_a_lane_that_is_down():
    clock = Clock()
    paced = Paced(Pace(100, busy_high=0, max_lag_s=4), clock=clock, sleep=clock.sleep,
                  load=lambda: (0.0, 10**6, 0.0), max_hold_s=10)
    clock.t = 1.0
    paced.wait()
    assert 10.0 <= clock.t - 1.0 <= 11.1, "a row passes every max_hold_s: a stop-with-savepoint is not stalled for ever"


def test_paced_drops_to_the_floor_while_live_arrives():
    clock = Clock()
    paced = Paced(Pace(100, busy_high=0, live_busy=10, live_floor=5), clock=clock, sleep=clock.sleep,
                  load=lambda: (200.0, 0, None))
    for _ in range(120):
        paced.wait()
    assert 4.5 <= clock.t <= 5.5, "100 rows in the first second, then 5 rows/s: 20 more take 4 s (not 0.2 s)"


def test_a_live_floor_of_0_pauses_the_reader_but_lets_a_row_through_every_max_hold_s():
    clock = Clock()
    live = [200.0]
    paced = Paced(Pace(100, busy_high=0, live_busy=10, live_floor=0), clock=clock, sleep=clock.sleep,
                  load=lambda: (live[0], 0, None), max_hold_s=10)
    for _ in range(100):
        paced.wait()
    assert clock.t < 1.1, "live quiet so far: the first second's look has not come yet"
    start = clock.t
    for _ in range(3):
        paced.wait()
    assert 29.0 <= clock.t - start <= 31.1, "paused: a row per max_hold_s (10 s), not 100 rows/s"
    assert paced.pace.rate == 0 and paced.stopped
    live[0] = 0.0
    start = clock.t
    for _ in range(100):
        paced.wait()
    assert clock.t - start < 12.0, "live gone: the pace climbs back by a tenth of the budget per period"
    assert paced.pace.rate > 0 and not paced.stopped
