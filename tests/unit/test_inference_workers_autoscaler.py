"""Lag autoscaler decision: pure function, time passed in."""

from __future__ import annotations

import pytest

from inference_workers.autoscaler import desired_replicas


def test_replicas_follow_lag_over_target() -> None:
    assert desired_replicas(0, 1, 1, 4, 50) == 1
    assert desired_replicas(50, 1, 1, 4, 50) == 1
    assert desired_replicas(51, 1, 1, 4, 50) == 2
    assert desired_replicas(175, 1, 1, 4, 50) == 4
    assert desired_replicas(10_000, 2, 1, 4, 50) == 4  # capped at max


def test_scale_from_zero_as_soon_as_work_waits() -> None:
    assert desired_replicas(1, 0, 0, 3, 50) == 1
    assert desired_replicas(0, 0, 0, 3, 50) == 0


def test_scale_up_waits_for_short_cooldown() -> None:
    kw = dict(scale_up_cooldown_s=10, scale_down_cooldown_s=60)
    assert desired_replicas(200, 1, 1, 4, 50, now=105, last_scaled_at=100, **kw) == 1
    assert desired_replicas(200, 1, 1, 4, 50, now=110, last_scaled_at=100, **kw) == 4


def test_scale_down_is_slow_and_one_step_at_a_time() -> None:
    kw = dict(scale_up_cooldown_s=10, scale_down_cooldown_s=60)
    assert desired_replicas(0, 4, 1, 4, 50, now=130, last_scaled_at=100, **kw) == 4
    assert desired_replicas(0, 4, 1, 4, 50, now=160, last_scaled_at=100, **kw) == 3
    assert desired_replicas(0, 4, 1, 4, 50, now=160, last_scaled_at=100, max_step_down=10, **kw) == 1
    assert desired_replicas(0, 4, 1, 4, 50, now=1e9, last_scaled_at=None) == 3  # never scaled: no cooldown


def test_below_floor_is_restored_despite_cooldown() -> None:
    assert desired_replicas(0, 0, 2, 4, 50, now=101, last_scaled_at=100) == 2


def test_negative_lag_treated_as_zero_and_bad_bounds_rejected() -> None:
    assert desired_replicas(-5, 2, 1, 4, 50) == 1
    with pytest.raises(ValueError):
        desired_replicas(0, 1, 3, 2, 50)
    with pytest.raises(ValueError):
        desired_replicas(0, 1, 1, 2, 0)
