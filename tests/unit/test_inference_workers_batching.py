"""Micro-batcher, poison bisection and offset tracking: pure logic, time stepped by hand."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from inference_workers.batching import (
    MicroBatcher,
    OffsetTracker,
    bisect_failures,
    priority_rank,
    to_epoch_ms,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0  # monotonic seconds
        self.wall = 1_700_000_000_000  # epoch ms

    def now(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, ms: float) -> None:
        self.t += ms / 1000.0
        self.wall += int(ms)


def req(rid: str, priority: str = "NORMAL", deadline: int | None = None, size: int = 32) -> dict:
    return {"request_id": rid, "priority": priority, "deadline": deadline, "params": {"width": size}}


def make(clock: FakeClock, max_batch: int = 4, max_wait_ms: float = 50, key=None) -> MicroBatcher:
    return MicroBatcher(
        max_batch,
        max_wait_ms,
        batch_key=key or (lambda r: None),
        clock=clock.now,
        wall_ms=clock.wall_ms,
    )


def ids(batch) -> list[str]:
    return [r["request_id"] for r in batch.requests]


def test_partial_batch_waits_until_max_wait() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=4, max_wait_ms=50)
    b.add(req("a"))
    b.add(req("b"))
    assert b.next_batch() is None
    assert b.time_until_ready() == pytest.approx(0.05)
    clock.advance(49)
    assert b.next_batch() is None
    clock.advance(1)
    batch = b.next_batch()
    assert batch is not None and ids(batch) == ["a", "b"]
    assert len(b) == 0 and b.time_until_ready() is None


def test_full_batch_goes_immediately_and_caps_size() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=3, max_wait_ms=1000)
    for i in range(7):
        b.add(req(f"r{i}"))
    assert b.time_until_ready() == 0.0
    assert ids(b.next_batch()) == ["r0", "r1", "r2"]
    assert ids(b.next_batch()) == ["r3", "r4", "r5"]
    assert b.next_batch() is None  # one left, not yet waited long enough
    assert ids(b.next_batch(force=True)) == ["r6"]


def test_priority_order_high_normal_low_fifo_within() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=10, max_wait_ms=0)
    for rid, prio in [("l1", "LOW"), ("n1", "NORMAL"), ("h1", "HIGH"), ("l2", "LOW"), ("h2", "HIGH"), ("n2", None)]:
        b.add(req(rid, prio))
    assert ids(b.next_batch()) == ["h1", "h2", "n1", "n2", "l1", "l2"]


def test_priority_decides_which_requests_fill_a_capped_batch() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=2, max_wait_ms=0)
    b.add(req("low", "LOW"))
    b.add(req("normal", "NORMAL"))
    b.add(req("high", "HIGH"))
    assert ids(b.next_batch()) == ["high", "normal"]
    assert ids(b.next_batch()) == ["low"]


def test_only_compatible_requests_share_a_batch() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=8, max_wait_ms=10, key=lambda r: r["params"]["width"])
    b.add(req("s1", size=32))
    b.add(req("b1", size=64))
    b.add(req("s2", size=32))
    clock.advance(10)
    first, second = b.next_batch(), b.next_batch()
    assert {tuple(ids(first)), tuple(ids(second))} == {("s1", "s2"), ("b1",)}
    assert first.key != second.key
    assert b.next_batch() is None


def test_group_with_highest_priority_head_goes_first() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=8, max_wait_ms=10, key=lambda r: r["params"]["width"])
    b.add(req("small-low", "LOW", size=32))
    b.add(req("big-high", "HIGH", size=64))
    clock.advance(10)
    assert ids(b.next_batch()) == ["big-high"]
    assert ids(b.next_batch()) == ["small-low"]


def test_max_wait_counts_from_oldest_member_of_the_group() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=8, max_wait_ms=50, key=lambda r: r["params"]["width"])
    b.add(req("a", size=32))
    clock.advance(30)
    b.add(req("other", size=64))
    b.add(req("b", size=32))
    clock.advance(20)  # "a" has waited 50 ms, "other" only 20 ms
    assert ids(b.next_batch()) == ["a", "b"]
    assert b.next_batch() is None
    assert b.time_until_ready() == pytest.approx(0.03)


def test_expired_requests_are_popped_and_never_batched() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=4, max_wait_ms=0)
    b.add(req("late", deadline=clock.wall + 5))
    b.add(req("fine", deadline=clock.wall + 10_000))
    b.add(req("none"))
    as_dt = datetime.fromtimestamp((clock.wall + 5) / 1000, tz=timezone.utc)
    b.add(req("late-dt", deadline=as_dt))  # fastavro hands timestamp-millis over as datetimes
    assert b.pop_expired() == []
    clock.advance(5)
    expired = b.pop_expired()
    assert [p.request["request_id"] for p in expired] == ["late", "late-dt"]
    assert len(b) == 2
    assert sorted(ids(b.next_batch())) == ["fine", "none"]


def test_remove_where_drops_revoked_partitions() -> None:
    clock = FakeClock()
    b = make(clock, max_batch=4, max_wait_ms=0)
    b.add(req("p0"), meta=0)
    b.add(req("p1"), meta=1)
    removed = b.remove_where(lambda p: p.meta == 1)
    assert [p.request["request_id"] for p in removed] == ["p1"]
    assert ids(b.next_batch()) == ["p0"]


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(0, 10)
    with pytest.raises(ValueError):
        MicroBatcher(1, -1)


def test_priority_rank_and_epoch_helpers() -> None:
    assert priority_rank("HIGH") < priority_rank("NORMAL") < priority_rank("LOW")
    assert priority_rank("SOMETHING_NEW") == priority_rank(None) == priority_rank("NORMAL")
    assert to_epoch_ms(None) is None
    assert to_epoch_ms(datetime(2024, 1, 1, tzinfo=timezone.utc)) == 1_704_067_200_000


def test_bisect_isolates_the_poison_request() -> None:
    calls: list[int] = []

    def run(items: list[str]) -> list[str]:
        calls.append(len(items))
        if "poison" in items:
            raise ValueError("bad input")
        return [i.upper() for i in items]

    items = ["a", "b", "c", "poison", "d", "e", "f", "g"]
    out = bisect_failures(items, run)
    assert [o for _, o, _ in out] == ["A", "B", "C", None, "D", "E", "F", "G"]
    errors = [(i, e) for i, _, e in out if e is not None]
    assert len(errors) == 1 and errors[0][0] == "poison" and isinstance(errors[0][1], ValueError)
    assert len(calls) <= 1 + 2 * 3  # first try + two halves per level


def test_bisect_all_good_runs_once_and_catches_wrong_output_count() -> None:
    calls = []
    out = bisect_failures([1, 2, 3], lambda xs: calls.append(1) or [x * 2 for x in xs])
    assert [o for _, o, _ in out] == [2, 4, 6] and len(calls) == 1
    broken = bisect_failures([1, 2], lambda xs: [])  # handler broke its contract: all fail
    assert all(e is not None for _, _, e in broken)


def test_offset_tracker_commits_only_below_first_open_offset() -> None:
    t = OffsetTracker()
    for off in (10, 11, 12):
        t.track("t", 0, off)
    t.track("t", 1, 5)
    assert t.committable() == {("t", 0): 10, ("t", 1): 5}
    t.done("t", 0, 12)  # answered out of order (a HIGH request overtook)
    t.done("t", 1, 5)
    assert t.committable() == {("t", 0): 10, ("t", 1): 6}
    t.mark_committed({("t", 0): 10, ("t", 1): 6})
    assert t.committable() == {}
    t.done("t", 0, 10)
    assert t.committable() == {("t", 0): 11}
    t.done("t", 0, 11)
    assert t.committable() == {("t", 0): 13}
    assert t.open_count() == 0
    t.forget([("t", 0)])
    assert ("t", 0) not in t.committable()
