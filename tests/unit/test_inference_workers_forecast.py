"""Holt-Winters forecast for predictive pre-scaling (pure)."""

from __future__ import annotations

from inference_workers.forecast import fit, peak_ahead, replicas_for_rate, resample


def periodic(n: int, m: int = 12, base: float = 10.0, burst: float = 100.0) -> list[float]:
    return [burst if i % m in (8, 9, 10) else base for i in range(n)]


def test_needs_two_seasons() -> None:
    assert fit(periodic(23), 12) is None and peak_ahead(periodic(23), 12, 3) is None


def test_forecasts_a_recurring_burst_before_it_comes() -> None:
    y = periodic(48)  # four seasons; the next steps are 0..7 of a season (quiet), then the burst at 8
    f = fit(y, 12)
    ahead = f.forecast(12)
    assert max(ahead[:6]) < 30  # quiet part stays quiet
    assert min(ahead[8:11]) > 70  # the burst is foreseen
    assert peak_ahead(y[:-4], 12, 6) > 70  # 4 steps before the burst, looking 6 ahead


def test_flat_series_forecasts_flat_and_never_negative() -> None:
    f = fit([5.0] * 30, 10)
    assert all(abs(v - 5.0) < 0.5 for v in f.forecast(10))
    assert min(fit([0.0] * 20 + [0.0] * 10, 10).forecast(5)) >= 0.0


def test_replicas_for_rate_and_resample() -> None:
    assert replicas_for_rate(None, 10) == 0 and replicas_for_rate(25, 10) == 3
    series = resample([(0.5, 1.0), (1.5, 3.0), (1.7, 5.0), (3.2, 7.0)], step_s=1.0, now=4.0, length=4)
    assert series == [1.0, 4.0, 4.0, 7.0]
