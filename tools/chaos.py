"""`rscf chaos`: the fault matrix. One fault at a time, each during a bounded load of mixed prompts.

For each fault (tools/faults.py) the load runs `duration_s` at `rate` prompts/s on loopback, the
fault is injected a quarter of the way in, holds, heals; 5 s more of load follow the heal (a job
lost or stuck in a restart loop shows there); then the reader drains (bounded by the fault's
`drain_s`) and settles, and the row is measured as a read_committed consumer sees it:

- prompts in; finals exactly once; missing (no final); duplicated (more than one final), all per
  (tenant, request_id); audit records that are not exactly one per prompt;
- undecodable records sent and the dead letters that name them; dead letters by reason;
- model calls (the chaos worker logs every request that reaches the model): duplicate model calls
  = calls beyond one per (tenant, request_id); repeated attempts = the same attempt run twice;
- job restarts (Flink's `numRestarts` for the job) and the job's state at the end;
- time to recover: `first_final_s`, from the injection to the first final of a prompt sent after
  it; `steady_s`, from the injection until finals arrive within the steady latency bound again
  (3x the pre-fault p99, at least 1 s): the backlog the fault caused is drained and the pipeline
  answers at the offered rate again. For a service fault also `after_back_s`, from the service
  being back to steady.

The pure parts (accounting, recovery, fault selection) are functions of plain lists and tested
without a stack.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from rscf.clock import now_ms

Key = tuple[str, str]
SEL_ALL, SEL_CI = "all", "ci"
SETTLE_CAP_S = 30.0


# ----------------------------------------------------------------------------- pure parts


def parse_faults(spec: str | None, known: Sequence[str], ci: Sequence[str] = ()) -> list[str]:
    """`a,b,c` -> those faults in that order; empty/None/`all` -> all; `ci` -> the reduced matrix."""
    if spec is None or spec.strip() in ("", SEL_ALL):
        return list(known)
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        names = list(ci) if part == SEL_CI else [part]
        for name in names:
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no fault selected")
    return out


def account(sent: Iterable[Key], finals: Mapping[Key, Sequence[Any]], audits: Mapping[Key, int] | None = None) -> dict:
    """Exactly-once accounting of the prompts `sent` against the finals (and audit records) read."""
    sent = list(dict.fromkeys(sent))
    counts = {k: len(finals.get(k, ())) for k in sent}
    missing = [k for k, n in counts.items() if n == 0]
    duplicated = {k: n for k, n in counts.items() if n > 1}
    audit_off = {k: (audits or {}).get(k, 0) for k in sent if (audits or {}).get(k, 0) != 1} if audits is not None else {}
    return {
        "prompts": len(sent),
        "finals_once": sum(1 for n in counts.values() if n == 1),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "extra_finals": sum(n - 1 for n in duplicated.values()),
        "audit_not_once": len(audit_off),
        "missing_ids": [f"{t}/{r}" for t, r in missing[:20]],
        "duplicated_ids": {f"{t}/{r}": n for (t, r), n in list(duplicated.items())[:20]},
    }


def dead_letter_account(expected: Sequence[Mapping], dead_letters: Sequence[Mapping]) -> dict:
    """Undecodable records sent vs the dead letters naming them (by source topic, partition, offset)."""
    by_source = Counter((d.get("source_topic"), d.get("source_partition"), d.get("source_offset")) for d in dead_letters)
    counts = [by_source[(e["topic"], e["partition"], e["offset"])] for e in expected]
    return {"undecodable_in": len(expected), "dead_lettered_once": sum(1 for n in counts if n == 1),
            "undecodable_missing": sum(1 for n in counts if n == 0),
            "undecodable_duplicated": sum(1 for n in counts if n > 1),
            "dead_letters": dict(Counter(str(d.get("reason")) for d in dead_letters).most_common())}


def model_call_account(calls: Iterable[tuple[str, str, str]], keys: Iterable[Key], finals_once: int) -> dict:
    """Model calls for `keys` from the workers' call log lines (tenant, request_id, attempt)."""
    wanted = set(keys)
    mine = [c for c in calls if (c[0], c[1]) in wanted]
    requests = {(t, r) for t, r, _ in mine}
    attempts = set(mine)
    return {"model_calls": len(mine), "duplicate_model_calls": len(mine) - len(requests),
            "repeated_attempts": len(mine) - len(attempts),
            "calls_per_final": round(len(mine) / finals_once, 3) if finals_once else None}


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def steady_bound_ms(latencies_ms: Sequence[float], floor_ms: float = 1000.0) -> float:
    """Latency above which a final counts as late: 3x the pre-fault p99, at least `floor_ms`."""
    p99 = percentile(latencies_ms, 0.99)
    return max(floor_ms, 3 * p99) if p99 is not None else floor_ms


def recovery(inject_ms: int | None, sent: Mapping[Key, int], first_arrival: Mapping[Key, int],
             bound_ms: float, back_ms: int | None = None) -> dict:
    """first_final_s, steady_s (and after_back_s) as described in the module docstring; None = never."""
    out: dict[str, float | None] = {"first_final_s": None, "steady_s": None, "after_back_s": None}
    if inject_ms is None:
        return out
    after = [first_arrival[k] for k, s in sent.items() if s >= inject_ms and k in first_arrival]
    if after:
        out["first_final_s"] = round((min(after) - inject_ms) / 1000, 2)
    answered = [k for k in sent if k in first_arrival]
    if not answered:
        return out
    late = [first_arrival[k] for k in answered if first_arrival[k] >= inject_ms and first_arrival[k] - sent[k] > bound_ms]
    steady_at = max(late) if late else inject_ms
    out["steady_s"] = round((steady_at - inject_ms) / 1000, 2)
    if back_ms is not None:
        out["after_back_s"] = round(max(0, steady_at - back_ms) / 1000, 2)
    return out


def restarts_since(before: int | None, after: int | None) -> int | None:
    """Job restarts during the fault. A restarted JobManager recovers the job with its counter at 0,
    so a count lower than before means every restart it reports happened after the fault."""
    if before is None or after is None:
        return None
    return after - before if after >= before else after


def passed(row: Mapping) -> bool:
    """The promise: nothing missing, nothing doubled (prompts and undecodable records alike)."""
    return (not row.get("error") and row.get("missing") == 0 and row.get("duplicated") == 0
            and not row.get("undecodable_missing") and not row.get("undecodable_duplicated"))


COLUMNS = (("fault", 18), ("in", 5), ("once", 5), ("miss", 5), ("dup", 4), ("failed", 6), ("aud!1", 5), ("calls", 6),
           ("dupcall", 7),
           ("restarts", 8), ("1st_s", 6), ("steady_s", 8), ("job", 9), ("dead letters", 24), ("ok", 4))


def table_header() -> str:
    return " ".join(f"{name:<{w}}" for name, w in COLUMNS)


def table_row(row: Mapping) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))

    dl = ",".join(f"{k}:{v}" for k, v in (row.get("dead_letters") or {}).items()) or "-"
    failed = sum(n for s, n in (row.get("statuses") or {}).items() if s.split(":")[0] in ("FAILED", "EXPIRED"))
    vals = (row["fault"], f(row.get("prompts")), f(row.get("finals_once")), f(row.get("missing")), f(row.get("duplicated")),
            f(failed if "statuses" in row else None), f(row.get("audit_not_once")), f(row.get("model_calls")), f(row.get("duplicate_model_calls")),
            f(row.get("job_restarts")), f(row.get("first_final_s")), f(row.get("steady_s")), f(row.get("job_state")),
            dl[:24], "yes" if passed(row) else "NO")
    return " ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, COLUMNS))


# ----------------------------------------------------------------------------- one fault


def _status(final: Mapping) -> str:
    return f"{final['status']}:{final['reason']}" if final.get("reason") and final["status"] != "SUCCEEDED" else str(final["status"])



def _fault_thread(fault, ctx) -> threading.Thread:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fault.run(ctx)
        except BaseException as exc:  # noqa: BLE001 - reported in the row
            errors.append(exc)
            ctx.note(f"fault error: {exc}")

    thread = threading.Thread(target=body, name=f"fault-{fault.name}", daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    return thread


def _offer(session, ctx, prefix: str, first: int, n: int, rate: float, at: Callable[[float], None] = lambda t: None) -> None:
    """Send mixed prompts `first`..`first+n-1` at `rate`, reading finals in between; `at(elapsed)` every tick."""
    from tools.chaos_session import mixed_prompt

    start, sent = time.monotonic(), 0
    while sent < n:
        at(time.monotonic() - start)
        due = min(n, int((time.monotonic() - start) * rate) + 1)
        for i in range(sent, due):
            ctx.send(mixed_prompt(prefix, first + i))
        sent = due
        session.reader.poll(max(start + sent / rate - time.monotonic(), 0.005))


def run_fault(session, fault, rate: float, duration_s: float, fault_at: float = 0.25, settle_s: float | None = None,
              heal_timeout_s: float = 420.0, drain_cap_s: float | None = None, after_heal_s: float = 5.0,
              phase: Callable[[str], None] = lambda p: None) -> dict:
    """Run one fault against a healthy session and measure its row."""
    from tools.chaos_session import FaultContext

    ctx = FaultContext(session, fault.name)
    started_ms = now_ms()
    restarts_before = session.job_restarts()
    phase("load")
    thread = _fault_thread(fault, ctx)

    def start_fault(elapsed: float) -> None:
        if thread.ident is None and elapsed >= duration_s * fault_at:
            phase("fault")
            thread.start()

    n = int(rate * duration_s)
    _offer(session, ctx, fault.name, 0, n, rate, start_fault)
    start_fault(duration_s)
    phase("heal")
    deadline = time.monotonic() + heal_timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        session.reader.poll(0.2)
    if thread.is_alive():
        ctx.note(f"fault still healing after {heal_timeout_s:.0f} s")
    # What the pipeline does once the fault is healed: a lost job or a restart loop shows here.
    phase("after-heal load")
    _offer(session, ctx, fault.name, n, int(rate * after_heal_s), rate)
    phase("drain")
    session.producer.flush()
    reader = session.reader
    deadline = time.monotonic() + min(fault.drain_s, drain_cap_s or fault.drain_s)
    while time.monotonic() < deadline and not set(ctx.sent) <= reader.finals.keys():
        reader.poll(0.2)
    # Transactional sinks publish at checkpoints: wait past one before calling anything settled.
    # A job in a restart loop replays the same finals forever: the settling stops after SETTLE_CAP_S anyway.
    quiet = settle_s if settle_s is not None else max(3.0, session.cfg.checkpoint_interval_ms / 1000 + 2)
    last = settle_start = time.monotonic()
    while time.monotonic() - last < quiet and time.monotonic() - settle_start < SETTLE_CAP_S:
        if reader.poll(0.2):
            last = time.monotonic()
    ended_ms = now_ms()

    first_arrival = {k: v[0][0] for k, v in reader.finals.items() if k in ctx.sent}
    inject = ctx.events.get("injected")
    # Steady latency: finals of prompts sent and answered before the fault (one in flight at the fault is its victim).
    before = [first_arrival[k] - s for k, s in ctx.sent.items()
              if k in first_arrival and inject and s < inject - 1000 and first_arrival[k] < inject]
    mine_dl = [rec for at, rec in reader.dead_letters if started_ms <= at <= ended_ms]
    restarts_after = session.job_restarts()
    row: dict[str, Any] = {
        "fault": fault.name, "summary": fault.summary, "rate": rate, "duration_s": duration_s,
        **account(ctx.sent, reader.finals, reader.audits),
        **dead_letter_account(ctx.raw, mine_dl),
        **model_call_account(session.model_calls(), ctx.sent, sum(1 for k in ctx.sent if len(reader.finals.get(k, ())) == 1)),
        "job_restarts": restarts_since(restarts_before, restarts_after),
        "job_state": settled_job_state(session),
        "steady_bound_ms": round(steady_bound_ms(before)),
        "pre_fault_p50_ms": round(statistics.median(before)) if before else None,
        **recovery(inject, ctx.sent, first_arrival, steady_bound_ms(before), ctx.events.get("service_back")),
        "healed_by": ctx.healed_by,
        "timeline_s": {k: round((v - started_ms) / 1000, 2) for k, v in sorted(ctx.events.items(), key=lambda kv: kv[1])},
        "notes": ctx.notes,
        "error": "; ".join(str(e) for e in thread.errors) or None,  # type: ignore[attr-defined]
    }
    row["statuses"] = dict(Counter(_status(reader.finals[k][0][1]) for k in ctx.sent if k in reader.finals).most_common())
    slow = sorted(((a - ctx.sent[k], k) for k, a in first_arrival.items()), reverse=True)[:5]
    row["slowest_ms"] = {f"{t}/{r}": lat for lat, (t, r) in slow}
    row["passed"] = passed(row)
    return row


# ----------------------------------------------------------------------------- the matrix


def run_matrix(names: Sequence[str], rate: float = 50.0, duration_s: float = 20.0, workers: int = 2,
               delivery: str = "default", progress: bool = True, on_row: Callable[[dict], None] | None = None,
               settle_s: float | None = None, drain_cap_s: float | None = None) -> dict:
    """Run the selected faults one after another; a fresh session whenever the last one is unhealthy."""
    from tqdm import tqdm

    from rscf.settings import SETTINGS
    from tools import faults as F
    from tools.chaos_session import Session

    catalogue = F.catalogue()
    selected = [catalogue[n] for n in names]
    toxiproxy, proxy_ports = None, {}
    needed = sorted({f.proxy for f in selected if f.proxy})
    rows: list[dict] = []
    bar = tqdm(total=len(selected), desc="faults", unit="fault", disable=not progress)
    session = None
    t0 = time.monotonic()
    try:
        if needed:
            bar.set_postfix_str("building/starting toxiproxy")
            toxiproxy = F.Toxiproxy(F.install_toxiproxy(), SETTINGS.paths.logs / "chaos-toxiproxy.log")
            upstream = {"redis": f"{SETTINGS.host}:{SETTINGS.ports.redis}",
                        "registry": f"{SETTINGS.host}:{SETTINGS.ports.registry}",
                        "kafka": f"{SETTINGS.host}:{SETTINGS.ports.kafka_chaos}"}  # the broker's CHAOS listener
            if "kafka" in needed and SETTINGS.kafka_auth.tls:
                raise F.FaultError("kafka-latency/-partition need the plain client listener: unset RSCF_KAFKA_TLS")
            # the broker advertises kafka_chaos_proxy on its CHAOS listener: the proxy must listen there
            fixed = {"kafka": SETTINGS.ports.kafka_chaos_proxy}
            proxy_ports = {name: toxiproxy.proxy(name, upstream[name], fixed.get(name, 0)) for name in needed}
        for fault in selected:
            phase = (lambda p, n=fault.name: bar.set_postfix_str(f"{n}: {p}"))
            try:
                if session is None or not session.healthy():
                    if session is not None:
                        phase("fresh session (the last one is unhealthy)")
                        session.stop()
                    session = None
                    phase("starting session")
                    session = Session(workers, delivery, toxiproxy, proxy_ports)
                    session.start(rate=rate)
                row = run_fault(session, fault, rate, duration_s, settle_s=settle_s, drain_cap_s=drain_cap_s, phase=phase)
            except Exception as exc:  # noqa: BLE001 - one broken fault must not hide the others
                row = {"fault": fault.name, "summary": fault.summary, "error": f"{type(exc).__name__}: {exc}",
                       "passed": False}
                if session is not None:
                    session.stop()
                    session = None
            rows.append(row)
            if on_row:
                on_row(row)
            bar.update(1)
    finally:
        bar.close()
        if session is not None:
            session.stop()
        if toxiproxy is not None:
            toxiproxy.stop()
    return {"faults": rows, "rate": rate, "duration_s": duration_s, "workers": workers, "delivery": delivery,
            "passed": all(r.get("passed") for r in rows), "seconds": round(time.monotonic() - t0, 1),
            "proxied": needed}


def settled_job_state(session: Any, wait_s: float = 30.0) -> str:
    """The job's state once the restarts of a recovery have settled: a LOOPING verdict right after a
    TaskManager kill (the job fails while it waits for slots) is read again for up to `wait_s`; a
    real restart loop keeps failing and stays LOOPING."""
    deadline = time.monotonic() + wait_s
    state = session.job_state()
    while state == "LOOPING" and time.monotonic() < deadline:
        time.sleep(2.0)
        state = session.job_state()
    return state
