"""Where a backfill stands: its ingest job's counters and pace (Flink's REST), the results writer, the manifest's
counts, rows per second and an ETA (`rscf backfill status`, `start --wait`'s progress bar)."""

from __future__ import annotations

import time
from typing import Any

from deploy.local import backfill_transactions, flink_jobs
from deploy.local.backfills import LANE, release, release_lane, saved_state, writer_alive
from operators.backfill import INGEST_METRICS, BackfillSpec, Manifest, progress
from rscf.settings import SETTINGS


def job_counters(job_id: str) -> dict[str, float]:
    """rows_read / rows_dispatched / rows_dead and the pace's gauges of a running ingest job (Flink's REST)."""
    out: dict[str, float] = {}
    try:
        detail = flink_jobs._request("GET", f"/jobs/{job_id}")
        for v in detail.get("vertices", []):
            names = flink_jobs._request("GET", f"/jobs/{job_id}/vertices/{v['id']}/metrics") or []
            wanted = [m["id"] for m in names if m["id"].rsplit(".", 1)[-1] in INGEST_METRICS]
            if wanted:
                vals = flink_jobs._request("GET", f"/jobs/{job_id}/vertices/{v['id']}/metrics",
                                           params={"get": ",".join(wanted)})
                for m in vals:
                    name = m["id"].rsplit(".", 1)[-1]
                    out[name] = out.get(name, 0.0) + float(m["value"])
    except (flink_jobs.ClusterError, KeyError, ValueError):
        pass
    return out


def status(backfill_id: str) -> dict[str, Any]:
    """Where a backfill stands: its job's state and counters, the writer, the manifest's counts."""
    from jobs.backfill_results import ResultsStore

    state = saved_state(backfill_id)
    spec = BackfillSpec.from_dict(state["spec"])
    job_state = backfill_transactions.job_state(state["job_id"]) or "UNKNOWN"
    release(backfill_id, job_state)  # ended cancelled or failed: what it left open must not block its lane,
    if job_state == "RUNNING":
        release_lane(state.get("lane", LANE))  # nor what another one cancelled in the Web UI left
    counters = job_counters(state["job_id"]) if job_state == "RUNNING" else {}
    manifest: Manifest | None = ResultsStore(spec).manifest()
    counts = manifest.counts if manifest else {}
    finished = sum(v for k, v in counts.items() if k != "DEAD_LETTER")
    out = {"backfill_id": backfill_id, "uri": spec.uri, "tenant": spec.tenant, "job_id": state["job_id"],
           "job_state": job_state, "writer_running": writer_alive(state.get("writer_pid")),
           "savepoint": state.get("savepoint"), "rows_total": state["rows_total"], "counts": counts,
           "rows_finished": finished, "rows_dead": counts.get("DEAD_LETTER", 0), **counters,
           "state": manifest.state if manifest else "PLANNED",
           "web_ui": f"{SETTINGS.flink_url}/#/job/running/{state['job_id']}/overview"}
    if out["savepoint"] and out["state"] != "FINISHED":
        out["state"] = "STOPPED"
    out.update(progress(state["rows_total"], finished, out["rows_dead"], 0.0))
    return out


def watch(backfill_id: str, interval_s: float = 2.0, timeout_s: float | None = None, on_update=None) -> dict[str, Any]:
    """Poll `status` until the backfill is FINISHED (or stopped, or the timeout); rates per second and ETA."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    last, last_t = status(backfill_id), time.monotonic()
    while True:
        if last["state"] in ("FINISHED", "STOPPED") or (deadline and time.monotonic() > deadline):
            return last
        time.sleep(interval_s)
        now, t = status(backfill_id), time.monotonic()
        dt = max(t - last_t, 1e-6)
        for name in ("rows_read", "rows_dispatched", "rows_finished"):
            if name in now and name in last:
                now[f"{name}_per_s"] = round(max(now[name] - last[name], 0) / dt, 1)
        rate = now.get("rows_finished_per_s") or 0.0
        now.update(progress(now["rows_total"], now["rows_finished"], now["rows_dead"], rate))
        if on_update is not None:
            on_update(now)
        last, last_t = now, t
