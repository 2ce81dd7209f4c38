"""GPU utilisation during an evaluation run, from `nvidia-smi`, so the GPU variant of `rscf evaluate` reports
what issue #18 asks of it (GPU utilisation, GPU-seconds, their cost) beside the CPU figures.

The model handlers already run on CUDA when torch sees a GPU (inference_workers/handlers/device.py), in all
three deployments alike, so the GPU variant is the same command on a machine with a GPU; this sampler is what
adds the GPU's side. `nvidia-smi --query-gpu ... -lms N` prints one CSV line per GPU every N ms; the sampler
reads them on a thread and sums busy time (utilisation x interval). No `nvidia-smi` on PATH: `start()` returns
None and the report says "no GPU". Price: an assumption, stated like the CPU's (USD 2.50 per GPU-hour, about
an on-demand data-centre GPU in 2026), so only ratios between deployments mean much.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tools.harness import terminate

PRICE_PER_GPU_HOUR = 2.50
QUERY = "index,utilization.gpu,memory.used,memory.total"
INTERVAL_MS = 500


def parse_line(line: str) -> tuple[int, float, float, float] | None:
    """(gpu index, utilisation %, memory used MiB, memory total MiB) of one `nvidia-smi` CSV line, or None."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 4:
        return None
    try:
        return int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])
    except ValueError:  # "[N/A]", a header, a warning line
        return None


@dataclass
class GpuSampler:
    """One `nvidia-smi` loop for the length of a run; `stop()` returns the run's GPU figures."""

    interval_ms: int = INTERVAL_MS
    binary: str = "nvidia-smi"
    samples: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)  # gpu -> (util, mem, total)
    _proc: subprocess.Popen | None = None
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def start(self) -> "GpuSampler | None":
        path = shutil.which(self.binary)
        if path is None:
            return None
        self._proc = subprocess.Popen([path, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                       f"-lms={self.interval_ms}"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parsed = parse_line(line)
            if parsed is not None:
                gpu, util, used, total = parsed
                self.samples.setdefault(gpu, []).append((util, used, total))

    def stop(self) -> dict[str, Any]:
        wall_s = time.monotonic() - self._started
        terminate(self._proc, 5)
        if self._thread is not None:
            self._thread.join(5)
        return summarise(self.samples, self.interval_ms / 1000, wall_s)


def summarise(samples: dict[int, list[tuple[float, float, float]]], interval_s: float, wall_s: float) -> dict[str, Any]:
    """Per GPU: mean and max utilisation, peak memory; in all: GPU-seconds busy (utilisation x interval) and
    GPU-seconds held (wall time x GPUs, what a rented GPU costs whether busy or not)."""
    per_gpu = {}
    busy_s = 0.0
    for gpu, rows in sorted(samples.items()):
        utils = [u for u, _, _ in rows]
        busy_s += sum(u / 100 * interval_s for u in utils)
        per_gpu[str(gpu)] = {"util_mean_pct": round(sum(utils) / len(utils), 1), "util_max_pct": max(utils),
                             "memory_peak_mib": max(m for _, m, _ in rows), "memory_total_mib": rows[0][2],
                             "samples": len(rows)}
    held_s = wall_s * len(samples)
    return {"gpus": len(samples), "per_gpu": per_gpu, "gpu_busy_s": round(busy_s, 2), "gpu_held_s": round(held_s, 2),
            "usd_gpu_held": round(held_s * PRICE_PER_GPU_HOUR / 3600, 5)}
