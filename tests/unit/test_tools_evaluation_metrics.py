"""The evaluation's figures on made-up runs: every request accounted for, MTTR, schedules."""

from __future__ import annotations

from tools.evaluation import BURST_FACTOR, schedule
from tools.evaluation_metrics import Sample, accounting, percentile, recovery, summarise


def _s(i: int, sent: int, done: int | None, status: str | None = "SUCCEEDED", phase: str = "before",
       premium: bool = False, reason: str | None = None) -> Sample:
    s = Sample(f"r{i}", phase, premium, sent_ms=sent)
    if done is not None:
        s.finish(done, status or "SUCCEEDED", reason)
    return s


def test_every_request_is_answered_rejected_or_lost():
    samples = [_s(0, 0, 10), _s(1, 0, 20, "REJECTED", reason="quota_exceeded"), _s(2, 0, None),
               _s(3, 0, 30, "ERROR", reason="ConnectError")]
    samples[0].finals = 2
    acc = accounting(samples)
    assert (acc["sent"], acc["answered"], acc["rejected"], acc["errors"], acc["lost"], acc["duplicated"]) == \
        (4, 1, 1, 1, 1, 1)
    assert acc["rejected_by_reason"] == {"REJECTED:quota_exceeded": 1, "ERROR:ConnectError": 1}


def test_latency_figures_count_answered_requests_only():
    samples = [_s(i, 0, 10 * (i + 1)) for i in range(100)] + [_s(200, 0, 99_999, "FAILED")]
    out = summarise(samples, duration_s=10, cpu_s=2.0, offered_per_s=10)
    assert out["latency_ms"]["n"] == 100 and out["latency_ms"]["p50"] == 505.0
    assert out["latency_ms"]["p99"] < 1000  # the FAILED one's 100 s is not a latency
    assert out["throughput_per_s"] == 10.0 and out["cpu_ms_per_answer"] == 20.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.5


def test_recovery_is_time_to_first_answer_after_the_kill_and_back_to_steady():
    kill = 10_000
    before = [_s(i, i * 100, i * 100 + 20) for i in range(100)]  # 10/s, answered at once
    # nothing answered for 4 s after the kill, then everything sent since at 10/s again
    after = [_s(1000 + i, kill + i * 100, max(kill + 4_000, kill + i * 100 + 20)) for i in range(100)]
    rec = recovery(before + after, kill, offered_per_s=10)
    assert rec["first_answer_s"] == 4.0
    assert rec["steady_s"] == 4.0  # the backlog arrives at once, then 10/s


def test_no_answer_after_the_kill_means_no_recovery():
    kill = 5_000
    samples = [_s(i, i * 100, i * 100 + 5) for i in range(50)] + [_s(100 + i, kill + i * 100, None) for i in range(20)]
    assert recovery(samples, kill, 10) == {"first_answer_s": None, "steady_s": None}


def test_burst_schedule_sends_ten_times_the_rate_in_its_middle_third():
    plan = schedule("burst", rate=10, duration_s=30)
    phases = [p for _t, p in plan]
    assert phases.count("burst") == 10 * BURST_FACTOR * 10
    assert phases.count("before") == 100 and phases.count("after") == 100
    steady = schedule("steady", rate=10, duration_s=30)
    assert len(steady) == 300 and all(b > a for (a, _), (b, _) in zip(steady, steady[1:]))


def test_the_affected_kind_is_figured_per_phase_and_other_kinds_do_not_blur_it():
    def kinded(i: int, phase: str, kind: str, latency: int) -> Sample:
        s = _s(i, 0, latency, phase=phase)
        s.kind = kind
        return s

    samples = [kinded(i, "before", "image", 100) for i in range(5)] + \
              [kinded(10 + i, "during", "image", 1_100) for i in range(5)] + \
              [kinded(20 + i, "during", "echo", 5) for i in range(50)] + [kinded(90, "after", "image", 120)]
    out = summarise(samples, duration_s=10, cpu_s=1.0, offered_per_s=6, kill_ms=0, affected_kind="image")
    assert out["affected_by_phase"]["before"]["p50"] == 100.0
    assert out["affected_by_phase"]["during"]["p50"] == 1_100.0  # the echo answers do not pull it down
    assert out["by_phase"]["during"]["p50"] == 5.0
    assert out["affected_by_phase"]["after"]["n"] == 1
    assert "affected_by_phase" not in summarise(samples, 10, 1.0, 6, affected_kind="speech")


def test_repeats_are_summarised_as_a_median_and_a_range_and_every_fate_is_summed(tmp_path):
    from tools.evaluation_report import spread, spread_markdown, write_html

    def run(dep: str, p99: float, answered: int, lost: int = 0) -> dict:
        return {"deployment": dep, "scenario": "steady", "sent": 10, "answered": answered, "rejected": 0,
                "errors": 10 - answered - lost, "lost": lost, "duplicated": 0, "latency_ms": {"p50": p99 / 2,
                "p99": p99, "mean": 1, "sd": 0, "p95": p99}, "premium_latency_ms": {"p99": None},
                "throughput_per_s": answered / 10, "cpu_ms_per_answer": 1.0, "usd_per_1k_answers": 0.0}

    runs = [run("rscf", 300, 10), run("rscf", 100, 10), run("rscf", 900, 9, lost=1), run("monolith", 50, 10)]
    rows = {r["deployment"]: r for r in spread(runs)}
    assert rows["rscf"]["repeats"] == 3 and rows["rscf"]["sent"] == 30 and rows["rscf"]["lost"] == 1
    assert rows["rscf"]["p99 ms"] == {"median": 300, "min": 100, "max": 900}
    assert rows["rscf"]["premium p99 ms"] is None  # no premium request answered: no figure, not a zero
    assert rows["monolith"]["p99 ms"] == {"median": 50, "min": 50, "max": 50}
    assert "300 [100-900]" in spread_markdown(runs)
    assert spread_markdown([runs[0], runs[3]]) == ""  # one run each: nothing to spread
    page = write_html({"runs": runs, "series": [], "plan": {}, "machine": {}}, tmp_path / "r.html").read_text()
    assert "Spread over the repeats" in page and "300 [100-900]" in page
