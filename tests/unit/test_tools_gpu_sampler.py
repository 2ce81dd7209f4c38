"""The evaluation's GPU sampler: parses `nvidia-smi` CSV, sums busy and held GPU-seconds, prices them, and
reports nothing (not zero) on a machine without `nvidia-smi`. A fake `nvidia-smi` on PATH plays the GPU."""

from __future__ import annotations

import os
import stat
import time

import pytest

from tools import gpu_sampler as gs
from tools.evaluation import gpu_cost
from tools.evaluation_report import table_markdown


def test_lines_parse_and_junk_is_skipped():
    assert gs.parse_line("0, 87, 40960, 143771\n") == (0, 87.0, 40960.0, 143771.0)
    assert gs.parse_line("0, [N/A], 1, 2") is None
    assert gs.parse_line("index, utilization.gpu [%], memory.used [MiB], memory.total [MiB]") is None


def test_summary_sums_busy_time_per_interval_and_holds_wall_time_per_gpu():
    out = gs.summarise({0: [(100.0, 10.0, 80.0), (50.0, 30.0, 80.0)], 1: [(0.0, 5.0, 80.0)] * 2}, 0.5, 4.0)
    assert out["gpus"] == 2 and out["gpu_busy_s"] == 0.75  # 0.5 s at 100 % + 0.5 s at 50 %
    assert out["gpu_held_s"] == 8.0 and out["usd_gpu_held"] == round(8.0 * gs.PRICE_PER_GPU_HOUR / 3600, 5)
    assert out["per_gpu"]["0"] == {"util_mean_pct": 75.0, "util_max_pct": 100.0, "memory_peak_mib": 30.0,
                                   "memory_total_mib": 80.0, "samples": 2}


def test_no_nvidia_smi_means_no_gpu_figures(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gs.GpuSampler().start() is None
    assert gpu_cost({"answered": 10, "cpu_s": 1.0}, None) == {}


@pytest.fixture()
def fake_smi(tmp_path, monkeypatch):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\nwhile true; do echo '0, 60, 1000, 80000'; echo '1, 20, 500, 80000'; sleep 0.05; done\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return script


def test_a_run_on_a_gpu_machine_reports_utilisation_cost_and_table_columns(fake_smi):
    sampler = gs.GpuSampler(interval_ms=50).start()
    assert sampler is not None
    time.sleep(0.6)
    gpu = sampler.stop()
    assert gpu["gpus"] == 2 and gpu["per_gpu"]["0"]["util_mean_pct"] == 60.0 and gpu["per_gpu"]["1"]["util_max_pct"] == 20.0
    assert gpu["gpu_held_s"] >= 1.0  # two GPUs x >= 0.5 s
    figures = {"answered": 100, "cpu_s": 3.6}
    cost = gpu_cost(figures, gpu)["usd_per_1k_answers_with_gpu"]
    cpu_only = 1000 * 3.6 * 0.045 / 3600 / 100
    assert cost > cpu_only  # the GPU's held time is paid for
    run = {"deployment": "rscf", "scenario": "steady", "sent": 1, "answered": 1, "rejected": 0, "errors": 0, "lost": 0,
           "duplicated": 0, "latency_ms": {k: 1 for k in ("mean", "sd", "p50", "p95", "p99")},
           "premium_latency_ms": {"p99": 1}, "throughput_per_s": 1, "cpu_ms_per_answer": 1, "usd_per_1k_answers": 1,
           "gpu": gpu, "usd_per_1k_answers_with_gpu": cost}
    assert "GPU util mean/max %" in table_markdown([run])
    assert "GPU util" not in table_markdown([{**run, "gpu": None}])
