"""The evaluation's figures from its samples: pure, so unit tests check them on made-up runs.

Every request is accounted for: `answered` (SUCCEEDED), `rejected` (any other final status, with
its reason: REJECTED, FAILED, EXPIRED, a dead letter), `errors` (the client got no final: connection
refused or reset, HTTP 5xx), or `lost` (no answer by the end of the drain). Latency is answer time minus send time, over answered requests.
Cost per successful request = CPU seconds of the deployment's processes x `PRICE_PER_CORE_HOUR`
/ 3600 / answered: the price is an assumption, stated (USD 0.045 per vCPU-hour, about a
general-purpose cloud VM's on-demand price in 2026), so only the ratios between deployments mean much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PRICE_PER_CORE_HOUR = 0.045
CLIENT_ERROR = "ERROR"  # the client got no final: connection refused or reset, HTTP 5xx
STEADY_FRACTION = 0.9  # "back to steady": answers per second at >= 90 % of the offered rate ...
STEADY_SECONDS = 3  # ... for this many consecutive seconds


@dataclass
class Sample:
    request_id: str
    phase: str  # before | during | after | burst (see tools.evaluation.schedule)
    premium: bool
    sent_ms: int | None = None
    done_ms: int | None = None
    status: str | None = None
    reason: str | None = None
    finals: int = 0  # finals a Kafka reader saw (more than one is a duplicate)
    kind: str = "echo"  # tools.evaluation_mix.KINDS

    def finish(self, at_ms: int, status: str, reason: str | None) -> None:
        if self.done_ms is None:
            self.done_ms, self.status, self.reason = at_ms, status, reason
            self.finals = max(self.finals, 1)

    @property
    def latency_ms(self) -> int | None:
        if self.done_ms is None or self.sent_ms is None:
            return None
        return self.done_ms - self.sent_ms


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "mean": None, "sd": None, "p50": None, "p95": None, "p99": None}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"n": len(values), "mean": round(mean, 1), "sd": round(sd, 1),
            **{f"p{int(q * 100)}": round(percentile(values, q) or 0, 1) for q in (0.5, 0.95, 0.99)}}


def accounting(samples: list[Sample]) -> dict[str, Any]:
    answered = sum(1 for s in samples if s.status == "SUCCEEDED")
    lost = sum(1 for s in samples if s.done_ms is None)
    reasons: dict[str, int] = {}
    for s in samples:
        if s.done_ms is not None and s.status != "SUCCEEDED":
            key = f"{s.status}:{s.reason}" if s.reason else str(s.status)
            reasons[key] = reasons.get(key, 0) + 1
    errors = sum(1 for s in samples if s.status == CLIENT_ERROR)
    return {"sent": len(samples), "answered": answered, "rejected": len(samples) - answered - lost - errors,
            "errors": errors, "lost": lost, "duplicated": sum(1 for s in samples if s.finals > 1), "rejected_by_reason": reasons}


def recovery(samples: list[Sample], kill_ms: int, offered_per_s: float, kind: str | None = None) -> dict[str, float | None]:
    """MTTR after a fault: to the first answer of a request of the affected `kind` (any kind: None)
    sent after it, and back to steady answers/s (all kinds)."""
    after = [s for s in samples if s.status == "SUCCEEDED" and s.sent_ms is not None and s.sent_ms >= kill_ms
             and (kind is None or s.kind == kind)]
    first = min((s.done_ms for s in after if s.done_ms is not None), default=None)
    per_s: dict[int, int] = {}
    for s in samples:
        if s.status == "SUCCEEDED" and s.done_ms is not None and s.done_ms >= kill_ms:
            sec = (s.done_ms - kill_ms) // 1000
            per_s[sec] = per_s.get(sec, 0) + 1
    steady = None
    last = max(per_s, default=-1)
    for sec in range(0, last + 1):
        if all(per_s.get(sec + k, 0) >= STEADY_FRACTION * offered_per_s for k in range(STEADY_SECONDS)):
            steady = float(sec)
            break
    return {"first_answer_s": None if first is None else round((first - kill_ms) / 1000, 2), "steady_s": steady}


def summarise(samples: list[Sample], duration_s: float, cpu_s: float, offered_per_s: float,
              kill_ms: int | None = None, affected_kind: str | None = None) -> dict[str, Any]:
    ok = [float(s.latency_ms) for s in samples if s.status == "SUCCEEDED" and s.latency_ms is not None]
    acc = accounting(samples)
    out: dict[str, Any] = {
        **acc,
        "latency_ms": latency_stats(ok),
        "premium_latency_ms": latency_stats([float(s.latency_ms) for s in samples if s.premium
                                             and s.status == "SUCCEEDED" and s.latency_ms is not None]),
        "by_phase": {phase: latency_stats([float(s.latency_ms) for s in samples if s.phase == phase
                                           and s.status == "SUCCEEDED" and s.latency_ms is not None])
                     for phase in sorted({s.phase for s in samples})},
        "by_kind": {kind: {**latency_stats([float(s.latency_ms) for s in samples if s.kind == kind
                                            and s.status == "SUCCEEDED" and s.latency_ms is not None]),
                           "sent": sum(1 for s in samples if s.kind == kind),
                           "answered": sum(1 for s in samples if s.kind == kind and s.status == "SUCCEEDED")}
                    for kind in sorted({s.kind for s in samples})},
        "throughput_per_s": round(acc["answered"] / duration_s, 1) if duration_s else None,
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_answer": round(1000 * cpu_s / acc["answered"], 2) if acc["answered"] else None,
        "usd_per_1k_answers": round(1000 * cpu_s * PRICE_PER_CORE_HOUR / 3600 / acc["answered"], 5)
        if acc["answered"] else None,
    }
    premium_burst = [float(s.latency_ms) for s in samples if s.premium and s.phase == "burst"
                     and s.status == "SUCCEEDED" and s.latency_ms is not None]
    if premium_burst:
        out["premium_burst_latency_ms"] = latency_stats(premium_burst)
    if kill_ms is not None:
        out["recovery"] = recovery(samples, kill_ms, offered_per_s, affected_kind)
    if affected_kind is not None and any(s.kind == affected_kind for s in samples):
        # the affected kind before, during and after its fault (slow-s3: image requests while storage is slow)
        out["affected_by_phase"] = {phase: latency_stats([float(s.latency_ms) for s in samples if s.phase == phase
                                                          and s.kind == affected_kind and s.status == "SUCCEEDED"
                                                          and s.latency_ms is not None])
                                    for phase in sorted({s.phase for s in samples})}
    return out
